//! Crash-safe file writing: temp file in the same directory, fsync, rename, fsync directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates `dir` and all its parents if they do not exist.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Atomically replaces `path` with `bytes`: readers see the old file or the new one, never a
/// partial write. Creates the parent directory if needed.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_parts(path, &[bytes])
}

/// [`atomic_write`] of a file whose bytes are `parts` one after the other (no concatenation
/// in memory).
pub fn atomic_write_parts(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        Error::Invalid(format!("cannot write to {}: no file name", path.display()))
    })?;
    let dir = parent_dir(path);
    ensure_dir(&dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_and_sync(&tmp, parts)
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        // Best effort clean-up; the original error is what matters.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(&dir)
}

fn write_and_sync(tmp: &Path, parts: &[&[u8]]) -> Result<()> {
    let mut f = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    for bytes in parts {
        f.write_all(bytes).map_err(|e| Error::io(tmp, e))?;
    }
    f.sync_all().map_err(|e| Error::io(tmp, e))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    // Directories cannot be opened for fsync on this platform; rename is still atomic.
    Ok(())
}

/// Writes `value` as pretty JSON (with a final newline) to `path`, atomically.
pub fn write_json_pretty(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| Error::json(path.display(), e))?;
    text.push('\n');
    atomic_write(path, text.as_bytes())
}

/// Reads a JSON file into `T`; errors name the path.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dir/file.txt");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn parts_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write_parts(&p, &[b"ab", b"", b"cde"]).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"abcde");
    }

    #[test]
    fn bad_target_is_error() {
        assert!(atomic_write(Path::new("/"), b"x").is_err());
    }
}

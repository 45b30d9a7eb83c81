//! Disk helpers shared by the storage benchmarks: plain sequential writes, page-cache
//! dropping, residency checks, process CPU time and numeric `--set` values.

use std::fs::File;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Instant;

use memmap2::Mmap;

use super::setting;
use crate::error::BoxError;

/// The positive number given as `--set key=...`, or `default`.
pub fn num(key: &str, default: f64) -> Result<f64, BoxError> {
    match setting(key) {
        None => Ok(default),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|x| *x > 0.0)
            .ok_or_else(|| format!("--set {key}={v}: expected a positive number").into()),
    }
}

/// CPU seconds used by this process so far (user + system).
pub fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// User-mode CPU seconds used by this process so far (the part outside the kernel).
pub fn user_cpu_secs() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_utime.tv_sec as f64 + ru.ru_utime.tv_usec as f64 * 1e-6
}

/// When a plain write syncs to disk (inside the timing).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fdatasync after every chunk.
    EachChunk,
    /// One fdatasync after the last chunk.
    AtEnd,
    /// Never (page-cache speed; synced untimed afterwards).
    Never,
}

/// Writes `bytes` bytes to `path` in `chunk`-byte writes, syncing as `sync` says; returns
/// wall and CPU seconds.
pub fn plain_write(
    path: &Path,
    bytes: u64,
    chunk: usize,
    sync: Sync,
) -> Result<(f64, f64), BoxError> {
    let buf: Vec<u8> = (0..chunk).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let cpu0 = cpu_secs();
    let mut f = File::create(path)?;
    let mut done = 0u64;
    while done < bytes {
        let n = chunk.min((bytes - done) as usize);
        f.write_all(&buf[..n])?;
        if sync == Sync::EachChunk {
            f.sync_data()?;
        }
        done += n as u64;
    }
    if sync == Sync::AtEnd {
        f.sync_data()?;
    }
    drop(f);
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    // Out of the timing: flush and drop so the next measurement starts clean.
    File::open(path)?.sync_all()?;
    std::fs::remove_file(path)?;
    Ok((secs, cpu))
}

/// Drops a file's pages from the page cache; returns the fraction still resident after.
pub fn drop_cache(path: &Path) -> Result<f64, BoxError> {
    let f = File::open(path)?;
    f.sync_all()?;
    // SAFETY: advisory call on a descriptor we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    resident_fraction(&f)
}

pub fn resident_fraction(f: &File) -> Result<f64, BoxError> {
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(0.0);
    }
    // SAFETY: read-only map of a file nobody truncates during the benchmark; only its
    // residency is queried, the bytes are not read.
    let map = unsafe { Mmap::map(f)? };
    let page = 4096usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `vec` has one byte per page of the mapping.
    let r = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if r != 0 {
        return Err(format!("mincore failed on {}", std::io::Error::last_os_error()).into());
    }
    Ok(vec.iter().filter(|b| *b & 1 == 1).count() as f64 / vec.len() as f64)
}

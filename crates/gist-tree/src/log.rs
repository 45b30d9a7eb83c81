//! The commit log: the tree's write-ahead record of versions. A version exists once its commit
//! entry is complete in `commits.log`; segment bytes past the last commit's high-water marks are
//! uncommitted and dropped by recovery.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec::{self, CommitRecord, FileHeader, LogEntry, ScanEnd, HEADER_LEN, LOG_MAGIC};
use crate::config::{TreeMeta, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::log_end::{EndWriter, LogEnd};

/// The commit log's path inside a generation directory.
pub fn log_path(gen_dir: &Path) -> PathBuf {
    gen_dir.join("commits.log")
}

/// Every committed version and named snapshot, as read from the log.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Commits in version order (the first is the oldest readable version).
    pub commits: Vec<CommitRecord>,
    /// Named snapshots: name → version.
    pub tags: BTreeMap<String, u64>,
}

impl History {
    /// The newest commit.
    pub fn head(&self) -> Option<&CommitRecord> {
        self.commits.last()
    }

    /// The commit that created `version`.
    pub fn commit(&self, version: u64) -> Option<&CommitRecord> {
        let first = self.commits.first()?.version;
        let i = version.checked_sub(first)? as usize;
        self.commits.get(i).filter(|c| c.version == version)
    }

    /// The oldest readable version.
    pub fn oldest(&self) -> u64 {
        self.commits.first().map_or(0, |c| c.version)
    }

    fn apply(&mut self, entry: LogEntry, path: &Path, offset: u64) -> Result<()> {
        match entry {
            LogEntry::Commit(c) => {
                if let Some(h) = self.head() {
                    if c.version != h.version + 1 {
                        return Err(Error::corrupt(
                            path,
                            offset,
                            format!("commit {} follows commit {}", c.version, h.version),
                        ));
                    }
                }
                self.commits.push(c);
            }
            LogEntry::Tag { name, version } => {
                self.tags.insert(name, version);
            }
            LogEntry::Untag { name } => {
                self.tags.remove(&name);
            }
        }
        Ok(())
    }
}

/// What reading the log found past its last complete entry.
#[derive(Debug, Clone, Default)]
pub struct LogTail {
    /// Length of the valid prefix (header + complete entries).
    pub valid_len: u64,
    /// Bytes after it (a torn entry), 0 if none.
    pub torn_bytes: u64,
}

/// Reads the commit log of a generation; a torn final entry is reported in [`LogTail`], a damaged
/// complete entry is an error naming the file and offset.
pub fn read_log(gen_dir: &Path, meta: &TreeMeta, gen: u32) -> Result<(History, LogTail)> {
    let path = log_path(gen_dir);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let header = FileHeader::decode(&bytes).map_err(|e| Error::ForeignFile {
        path: path.clone(),
        reason: e.0,
    })?;
    let want = log_header(meta, gen);
    if header != want {
        return Err(Error::ForeignFile {
            path,
            reason: format!(
                "commit-log header (magic {:?}, tree {:016x}, generation {}) does not match {} \
                 (tree {:016x}, generation {gen}): one of them belongs to another tree",
                String::from_utf8_lossy(&header.magic),
                header.tree_id,
                header.seq,
                gen_dir
                    .parent()
                    .unwrap_or(gen_dir)
                    .join("tree.json")
                    .display(),
                meta.tree_id
            ),
        });
    }
    let (frames, end) = codec::scan_frames(&bytes, HEADER_LEN);
    let mut history = History::default();
    for f in &frames {
        let payload =
            &bytes[(f.offset as usize + codec::FRAME_PREFIX)..(f.offset + f.total) as usize];
        let entry = LogEntry::decode(payload).map_err(|e| Error::corrupt(&path, f.offset, e.0))?;
        history.apply(entry, &path, f.offset)?;
    }
    let valid_len = match end {
        ScanEnd::Clean => bytes.len() as u64,
        ScanEnd::Torn(at) => at,
        ScanEnd::Bad(at, why) => return Err(Error::corrupt(&path, at, why)),
    };
    if history.commits.is_empty() {
        return Err(Error::corrupt(
            &path,
            HEADER_LEN as u64,
            "commit log holds no commit (not even version 0)",
        ));
    }
    Ok((
        history,
        LogTail {
            valid_len,
            torn_bytes: bytes.len() as u64 - valid_len,
        },
    ))
}

fn log_header(meta: &TreeMeta, gen: u32) -> FileHeader {
    FileHeader {
        magic: LOG_MAGIC,
        tree_id: meta.tree_id,
        tag: 0,
        seq: gen,
        format: FORMAT_VERSION,
    }
}

/// Appends entries to the commit log, recording its new end in `commits.end` after each.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    end: EndWriter,
    at: LogEnd,
}

impl LogWriter {
    /// Creates a new log holding only its header (fsynced), and its `commits.end`.
    pub fn create(gen_dir: &Path, meta: &TreeMeta, gen: u32) -> Result<Self> {
        let path = log_path(gen_dir);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(&log_header(meta, gen).encode())
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(&path, e))?;
        let at = LogEnd {
            log_len: HEADER_LEN as u64,
            version: 0,
        };
        Self::with_end(path, file, gen_dir, meta, gen, at)
    }

    /// Opens an existing log for appending, first cutting it to `valid_len` (its complete
    /// entries, the newest commit being `version`) and recording that end in `commits.end`.
    pub fn open(
        gen_dir: &Path,
        meta: &TreeMeta,
        gen: u32,
        valid_len: u64,
        version: u64,
    ) -> Result<Self> {
        let path = log_path(gen_dir);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.set_len(valid_len)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(&path, e))?;
        let at = LogEnd {
            log_len: valid_len,
            version,
        };
        Self::with_end(path, file, gen_dir, meta, gen, at)
    }

    /// The writer of the log `file` at `path`, recording its end `at` in `commits.end`.
    fn with_end(
        path: PathBuf,
        file: File,
        gen_dir: &Path,
        meta: &TreeMeta,
        gen: u32,
        at: LogEnd,
    ) -> Result<Self> {
        let end = EndWriter::open(gen_dir, meta, gen, at)?;
        Ok(LogWriter {
            path,
            file,
            end,
            at,
        })
    }

    /// fsyncs the log.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Appends one entry in a single write (with `sync`, fsynced), then records the new end in
    /// `commits.end`.
    pub fn append(&mut self, entry: &LogEntry, sync: bool) -> Result<()> {
        let mut buf = Vec::new();
        codec::encode_frame(&entry.encode(), &mut buf);
        self.file
            .write_all(&buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| Error::io(&self.path, e))?;
        }
        self.at.log_len += buf.len() as u64;
        if let LogEntry::Commit(c) = entry {
            self.at.version = c.version;
        }
        self.end.record(self.at)
    }
}

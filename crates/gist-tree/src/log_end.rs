//! `commits.end`: the commit log's length and head version as of its last append, rewritten in
//! place by the writer after every entry it appends to `commits.log`.
//!
//! A commit log cut back to an entry boundary (a truncation by a tool, a file restored from an
//! older copy) is otherwise indistinguishable from a crash before the last commit: the records
//! of the lost version look uncommitted, and recovery would cut them. `commits.end` is the
//! evidence that those versions were committed: it is written only after the log append
//! returned, so it never records more than the log held — unless the log lost entries since.
//!
//! Layout (56 bytes): the 32-byte file header (magic `MRGTEND1`, sequence = generation), the
//! log length u64, the head version u64, CRC-32C of those 16 bytes u32, 0 u32.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::codec::{FileHeader, HEADER_LEN};
use crate::config::{TreeMeta, FORMAT_VERSION};
use crate::error::{Error, Result};

/// Magic of `commits.end`.
pub const END_MAGIC: [u8; 8] = *b"MRGTEND1";
/// Size of `commits.end`.
pub const END_LEN: usize = HEADER_LEN + 24;

/// The path of `commits.end` inside a generation directory.
pub fn end_path(gen_dir: &Path) -> PathBuf {
    gen_dir.join("commits.end")
}

/// What the commit log held after the writer's last append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEnd {
    /// Length of `commits.log` in bytes (header and complete entries).
    pub log_len: u64,
    /// The newest committed version in it.
    pub version: u64,
}

fn header(meta: &TreeMeta, gen: u32) -> FileHeader {
    FileHeader {
        magic: END_MAGIC,
        tree_id: meta.tree_id,
        tag: 0,
        seq: gen,
        format: FORMAT_VERSION,
    }
}

impl LogEnd {
    /// The file image of this record for generation `gen` of the tree `meta`.
    pub fn encode(&self, meta: &TreeMeta, gen: u32) -> [u8; END_LEN] {
        let mut b = [0u8; END_LEN];
        b[..HEADER_LEN].copy_from_slice(&header(meta, gen).encode());
        b[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&self.log_len.to_le_bytes());
        b[HEADER_LEN + 8..HEADER_LEN + 16].copy_from_slice(&self.version.to_le_bytes());
        let crc = crc32c::crc32c(&b[HEADER_LEN..HEADER_LEN + 16]);
        b[HEADER_LEN + 16..HEADER_LEN + 20].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a file image, checking its header against generation `gen` of tree `meta`.
    pub fn decode(bytes: &[u8], meta: &TreeMeta, gen: u32) -> std::result::Result<LogEnd, String> {
        if bytes.len() != END_LEN {
            return Err(format!("is {} bytes, expected {END_LEN}", bytes.len()));
        }
        let h = FileHeader::decode(bytes).map_err(|e| e.0)?;
        if h != header(meta, gen) {
            return Err("its header is not this tree's generation".into());
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let body = &bytes[HEADER_LEN..HEADER_LEN + 16];
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[HEADER_LEN + 16..HEADER_LEN + 20]);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc) || bytes[HEADER_LEN + 20..] != [0; 4] {
            return Err("checksum mismatch".into());
        }
        Ok(LogEnd {
            log_len: u64_at(HEADER_LEN),
            version: u64_at(HEADER_LEN + 8),
        })
    }
}

/// What reading `commits.end` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndRead {
    /// No file (a tree written before `commits.end` existed, or the file was deleted).
    Missing,
    /// The file is damaged or foreign: it is no evidence either way.
    Damaged(String),
    /// A sound record.
    Found(LogEnd),
}

/// Reads `commits.end` of generation `gen`.
pub fn read_end(gen_dir: &Path, meta: &TreeMeta, gen: u32) -> EndRead {
    let path = end_path(gen_dir);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => EndRead::Missing,
        Err(e) => EndRead::Damaged(format!("{}: unreadable: {e}", path.display())),
        Ok(bytes) => match LogEnd::decode(&bytes, meta, gen) {
            Ok(end) => EndRead::Found(end),
            Err(why) => EndRead::Damaged(format!("{}: {why}", path.display())),
        },
    }
}

/// Rewrites `commits.end` in place (one positioned write of 56 bytes, so that a killed process
/// leaves the old record or the new one; never fsynced: a stale record is merely weaker
/// evidence).
pub struct EndWriter {
    path: PathBuf,
    file: File,
    meta: TreeMeta,
    gen: u32,
}

impl EndWriter {
    /// Opens (creating if needed) `commits.end` of generation `gen` and records `end`.
    pub fn open(gen_dir: &Path, meta: &TreeMeta, gen: u32, end: LogEnd) -> Result<Self> {
        let path = end_path(gen_dir);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut w = EndWriter {
            path,
            file,
            meta: *meta,
            gen,
        };
        w.record(end)?;
        // A longer (foreign or damaged) file would keep trailing bytes.
        w.file
            .set_len(END_LEN as u64)
            .map_err(|e| Error::io(&w.path, e))?;
        Ok(w)
    }

    /// Records `end`.
    pub fn record(&mut self, end: LogEnd) -> Result<()> {
        let bytes = end.encode(&self.meta, self.gen);
        crate::background::write_all_at(&self.file, &bytes, 0).map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TreeConfig;

    #[test]
    fn round_trip_and_damage() {
        let meta = TreeMeta {
            format: FORMAT_VERSION,
            tree_id: 9,
            config: TreeConfig::default(),
        };
        let end = LogEnd {
            log_len: 1234,
            version: 17,
        };
        let b = end.encode(&meta, 3);
        assert_eq!(LogEnd::decode(&b, &meta, 3), Ok(end));
        assert!(LogEnd::decode(&b, &meta, 4).is_err(), "other generation");
        assert!(LogEnd::decode(&b[..50], &meta, 3).is_err(), "short");
        for i in 0..END_LEN {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(LogEnd::decode(&d, &meta, 3).is_err(), "flip at {i}");
        }
    }
}

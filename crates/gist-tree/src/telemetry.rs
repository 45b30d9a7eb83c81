//! Per-node access telemetry kept beside the tree in `telemetry.log`: reads are buffered in
//! memory and written as aggregated, checksummed batches, so the read path pays one buffer push.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::codec::{self, AccessCount, FileHeader, ScanEnd, HEADER_LEN, TELEMETRY_MAGIC};
use crate::config::{TreeMeta, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::node::{now_ms, NodeRef};

/// Accesses buffered before a batch is written.
const BATCH: usize = 1 << 14;

/// The telemetry file of a tree directory.
pub fn telemetry_path(dir: &Path) -> PathBuf {
    dir.join("telemetry.log")
}

fn header(meta: &TreeMeta) -> FileHeader {
    FileHeader {
        magic: TELEMETRY_MAGIC,
        tree_id: meta.tree_id,
        tag: 0,
        seq: 0,
        format: FORMAT_VERSION,
    }
}

/// Buffers accesses and appends aggregated batches to `telemetry.log`.
pub struct Telemetry {
    path: PathBuf,
    file: Mutex<File>,
    buf: Mutex<Vec<(NodeRef, u64)>>,
}

impl Telemetry {
    /// Opens (creating if needed) the telemetry log of `dir`; with `repair`, cuts a torn tail.
    pub fn open(dir: &Path, meta: &TreeMeta, repair: bool) -> Result<(Self, u64)> {
        let path = telemetry_path(dir);
        let mut dropped = 0;
        if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let valid = valid_prefix(&bytes, &path, meta)?;
            dropped = bytes.len() as u64 - valid;
            if dropped > 0 && repair {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(valid))
                    .map_err(|e| Error::io(&path, e))?;
            }
        } else {
            metarep_core::atomic_write(&path, &header(meta).encode())?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok((
            Telemetry {
                path,
                file: Mutex::new(file),
                buf: Mutex::new(Vec::with_capacity(BATCH)),
            },
            dropped,
        ))
    }

    /// Records one read of `node`.
    pub fn record(&self, node: NodeRef) {
        let full = {
            let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
            buf.push((node, now_ms()));
            (buf.len() >= BATCH).then(|| std::mem::take(&mut *buf))
        };
        if let Some(batch) = full {
            // Telemetry is best effort: a failed write loses counts, never tree data.
            let _ = self.write_batch(&batch);
        }
    }

    /// Writes everything buffered.
    pub fn flush(&self) -> Result<()> {
        let batch = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()));
        self.write_batch(&batch)
    }

    fn write_batch(&self, batch: &[(NodeRef, u64)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut agg: HashMap<NodeRef, (u32, u64)> = HashMap::new();
        for (n, t) in batch {
            let e = agg.entry(*n).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(*t);
        }
        let mut counts: Vec<AccessCount> = agg
            .into_iter()
            .map(|(node, (count, last_ms))| AccessCount {
                node,
                count,
                last_ms,
            })
            .collect();
        counts.sort_by_key(|a| a.node);
        let mut frame = Vec::new();
        codec::encode_frame(&codec::encode_telemetry(&counts), &mut frame);
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&frame).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn valid_prefix(bytes: &[u8], path: &Path, meta: &TreeMeta) -> Result<u64> {
    let h = FileHeader::decode(bytes).map_err(|e| Error::ForeignFile {
        path: path.to_path_buf(),
        reason: e.0,
    })?;
    if h != header(meta) {
        return Err(Error::ForeignFile {
            path: path.to_path_buf(),
            reason: "telemetry header does not match this tree".into(),
        });
    }
    match codec::scan_frames(bytes, HEADER_LEN).1 {
        ScanEnd::Clean => Ok(bytes.len() as u64),
        ScanEnd::Torn(at) => Ok(at),
        ScanEnd::Bad(at, why) => Err(Error::corrupt(path, at, why)),
    }
}

/// One node's accumulated accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct NodeAccess {
    /// Total reads.
    pub count: u64,
    /// Unix milliseconds of the last read.
    pub last_ms: u64,
}

/// All telemetry of a tree, summed over batches.
#[derive(Debug, Clone, Default)]
pub struct AccessStats {
    /// Accesses per node.
    pub nodes: HashMap<NodeRef, NodeAccess>,
    /// Batches read.
    pub batches: u64,
}

impl AccessStats {
    /// Reads and sums `DIR/telemetry.log` (a missing file is empty telemetry; a torn tail is
    /// skipped).
    pub fn load(dir: &Path, meta: &TreeMeta) -> Result<Self> {
        let path = telemetry_path(dir);
        if !path.exists() {
            return Ok(AccessStats::default());
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        valid_prefix(&bytes, &path, meta)?;
        let (frames, _) = codec::scan_frames(&bytes, HEADER_LEN);
        let mut stats = AccessStats::default();
        for f in frames {
            let payload =
                &bytes[(f.offset as usize + codec::FRAME_PREFIX)..(f.offset + f.total) as usize];
            let batch = codec::decode_telemetry(payload)
                .map_err(|e| Error::corrupt(&path, f.offset, e.0))?;
            for a in batch {
                let e = stats.nodes.entry(a.node).or_default();
                e.count += a.count as u64;
                e.last_ms = e.last_ms.max(a.last_ms);
            }
            stats.batches += 1;
        }
        Ok(stats)
    }

    /// Accesses summed per node of `level`: each node's own reads plus its descendants'.
    pub fn roll_up(&self, level: u8, block: u32) -> HashMap<u64, NodeAccess> {
        let mut out: HashMap<u64, NodeAccess> = HashMap::new();
        for (n, a) in &self.nodes {
            if n.level <= level {
                let e = out.entry(n.ancestor(level, block).index).or_default();
                e.count += a.count;
                e.last_ms = e.last_ms.max(a.last_ms);
            }
        }
        out
    }

    /// Total accesses recorded.
    pub fn total(&self) -> u64 {
        self.nodes.values().map(|a| a.count).sum()
    }
}

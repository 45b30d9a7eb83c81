//! Per-node access telemetry kept beside the tree in `telemetry.log`: reads are buffered in
//! memory and written as aggregated, checksummed batches, so the read path pays one buffer push.
//!
//! Telemetry is advisory: damage to its log (a torn last batch after a kill, a flipped byte,
//! a foreign or unreadable file) never blocks reading or writing the tree. Statistics use the
//! batches before the damage; a reader that finds damage records nothing (appending after it
//! would bury good batches behind it), and the writer, when it opens, cuts the log back to its
//! last good batch (or starts it afresh if its header is not this tree's). `verify` reports
//! the damage as telemetry damage.

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
    /// `None` when nothing may be appended (a reader found damage, or the log cannot be
    /// opened for writing): reads are then simply not recorded.
    file: Option<Mutex<File>>,
    buf: Mutex<Vec<(NodeRef, u64)>>,
}

impl Telemetry {
    /// Opens (creating if needed) the telemetry log of `dir`. With `repair` (the writer), a
    /// damaged log is cut back to its last good batch, or rewritten when its header is not
    /// this tree's; returns the bytes dropped. Without it (readers), a damaged or unwritable
    /// log leaves this handle recording nothing. Only a failed repair is an error.
    pub fn open(dir: &Path, meta: &TreeMeta, repair: bool) -> Result<(Self, u64)> {
        let path = telemetry_path(dir);
        let scan = scan_log(&path, meta);
        let mut dropped = 0;
        let writable = match (&scan.damage, repair) {
            (None, _) => true,
            (Some(_), false) => false,
            (Some(_), true) => {
                dropped = scan.len - scan.valid;
                if scan.valid == 0 {
                    metarep_core::atomic_write(&path, &header(meta).encode())?;
                } else {
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(scan.valid))
                        .map_err(|e| Error::io(&path, e))?;
                }
                true
            }
        };
        let file = if !writable {
            None
        } else if !path.exists() {
            match metarep_core::atomic_write(&path, &header(meta).encode()) {
                Ok(()) => append(&path, repair)?,
                Err(_) if !repair => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            append(&path, repair)?
        };
        Ok((
            Telemetry {
                path,
                file: file.map(Mutex::new),
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
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut frame = Vec::new();
        codec::encode_frame(&codec::encode_telemetry(&counts), &mut frame);
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&frame).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Opens `path` for appending; a reader (`!required`) that cannot gets `None`.
fn append(path: &Path, required: bool) -> Result<Option<File>> {
    match OpenOptions::new().append(true).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(_) if !required => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// What a scan of the log found: its bytes, its good batches, the length of the good prefix
/// (0 when even the header is unusable) and the damage after it, if any.
struct LogScan {
    bytes: Vec<u8>,
    frames: Vec<codec::FrameAt>,
    len: u64,
    valid: u64,
    damage: Option<String>,
}

/// Scans `telemetry.log` (a missing log is empty and undamaged).
fn scan_log(path: &Path, meta: &TreeMeta) -> LogScan {
    let empty = |damage: Option<String>, bytes: Vec<u8>| LogScan {
        len: bytes.len() as u64,
        bytes,
        frames: Vec::new(),
        valid: 0,
        damage,
    };
    if !path.exists() {
        return empty(None, Vec::new());
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return empty(
                Some(format!("{}: unreadable: {e}", path.display())),
                Vec::new(),
            )
        }
    };
    let bad_header = match FileHeader::decode(&bytes) {
        Err(e) => Some(e.0),
        Ok(h) if h != header(meta) => Some("its header is not this tree's".into()),
        Ok(_) => None,
    };
    if let Some(why) = bad_header {
        return empty(Some(format!("{}: {why}", path.display())), bytes);
    }
    let (frames, end) = codec::scan_frames(&bytes, HEADER_LEN);
    let (valid, damage) = match end {
        ScanEnd::Clean => (bytes.len() as u64, None),
        ScanEnd::Torn(at) => (
            at,
            Some(format!(
                "{}: torn batch at byte {at} ({} bytes)",
                path.display(),
                bytes.len() as u64 - at
            )),
        ),
        ScanEnd::Bad(at, why) => (
            at,
            Some(format!(
                "{}: damaged batch at byte {at} ({why}); {} bytes from there are unread",
                path.display(),
                bytes.len() as u64 - at
            )),
        ),
    };
    LogScan {
        len: bytes.len() as u64,
        bytes,
        frames,
        valid,
        damage,
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
    /// Damage found in the log (the batches before it are counted), naming the file.
    pub damage: Option<String>,
}

impl AccessStats {
    /// Reads and sums `DIR/telemetry.log`: a missing file is empty telemetry; damage stops the
    /// sum at the last good batch and is described in [`AccessStats::damage`], never an error.
    pub fn load(dir: &Path, meta: &TreeMeta) -> Result<Self> {
        let path = telemetry_path(dir);
        let scan = scan_log(&path, meta);
        let mut stats = AccessStats {
            damage: scan.damage,
            ..AccessStats::default()
        };
        for f in scan.frames {
            let payload = &scan.bytes
                [(f.offset as usize + codec::FRAME_PREFIX)..(f.offset + f.total) as usize];
            let batch = match codec::decode_telemetry(payload) {
                Ok(b) => b,
                Err(e) => {
                    stats.damage = Some(format!(
                        "{}: batch at byte {} does not decode ({})",
                        path.display(),
                        f.offset,
                        e.0
                    ));
                    break;
                }
            };
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

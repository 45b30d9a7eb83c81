//! Byte layouts: file headers, checksummed frames, node records, commit-log entries, index
//! checkpoints and telemetry batches (see `docs/storage.md`). Every parser here takes untrusted
//! bytes and returns an error instead of panicking; `fuzz/` exercises them.

use crate::node::{LayoutTags, NodeRef, Producer, Provenance};

/// Bytes of every file header.
pub const HEADER_LEN: usize = 32;
/// Bytes of a frame's prefix: length, length check, payload checksum.
pub const FRAME_PREFIX: usize = 12;
/// Mixed into the length check so that a zero prefix is never valid.
const LEN_CHECK_SALT: u32 = 0x4754_5245;
/// Largest accepted frame payload (64 MiB).
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// Bytes of a node record's fixed header (before tokens or gist).
pub const NODE_HEADER: usize = 72;

/// Magic of a segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MRGTSEG1";
/// Magic of the commit log.
pub const LOG_MAGIC: [u8; 8] = *b"MRGTLOG1";
/// Magic of an index checkpoint.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"MRGTIDX1";
/// Magic of the telemetry log.
pub const TELEMETRY_MAGIC: [u8; 8] = *b"MRGTTEL1";

/// Why bytes could not be decoded; the caller adds the file name and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type DResult<T> = std::result::Result<T, DecodeError>;

fn bad<T>(msg: impl Into<String>) -> DResult<T> {
    Err(DecodeError(msg.into()))
}

/// Bounds-checked little-endian reader over a byte slice.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> DResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| {
                DecodeError(format!(
                    "needs {n} bytes at {} but only {} remain",
                    self.pos,
                    self.bytes.len() - self.pos
                ))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> DResult<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> DResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> DResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> DResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    pub(crate) fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

/// A file header: magic, tree id, a tag (level for segments), a sequence number (segment number
/// or generation), the format version and a checksum of the first 28 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// File kind.
    pub magic: [u8; 8],
    /// The tree this file belongs to.
    pub tree_id: u64,
    /// Level (segments) or 0.
    pub tag: u32,
    /// Segment number (segments) or generation.
    pub seq: u32,
    /// Format version.
    pub format: u32,
}

impl FileHeader {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&self.magic);
        b[8..16].copy_from_slice(&self.tree_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.tag.to_le_bytes());
        b[20..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.format.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checksums a header.
    pub fn decode(bytes: &[u8]) -> DResult<FileHeader> {
        if bytes.len() < HEADER_LEN {
            return bad(format!(
                "file is {} bytes, shorter than its {HEADER_LEN}-byte header",
                bytes.len()
            ));
        }
        let mut c = Cursor::new(&bytes[..HEADER_LEN]);
        let mut magic = [0u8; 8];
        magic.copy_from_slice(c.take(8)?);
        let h = FileHeader {
            magic,
            tree_id: c.u64()?,
            tag: c.u32()?,
            seq: c.u32()?,
            format: c.u32()?,
        };
        let crc = c.u32()?;
        if crc != crc32c::crc32c(&bytes[..28]) {
            return bad("header checksum mismatch");
        }
        Ok(h)
    }
}

/// Appends a frame to `out`: `len u32 | crc32c(len) ^ salt u32 | crc32c(payload) u32 |
/// payload`. The length has its own check so that a damaged length is told apart from a torn
/// write (a frame whose checked length runs past the end of the file).
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&(crc32c::crc32c(&len) ^ LEN_CHECK_SALT).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Fills in the prefix of a frame whose payload was written in place after `FRAME_PREFIX`
/// reserved bytes (`frame` is the whole frame).
pub fn seal_frame(frame: &mut [u8]) {
    let crc = crc32c::crc32c(&frame[FRAME_PREFIX..]);
    seal_frame_with(frame, crc);
}

/// [`seal_frame`] given the CRC-32C of the payload (computed by the caller, e.g. several
/// frames' at once).
pub fn seal_frame_with(frame: &mut [u8], payload_crc: u32) {
    let (prefix, payload) = frame.split_at_mut(FRAME_PREFIX);
    let len = (payload.len() as u32).to_le_bytes();
    prefix[..4].copy_from_slice(&len);
    prefix[4..8].copy_from_slice(&(crc32c::crc32c(&len) ^ LEN_CHECK_SALT).to_le_bytes());
    prefix[8..].copy_from_slice(&payload_crc.to_le_bytes());
}

/// The outcome of reading one frame at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameRead<'a> {
    /// A complete frame: its payload and total length.
    Ok {
        /// The payload.
        payload: &'a [u8],
        /// Prefix + payload bytes.
        total: usize,
    },
    /// The bytes end inside the frame (a torn tail).
    Truncated,
    /// The frame is complete but its checksum or length is wrong.
    Bad(String),
}

/// Reads the frame starting at `bytes[0]`.
pub fn read_frame(bytes: &[u8]) -> FrameRead<'_> {
    if bytes.len() < FRAME_PREFIX {
        return FrameRead::Truncated;
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let (len, len_check, crc) = (word(0), word(4), word(8));
    if crc32c::crc32c(&bytes[..4]) ^ LEN_CHECK_SALT != len_check {
        return FrameRead::Bad("frame length check mismatch".into());
    }
    if len > MAX_PAYLOAD {
        return FrameRead::Bad(format!("frame length {len} exceeds {MAX_PAYLOAD}"));
    }
    let total = FRAME_PREFIX + len as usize;
    if bytes.len() < total {
        return FrameRead::Truncated;
    }
    let payload = &bytes[FRAME_PREFIX..total];
    if crc32c::crc32c(payload) != crc {
        return FrameRead::Bad("frame checksum mismatch".into());
    }
    FrameRead::Ok { payload, total }
}

/// Whether a bad frame at the end of a file is a torn write rather than damage: the rest of the
/// file from the frame on is zeros (a file extended by the OS but never written).
pub fn is_zero_tail(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Record kind byte of a token block.
pub const KIND_TOKENS: u8 = 1;
/// Record kind byte of a gist.
pub const KIND_GIST: u8 = 2;

/// The fixed part of a node record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordHeader {
    /// [`KIND_TOKENS`] or [`KIND_GIST`].
    pub kind: u8,
    /// The node.
    pub node: NodeRef,
    /// Token count (blocks) or gist width.
    pub count: u32,
    /// The version whose commit wrote the record.
    pub version: u64,
    /// Provenance.
    pub provenance: Provenance,
}

/// Appends `values` as little-endian u32s (the token records' data) to `out`.
pub fn extend_le_u32(out: &mut Vec<u8>, values: &[u32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
}

/// The little-endian u32s of `bytes` (a token record's data; a trailing partial word is
/// ignored).
pub fn le_u32s(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Encodes a node record payload: header then `data` (token ids LE u32, or gist bytes).
pub fn encode_node(h: &RecordHeader, data: &[u8], out: &mut Vec<u8>) {
    encode_node_header(h, out);
    out.extend_from_slice(data);
}

/// Encodes the fixed header of a node record (the data bytes follow it).
pub fn encode_node_header(h: &RecordHeader, out: &mut Vec<u8>) {
    let p = &h.provenance;
    // Filled at fixed offsets, then appended in one piece.
    let mut b = [0u8; NODE_HEADER];
    b[0] = h.kind;
    b[1] = h.node.level;
    b[2..4].copy_from_slice(&p.tags.0.to_le_bytes());
    b[4..8].copy_from_slice(&h.count.to_le_bytes());
    let words = [
        h.node.index,
        h.version,
        p.source,
        p.byte_start,
        p.byte_end,
        p.timestamp_ms,
    ];
    for (i, v) in words.into_iter().enumerate() {
        b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    b[56..60].copy_from_slice(&p.producer.id.to_le_bytes());
    b[60..64].copy_from_slice(&p.producer.version.to_le_bytes());
    b[64..68].copy_from_slice(&p.score.unwrap_or(0.0).to_le_bytes());
    b[68..72].copy_from_slice(&u32::from(p.score.is_some()).to_le_bytes());
    out.extend_from_slice(&b);
}

/// Decodes a node record payload into its header and data bytes.
pub fn decode_node(payload: &[u8]) -> DResult<(RecordHeader, &[u8])> {
    let mut c = Cursor::new(payload);
    let kind = c.u8()?;
    if kind != KIND_TOKENS && kind != KIND_GIST {
        return bad(format!("unknown record kind {kind}"));
    }
    let level = c.u8()?;
    let tags = LayoutTags(c.u16()?);
    let count = c.u32()?;
    let index = c.u64()?;
    let version = c.u64()?;
    let source = c.u64()?;
    let byte_start = c.u64()?;
    let byte_end = c.u64()?;
    let timestamp_ms = c.u64()?;
    let producer = Producer {
        id: c.u32()?,
        version: c.u32()?,
    };
    let score = f32::from_bits(c.u32()?);
    let flags = c.u32()?;
    if (kind == KIND_TOKENS) != (level == 0) {
        return bad(format!("record kind {kind} at level {level}"));
    }
    let data = c.rest();
    let unit = if kind == KIND_TOKENS { 4 } else { 1 };
    if kind == KIND_TOKENS && data.len() != count as usize * unit {
        return bad(format!(
            "token block says {count} tokens but holds {} bytes",
            data.len()
        ));
    }
    let h = RecordHeader {
        kind,
        node: NodeRef::new(level, index),
        count,
        version,
        provenance: Provenance {
            source,
            byte_start,
            byte_end,
            timestamp_ms,
            producer,
            score: (flags & 1 == 1).then_some(score),
            tags,
        },
    };
    Ok((h, data))
}

/// A level's high-water mark: the end of its committed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hwm {
    /// The active segment number.
    pub seg: u32,
    /// Byte length of committed data in that segment (header included).
    pub end: u64,
}

/// A segment sealed (rotated away from) by a commit, with its final length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// The level.
    pub level: u8,
    /// The segment number.
    pub seg: u32,
    /// Its final length in bytes.
    pub len: u64,
}

/// A prune or restore in a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneOp {
    /// Soft-delete the node's descendants.
    Prune(NodeRef),
    /// Undo a prune.
    Restore(NodeRef),
}

/// One commit: the version it creates, the token count, each level's high-water mark and the
/// prune/restore operations it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    /// The version this commit creates.
    pub version: u64,
    /// Unix milliseconds.
    pub timestamp_ms: u64,
    /// Tokens in the stream at this version.
    pub tokens: u64,
    /// High-water mark per level (index = level).
    pub hwms: Vec<Hwm>,
    /// Prunes and restores applied by this commit, in order.
    pub ops: Vec<PruneOp>,
    /// Segments sealed by this commit (their lengths are checked on open).
    pub sealed: Vec<Sealed>,
}

/// An entry of the commit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// A commit.
    Commit(CommitRecord),
    /// A named snapshot of a version (pins it against compaction).
    Tag {
        /// The name.
        name: String,
        /// The version it names.
        version: u64,
    },
    /// Removal of a named snapshot.
    Untag {
        /// The name.
        name: String,
    },
}

const ENTRY_COMMIT: u8 = 1;
const ENTRY_TAG: u8 = 2;
const ENTRY_UNTAG: u8 = 3;
/// Largest level count a commit may carry.
pub const MAX_LEVELS: usize = 64;

impl LogEntry {
    /// Encodes the entry's payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            LogEntry::Commit(c) => {
                out.extend_from_slice(&[ENTRY_COMMIT, 0, 0, 0, 0, 0, 0, 0]);
                for v in [c.version, c.timestamp_ms, c.tokens] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&(c.hwms.len() as u32).to_le_bytes());
                out.extend_from_slice(&(c.ops.len() as u32).to_le_bytes());
                out.extend_from_slice(&(c.sealed.len() as u32).to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                for h in &c.hwms {
                    out.extend_from_slice(&h.seg.to_le_bytes());
                    out.extend_from_slice(&0u32.to_le_bytes());
                    out.extend_from_slice(&h.end.to_le_bytes());
                }
                for op in &c.ops {
                    let (code, n) = match op {
                        PruneOp::Prune(n) => (1u8, n),
                        PruneOp::Restore(n) => (2u8, n),
                    };
                    out.extend_from_slice(&[code, n.level, 0, 0, 0, 0, 0, 0]);
                    out.extend_from_slice(&n.index.to_le_bytes());
                }
                for x in &c.sealed {
                    out.extend_from_slice(&[x.level, 0, 0, 0]);
                    out.extend_from_slice(&x.seg.to_le_bytes());
                    out.extend_from_slice(&x.len.to_le_bytes());
                }
            }
            LogEntry::Tag { name, version } => {
                out.extend_from_slice(&[ENTRY_TAG, 0, 0, 0, 0, 0, 0, 0]);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            LogEntry::Untag { name } => {
                out.extend_from_slice(&[ENTRY_UNTAG, 0, 0, 0, 0, 0, 0, 0]);
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
        out
    }

    /// Decodes an entry payload.
    pub fn decode(payload: &[u8]) -> DResult<LogEntry> {
        let mut c = Cursor::new(payload);
        let kind = c.u8()?;
        c.take(7)?;
        let entry = match kind {
            ENTRY_COMMIT => {
                let version = c.u64()?;
                let timestamp_ms = c.u64()?;
                let tokens = c.u64()?;
                let n_levels = c.u32()? as usize;
                let n_ops = c.u32()? as usize;
                let n_sealed = c.u32()? as usize;
                c.u32()?;
                if n_levels > MAX_LEVELS {
                    return bad(format!("commit lists {n_levels} levels (max {MAX_LEVELS})"));
                }
                if n_ops.saturating_add(n_sealed) > c.rest().len() / 16 {
                    return bad(format!(
                        "commit lists {n_ops} ops and {n_sealed} sealed segments, more than its bytes hold"
                    ));
                }
                let mut hwms = Vec::with_capacity(n_levels);
                for _ in 0..n_levels {
                    let seg = c.u32()?;
                    c.u32()?;
                    hwms.push(Hwm { seg, end: c.u64()? });
                }
                let mut ops = Vec::with_capacity(n_ops);
                for _ in 0..n_ops {
                    let code = c.u8()?;
                    let level = c.u8()?;
                    c.take(6)?;
                    let node = NodeRef::new(level, c.u64()?);
                    ops.push(match code {
                        1 => PruneOp::Prune(node),
                        2 => PruneOp::Restore(node),
                        _ => return bad(format!("unknown prune op code {code}")),
                    });
                }
                let mut sealed = Vec::with_capacity(n_sealed);
                for _ in 0..n_sealed {
                    let level = c.u8()?;
                    c.take(3)?;
                    sealed.push(Sealed {
                        level,
                        seg: c.u32()?,
                        len: c.u64()?,
                    });
                }
                LogEntry::Commit(CommitRecord {
                    version,
                    timestamp_ms,
                    tokens,
                    hwms,
                    ops,
                    sealed,
                })
            }
            ENTRY_TAG => {
                let version = c.u64()?;
                let name = decode_name(&mut c)?;
                LogEntry::Tag { name, version }
            }
            ENTRY_UNTAG => LogEntry::Untag {
                name: decode_name(&mut c)?,
            },
            other => return bad(format!("unknown log entry kind {other}")),
        };
        if !c.done() {
            return bad("trailing bytes after log entry");
        }
        Ok(entry)
    }
}

fn decode_name(c: &mut Cursor<'_>) -> DResult<String> {
    let n = c.u32()? as usize;
    let b = c.take(n)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError("tag name is not UTF-8".into()))
}

/// A parsed index checkpoint: the head index at `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The version the index reflects.
    pub version: u64,
    /// Tokens at that version.
    pub tokens: u64,
    /// High-water marks at that version.
    pub hwms: Vec<Hwm>,
    /// Per level: every node's packed location entry.
    pub entries: Vec<Vec<u64>>,
}

impl Checkpoint {
    /// Encodes the checkpoint body (after the file header), ending in a checksum.
    pub fn encode_body(&self) -> Vec<u8> {
        let n: usize = self.entries.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(32 + 16 * self.hwms.len() + 8 * (n + self.entries.len()));
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.tokens.to_le_bytes());
        out.extend_from_slice(&(self.hwms.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for h in &self.hwms {
            out.extend_from_slice(&h.seg.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&h.end.to_le_bytes());
        }
        for level in &self.entries {
            out.extend_from_slice(&(level.len() as u64).to_le_bytes());
            for e in level {
                out.extend_from_slice(&e.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a checkpoint body (after the file header).
    pub fn decode_body(body: &[u8]) -> DResult<Checkpoint> {
        if body.len() < 4 {
            return bad("checkpoint body shorter than its checksum");
        }
        let (data, crc) = body.split_at(body.len() - 4);
        if crc32c::crc32c(data) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return bad("checkpoint checksum mismatch");
        }
        let mut c = Cursor::new(data);
        let version = c.u64()?;
        let tokens = c.u64()?;
        let n_hwm = c.u32()? as usize;
        let n_levels = c.u32()? as usize;
        if n_hwm > MAX_LEVELS || n_levels > MAX_LEVELS {
            return bad(format!("checkpoint lists {n_hwm}/{n_levels} levels"));
        }
        let mut hwms = Vec::with_capacity(n_hwm);
        for _ in 0..n_hwm {
            let seg = c.u32()?;
            c.u32()?;
            hwms.push(Hwm { seg, end: c.u64()? });
        }
        let mut entries = Vec::with_capacity(n_levels);
        for _ in 0..n_levels {
            let n = c.u64()? as usize;
            if n > c.rest().len() / 8 {
                return bad(format!(
                    "checkpoint level lists {n} entries, more than its bytes"
                ));
            }
            let raw = c.take(n * 8)?;
            entries.push(
                raw.chunks_exact(8)
                    .map(|b| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        u64::from_le_bytes(a)
                    })
                    .collect(),
            );
        }
        if !c.done() {
            return bad("trailing bytes in checkpoint");
        }
        Ok(Checkpoint {
            version,
            tokens,
            hwms,
            entries,
        })
    }
}

/// One node's aggregated accesses in a telemetry batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessCount {
    /// The node read.
    pub node: NodeRef,
    /// Reads in this batch.
    pub count: u32,
    /// Unix milliseconds of the last read in this batch.
    pub last_ms: u64,
}

/// Encodes a telemetry batch payload.
pub fn encode_telemetry(batch: &[AccessCount]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 32 * batch.len());
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for a in batch {
        out.push(a.node.level);
        out.extend_from_slice(&[0u8; 7]);
        out.extend_from_slice(&a.node.index.to_le_bytes());
        out.extend_from_slice(&a.count.to_le_bytes());
        out.extend_from_slice(&(a.last_ms as u32).to_le_bytes());
        out.extend_from_slice(&((a.last_ms >> 32) as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    out
}

/// Decodes a telemetry batch payload.
pub fn decode_telemetry(payload: &[u8]) -> DResult<Vec<AccessCount>> {
    let mut c = Cursor::new(payload);
    let n = c.u32()? as usize;
    c.u32()?;
    if c.rest().len() != n.saturating_mul(32) {
        return bad(format!(
            "telemetry batch says {n} entries but holds {} bytes",
            c.rest().len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let level = c.u8()?;
        c.take(7)?;
        let index = c.u64()?;
        let count = c.u32()?;
        let lo = c.u32()? as u64;
        let hi = c.u32()? as u64;
        c.u32()?;
        out.push(AccessCount {
            node: NodeRef::new(level, index),
            count,
            last_ms: lo | (hi << 32),
        });
    }
    Ok(out)
}

/// A frame found by [`scan_frames`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAt {
    /// Offset of the frame's prefix.
    pub offset: u64,
    /// Prefix + payload bytes.
    pub total: u64,
}

/// How a frame scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belongs to a complete frame.
    Clean,
    /// A torn frame (or a zero-filled tail) starts at this offset.
    Torn(u64),
    /// A complete but damaged frame starts at this offset.
    Bad(u64, String),
}

/// Walks the frames of `bytes` starting at `start` (after the header), stopping at the first
/// frame that is torn or damaged.
pub fn scan_frames(bytes: &[u8], start: usize) -> (Vec<FrameAt>, ScanEnd) {
    let mut frames = Vec::new();
    let mut pos = start.min(bytes.len());
    while pos < bytes.len() {
        match read_frame(&bytes[pos..]) {
            FrameRead::Ok { total, .. } => {
                frames.push(FrameAt {
                    offset: pos as u64,
                    total: total as u64,
                });
                pos += total;
            }
            FrameRead::Truncated => return (frames, ScanEnd::Torn(pos as u64)),
            FrameRead::Bad(why) => {
                return if is_zero_tail(&bytes[pos..]) {
                    (frames, ScanEnd::Torn(pos as u64))
                } else {
                    (frames, ScanEnd::Bad(pos as u64, why))
                };
            }
        }
    }
    (frames, ScanEnd::Clean)
}

/// Every intact frame of `bytes`, in order, looking past damage and zero-filled holes: after an
/// offset where no frame reads, the scan moves on a byte at a time to the next offset where a
/// frame's checked length and checksum both match. For a segment's uncommitted tail, whose
/// buffers are written at their own offsets side by side, so that a crash can leave a hole
/// before records that did reach the file.
pub fn scan_frames_past_holes(bytes: &[u8]) -> Vec<FrameAt> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        pos += match read_frame(&bytes[pos..]) {
            FrameRead::Ok { total, .. } => {
                let offset = pos as u64;
                frames.push(FrameAt {
                    offset,
                    total: total as u64,
                });
                total
            }
            FrameRead::Truncated | FrameRead::Bad(_) => 1,
        };
    }
    frames
}

/// A parsed file of frames: its header, each item with its offset, and how the scan ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedFile<T> {
    /// The file header.
    pub header: FileHeader,
    /// Each decoded frame with its offset.
    pub items: Vec<(u64, T)>,
    /// How the frame scan ended.
    pub end: ScanEnd,
}

/// Parses a whole segment file image: its header, then every record (checked and decoded).
/// For fuzzing and tools.
pub fn parse_segment(bytes: &[u8]) -> DResult<ParsedFile<RecordHeader>> {
    let h = FileHeader::decode(bytes)?;
    if h.magic != SEGMENT_MAGIC {
        return bad("not a segment file (bad magic)");
    }
    let (frames, end) = scan_frames(bytes, HEADER_LEN);
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        let start = f.offset as usize + FRAME_PREFIX;
        let payload = &bytes[start..f.offset as usize + f.total as usize];
        let (rh, _) = decode_node(payload)
            .map_err(|e| DecodeError(format!("record at {}: {e}", f.offset)))?;
        out.push((f.offset, rh));
    }
    Ok(ParsedFile {
        header: h,
        items: out,
        end,
    })
}

/// Parses a whole commit-log image: its header, then every entry.
pub fn parse_log(bytes: &[u8]) -> DResult<ParsedFile<LogEntry>> {
    let h = FileHeader::decode(bytes)?;
    if h.magic != LOG_MAGIC {
        return bad("not a commit log (bad magic)");
    }
    let (frames, end) = scan_frames(bytes, HEADER_LEN);
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        let payload = &bytes[f.offset as usize + FRAME_PREFIX..(f.offset + f.total) as usize];
        let e = LogEntry::decode(payload)
            .map_err(|e| DecodeError(format!("log entry at {}: {e}", f.offset)))?;
        out.push((f.offset, e));
    }
    Ok(ParsedFile {
        header: h,
        items: out,
        end,
    })
}

/// Parses a whole index-checkpoint image.
pub fn parse_checkpoint(bytes: &[u8]) -> DResult<(FileHeader, Checkpoint)> {
    let h = FileHeader::decode(bytes)?;
    if h.magic != CHECKPOINT_MAGIC {
        return bad("not an index checkpoint (bad magic)");
    }
    Ok((h, Checkpoint::decode_body(&bytes[HEADER_LEN..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut buf = Vec::new();
        encode_frame(b"hello", &mut buf);
        encode_frame(b"", &mut buf);
        let (frames, end) = scan_frames(&buf, 0);
        assert_eq!(frames.len(), 2);
        assert_eq!(end, ScanEnd::Clean);
        let (_, end) = scan_frames(&buf[..buf.len() - 3], 0);
        assert_eq!(end, ScanEnd::Torn(17));
        let mut flipped = buf.clone();
        flipped[13] ^= 1;
        assert!(matches!(scan_frames(&flipped, 0).1, ScanEnd::Bad(0, _)));
        // A damaged length is damage, not a torn tail, even when it points past the end.
        let mut long = buf.clone();
        long[17] = 200;
        assert!(matches!(scan_frames(&long, 0).1, ScanEnd::Bad(17, _)));
        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0; 20]);
        assert_eq!(scan_frames(&zeros, 0).1, ScanEnd::Torn(buf.len() as u64));
    }

    #[test]
    fn a_scan_past_holes_finds_the_frames_after_zeros_and_damage() {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for (i, payload) in [&b"one"[..], b"", b"three", b"four!", b"five"]
            .iter()
            .enumerate()
        {
            match i {
                2 => buf.extend_from_slice(&[0; 100]),
                3 => buf.extend_from_slice(&[7, 0, 0, 0, 1, 2]),
                _ => {}
            }
            starts.push(buf.len() as u64);
            encode_frame(payload, &mut buf);
        }
        // The last frame torn: not found.
        let cut = &buf[..buf.len() - 1];
        let found: Vec<u64> = scan_frames_past_holes(cut)
            .iter()
            .map(|f| f.offset)
            .collect();
        assert_eq!(found, starts[..4]);
        let found: Vec<u64> = scan_frames_past_holes(&buf)
            .iter()
            .map(|f| f.offset)
            .collect();
        assert_eq!(found, starts);
        // The plain scan stops at the hole.
        assert_eq!(scan_frames(&buf, 0).0.len(), 2);
    }

    #[test]
    fn records_and_log_entries_round_trip() {
        let h = RecordHeader {
            kind: KIND_TOKENS,
            node: NodeRef::new(0, 9),
            count: 2,
            version: 4,
            provenance: Provenance {
                score: Some(0.25),
                tags: LayoutTags::CODE,
                ..Provenance::source(3, 10, 20)
            },
        };
        let mut p = Vec::new();
        encode_node(&h, &[1, 0, 0, 0, 2, 0, 0, 0], &mut p);
        assert_eq!(p.len(), NODE_HEADER + 8);
        let (back, data) = decode_node(&p).unwrap();
        assert_eq!(back, h);
        assert_eq!(data.len(), 8);
        assert!(decode_node(&p[..p.len() - 1]).is_err());

        let e = LogEntry::Commit(CommitRecord {
            version: 3,
            timestamp_ms: 5,
            tokens: 70,
            hwms: vec![Hwm { seg: 1, end: 99 }],
            ops: vec![PruneOp::Prune(NodeRef::new(1, 2))],
            sealed: vec![Sealed {
                level: 1,
                seg: 0,
                len: 4096,
            }],
        });
        assert_eq!(LogEntry::decode(&e.encode()).unwrap(), e);
        // Found by `cargo fuzz`: a huge sealed-segment count must not allocate.
        let mut huge = vec![0u8; 48];
        huge[0] = 1;
        huge[43] = 0x17;
        assert!(LogEntry::decode(&huge).is_err());
        let t = LogEntry::Tag {
            name: "x".into(),
            version: 2,
        };
        assert_eq!(LogEntry::decode(&t.encode()).unwrap(), t);
        let ck = Checkpoint {
            version: 2,
            tokens: 5,
            hwms: vec![Hwm::default()],
            entries: vec![vec![1, 2, 3]],
        };
        assert_eq!(Checkpoint::decode_body(&ck.encode_body()).unwrap(), ck);
        let tel = vec![AccessCount {
            node: NodeRef::new(1, 2),
            count: 3,
            last_ms: 1 << 40,
        }];
        assert_eq!(decode_telemetry(&encode_telemetry(&tel)).unwrap(), tel);
    }
}

//! Segment files: per level, append-only files of checksummed node records. Reading goes
//! through shared memory maps (remapped when a file has grown); writing through one buffered
//! appender per level that rotates to a new file past the tree's `segment_bytes`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

use memmap2::{Advice, Mmap};

use crate::background::{self, BackgroundWrites};
use crate::codec::{self, FileHeader, FrameRead, HEADER_LEN, MAX_LEVELS, SEGMENT_MAGIC};
use crate::config::{TreeMeta, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::index::{Loc, MAX_OFFSET, MAX_SEG};

/// The directory of `level` inside a generation directory.
pub fn level_dir(gen_dir: &Path, level: u8) -> PathBuf {
    gen_dir.join(format!("L{level:02}"))
}

/// The file of segment `seg` of `level`.
pub fn segment_path(gen_dir: &Path, level: u8, seg: u32) -> PathBuf {
    level_dir(gen_dir, level).join(format!("{seg:06}.seg"))
}

/// The header a segment of this tree must carry.
pub fn segment_header(meta: &TreeMeta, level: u8, seg: u32) -> FileHeader {
    FileHeader {
        magic: SEGMENT_MAGIC,
        tree_id: meta.tree_id,
        tag: level as u32,
        seq: seg,
        format: FORMAT_VERSION,
    }
}

/// Checks a segment file's header against the tree, naming the file when it is foreign.
pub fn check_segment_header(
    bytes: &[u8],
    path: &Path,
    meta: &TreeMeta,
    level: u8,
    seg: u32,
) -> Result<()> {
    let h = FileHeader::decode(bytes).map_err(|e| Error::ForeignFile {
        path: path.to_path_buf(),
        reason: e.0,
    })?;
    let want = segment_header(meta, level, seg);
    if h.magic != SEGMENT_MAGIC {
        return Err(Error::ForeignFile {
            path: path.to_path_buf(),
            reason: "not a segment file (bad magic)".into(),
        });
    }
    if h.tree_id != meta.tree_id {
        return Err(Error::ForeignFile {
            path: path.to_path_buf(),
            reason: format!(
                "segment of another tree (id {:016x}, this tree {:016x})",
                h.tree_id, meta.tree_id
            ),
        });
    }
    if h != want {
        return Err(Error::ForeignFile {
            path: path.to_path_buf(),
            reason: format!(
                "header says level {} segment {} format {}, expected level {level} segment {seg} format {FORMAT_VERSION}",
                h.tag, h.seq, h.format
            ),
        });
    }
    Ok(())
}

/// A verified record payload inside a mapped segment.
pub struct RecordView {
    map: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl RecordView {
    /// The record payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

/// Read access to the segments of one generation directory, shared by the writer and every
/// snapshot of that generation.
pub struct Storage {
    /// The generation directory (`DIR/gen-NNNNNN`).
    pub gen_dir: PathBuf,
    /// The tree's metadata.
    pub meta: TreeMeta,
    maps: Vec<RwLock<Vec<Option<Arc<Mmap>>>>>,
}

impl Storage {
    /// The storage over `gen_dir`, shared process-wide: every handle on one generation gets the
    /// same maps, so that compaction can map all files for every live snapshot before it unlinks
    /// them.
    pub fn shared(gen_dir: PathBuf, meta: TreeMeta) -> Arc<Self> {
        static ALL: Mutex<BTreeMap<PathBuf, Weak<Storage>>> = Mutex::new(BTreeMap::new());
        let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = all.get(&gen_dir).and_then(Weak::upgrade) {
            if s.meta == meta {
                return s;
            }
        }
        let s = Arc::new(Storage {
            gen_dir: gen_dir.clone(),
            meta,
            maps: (0..MAX_LEVELS).map(|_| RwLock::new(Vec::new())).collect(),
        });
        all.insert(gen_dir, Arc::downgrade(&s));
        s
    }

    /// Reads and checksums the record of `level` at `loc`.
    pub fn read(&self, level: u8, loc: Loc) -> Result<RecordView> {
        let map = self.map_covering(level, loc.seg, loc.offset + codec::FRAME_PREFIX as u64)?;
        let start = loc.offset as usize;
        let path = || segment_path(&self.gen_dir, level, loc.seg);
        let bytes = map.get(start..).unwrap_or(&[]);
        let total = match codec::read_frame(bytes) {
            FrameRead::Ok { total, .. } => total,
            FrameRead::Truncated => {
                // The frame may extend past the current map: remap once and retry.
                let need = bytes
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
                    .unwrap_or(0);
                let map2 = self.map_covering(
                    level,
                    loc.seg,
                    loc.offset + codec::FRAME_PREFIX as u64 + need,
                )?;
                return match codec::read_frame(map2.get(start..).unwrap_or(&[])) {
                    FrameRead::Ok { total, .. } => Ok(RecordView {
                        map: map2,
                        start: start + codec::FRAME_PREFIX,
                        end: start + total,
                    }),
                    FrameRead::Truncated => Err(Error::corrupt(
                        path(),
                        loc.offset,
                        "record extends past the end of the segment",
                    )),
                    FrameRead::Bad(why) => Err(Error::corrupt(path(), loc.offset, why)),
                };
            }
            FrameRead::Bad(why) => return Err(Error::corrupt(path(), loc.offset, why)),
        };
        Ok(RecordView {
            map,
            start: start + codec::FRAME_PREFIX,
            end: start + total,
        })
    }

    /// Maps every segment up to the high-water marks at full length, so that reads keep working
    /// after the files are unlinked (compaction removes a generation that snapshots still read).
    pub fn map_all(&self, hwms: &[codec::Hwm]) -> Result<()> {
        for (level, h) in hwms.iter().enumerate() {
            for seg in 0..=h.seg {
                let path = segment_path(&self.gen_dir, level as u8, seg);
                let len = std::fs::metadata(&path)
                    .map_err(|e| Error::io(&path, e))?
                    .len();
                self.map_covering(level as u8, seg, len)?;
            }
        }
        Ok(())
    }

    /// A map of segment `seg` at least `min_len` bytes long (remapping a grown file).
    fn map_covering(&self, level: u8, seg: u32, min_len: u64) -> Result<Arc<Mmap>> {
        let slot = self
            .maps
            .get(level as usize)
            .ok_or_else(|| Error::Invalid(format!("level {level} exceeds {MAX_LEVELS}")))?;
        {
            let maps = slot.read().unwrap_or_else(|p| p.into_inner());
            if let Some(Some(m)) = maps.get(seg as usize) {
                if m.len() as u64 >= min_len {
                    return Ok(m.clone());
                }
            }
        }
        let path = segment_path(&self.gen_dir, level, seg);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingSegment {
                    path: path.clone(),
                    level,
                }
            } else {
                Error::io(&path, e)
            }
        })?;
        // SAFETY: segment bytes below a committed high-water mark are never modified or
        // truncated while the tree exists (recovery truncates only uncommitted tails, before any
        // reader maps them; compaction unlinks whole files, which leaves existing maps valid), and
        // readers only dereference committed records.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        // Advice is a hint; a kernel that rejects it still serves reads.
        let _ = map.advise(Advice::Random);
        if (map.len() as u64) < min_len {
            return Err(Error::corrupt(
                &path,
                map.len() as u64,
                format!("segment is {} bytes, a record needs {min_len}", map.len()),
            ));
        }
        let map = Arc::new(map);
        let mut maps = slot.write().unwrap_or_else(|p| p.into_inner());
        if maps.len() <= seg as usize {
            maps.resize(seg as usize + 1, None);
        }
        maps[seg as usize] = Some(map.clone());
        Ok(map)
    }
}

/// Appends records to one level's active segment. Records collect in a buffer that a
/// background thread checksums and writes (the crate's `background` module) each time it fills and
/// at `flush`, which waits for the thread.
pub struct SegmentWriter {
    level: u8,
    gen_dir: PathBuf,
    seg: u32,
    file: Arc<File>,
    /// Logical length of the active segment, buffered bytes included.
    len: u64,
    buf: Vec<u8>,
    /// Where each frame in `buf` starts (their prefixes are sealed by the write thread).
    frames: Vec<usize>,
    /// The write thread, started by the first write.
    writes: Option<BackgroundWrites>,
    /// Files written since the last sync (sealed segments and the active one).
    unsynced: Vec<Arc<File>>,
    dirty: bool,
    new_files: bool,
    /// Segments sealed since the last `take_sealed`, with their final lengths.
    sealed: Vec<codec::Sealed>,
    /// Bytes collected before a hand-over ([`WriterOptions::write_buffer`](crate::WriterOptions)).
    buf_size: usize,
}

impl SegmentWriter {
    /// Opens the active segment `seg` of `level` for appending at `len` (its committed length),
    /// creating it with a header when `len == 0`; records are handed over in buffers of
    /// `buf_size` bytes.
    pub fn open(
        gen_dir: &Path,
        meta: &TreeMeta,
        (level, seg): (u8, u32),
        len: u64,
        buf_size: usize,
    ) -> Result<Self> {
        let path = segment_path(gen_dir, level, seg);
        let mut new_files = false;
        let file = if len == 0 {
            metarep_core::ensure_dir(&level_dir(gen_dir, level))?;
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            f.write_all(&segment_header(meta, level, seg).encode())
                .map_err(|e| Error::io(&path, e))?;
            new_files = true;
            f
        } else {
            // Not in append mode: every buffer is written at its own offset.
            OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?
        };
        Ok(SegmentWriter {
            level,
            gen_dir: gen_dir.to_path_buf(),
            seg,
            file: Arc::new(file),
            len: len.max(HEADER_LEN as u64),
            buf: Vec::with_capacity(buf_size),
            frames: Vec::new(),
            writes: None,
            unsynced: Vec::new(),
            dirty: new_files,
            new_files,
            sealed: Vec::new(),
            buf_size,
        })
    }

    /// The high-water mark after everything appended so far.
    pub fn hwm(&self) -> codec::Hwm {
        codec::Hwm {
            seg: self.seg,
            end: self.len,
        }
    }

    /// The segments sealed since the last call.
    pub fn take_sealed(&mut self) -> Vec<codec::Sealed> {
        std::mem::take(&mut self.sealed)
    }

    /// Appends one framed record of `payload_len` bytes that `fill` writes in place (rotating
    /// to a new segment first if this one is full).
    pub fn append_with(
        &mut self,
        meta: &TreeMeta,
        payload_len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Loc> {
        let total = (codec::FRAME_PREFIX + payload_len) as u64;
        if self.len > HEADER_LEN as u64 && self.len + total > meta.config.segment_bytes {
            self.rotate(meta)?;
        }
        if self.len + total > MAX_OFFSET {
            return Err(Error::Invalid(format!(
                "segment of level {} would exceed {MAX_OFFSET} bytes; lower segment_bytes",
                self.level
            )));
        }
        let loc = Loc {
            seg: self.seg,
            offset: self.len,
        };
        let start = self.buf.len();
        self.buf.resize(start + codec::FRAME_PREFIX, 0);
        fill(&mut self.buf);
        if self.buf.len() != start + total as usize {
            let got = self.buf.len() - start - codec::FRAME_PREFIX;
            self.buf.truncate(start);
            return Err(Error::Invalid(format!(
                "record encoder wrote {got} bytes, announced {payload_len}"
            )));
        }
        self.frames.push(start);
        self.len += total;
        self.dirty = true;
        if self.buf.len() >= self.buf_size {
            self.write_buf()?;
        }
        Ok(loc)
    }

    /// Appends one framed record.
    pub fn append(&mut self, meta: &TreeMeta, payload: &[u8]) -> Result<Loc> {
        self.append_with(meta, payload.len(), |b| b.extend_from_slice(payload))
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.gen_dir, self.level, self.seg)
    }

    /// Hands the buffered records to the write thread (started on first use) without waiting.
    /// Less than an eighth of a buffer (the upper levels' records of a commit), or a full queue,
    /// are written here instead: waking the thread costs more than the former, and waiting for
    /// it no less than the latter. (A commit writes each level's last records with
    /// [`write_here`](Self::write_here) before it waits for any level's thread.)
    pub fn write_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let small = self.buf.len() < self.buf_size / 8;
        if small || self.writes.as_mut().is_some_and(|w| w.is_full()) {
            return self.write_here();
        }
        let path = self.path();
        let offset = self.buf_offset();
        let writes = self.writes.get_or_insert_with(BackgroundWrites::start);
        let bytes = std::mem::take(&mut self.buf);
        let frames = std::mem::take(&mut self.frames);
        (self.buf, self.frames) = writes.submit(&self.file, path, offset, bytes, frames)?;
        Ok(())
    }

    /// Seals and writes the buffered records in the caller's thread, at their offset (so while
    /// earlier buffers may still be in flight on the write thread).
    pub fn write_here(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let offset = self.buf_offset();
        background::seal_and_write(
            &self.file,
            &self.path(),
            offset,
            &mut self.buf,
            &self.frames,
        )?;
        self.buf.clear();
        self.frames.clear();
        Ok(())
    }

    /// Where the buffer's first byte goes in the active segment.
    fn buf_offset(&self) -> u64 {
        self.len - self.buf.len() as u64
    }

    fn rotate(&mut self, meta: &TreeMeta) -> Result<()> {
        if self.seg >= MAX_SEG {
            return Err(Error::Invalid(format!(
                "level {} ran out of segment numbers; raise segment_bytes",
                self.level
            )));
        }
        self.write_buf()?;
        self.sealed.push(codec::Sealed {
            level: self.level,
            seg: self.seg,
            len: self.len,
        });
        let at = (self.level, self.seg + 1);
        let next = SegmentWriter::open(&self.gen_dir, meta, at, 0, self.buf_size)?;
        let old = std::mem::replace(&mut self.file, next.file);
        self.unsynced.push(old);
        self.seg += 1;
        self.len = HEADER_LEN as u64;
        self.new_files = true;
        Ok(())
    }

    /// Writes buffered records to the OS; with `sync`, also fsyncs every file touched since the
    /// last sync (and the level directory if files were created); with `forget`, drops the
    /// handles of sealed files that were not synced (fsync policy off).
    pub fn flush(&mut self, sync: bool, forget: bool) -> Result<()> {
        self.write_here()?;
        if let Some(writes) = &mut self.writes {
            writes.wait()?;
        }
        if forget && !sync {
            self.unsynced.clear();
        }
        if sync && self.dirty {
            for f in self.unsynced.drain(..) {
                f.sync_data()
                    .map_err(|e| Error::io(level_dir(&self.gen_dir, self.level), e))?;
            }
            let path = self.path();
            self.file.sync_data().map_err(|e| Error::io(&path, e))?;
            if self.new_files {
                sync_dir(&level_dir(&self.gen_dir, self.level))?;
                self.new_files = false;
            }
            self.dirty = false;
        }
        Ok(())
    }
}

/// fsyncs a directory (so that created or renamed entries survive power loss).
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

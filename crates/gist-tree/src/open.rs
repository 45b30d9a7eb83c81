//! Opening a tree: the directory layout, the commit log, segment checks and — for a writer —
//! crash recovery that cuts uncommitted tails and reports exactly what it dropped.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::codec::{self, FileHeader, Hwm, CHECKPOINT_MAGIC, HEADER_LEN};
use crate::config::{TreeMeta, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::evidence::commits_beyond_log;
use crate::index::LevelIndex;
use crate::log::{log_path, read_log, History, LogTail};
use crate::log_end::{read_end, EndRead};
use crate::segment::{check_segment_header, level_dir, segment_path};
use crate::state::{level_counts, rebuild_state, VersionState};

/// The generation directory `gen` of tree `dir`.
pub fn gen_dir(dir: &Path, gen: u32) -> PathBuf {
    dir.join(format!("gen-{gen:06}"))
}

/// The file naming the live generation.
pub fn current_path(dir: &Path) -> PathBuf {
    dir.join("CURRENT")
}

/// The index checkpoint of a generation.
pub fn checkpoint_path(gen_dir: &Path) -> PathBuf {
    gen_dir.join("index.ckpt")
}

/// Reads `CURRENT` and returns the live generation number.
pub fn read_current(dir: &Path) -> Result<u32> {
    let path = current_path(dir);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    text.trim()
        .strip_prefix("gen-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::corrupt(&path, 0, format!("expected `gen-NNNNNN`, found {text:?}")))
}

/// Whether `dir` holds data of a tree beyond what an interrupted `create` leaves (which is
/// `gen-000001` with only its commit log of version 0): another generation, a level directory
/// or an index checkpoint.
pub(crate) fn holds_tree_data(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let first = gen_dir(dir, 1);
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("gen-")
            && (e.path() != first
                || std::fs::read_dir(&first).is_ok_and(|g| {
                    g.flatten().any(|f| {
                        let n = f.file_name().to_string_lossy().into_owned();
                        n.starts_with('L') || n == "index.ckpt"
                    })
                }))
    })
}

/// Runs `attempt` on the live generation of `dir`, and again (up to 50 times in all) while it
/// `failed` and `CURRENT` moved meanwhile: a compaction in another process replaced the
/// generation and may have unlinked the files the attempt was reading.
pub(crate) fn on_stable_generation<T>(
    dir: &Path,
    mut attempt: impl FnMut() -> Result<T>,
    failed: impl Fn(&Result<T>) -> bool,
) -> Result<T> {
    const ATTEMPTS: usize = 50;
    let mut n = 1;
    loop {
        let gen = read_current(dir).ok();
        let result = attempt();
        if n == ATTEMPTS || !failed(&result) || read_current(dir).ok() == gen {
            return result;
        }
        n += 1;
    }
}

/// Points `CURRENT` at generation `gen` (atomic rename).
pub fn write_current(dir: &Path, gen: u32) -> Result<()> {
    Ok(metarep_core::atomic_write(
        &current_path(dir),
        format!("gen-{gen:06}\n").as_bytes(),
    )?)
}

/// An uncommitted tail cut from a file during recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroppedTail {
    /// The file.
    pub path: PathBuf,
    /// Bytes cut (or the size of a removed file).
    pub bytes: u64,
    /// Complete records in the cut bytes (uncommitted work).
    pub records: u64,
    /// Whether the whole file was removed.
    pub removed: bool,
}

/// What opening a tree found and (for a writer) repaired.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    /// The committed version the tree opened at.
    pub version: u64,
    /// Bytes of a torn final commit-log entry that were cut.
    pub log_torn_bytes: u64,
    /// Uncommitted segment tails and files dropped.
    pub dropped: Vec<DroppedTail>,
    /// Leftover generation directories of an interrupted compaction that were removed.
    pub stale_generations: Vec<PathBuf>,
    /// Files in the tree that it did not write (left alone; `verify` fails on them).
    pub foreign_files: Vec<PathBuf>,
    /// Bytes of a torn telemetry batch that were cut.
    pub telemetry_torn_bytes: u64,
    /// The version of the index checkpoint used, if one was usable.
    pub checkpoint_version: Option<u64>,
    /// Why an existing checkpoint was not used.
    pub checkpoint_ignored: Option<String>,
    /// Evidence of committed versions missing from the commit log whose records were cut
    /// anyway, as asked by [`WriterOptions::discard_uncommitted`](crate::WriterOptions).
    pub discarded_committed: Vec<String>,
}

impl RecoveryReport {
    /// Whether nothing had to be dropped.
    pub fn is_clean(&self) -> bool {
        self.log_torn_bytes == 0
            && self.dropped.is_empty()
            && self.stale_generations.is_empty()
            && self.telemetry_torn_bytes == 0
            && self.discarded_committed.is_empty()
    }

    /// Records dropped in total (all uncommitted).
    pub fn dropped_records(&self) -> u64 {
        self.dropped.iter().map(|d| d.records).sum()
    }

    /// A human-readable account of what was dropped.
    pub fn summary(&self) -> String {
        if self.is_clean() {
            return format!("clean open at version {}", self.version);
        }
        let mut s = format!("recovered to committed version {}", self.version);
        for e in &self.discarded_committed {
            s += &format!("; gave up versions missing from the commit log ({e})");
        }
        if self.log_torn_bytes > 0 {
            s += &format!("; cut {} bytes of a torn commit entry", self.log_torn_bytes);
        }
        for d in &self.dropped {
            s += &format!(
                "; {} {} ({} bytes, {} complete uncommitted records)",
                if d.removed { "removed" } else { "cut tail of" },
                d.path.display(),
                d.bytes,
                d.records
            );
        }
        for g in &self.stale_generations {
            s += &format!("; removed stale generation {}", g.display());
        }
        if self.telemetry_torn_bytes > 0 {
            s += &format!(
                "; cut {} bytes of torn telemetry",
                self.telemetry_torn_bytes
            );
        }
        s
    }
}

/// A tree loaded from disk.
pub(crate) struct Loaded {
    pub gen: u32,
    pub history: History,
    pub log_tail: LogTail,
    pub end: EndRead,
    pub state: VersionState,
    pub report: RecoveryReport,
}

/// How to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Read only: change nothing, ignore uncommitted bytes.
    ReadOnly,
    /// Writer: cut uncommitted tails, remove uncommitted files — with `discard_uncommitted`
    /// even where other evidence says they were committed.
    Repair {
        /// Cut despite evidence of commits missing from the log.
        discard_uncommitted: bool,
    },
}

impl Mode {
    pub(crate) fn repairs(self) -> bool {
        matches!(self, Mode::Repair { .. })
    }
}

fn parse_segment_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".seg")?;
    (stem.len() == 6 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// Lists the files of a level directory: segment numbers found, and foreign names.
pub(crate) fn list_level(dir: &Path) -> Result<(Vec<u32>, Vec<PathBuf>)> {
    let mut segs = Vec::new();
    let mut foreign = Vec::new();
    if !dir.exists() {
        return Ok((segs, foreign));
    }
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match parse_segment_name(&name) {
            Some(s) => segs.push(s),
            None => foreign.push(entry.path()),
        }
    }
    segs.sort_unstable();
    Ok((segs, foreign))
}

/// Number of complete frames in `bytes` (for reporting dropped work).
fn count_frames(bytes: &[u8]) -> u64 {
    codec::scan_frames(bytes, 0).0.len() as u64
}

/// Checks one level's files against its committed high-water mark (None: the level was never
/// committed) and, in repair mode, cuts or removes what is uncommitted.
fn check_level(
    gen: &Path,
    meta: &TreeMeta,
    level: u8,
    hwm: Option<Hwm>,
    sealed: &BTreeMap<(u8, u32), u64>,
    mode: Mode,
    report: &mut RecoveryReport,
) -> Result<()> {
    let (segs, foreign) = list_level(&level_dir(gen, level))?;
    report.foreign_files.extend(foreign);
    if let Some(h) = hwm {
        for seg in 0..=h.seg {
            let path = segment_path(gen, level, seg);
            let bytes = read_prefix(&path, level)?;
            check_segment_header(&bytes, &path, meta, level, seg)?;
            if seg == h.seg {
                continue;
            }
            let len = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
            match sealed.get(&(level, seg)) {
                Some(want) if *want == len => {}
                Some(want) => {
                    return Err(Error::corrupt(
                        &path,
                        len.min(*want),
                        format!("sealed segment is {len} bytes, the commit log says {want}"),
                    ))
                }
                None => {
                    return Err(Error::corrupt(
                        &path,
                        0,
                        "sealed segment with no recorded length in the commit log",
                    ))
                }
            }
        }
        let path = segment_path(gen, level, h.seg);
        let len = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len();
        if len < h.end {
            return Err(Error::corrupt(
                &path,
                len,
                format!(
                    "segment is {len} bytes but {} bytes are committed (truncated)",
                    h.end
                ),
            ));
        }
        if len > h.end && mode.repairs() {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            report.dropped.push(DroppedTail {
                path: path.clone(),
                bytes: len - h.end,
                records: count_frames(&bytes[h.end as usize..]),
                removed: false,
            });
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            f.set_len(h.end)
                .and_then(|()| f.sync_data())
                .map_err(|e| Error::io(&path, e))?;
        }
    }
    let first_uncommitted = hwm.map_or(0, |h| h.seg + 1);
    for seg in segs.into_iter().filter(|s| *s >= first_uncommitted) {
        let path = segment_path(gen, level, seg);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if bytes.len() >= HEADER_LEN {
            check_segment_header(&bytes, &path, meta, level, seg)?;
        }
        if mode.repairs() {
            report.dropped.push(DroppedTail {
                path: path.clone(),
                bytes: bytes.len() as u64,
                records: count_frames(bytes.get(HEADER_LEN..).unwrap_or(&[])),
                removed: true,
            });
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

fn read_prefix(path: &Path, level: u8) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingSegment {
                path: path.to_path_buf(),
                level,
            }
        } else {
            Error::io(path, e)
        }
    })?;
    let mut buf = Vec::with_capacity(HEADER_LEN);
    f.by_ref()
        .take(HEADER_LEN as u64)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// Reads the checkpoint of `gen`: `None` if there is none, else the parsed checkpoint or why it
/// is unusable.
fn read_checkpoint(
    gen_path: &Path,
    meta: &TreeMeta,
    gen: u32,
) -> Option<std::result::Result<codec::Checkpoint, String>> {
    let path = checkpoint_path(gen_path);
    let bytes = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("unreadable: {e}"))),
        Ok(b) => b,
    };
    let want = FileHeader {
        magic: CHECKPOINT_MAGIC,
        tree_id: meta.tree_id,
        tag: 0,
        seq: gen,
        format: FORMAT_VERSION,
    };
    Some(match codec::parse_checkpoint(&bytes) {
        Err(e) => Err(e.0),
        Ok((h, _)) if h != want => Err("header does not match this tree and generation".into()),
        Ok((_, ck)) => Ok(ck),
    })
}

/// The state of checkpoint `ck` if it matches a commit of `history`.
fn checkpoint_state(
    ck: codec::Checkpoint,
    meta: &TreeMeta,
    history: &History,
) -> std::result::Result<VersionState, String> {
    let commit = history
        .commit(ck.version)
        .ok_or_else(|| format!("version {} is not in the commit log", ck.version))?;
    if commit.hwms != ck.hwms || commit.tokens != ck.tokens {
        return Err(format!(
            "does not match commit {} (high-water marks or token count differ)",
            ck.version
        ));
    }
    let counts = level_counts(ck.tokens, meta.config.block);
    let lens: Vec<u64> = ck.entries.iter().map(|e| e.len() as u64).collect();
    if lens != counts {
        return Err(format!("level sizes {lens:?} do not match {counts:?}"));
    }
    let levels: Vec<LevelIndex> = ck
        .entries
        .iter()
        .map(|e| LevelIndex::from_entries(e))
        .collect();
    let pruned = ck
        .entries
        .iter()
        .flatten()
        .filter(|e| *e & crate::index::PRUNED != 0)
        .count() as u64;
    Ok(VersionState {
        version: ck.version,
        tokens: ck.tokens,
        levels,
        hwms: ck.hwms,
        pruned,
    })
}

/// Opens the live generation of `dir`: reads the log, checks (and in repair mode cuts) segment
/// files, and builds the head index from the checkpoint plus a scan of newer records.
pub(crate) fn load(
    dir: &Path,
    meta: &TreeMeta,
    mode: Mode,
    use_checkpoint: bool,
) -> Result<Loaded> {
    let gen = read_current(dir)?;
    let gen_path = gen_dir(dir, gen);
    let mut report = RecoveryReport::default();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        // The entry's type as the directory listing gave it: a generation that a compaction in
        // another process is removing right now is still a stale generation, not a foreign file.
        let listed_dir = entry.file_type().map_or(true, |t| t.is_dir());
        if name.starts_with("gen-") && path != gen_path && listed_dir {
            if mode.repairs() {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
                report.stale_generations.push(path);
            }
        } else if !matches!(
            name.as_str(),
            "tree.json" | "CURRENT" | "LOCK" | "telemetry.log" | "pins"
        ) && ![".CURRENT.tmp", ".telemetry.log.tmp", ".tree.json.tmp"]
            .iter()
            .any(|p| name.starts_with(p))
            && path != gen_path
        {
            report.foreign_files.push(path);
        }
    }
    if !gen_path.is_dir() {
        return Err(Error::corrupt(
            current_path(dir),
            0,
            format!(
                "names generation {} which does not exist",
                gen_path.display()
            ),
        ));
    }
    // Read before the log: a live writer updates both after its log append, so what they say
    // is never ahead of the log read after them unless the log lost entries.
    let end = read_end(&gen_path, meta, gen);
    let checkpoint = read_checkpoint(&gen_path, meta, gen);
    let (history, log_tail) = read_log(&gen_path, meta, gen)?;
    report.log_torn_bytes = if mode.repairs() {
        log_tail.torn_bytes
    } else {
        0
    };
    // `read_log` guarantees at least one commit.
    let head = history
        .head()
        .cloned()
        .ok_or_else(|| Error::Invalid("empty commit log".into()))?;
    for entry in std::fs::read_dir(&gen_path).map_err(|e| Error::io(&gen_path, e))? {
        let entry = entry.map_err(|e| Error::io(&gen_path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_level = name.len() == 3
            && name.starts_with('L')
            && name[1..].bytes().all(|b| b.is_ascii_digit());
        if !(is_level
            || name == "commits.log"
            || name == "commits.end"
            || name == "index.ckpt"
            || name.starts_with(".index.ckpt.tmp")
            || name == "index.ckpt.tmp")
        {
            report.foreign_files.push(entry.path());
        }
    }
    let evidence =
        commits_beyond_log(&gen_path, &end, checkpoint.as_ref(), &log_tail, &head, mode)?;
    if !evidence.is_empty() {
        if mode
            != (Mode::Repair {
                discard_uncommitted: true,
            })
        {
            return Err(Error::CommitsMissing {
                path: log_path(&gen_path),
                evidence: evidence.join("; "),
            });
        }
        report.discarded_committed = evidence;
    }
    let sealed: BTreeMap<(u8, u32), u64> = history
        .commits
        .iter()
        .flat_map(|c| &c.sealed)
        .map(|s| ((s.level, s.seg), s.len))
        .collect();
    // Every sealed segment of a generation is recorded: by the commit that sealed it, or, after
    // compaction, by the newest commit of the rewritten log.
    for level in 0..codec::MAX_LEVELS as u8 {
        let hwm = head.hwms.get(level as usize).copied();
        if hwm.is_none() && !level_dir(&gen_path, level).exists() {
            continue;
        }
        check_level(&gen_path, meta, level, hwm, &sealed, mode, &mut report)?;
    }
    let base = match checkpoint.filter(|_| use_checkpoint) {
        None => None,
        Some(ck) => match ck.and_then(|ck| checkpoint_state(ck, meta, &history)) {
            Ok(b) => Some(b),
            Err(why) => {
                report.checkpoint_ignored = Some(why);
                None
            }
        },
    };
    report.checkpoint_version = base.as_ref().map(|b| b.version);
    let state = rebuild_state(&gen_path, meta, &history, &head, base)?;
    report.version = state.version;
    Ok(Loaded {
        gen,
        history,
        log_tail,
        end,
        state,
        report,
    })
}

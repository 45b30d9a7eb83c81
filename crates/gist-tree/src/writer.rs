//! The single writer: appends and edits token spans, prunes and restores subtrees, and commits
//! them as a new version. A commit writes the changed level-0 blocks, recomputes only the gists
//! on their paths to the root (batched through the [`Summarizer`]), flushes the segments, and
//! then appends the commit entry that makes it all visible at once.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::checkpoint::{self, Checkpointer};
use crate::codec::{self, CommitRecord, LogEntry, PruneOp, RecordHeader, KIND_GIST, KIND_TOKENS};
use crate::config::{FsyncPolicy, TreeConfig, TreeMeta, WriterOptions, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::index::{Loc, ABSENT, PRUNED};
use crate::log::{History, LogWriter};
use crate::node::{now_ms, NodeRef, Provenance};
use crate::open::{checkpoint_path, gen_dir, load, write_current, Mode, RecoveryReport};
use crate::pending::{Block, Pending};
use crate::segment::{SegmentWriter, Storage};
use crate::snapshot::{Head, Shared, Snapshot};
use crate::state::VersionState;
use crate::summarize::{ChildData, Summarizer, SummaryBatch};
use crate::telemetry::Telemetry;

/// Buffers reused by every commit.
#[derive(Debug, Default)]
struct Scratch {
    ids: Vec<u32>,
    gists: Vec<f32>,
    provs: Vec<Provenance>,
    /// The gists of the level below and of the level being made.
    prev: Made,
    made: Made,
}

/// The gists one level of a commit made, in index order.
#[derive(Debug, Default)]
struct Made {
    nodes: Vec<u64>,
    /// Flat `[n, d]` for the `n` nodes; values past those are stale (the buffer is kept across
    /// commits and only grows).
    gists: Vec<f32>,
    provs: Vec<Provenance>,
}

impl Made {
    fn clear(&mut self) {
        self.nodes.clear();
        self.provs.clear();
    }

    /// Room for the gists of `n` more nodes of width `d`.
    fn reserve(&mut self, n: usize, d: usize) {
        let need = (self.nodes.len() + n) * d;
        if self.gists.len() < need {
            self.gists.resize(need, 0.0);
        }
    }

    fn get(&self, node: u64, d: usize) -> Option<(&[f32], Provenance)> {
        let k = self.nodes.binary_search(&node).ok()?;
        Some((&self.gists[k * d..(k + 1) * d], self.provs[k]))
    }

    /// Where nodes `first..first + n` start when all of them were made (they are then stored
    /// consecutively, since `nodes` is sorted and has no repeats).
    fn run(&self, first: u64, n: usize) -> Option<usize> {
        let k = self.nodes.binary_search(&first).ok()?;
        (self.nodes.get(k + n - 1) == Some(&(first + n as u64 - 1))).then_some(k)
    }
}

/// The provenance of a parent: its children's, merged.
fn merged(provs: &[Provenance]) -> Provenance {
    provs
        .split_first()
        .map(|(p, rest)| rest.iter().fold(*p, |acc, q| acc.merge(q)))
        .unwrap_or_default()
}

/// The one writer of a tree (holds `DIR/LOCK`). Readers take [`Snapshot`]s from it or open a
/// [`crate::Reader`] in another process.
pub struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) storage: Arc<Storage>,
    pub(crate) gen: u32,
    pub(crate) opts: WriterOptions,
    summarizer: Box<dyn Summarizer + Send>,
    pub(crate) segs: Vec<SegmentWriter>,
    pub(crate) log: LogWriter,
    pub(crate) history: History,
    /// The committed state plus pending prunes/restores.
    pub(crate) state: VersionState,
    pending: Pending,
    scratch: Scratch,
    checkpointer: Checkpointer,
    commits_since_sync: u32,
    bytes_since_checkpoint: u64,
    poisoned: bool,
    _lock: File,
}

/// Takes `DIR/LOCK`, polling for up to `wait` while another holder has it.
fn lock(dir: &Path, wait: std::time::Duration) -> Result<File> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let start = std::time::Instant::now();
    while !exclusive(&f, &path)? {
        if start.elapsed() >= wait {
            return Err(Error::Locked { path });
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(f)
}

/// Tries to take the writer lock on `f` (a non-blocking `flock`, released when the file
/// closes, including when the process dies); `false` while another open file holds it.
#[cfg(unix)]
fn exclusive(f: &File, path: &Path) -> Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => return Ok(false),
            std::io::ErrorKind::Interrupted => continue,
            _ => return Err(Error::io(path, e)),
        }
    }
}

/// Without `flock` a second writer could not be refused, so writing is refused instead.
#[cfg(not(unix))]
fn exclusive(_: &File, path: &Path) -> Result<bool> {
    Err(Error::Invalid(format!(
        "{}: writing a gist tree needs an exclusive writer lock (flock), which this platform \
         does not have; gist trees are written on Unix systems only (reading works anywhere)",
        path.display()
    )))
}

fn new_tree_id(dir: &Path) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    metarep_core::rng::derive_seed(
        nanos ^ ((std::process::id() as u64) << 32),
        &dir.to_string_lossy(),
    )
}

impl Writer {
    /// Creates a new, empty tree in `dir` (version 0) and opens it for writing.
    pub fn create(
        dir: &Path,
        config: TreeConfig,
        opts: WriterOptions,
        summarizer: Box<dyn Summarizer + Send>,
    ) -> Result<Writer> {
        config.validate()?;
        if dir.join("tree.json").exists() || crate::open::holds_tree_data(dir) {
            return Err(Error::AlreadyExists {
                path: dir.to_path_buf(),
            });
        }
        metarep_core::ensure_dir(dir)?;
        let meta = TreeMeta {
            format: FORMAT_VERSION,
            tree_id: new_tree_id(dir),
            config,
        };
        let lock = lock(dir, opts.lock_wait)?;
        // Leftovers of an interrupted `create` (no tree.json yet) are ours to replace.
        let g = gen_dir(dir, 1);
        if g.exists() {
            std::fs::remove_dir_all(&g).map_err(|e| Error::io(&g, e))?;
        }
        metarep_core::ensure_dir(&g)?;
        let mut log = LogWriter::create(&g, &meta, 1)?;
        log.append(
            &LogEntry::Commit(CommitRecord {
                version: 0,
                timestamp_ms: now_ms(),
                tokens: 0,
                hwms: Vec::new(),
                ops: Vec::new(),
                sealed: Vec::new(),
            }),
            true,
        )?;
        crate::segment::sync_dir(&g)?;
        write_current(dir, 1)?;
        metarep_core::fsutil::write_json_pretty(&dir.join("tree.json"), &meta)?;
        // The lock is kept: released and retaken, it could be held for a moment by a child
        // process another thread is spawning (a forked child shares the open file until exec).
        Ok(Writer::open_locked(dir, meta, opts, summarizer, lock)?.0)
    }

    /// Opens the tree in `dir` for writing, recovering from a crash: uncommitted tails are cut
    /// and the report says what was dropped.
    pub fn open(
        dir: &Path,
        opts: WriterOptions,
        summarizer: Box<dyn Summarizer + Send>,
    ) -> Result<(Writer, RecoveryReport)> {
        let meta = TreeMeta::load(dir)?;
        let lock = lock(dir, opts.lock_wait)?;
        Writer::open_locked(dir, meta, opts, summarizer, lock)
    }

    /// [`Writer::open`] of the tree described by `meta`, with `DIR/LOCK` already held (`lock`).
    fn open_locked(
        dir: &Path,
        meta: TreeMeta,
        opts: WriterOptions,
        summarizer: Box<dyn Summarizer + Send>,
        lock: File,
    ) -> Result<(Writer, RecoveryReport)> {
        let dir = &crate::snapshot::canonical(dir)?;
        let mode = Mode::Repair {
            discard_uncommitted: opts.discard_uncommitted,
        };
        let loaded = load(dir, &meta, mode, true)?;
        let mut report = loaded.report;
        let g = gen_dir(dir, loaded.gen);
        let mut segs = Vec::with_capacity(loaded.state.hwms.len());
        for (level, h) in loaded.state.hwms.iter().enumerate() {
            let at = (level as u8, h.seg);
            segs.push(SegmentWriter::open(
                &g,
                &meta,
                at,
                h.end,
                opts.write_buffer,
            )?);
        }
        let log = LogWriter::open(
            &g,
            &meta,
            loaded.gen,
            loaded.log_tail.valid_len,
            loaded.state.version,
        )?;
        let telemetry = if opts.telemetry {
            let (t, torn) = Telemetry::open(dir, &meta, true)?;
            report.telemetry_torn_bytes = torn;
            Some(t)
        } else {
            None
        };
        let storage = Storage::shared(g, meta);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            meta,
            head: RwLock::new(Head {
                storage: storage.clone(),
                state: Arc::new(loaded.state.clone()),
            }),
            pin_files: false,
            telemetry,
        });
        let pending = Pending::new(loaded.state.tokens, meta.config.block);
        let writer = Writer {
            shared,
            storage,
            gen: loaded.gen,
            opts,
            summarizer,
            segs,
            log,
            history: loaded.history,
            state: loaded.state,
            pending,
            scratch: Scratch::default(),
            checkpointer: Checkpointer::default(),
            commits_since_sync: 0,
            // Recovery rescanned records newer than the checkpoint; checkpoint again soon.
            bytes_since_checkpoint: if report.checkpoint_version == Some(report.version) {
                0
            } else {
                1
            },
            poisoned: false,
            _lock: lock,
        };
        report.version = writer.state.version;
        Ok((writer, report))
    }

    /// The tree directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The tree's shape.
    pub fn config(&self) -> &TreeConfig {
        &self.shared.meta.config
    }

    /// The tree's metadata.
    pub fn meta(&self) -> &TreeMeta {
        &self.shared.meta
    }

    /// The newest committed version.
    pub fn version(&self) -> u64 {
        self.history.head().map_or(0, |c| c.version)
    }

    /// Tokens in the stream including uncommitted appends.
    pub fn token_count(&self) -> u64 {
        self.pending.tokens
    }

    /// Whether there are uncommitted changes.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The commit history and named snapshots.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// A snapshot of the newest committed version.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.shared.snapshot()
    }

    /// A snapshot of any readable committed version.
    pub fn snapshot_at(&self, version: u64) -> Result<Snapshot> {
        self.shared.snapshot_at(&self.history, version)
    }

    /// Replaces the summariser (e.g. a new compressor checkpoint); later commits use it.
    pub fn set_summarizer(&mut self, summarizer: Box<dyn Summarizer + Send>) {
        self.summarizer = summarizer;
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Invalid(
                "a commit of this writer failed; reopen the tree to recover".into(),
            ));
        }
        Ok(())
    }

    /// The pending content of committed block `blk` (loaded from the tree on first touch).
    fn committed_block_mut(&mut self, blk: u64) -> Result<&mut Block> {
        if !self.pending.rewritten.contains_key(&blk) {
            let node = NodeRef::new(0, blk);
            if blk >= self.state.count(0) {
                return Err(Error::Invalid(format!("block {blk} is not committed")));
            }
            if let Some(root) = self.state.hidden_by(node, self.config().block) {
                return Err(Error::Pruned { node, root });
            }
            let (h, data) = self.read_committed(node)?;
            let block = Block {
                tokens: codec::le_u32s(&data).collect(),
                prov: h.provenance,
            };
            return Ok(self.pending.rewritten.entry(blk).or_insert(block));
        }
        self.pending
            .rewritten
            .get_mut(&blk)
            .ok_or_else(|| Error::Invalid(format!("block {blk} vanished from the pending set")))
    }

    /// Reads a committed record of the writer's state (no pruning check, no telemetry).
    fn read_committed(&self, node: NodeRef) -> Result<(RecordHeader, Vec<u8>)> {
        let entry = self.state.entry(node);
        let loc = Loc::unpack(entry).ok_or_else(|| {
            match self.state.hidden_by(node, self.config().block) {
                Some(root) => Error::Reclaimed { root },
                None => Error::Invalid(format!("node {node} has no record")),
            }
        })?;
        let view = self.storage.read(node.level, loc)?;
        let (h, data) = codec::decode_node(view.payload()).map_err(|e| {
            Error::corrupt(
                crate::segment::segment_path(&self.storage.gen_dir, node.level, loc.seg),
                loc.offset,
                e.0,
            )
        })?;
        Ok((h, data.to_vec()))
    }

    /// Appends tokens to the stream (visible after [`Writer::commit`]). `prov` describes the
    /// whole run; a block filled by several runs carries their merged provenance.
    pub fn append(&mut self, tokens: &[u32], prov: &Provenance) -> Result<()> {
        self.check_usable()?;
        prov.validate()?;
        let b = self.config().block as u64;
        let pos = self.pending.tokens;
        let mut rest = tokens;
        // A partial last committed block is filled first, as a rewritten block.
        if !pos.is_multiple_of(b) && !self.pending.is_new(pos / b) {
            let block = self.committed_block_mut(pos / b)?;
            let take = ((b - pos % b) as usize).min(rest.len());
            block.prov = block.prov.merge(prov);
            block.tokens.extend_from_slice(&rest[..take]);
            self.pending.tokens += take as u64;
            rest = &rest[take..];
        }
        if !rest.is_empty() {
            self.pending.append_new(rest, prov);
        }
        Ok(())
    }

    /// Replaces tokens `[start, start + tokens.len())` (same length; inside the stream,
    /// uncommitted appends included). Only the touched blocks and their ancestors are rewritten
    /// at commit; older versions keep the old content.
    pub fn edit(&mut self, start: u64, tokens: &[u32], prov: &Provenance) -> Result<()> {
        self.check_usable()?;
        prov.validate()?;
        let end = start
            .checked_add(tokens.len() as u64)
            .filter(|e| *e <= self.pending.tokens)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "edit of {} tokens at {start} reaches past the stream's {} tokens",
                    tokens.len(),
                    self.pending.tokens
                ))
            })?;
        let b = self.config().block as u64;
        // Check every block first so that a refused edit changes nothing.
        for blk in start / b..end.div_ceil(b) {
            let node = NodeRef::new(0, blk);
            if let Some(root) = self.state.hidden_by(node, b as u32) {
                return Err(Error::Pruned { node, root });
            }
        }
        let mut pos = start;
        let mut rest = tokens;
        while !rest.is_empty() {
            let blk = pos / b;
            let off = (pos % b) as usize;
            let take = (b as usize - off).min(rest.len());
            let (block_tokens, block_prov) = match self.pending.is_new(blk) {
                true => self.pending.new_block_mut(blk).ok_or_else(|| {
                    Error::Invalid(format!("block {blk} is missing from the appended tokens"))
                })?,
                false => {
                    let block = self.committed_block_mut(blk)?;
                    (&mut block.tokens[..], &mut block.prov)
                }
            };
            block_tokens[off..off + take].copy_from_slice(&rest[..take]);
            *block_prov = block_prov.merge(prov);
            pos += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    /// Recomputes, at the next commit, every gist above token span `span` with the current
    /// summariser (e.g. after [`Writer::set_summarizer`] with a new compressor checkpoint).
    pub fn resummarize(&mut self, span: std::ops::Range<u64>) -> Result<()> {
        self.check_usable()?;
        let committed = self.state.count(0);
        let b = self.config().block as u64;
        for blk in span.start / b..span.end.div_ceil(b).min(committed) {
            if self
                .state
                .hidden_by(NodeRef::new(0, blk), b as u32)
                .is_none()
            {
                self.pending.touched.insert(blk);
            }
        }
        Ok(())
    }

    fn check_committed_node(&self, node: NodeRef) -> Result<()> {
        let count = self.state.count(node.level);
        if node.index >= count {
            return Err(Error::NoSuchNode {
                node,
                version: self.state.version,
                count,
            });
        }
        if node.level == 0 {
            return Err(Error::Invalid(format!(
                "node {node} is a token block; prune a gist node (level ≥ 1) to hide its detail"
            )));
        }
        Ok(())
    }

    /// Soft-deletes the descendants of `node` (level ≥ 1, committed): readers see its gist but
    /// get [`Error::Pruned`] below it, until [`Writer::restore`]. Space is reclaimed only by
    /// [`Writer::compact`].
    pub fn prune(&mut self, node: NodeRef) -> Result<()> {
        self.check_usable()?;
        self.check_committed_node(node)?;
        if self.state.entry(node) & PRUNED != 0 {
            return Err(Error::Invalid(format!("node {node} is already pruned")));
        }
        if let Some(root) = self.state.hidden_by(node, self.config().block) {
            return Err(Error::Pruned { node, root });
        }
        let b = self.config().block as u64;
        let span = node.token_span(b as u32);
        if self
            .pending
            .rewritten
            .range(span.start / b..span.end / b)
            .next()
            .is_some()
        {
            return Err(Error::Invalid(format!(
                "node {node} has uncommitted edits; commit them before pruning"
            )));
        }
        let op = PruneOp::Prune(node);
        self.state.apply_op(op);
        self.pending.ops.push(op);
        Ok(())
    }

    /// Undoes a prune of `node` (fails with [`Error::Reclaimed`] if compaction dropped its
    /// descendants).
    pub fn restore(&mut self, node: NodeRef) -> Result<()> {
        self.check_usable()?;
        self.check_committed_node(node)?;
        if self.state.entry(node) & PRUNED == 0 {
            return Err(Error::Invalid(format!("node {node} is not a pruned root")));
        }
        let child = node.children(self.config().block)[0];
        if self.state.entry(child) & ABSENT != 0 {
            return Err(Error::Reclaimed { root: node });
        }
        let op = PruneOp::Restore(node);
        self.state.apply_op(op);
        self.pending.ops.push(op);
        Ok(())
    }

    fn seg(&mut self, level: u8) -> Result<&mut SegmentWriter> {
        while self.segs.len() <= level as usize {
            let l = self.segs.len() as u8;
            let (gen, meta) = (&self.storage.gen_dir, &self.shared.meta);
            let w = SegmentWriter::open(gen, meta, (l, 0), 0, self.opts.write_buffer)?;
            self.segs.push(w);
        }
        Ok(&mut self.segs[level as usize])
    }

    /// Writes a record whose `data_len` data bytes `fill` appends after the header.
    fn write_record(
        &mut self,
        header: &RecordHeader,
        data_len: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        let meta = self.shared.meta;
        let len = codec::NODE_HEADER + data_len;
        let loc = self
            .seg(header.node.level)?
            .append_with(&meta, len, |buf| {
                codec::encode_node_header(header, buf);
                fill(buf);
            })?;
        self.bytes_since_checkpoint += (len + codec::FRAME_PREFIX) as u64;
        self.state.set_loc(header.node, loc);
        Ok(())
    }

    /// Makes every pending change visible as a new version and returns its number. With
    /// [`FsyncPolicy::EveryCommit`] it is durable when this returns.
    pub fn commit(&mut self) -> Result<u64> {
        self.check_usable()?;
        let r = self.commit_inner();
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn commit_inner(&mut self) -> Result<u64> {
        let version = self.state.version + 1;
        let cfg = *self.config();
        let fresh = Pending::new(self.pending.tokens, cfg.block);
        let mut pending = std::mem::replace(&mut self.pending, fresh);
        self.state.set_tokens(pending.tokens, cfg.block);

        let level_nodes = pending.dirty_blocks();
        for (idx, tokens, prov) in pending.blocks() {
            let h = RecordHeader {
                kind: KIND_TOKENS,
                node: NodeRef::new(0, idx),
                count: tokens.len() as u32,
                version,
                provenance: prov,
            };
            self.write_record(&h, tokens.len() * 4, |buf| {
                codec::extend_le_u32(buf, tokens)
            })?;
        }
        // The token records go to their write thread now, to be written while the gists are
        // computed (the commit still waits for them before it publishes).
        if let Some(tokens) = self.segs.first_mut() {
            tokens.write_buf()?;
        }

        let mut sc = std::mem::take(&mut self.scratch);
        let r = self.make_gists(&mut sc, &pending, level_nodes, version);
        self.scratch = sc;
        r?;
        self.pending.reuse_buffers(pending.tail_buffers());

        let sync = match self.opts.fsync {
            FsyncPolicy::EveryCommit => true,
            FsyncPolicy::EveryN(n) => self.commits_since_sync + 1 >= n,
            FsyncPolicy::Off => false,
        };
        let forget = self.opts.fsync == FsyncPolicy::Off;
        // The last records of each level are written here, next to the write threads still
        // busy with the earlier ones; then the commit waits for them.
        for s in &mut self.segs {
            s.write_here()?;
        }
        for s in &mut self.segs {
            s.flush(sync, forget)?;
        }
        let record = CommitRecord {
            version,
            timestamp_ms: now_ms(),
            tokens: pending.tokens,
            hwms: self.segs.iter().map(SegmentWriter::hwm).collect(),
            ops: pending.ops,
            sealed: self
                .segs
                .iter_mut()
                .flat_map(SegmentWriter::take_sealed)
                .collect(),
        };
        self.log.append(&LogEntry::Commit(record.clone()), sync)?;
        self.commits_since_sync = if sync { 0 } else { self.commits_since_sync + 1 };
        self.state.hwms = record.hwms.clone();
        self.state.version = version;
        self.history.commits.push(record);
        self.publish(self.storage.clone());
        if self.bytes_since_checkpoint >= self.opts.checkpoint_bytes {
            self.start_checkpoint()?;
        }
        Ok(version)
    }

    /// Recomputes the gists above the dirty level-0 blocks `level_nodes`, level by level.
    fn make_gists(
        &mut self,
        sc: &mut Scratch,
        pending: &Pending,
        mut level_nodes: Vec<u64>,
        version: u64,
    ) -> Result<()> {
        let cfg = *self.config();
        let (b, d) = (cfg.block as usize, cfg.width as usize);
        let levels = self.state.levels.len() as u8;
        // Taken out of the scratch space for the borrow checker; put back (with their
        // allocations) at the end.
        let (mut prev, mut made) = (std::mem::take(&mut sc.prev), std::mem::take(&mut sc.made));
        prev.clear();
        for level in 1..levels {
            let count = self.state.count(level);
            let nodes: Vec<u64> = if level == 1 {
                level_nodes.iter().copied().filter(|j| *j < count).collect()
            } else {
                let mut v: Vec<u64> = level_nodes.iter().map(|j| j / b as u64).collect();
                v.dedup();
                v.retain(|j| *j < count);
                v
            };
            if nodes.is_empty() {
                break;
            }
            made.clear();
            let max_batch = self.summarizer.max_batch().max(1);
            for chunk in nodes.chunks(max_batch) {
                sc.provs.clear();
                // The summariser writes the gists into `made` (it overwrites every value, so the
                // buffer is only zeroed where it grows).
                made.reserve(chunk.len(), d);
                let at = made.nodes.len() * d;
                let out = &mut made.gists[at..at + chunk.len() * d];
                if level == 1 {
                    let ids = match pending.new_run(chunk) {
                        Some((run, provs)) => {
                            sc.provs.extend_from_slice(provs);
                            run
                        }
                        None => {
                            self.gather_blocks(sc, pending, chunk)?;
                            &sc.ids[..]
                        }
                    };
                    self.run_summarizer(level, chunk, ChildData::Tokens(ids), out)?;
                } else {
                    let first = chunk[0] * b as u64;
                    let gists = match prev.run(first, chunk.len() * b) {
                        Some(k) => {
                            for i in 0..chunk.len() {
                                let provs = &prev.provs[k + i * b..k + (i + 1) * b];
                                sc.provs.push(merged(provs));
                            }
                            &prev.gists[k * d..(k + chunk.len() * b) * d]
                        }
                        None => {
                            self.gather_gists(sc, &prev, level, chunk)?;
                            &sc.gists[..]
                        }
                    };
                    self.run_summarizer(level, chunk, ChildData::Gists(gists), out)?;
                }
                let producer = self.summarizer.producer();
                let gb = cfg.gist_bytes();
                for (k, (j, prov)) in chunk.iter().zip(&sc.provs).enumerate() {
                    let prov = Provenance { producer, ..*prov };
                    let h = RecordHeader {
                        kind: KIND_GIST,
                        node: NodeRef::new(level, *j),
                        count: d as u32,
                        version,
                        provenance: prov,
                    };
                    let gist = &mut made.gists[(at + k * d)..(at + (k + 1) * d)];
                    self.check_finite(h.node, gist)?;
                    // The next level reads the gist as stored (rounded to the dtype).
                    self.write_record(&h, gb, |buf| cfg.dtype.encode_rounding(gist, buf))?;
                    made.nodes.push(*j);
                    made.provs.push(prov);
                }
            }
            std::mem::swap(&mut prev, &mut made);
            level_nodes = nodes;
        }
        (sc.prev, sc.made) = (prev, made);
        Ok(())
    }

    /// Copies the tokens of complete blocks `chunk` (pending or committed) into `sc.ids` and
    /// their provenance into `sc.provs`.
    fn gather_blocks(&self, sc: &mut Scratch, pending: &Pending, chunk: &[u64]) -> Result<()> {
        let b = self.config().block as usize;
        sc.ids.clear();
        for j in chunk {
            let start = sc.ids.len();
            let prov = match pending.get(*j) {
                Some((tokens, prov)) => {
                    sc.ids.extend_from_slice(tokens);
                    prov
                }
                None => {
                    let (h, data) = self.read_committed(NodeRef::new(0, *j))?;
                    sc.ids.extend(codec::le_u32s(&data));
                    h.provenance
                }
            };
            if sc.ids.len() - start != b {
                return Err(Error::Invalid(format!(
                    "block {j} holds {} tokens, a complete block needs {b}",
                    sc.ids.len() - start
                )));
            }
            sc.provs.push(prov);
        }
        Ok(())
    }

    /// Copies the children's gists of level-`level` nodes `chunk` (made by this commit or
    /// committed) into `sc.gists` and the nodes' merged provenance into `sc.provs`.
    fn gather_gists(&self, sc: &mut Scratch, prev: &Made, level: u8, chunk: &[u64]) -> Result<()> {
        let cfg = *self.config();
        let (b, d) = (cfg.block as u64, cfg.width as usize);
        sc.gists.clear();
        for j in chunk {
            let mut prov: Option<Provenance> = None;
            for c in j * b..(j + 1) * b {
                let p = match prev.get(c, d) {
                    Some((g, p)) => {
                        sc.gists.extend_from_slice(g);
                        p
                    }
                    None => {
                        let (h, data) = self.read_committed(NodeRef::new(level - 1, c))?;
                        cfg.dtype.decode(&data, &mut sc.gists);
                        h.provenance
                    }
                };
                prov = Some(prov.map_or(p, |q| q.merge(&p)));
            }
            sc.provs.push(prov.unwrap_or_default());
        }
        Ok(())
    }

    fn run_summarizer(
        &mut self,
        level: u8,
        nodes: &[u64],
        children: ChildData<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let cfg = *self.config();
        let batch = SummaryBatch {
            level,
            nodes,
            block: cfg.block as usize,
            width: cfg.width as usize,
            children,
        };
        self.summarizer.summarize(&batch, out)
    }

    /// Refuses a gist with a non-finite value, checked just before the gist is encoded, while it
    /// is in cache. A magnitude's bits plus the lowest exponent bit carry into the sign bit
    /// exactly when the exponent is all ones (±inf or NaN); OR-ing those sums vectorises with
    /// plain SSE2.
    fn check_finite(&self, node: NodeRef, gist: &[f32]) -> Result<()> {
        let carry = gist.iter().fold(0u32, |acc, v| {
            acc | (v.to_bits() & 0x7fff_ffff).wrapping_add(0x0080_0000)
        });
        if carry & 0x8000_0000 != 0 {
            return Err(Error::Summarizer {
                producer: self.summarizer.producer().to_string(),
                reason: format!("non-finite value in the gist of node {node}"),
            });
        }
        Ok(())
    }

    /// Publishes the writer's state as the head snapshot.
    pub(crate) fn publish(&self, storage: Arc<Storage>) {
        let mut head = self.shared.head.write().unwrap_or_else(|p| p.into_inner());
        *head = Head {
            storage,
            state: Arc::new(self.state.clone()),
        };
    }

    /// Writes the index checkpoint of the head version (so that the next open reads it instead
    /// of scanning the segments), after any checkpoint in flight; returns once it is written.
    pub fn write_checkpoint(&mut self) -> Result<()> {
        self.checkpointer.wait()?;
        self.checkpoint_job().write()?;
        self.bytes_since_checkpoint = 0;
        Ok(())
    }

    /// Waits for the checkpoint being written in the background, if any; its outcome.
    pub(crate) fn wait_for_checkpoint(&mut self) -> Result<()> {
        self.checkpointer.wait()
    }

    /// Starts a checkpoint of the head version on the checkpoint thread.
    fn start_checkpoint(&mut self) -> Result<()> {
        let job = self.checkpoint_job();
        self.checkpointer.start(job)?;
        self.bytes_since_checkpoint = 0;
        Ok(())
    }

    fn checkpoint_job(&self) -> checkpoint::Job {
        let state = self
            .shared
            .head
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .state
            .clone();
        checkpoint::Job {
            state,
            header: codec::FileHeader {
                magic: codec::CHECKPOINT_MAGIC,
                tree_id: self.shared.meta.tree_id,
                tag: 0,
                seq: self.gen,
                format: FORMAT_VERSION,
            },
            path: checkpoint_path(&self.storage.gen_dir),
            durable: self.opts.fsync == FsyncPolicy::EveryCommit,
        }
    }

    /// Names version `version` (a persistent snapshot, pinned against compaction).
    pub fn tag(&mut self, name: &str, version: u64) -> Result<()> {
        self.check_usable()?;
        if name.is_empty() || name.len() > 256 {
            return Err(Error::Invalid(format!(
                "snapshot name must be 1..=256 bytes, got {:?}",
                name
            )));
        }
        if self.history.commit(version).is_none() {
            return Err(Error::NoSuchVersion {
                version,
                oldest: self.history.oldest(),
                head: self.version(),
            });
        }
        self.log.append(
            &LogEntry::Tag {
                name: name.to_string(),
                version,
            },
            true,
        )?;
        self.history.tags.insert(name.to_string(), version);
        Ok(())
    }

    /// Removes the named snapshot `name`.
    pub fn untag(&mut self, name: &str) -> Result<()> {
        self.check_usable()?;
        if !self.history.tags.contains_key(name) {
            return Err(Error::Invalid(format!("no snapshot named {name:?}")));
        }
        self.log.append(
            &LogEntry::Untag {
                name: name.to_string(),
            },
            true,
        )?;
        self.history.tags.remove(name);
        Ok(())
    }

    /// Flushes telemetry and writes a checkpoint; uncommitted changes are discarded.
    pub fn close(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(t) = &self.shared.telemetry {
            t.flush()?;
        }
        self.checkpointer.wait()?;
        if !self.poisoned && self.bytes_since_checkpoint > 0 {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    /// The directory of the live generation.
    pub fn gen_dir(&self) -> PathBuf {
        self.storage.gen_dir.clone()
    }

    /// Versions pinned by live snapshots (in this process and, through pin files, others) and
    /// by named snapshots.
    pub fn pinned_versions(&self) -> Result<BTreeSet<u64>> {
        let mut v: BTreeSet<u64> = crate::snapshot::process_pins(&self.shared.dir)
            .into_iter()
            .collect();
        v.extend(crate::snapshot::file_pins(&self.shared.dir)?);
        v.extend(self.history.tags.values().copied());
        Ok(v)
    }

    pub(crate) fn shared_meta(&self) -> TreeMeta {
        self.shared.meta
    }

    pub(crate) fn replace_generation(
        &mut self,
        gen: u32,
        storage: Arc<Storage>,
        segs: Vec<SegmentWriter>,
        log: LogWriter,
        history: History,
        state: VersionState,
    ) {
        self.gen = gen;
        self.storage = storage.clone();
        self.segs = segs;
        self.log = log;
        self.history = history;
        self.state = state;
        self.publish(storage);
        self.bytes_since_checkpoint = 1;
    }

    pub(crate) fn ensure_no_pending(&self, what: &str) -> Result<()> {
        if self.has_pending() {
            return Err(Error::Invalid(format!(
                "commit pending changes before {what}"
            )));
        }
        self.check_usable()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Best effort: the commit log is the truth; a missing checkpoint only costs a rescan.
        let _ = self.finish();
    }
}

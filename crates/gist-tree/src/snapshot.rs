//! Snapshots: an immutable view of one version (snapshot isolation: a reader never sees a later
//! commit or a half-written record), with O(1) node reads, range reads and the working set a
//! focus allocator asks for. Also [`Reader`], the read-only handle for other processes, and the
//! pins that keep compaction from reclaiming versions in use.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::codec::{self, RecordHeader};
use crate::config::{TreeConfig, TreeMeta};
use crate::error::{Error, Result};
use crate::index::Loc;
use crate::log::History;
use crate::node::{Node, NodeData, NodeRef};
use crate::open::{gen_dir, load, on_stable_generation, Loaded, Mode};
use crate::segment::{RecordView, Storage};
use crate::state::{rebuild_state, VersionState};
use crate::telemetry::Telemetry;

/// The published head: the storage of the live generation and the newest committed state.
pub(crate) struct Head {
    pub storage: Arc<Storage>,
    pub state: Arc<VersionState>,
}

/// What the writer and its snapshots share.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub meta: TreeMeta,
    pub head: RwLock<Head>,
    /// Whether snapshots pin through files in `DIR/pins/` (read-only handles in other processes).
    pub pin_files: bool,
    pub telemetry: Option<Telemetry>,
}

static PIN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// In-process pins of every tree this process opened: canonical tree dir → version → live
/// snapshots. Process-wide, so that snapshots outlive the writer handle that made them.
static PINS: Mutex<BTreeMap<PathBuf, BTreeMap<u64, usize>>> = Mutex::new(BTreeMap::new());

fn with_pins<T>(dir: &Path, f: impl FnOnce(&mut BTreeMap<u64, usize>) -> T) -> T {
    let mut all = PINS.lock().unwrap_or_else(|p| p.into_inner());
    let pins = all.entry(dir.to_path_buf()).or_default();
    let out = f(pins);
    if pins.is_empty() {
        all.remove(dir);
    }
    out
}

/// Versions pinned by live snapshots in this process.
pub(crate) fn process_pins(dir: &Path) -> Vec<u64> {
    with_pins(dir, |p| p.keys().copied().collect())
}

/// The pins directory of a tree.
pub fn pins_dir(dir: &Path) -> PathBuf {
    dir.join("pins")
}

/// Keeps a version from being reclaimed while a snapshot of it lives.
struct Pin {
    shared: Arc<Shared>,
    version: u64,
    file: Option<PathBuf>,
}

impl Pin {
    /// Pins `version`: through a file in `DIR/pins/` for read-only handles, in this process
    /// otherwise — and in this process too when the file cannot be written (a read-only mount,
    /// a full disk): the handle then reads without writing. Its opened version stays readable
    /// anyway (its files are mapped); only [`Reader::snapshot_at`] an older version can then
    /// find it reclaimed by a compaction elsewhere.
    fn new(shared: &Arc<Shared>, version: u64) -> Self {
        let file = if shared.pin_files {
            write_pin_file(&shared.dir, version).ok()
        } else {
            None
        };
        if file.is_none() {
            with_pins(&shared.dir, |p| *p.entry(version).or_default() += 1);
        }
        Pin {
            shared: shared.clone(),
            version,
            file,
        }
    }
}

/// Writes a pin file for `version` in `DIR/pins/` and returns its path.
fn write_pin_file(dir: &Path, version: u64) -> Result<PathBuf> {
    let pins = pins_dir(dir);
    metarep_core::ensure_dir(&pins)?;
    let path = pins.join(format!(
        "{}-{}.pin",
        std::process::id(),
        PIN_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, format!("{version}\n")).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
            return;
        }
        with_pins(&self.shared.dir, |pins| {
            if let Some(n) = pins.get_mut(&self.version) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(&self.version);
                }
            }
        });
    }
}

/// Versions pinned by live pin files of other processes (stale files of dead processes are
/// removed).
pub(crate) fn file_pins(dir: &Path) -> Result<Vec<u64>> {
    let pdir = pins_dir(dir);
    let mut out = Vec::new();
    if !pdir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(&pdir).map_err(|e| Error::io(&pdir, e))? {
        let entry = entry.map_err(|e| Error::io(&pdir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid: Option<i32> = name.split('-').next().and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(process_alive);
        let version = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        match (alive, version) {
            (true, Some(v)) => out.push(v),
            _ => {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(out)
}

/// Whether the process `pid` that pinned a version still runs.
#[cfg(unix)]
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Without a way to ask, every pin is kept: a stale pin only delays reclaiming space, while
/// dropping a live reader's pin could reclaim data it still reads.
#[cfg(not(unix))]
fn process_alive(_pid: i32) -> bool {
    true
}

impl Shared {
    /// A snapshot of the newest committed version.
    pub(crate) fn snapshot(self: &Arc<Self>) -> Result<Snapshot> {
        let (storage, state) = {
            let head = self.head.read().unwrap_or_else(|p| p.into_inner());
            (head.storage.clone(), head.state.clone())
        };
        Ok(Snapshot {
            pin: Pin::new(self, state.version),
            storage,
            state,
        })
    }

    /// A snapshot of `version` (rebuilt from the segments when it is not the head).
    pub(crate) fn snapshot_at(
        self: &Arc<Self>,
        history: &History,
        version: u64,
    ) -> Result<Snapshot> {
        let head = self.snapshot()?;
        if version == head.version() {
            return Ok(head);
        }
        let commit = history.commit(version).ok_or(Error::NoSuchVersion {
            version,
            oldest: history.oldest(),
            head: head.version(),
        })?;
        let pin = Pin::new(self, version);
        let state = rebuild_state(&head.storage.gen_dir, &self.meta, history, commit, None)?;
        Ok(Snapshot {
            pin,
            storage: head.storage.clone(),
            state: Arc::new(state),
        })
    }
}

/// A node record read zero-copy from a mapped segment (checksum verified).
pub struct RawNode {
    /// The record's fixed header (node, version, provenance).
    pub header: RecordHeader,
    view: RecordView,
}

impl RawNode {
    /// The data bytes: little-endian `u32` token ids, or the gist in the tree's dtype.
    pub fn data(&self) -> &[u8] {
        &self.view.payload()[codec::NODE_HEADER..]
    }
}

/// One piece of a working-set plan: a token range or a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Piece {
    /// Raw tokens `[start, end)`.
    Tokens(Range<u64>),
    /// A node (a level-0 node means its whole block of tokens).
    Node(NodeRef),
}

/// One item of a fetched working set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum WorkingItem {
    /// Raw token ids starting at token `start`.
    Tokens {
        /// First token position.
        start: u64,
        /// The ids.
        ids: Vec<u32>,
    },
    /// A gist standing for its node's whole span.
    Gist {
        /// The node.
        node: NodeRef,
        /// Its token span.
        span: Range<u64>,
        /// The gist.
        gist: Vec<f32>,
    },
}

/// An immutable view of one committed version. Cheap to create (it shares the index chunks);
/// `Send + Sync`, so many threads can read one snapshot while the writer commits.
pub struct Snapshot {
    pin: Pin,
    storage: Arc<Storage>,
    state: Arc<VersionState>,
}

impl Snapshot {
    /// The version this snapshot reads.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// The tree's shape.
    pub fn config(&self) -> &TreeConfig {
        &self.storage.meta.config
    }

    /// Tokens in the stream at this version.
    pub fn token_count(&self) -> u64 {
        self.state.tokens
    }

    /// Number of levels (0 for an empty tree).
    pub fn levels(&self) -> usize {
        self.state.levels.len()
    }

    /// Node count of `level`.
    pub fn count(&self, level: u8) -> u64 {
        self.state.count(level)
    }

    /// The pruned root hiding `node`, if it is hidden.
    pub fn hidden_by(&self, node: NodeRef) -> Option<NodeRef> {
        self.state.hidden_by(node, self.config().block)
    }

    /// Whether `node` is a pruned subtree root.
    pub fn is_pruned_root(&self, node: NodeRef) -> bool {
        self.state.entry(node) & crate::index::PRUNED != 0 && node.index < self.count(node.level)
    }

    /// Every pruned subtree root.
    pub fn pruned_roots(&self) -> Vec<NodeRef> {
        self.state.pruned_roots()
    }

    fn loc(&self, node: NodeRef) -> Result<Loc> {
        let count = self.count(node.level);
        if node.index >= count {
            return Err(Error::NoSuchNode {
                node,
                version: self.version(),
                count,
            });
        }
        if let Some(root) = self.hidden_by(node) {
            return Err(Error::Pruned { node, root });
        }
        Loc::unpack(self.state.entry(node)).ok_or_else(|| {
            Error::corrupt(
                &self.storage.gen_dir,
                0,
                format!("node {node} has no record at version {}", self.version()),
            )
        })
    }

    /// Where `node`'s record lives: segment file, frame offset and frame length (for tools and
    /// benchmarks that read the bytes another way).
    pub fn locate(&self, node: NodeRef) -> Result<(PathBuf, u64, usize)> {
        let loc = self.loc(node)?;
        let view = self.storage.read(node.level, loc)?;
        Ok((
            crate::segment::segment_path(&self.storage.gen_dir, node.level, loc.seg),
            loc.offset,
            codec::FRAME_PREFIX + view.payload().len(),
        ))
    }

    /// Reads `node` without decoding its data (one index lookup, one checksum); counted in
    /// telemetry.
    pub fn get_raw(&self, node: NodeRef) -> Result<RawNode> {
        let raw = self.peek(node)?;
        self.record_access(node);
        Ok(raw)
    }

    /// Counts one read of `node` in telemetry without reading it: for a caller that reads a
    /// node once and then uses its own copy again (a working context re-reading a gist).
    pub fn record_access(&self, node: NodeRef) {
        if let Some(t) = self.pin.shared.telemetry.as_ref() {
            t.record(node);
        }
    }

    /// Like [`Snapshot::get_raw`] but not counted in telemetry (for maintenance such as choosing
    /// what to prune).
    pub fn peek(&self, node: NodeRef) -> Result<RawNode> {
        let loc = self.loc(node)?;
        let view = self.storage.read(node.level, loc)?;
        let path = || crate::segment::segment_path(&self.storage.gen_dir, node.level, loc.seg);
        let (header, data) = codec::decode_node(view.payload())
            .map_err(|e| Error::corrupt(path(), loc.offset, e.0))?;
        let want_len = if node.level == 0 {
            data.len()
        } else {
            self.config().gist_bytes()
        };
        if header.node != node || data.len() != want_len {
            return Err(Error::corrupt(
                path(),
                loc.offset,
                format!(
                    "index points node {node} at a record of node {} with {} data bytes",
                    header.node,
                    data.len()
                ),
            ));
        }
        Ok(RawNode { header, view })
    }

    /// Reads and decodes `node`.
    pub fn get(&self, node: NodeRef) -> Result<Node> {
        let raw = self.get_raw(node)?;
        let bytes = raw.data();
        let data = if node.level == 0 {
            NodeData::Tokens(codec::le_u32s(bytes).collect())
        } else {
            let mut g = Vec::with_capacity(self.config().width as usize);
            self.config().dtype.decode(bytes, &mut g);
            NodeData::Gist(g)
        };
        Ok(Node {
            node,
            written_at: raw.header.version,
            provenance: raw.header.provenance,
            data,
        })
    }

    /// The gist of a level ≥ 1 node.
    pub fn gist(&self, node: NodeRef) -> Result<Vec<f32>> {
        if node.level == 0 {
            return Err(Error::Invalid(format!(
                "node {node} is a token block, not a gist"
            )));
        }
        match self.get(node)?.data {
            NodeData::Gist(g) => Ok(g),
            NodeData::Tokens(_) => Err(Error::Invalid(format!("node {node} holds tokens"))),
        }
    }

    /// Token ids `[range.start, range.end)`.
    pub fn tokens(&self, range: Range<u64>) -> Result<Vec<u32>> {
        if range.start > range.end || range.end > self.token_count() {
            return Err(Error::Invalid(format!(
                "token range {}..{} outside 0..{} at version {}",
                range.start,
                range.end,
                self.token_count(),
                self.version()
            )));
        }
        let b = self.config().block as u64;
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        let mut pos = range.start;
        while pos < range.end {
            let blk = pos / b;
            let raw = self.get_raw(NodeRef::new(0, blk))?;
            let data = raw.data();
            let from = (pos - blk * b) as usize;
            let to = ((range.end - blk * b).min(b)) as usize;
            if to * 4 > data.len() {
                return Err(Error::Invalid(format!(
                    "block {blk} holds {} tokens, fewer than the stream length implies",
                    data.len() / 4
                )));
            }
            out.extend(codec::le_u32s(&data[from * 4..to * 4]));
            pos = blk * b + to as u64;
        }
        Ok(out)
    }

    /// Gists of `level` nodes `[range.start, range.end)`, shape `[n, width]` row-major.
    pub fn gists(&self, level: u8, range: Range<u64>) -> Result<Vec<f32>> {
        if level == 0 {
            return Err(Error::Invalid("level 0 holds tokens; use `tokens`".into()));
        }
        let mut out = Vec::with_capacity(
            (range.end.saturating_sub(range.start)) as usize * self.config().width as usize,
        );
        for i in range {
            let raw = self.get_raw(NodeRef::new(level, i))?;
            self.config().dtype.decode(raw.data(), &mut out);
        }
        Ok(out)
    }

    /// The coarsest visible cover of the token span `span` using nodes of level ≤ `max_level`:
    /// whole aligned complete nodes where they fit, raw tokens at the ragged edges. Where a span
    /// is hidden by a pruned subtree, the pruned root's gist stands for it (even above
    /// `max_level`, and even if it reaches outside `span`).
    pub fn cover(&self, span: Range<u64>, max_level: u8) -> Result<Vec<Piece>> {
        if span.start > span.end || span.end > self.token_count() {
            return Err(Error::Invalid(format!(
                "span {}..{} outside 0..{}",
                span.start,
                span.end,
                self.token_count()
            )));
        }
        let b = self.config().block;
        let mut out: Vec<Piece> = Vec::new();
        let mut pos = span.start;
        while pos < span.end {
            let block = NodeRef::new(0, pos / b as u64);
            if let Some(root) = self.hidden_by(block) {
                out.push(Piece::Node(root));
                pos = root.token_span(b).end;
                continue;
            }
            let mut best: Option<NodeRef> = None;
            for level in 1..=max_level.min(self.levels().saturating_sub(1) as u8) {
                let node = block.ancestor(level, b);
                let s = node.token_span(b);
                if s.start != pos || s.end > span.end || node.index >= self.count(level) {
                    break;
                }
                best = Some(node);
            }
            match best {
                Some(node) => {
                    out.push(Piece::Node(node));
                    pos = node.token_span(b).end;
                }
                None => {
                    let end = block.token_span(b).end.min(span.end);
                    match out.last_mut() {
                        Some(Piece::Tokens(r)) if r.end == pos => r.end = end,
                        _ => out.push(Piece::Tokens(pos..end)),
                    }
                    pos = end;
                }
            }
        }
        Ok(out)
    }

    /// Fetches a working set: raw tokens and gists for the given pieces, in order. Token pieces
    /// (and level-0 nodes) adjacent to each other come back merged.
    pub fn working_set(&self, pieces: &[Piece]) -> Result<Vec<WorkingItem>> {
        let b = self.config().block;
        let mut out: Vec<WorkingItem> = Vec::with_capacity(pieces.len());
        for p in pieces {
            let range = match p {
                Piece::Tokens(r) => r.clone(),
                Piece::Node(n) if n.level == 0 => {
                    n.token_span(b).start..n.token_span(b).end.min(self.token_count())
                }
                Piece::Node(n) => {
                    out.push(WorkingItem::Gist {
                        node: *n,
                        span: n.token_span(b),
                        gist: self.gist(*n)?,
                    });
                    continue;
                }
            };
            let ids = self.tokens(range.clone())?;
            match out.last_mut() {
                Some(WorkingItem::Tokens { start, ids: prev })
                    if *start + prev.len() as u64 == range.start =>
                {
                    prev.extend(ids)
                }
                _ => out.push(WorkingItem::Tokens {
                    start: range.start,
                    ids,
                }),
            }
        }
        Ok(out)
    }
}

/// The canonical form of a tree directory (the key of its process-wide pins).
pub(crate) fn canonical(dir: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))
}

/// Loads the live generation of `dir` read-only and maps its committed segment files (retried
/// when a compaction in another process replaces the generation between the steps).
pub(crate) fn load_mapped(dir: &Path, meta: &TreeMeta) -> Result<(Loaded, Arc<Storage>)> {
    on_stable_generation(
        dir,
        || {
            let loaded = load(dir, meta, Mode::ReadOnly, true)?;
            let storage = Storage::shared(gen_dir(dir, loaded.gen), *meta);
            storage.map_all(&loaded.state.hwms)?;
            Ok((loaded, storage))
        },
        Result::is_err,
    )
}

/// A read-only handle for processes other than the writer's: it never modifies the tree (an
/// uncommitted tail of a live writer is simply ignored) and pins the versions its snapshots read
/// through files in `DIR/pins/`, which compaction honours.
pub struct Reader {
    shared: Arc<Shared>,
    history: History,
}

impl Reader {
    /// Opens the newest committed version of the tree in `dir` read-only; with `telemetry`, its
    /// reads are recorded in `telemetry.log`.
    ///
    /// Every committed segment file is mapped at open, so the opened version stays readable
    /// while a writer in another process compacts the tree and unlinks those files.
    pub fn open(dir: &Path, telemetry: bool) -> Result<Reader> {
        let meta = TreeMeta::load(dir)?;
        let (loaded, storage) = load_mapped(&canonical(dir)?, &meta)?;
        let telemetry = if telemetry {
            Some(Telemetry::open(dir, &meta, false)?.0)
        } else {
            None
        };
        Ok(Reader {
            shared: Arc::new(Shared {
                dir: canonical(dir)?,
                meta,
                head: RwLock::new(Head {
                    storage,
                    state: Arc::new(loaded.state),
                }),
                pin_files: true,
                telemetry,
            }),
            history: loaded.history,
        })
    }

    /// A snapshot of the newest version seen at open.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.shared.snapshot()
    }

    /// A snapshot of any readable version.
    pub fn snapshot_at(&self, version: u64) -> Result<Snapshot> {
        self.shared.snapshot_at(&self.history, version)
    }

    /// The commit history (versions, tags) seen at open.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The tree's metadata.
    pub fn meta(&self) -> &TreeMeta {
        &self.shared.meta
    }

    /// The tree directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

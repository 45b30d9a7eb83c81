//! One version of the tree in memory: token count, per-level index and high-water marks; plus the
//! scan that rebuilds it from segment files.

use std::path::Path;

use memmap2::Mmap;

use crate::codec::{self, CommitRecord, FrameRead, Hwm, PruneOp, RecordHeader, HEADER_LEN};
use crate::config::TreeMeta;
use crate::error::{Error, Result};
use crate::index::{LevelIndex, Loc, ABSENT, PRUNED};
use crate::log::History;
use crate::node::NodeRef;
use crate::segment::{check_segment_header, segment_path};

/// Node count of every level for a stream of `tokens` tokens in a tree of arity `block`:
/// level 0 counts blocks (the last may be partial), level k ≥ 1 counts complete gists.
pub fn level_counts(tokens: u64, block: u32) -> Vec<u64> {
    let b = block as u64;
    let mut counts = Vec::new();
    if tokens == 0 {
        return counts;
    }
    counts.push(tokens.div_ceil(b));
    let mut n = tokens / b;
    while n > 0 {
        counts.push(n);
        n /= b;
    }
    counts
}

/// A version of the tree: what a snapshot reads.
#[derive(Debug, Clone, Default)]
pub struct VersionState {
    /// The version number.
    pub version: u64,
    /// Tokens in the stream.
    pub tokens: u64,
    /// Per-level index (its length is the level's node count).
    pub levels: Vec<LevelIndex>,
    /// High-water mark per level with segments.
    pub hwms: Vec<Hwm>,
    /// Number of pruned subtree roots.
    pub pruned: u64,
}

impl VersionState {
    /// Resizes every level to the counts implied by `tokens`.
    pub fn set_tokens(&mut self, tokens: u64, block: u32) {
        let counts = level_counts(tokens, block);
        self.levels.resize_with(counts.len(), LevelIndex::default);
        for (ix, n) in self.levels.iter_mut().zip(&counts) {
            ix.resize(*n);
        }
        self.tokens = tokens;
    }

    /// Node count of `level` (0 past the top).
    pub fn count(&self, level: u8) -> u64 {
        self.levels.get(level as usize).map_or(0, LevelIndex::len)
    }

    /// The entry of a node (ABSENT if out of range).
    pub fn entry(&self, node: NodeRef) -> u64 {
        self.levels
            .get(node.level as usize)
            .map_or(ABSENT, |l| l.get(node.index))
    }

    /// Points `node` at `loc`, keeping its pruned flag.
    pub fn set_loc(&mut self, node: NodeRef, loc: Loc) {
        let level = &mut self.levels[node.level as usize];
        let old = level.get(node.index);
        level.set(node.index, loc.pack() | (old & PRUNED));
    }

    /// The pruned root hiding `node`, if any (a root hides its strict descendants only).
    pub fn hidden_by(&self, node: NodeRef, block: u32) -> Option<NodeRef> {
        if self.pruned == 0 {
            return None;
        }
        (node.level as usize + 1..self.levels.len())
            .map(|level| node.ancestor(level as u8, block))
            .find(|a| self.levels[a.level as usize].get(a.index) & PRUNED != 0)
    }

    /// Applies a prune or restore to the flags (no checks).
    pub fn apply_op(&mut self, op: PruneOp) {
        let (node, set) = match op {
            PruneOp::Prune(n) => (n, true),
            PruneOp::Restore(n) => (n, false),
        };
        if let Some(level) = self.levels.get_mut(node.level as usize) {
            if node.index < level.len() {
                let e = level.get(node.index);
                if set && e & PRUNED == 0 {
                    level.set(node.index, e | PRUNED);
                    self.pruned += 1;
                } else if !set && e & PRUNED != 0 {
                    level.set(node.index, e & !PRUNED);
                    self.pruned -= 1;
                }
            }
        }
    }

    /// Every pruned subtree root, by level then index.
    pub fn pruned_roots(&self) -> Vec<NodeRef> {
        if self.pruned == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (l, ix) in self.levels.iter().enumerate() {
            for (i, e) in ix.to_vec().into_iter().enumerate() {
                if e & PRUNED != 0 {
                    out.push(NodeRef::new(l as u8, i as u64));
                }
            }
        }
        out
    }
}

/// Maps a whole segment file read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: only committed ranges are dereferenced, and those are never modified (see
    // `Storage::map_covering`).
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Calls `f(loc, header)` for every record of `level` from `from` up to `to` (high-water marks),
/// checksumming each; any damage inside that committed range is an error naming file and offset.
pub fn scan_level(
    gen_dir: &Path,
    meta: &TreeMeta,
    level: u8,
    from: Hwm,
    to: Hwm,
    mut f: impl FnMut(Loc, &RecordHeader, &[u8]) -> Result<()>,
) -> Result<()> {
    if to.end == 0 {
        return Ok(());
    }
    for seg in from.seg..=to.seg {
        let path = segment_path(gen_dir, level, seg);
        if !path.exists() {
            return Err(Error::MissingSegment { path, level });
        }
        let map = map_file(&path)?;
        check_segment_header(&map, &path, meta, level, seg)?;
        let start = if seg == from.seg && from.end > 0 {
            from.end as usize
        } else {
            HEADER_LEN
        };
        let end = if seg == to.seg {
            to.end as usize
        } else {
            map.len()
        };
        if map.len() < end {
            return Err(Error::corrupt(
                &path,
                map.len() as u64,
                format!(
                    "segment is {} bytes but {end} bytes are committed (truncated)",
                    map.len()
                ),
            ));
        }
        let mut pos = start;
        while pos < end {
            let (payload, total) = match codec::read_frame(&map[pos..end]) {
                FrameRead::Ok { payload, total } => (payload, total),
                FrameRead::Truncated => {
                    return Err(Error::corrupt(
                        &path,
                        pos as u64,
                        "record cut short inside the committed range",
                    ))
                }
                FrameRead::Bad(why) => return Err(Error::corrupt(&path, pos as u64, why)),
            };
            let (h, data) =
                codec::decode_node(payload).map_err(|e| Error::corrupt(&path, pos as u64, e.0))?;
            if h.node.level != level {
                return Err(Error::corrupt(
                    &path,
                    pos as u64,
                    format!(
                        "record of level {} in a level-{level} segment",
                        h.node.level
                    ),
                ));
            }
            f(
                Loc {
                    seg,
                    offset: pos as u64,
                },
                &h,
                data,
            )
            .map_err(|e| match e {
                Error::Invalid(why) => Error::corrupt(&path, pos as u64, why),
                other => other,
            })?;
            pos += total;
        }
    }
    Ok(())
}

/// Rebuilds the state of `commit` by scanning every level up to its high-water marks (optionally
/// continuing from `base`, a state whose high-water marks are `base.hwms`) and replaying prunes.
pub fn rebuild_state(
    gen_dir: &Path,
    meta: &TreeMeta,
    history: &History,
    commit: &CommitRecord,
    base: Option<VersionState>,
) -> Result<VersionState> {
    let block = meta.config.block;
    let (mut state, replay_after) = match base {
        Some(s) => {
            let v = s.version;
            (s, Some(v))
        }
        None => (VersionState::default(), None),
    };
    state.set_tokens(commit.tokens, block);
    let version = commit.version;
    for (level, to) in commit.hwms.iter().enumerate() {
        let from = state.hwms.get(level).copied().unwrap_or_default();
        let count = state.count(level as u8);
        let ix = state.levels.get_mut(level);
        let Some(ix) = ix else {
            // A level with segments but no nodes at this version: records must not exist.
            if to.end > HEADER_LEN as u64 {
                return Err(Error::corrupt(
                    segment_path(gen_dir, level as u8, to.seg),
                    0,
                    format!("level {level} has records but no nodes at version {version}"),
                ));
            }
            continue;
        };
        scan_level(gen_dir, meta, level as u8, from, *to, |loc, h, _| {
            if h.version > version {
                return Err(Error::Invalid(format!(
                    "record written at version {} inside version {version}'s committed range",
                    h.version
                )));
            }
            if h.node.index >= count {
                return Err(Error::Invalid(format!(
                    "record of node {} but level {level} has {count} nodes at version {version}",
                    h.node
                )));
            }
            let old = ix.get(h.node.index);
            ix.set(h.node.index, loc.pack() | (old & PRUNED));
            Ok(())
        })?;
    }
    state.hwms = commit.hwms.clone();
    for c in &history.commits {
        if c.version > version {
            break;
        }
        if replay_after.is_some_and(|v| c.version <= v) {
            continue;
        }
        for op in &c.ops {
            state.apply_op(*op);
        }
    }
    state.version = version;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert!(level_counts(0, 4).is_empty());
        assert_eq!(level_counts(3, 4), vec![1]);
        assert_eq!(level_counts(4, 4), vec![1, 1]);
        assert_eq!(level_counts(37, 4), vec![10, 9, 2]);
        assert_eq!(level_counts(64, 4), vec![16, 16, 4, 1]);
    }
}

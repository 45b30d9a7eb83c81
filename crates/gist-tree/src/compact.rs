//! Compaction: rewrites the live generation into a new one that keeps every version from the
//! oldest pinned one (live snapshots, pin files, named snapshots; the head if none) to the head,
//! and drops records only those versions cannot see — records superseded before that floor and
//! the descendants of subtrees pruned throughout. The switch is one atomic rename of `CURRENT`;
//! a crash before it leaves the old generation in charge.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use crate::codec::{self, CommitRecord, Hwm, LogEntry, PruneOp, HEADER_LEN};
use crate::error::{Error, Result};
use crate::index::Loc;
use crate::log::{History, LogWriter};
use crate::node::NodeRef;
use crate::open::{gen_dir, write_current};
use crate::segment::{sync_dir, SegmentWriter, Storage};
use crate::state::{rebuild_state, scan_level, VersionState};
use crate::writer::Writer;

/// What a compaction kept and reclaimed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactReport {
    /// The oldest version still readable afterwards.
    pub floor: u64,
    /// Versions that became unreadable.
    pub versions_dropped: u64,
    /// Records before.
    pub records_before: u64,
    /// Records after.
    pub records_after: u64,
    /// Records dropped because every kept version sees a newer record of the node.
    pub superseded_dropped: u64,
    /// Records dropped because they lie under a subtree pruned at every kept version.
    pub pruned_dropped: u64,
    /// Segment bytes before.
    pub bytes_before: u64,
    /// Segment bytes after.
    pub bytes_after: u64,
}

fn segment_bytes(gen: &Path) -> u64 {
    let mut total = 0;
    if let Ok(levels) = std::fs::read_dir(gen) {
        for l in levels.flatten() {
            if let Ok(files) = std::fs::read_dir(l.path()) {
                for f in files.flatten() {
                    total += f.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
    }
    total
}

impl Writer {
    /// Compacts the tree (see the module docs). Pending changes must be committed first.
    pub fn compact(&mut self) -> Result<CompactReport> {
        self.ensure_no_pending("compaction")?;
        // A checkpoint still being written into the old generation finishes first.
        self.wait_for_checkpoint()?;
        let meta = self.shared_meta();
        let block = meta.config.block;
        let head = self.version();
        let oldest = self.history.oldest();
        let floor = self
            .pinned_versions()?
            .into_iter()
            .filter(|v| *v >= oldest)
            .min()
            .unwrap_or(head)
            .min(head);
        let old_gen = self.gen_dir();
        let floor_state = if floor == head {
            self.state.clone()
        } else {
            let c = self
                .history
                .commit(floor)
                .ok_or_else(|| Error::Invalid(format!("version {floor} missing from history")))?;
            rebuild_state(&old_gen, &meta, &self.history, c, None)?
        };
        let retained: Vec<CommitRecord> = self
            .history
            .commits
            .iter()
            .filter(|c| c.version >= floor)
            .cloned()
            .collect();
        let mut always_pruned: HashSet<NodeRef> = floor_state.pruned_roots().into_iter().collect();
        for c in &retained[1..] {
            for op in &c.ops {
                if let PruneOp::Restore(n) = op {
                    always_pruned.remove(n);
                }
            }
        }
        let top = self.state.levels.len();
        let droppable = |node: NodeRef| -> bool {
            if always_pruned.is_empty() {
                return false;
            }
            (node.level as usize + 1..top)
                .any(|level| always_pruned.contains(&node.ancestor(level as u8, block)))
        };

        let new_gen_no = self.gen + 1;
        let new_gen = gen_dir(self.dir(), new_gen_no);
        if new_gen.exists() {
            std::fs::remove_dir_all(&new_gen).map_err(|e| Error::io(&new_gen, e))?;
        }
        metarep_core::ensure_dir(&new_gen)?;
        let head_hwms = self.state.hwms.clone();
        let mut report = CompactReport {
            floor,
            versions_dropped: floor - oldest,
            bytes_before: segment_bytes(&old_gen),
            ..CompactReport::default()
        };
        let mut segs = Vec::with_capacity(head_hwms.len());
        let mut new_hwms: Vec<Vec<Hwm>> = Vec::with_capacity(head_hwms.len());
        for (level, to) in head_hwms.iter().enumerate() {
            let level = level as u8;
            let mut w =
                SegmentWriter::open(&new_gen, &meta, (level, 0), 0, self.opts.write_buffer)?;
            let mut ends: Vec<Option<Hwm>> = vec![None; retained.len()];
            let mut payload = Vec::new();
            scan_level(
                &old_gen,
                &meta,
                level,
                Hwm::default(),
                *to,
                |loc: Loc, h, data| {
                    report.records_before += 1;
                    let live_at_floor = Loc::unpack(floor_state.entry(h.node)) == Some(loc);
                    if h.version <= floor && !live_at_floor {
                        report.superseded_dropped += 1;
                        return Ok(());
                    }
                    if droppable(h.node) {
                        report.pruned_dropped += 1;
                        return Ok(());
                    }
                    payload.clear();
                    codec::encode_node(h, data, &mut payload);
                    w.append(&meta, &payload)?;
                    report.records_after += 1;
                    ends[(h.version.max(floor) - floor) as usize] = Some(w.hwm());
                    Ok(())
                },
            )?;
            w.flush(true, false)?;
            let mut cur = Hwm {
                seg: 0,
                end: HEADER_LEN as u64,
            };
            new_hwms.push(
                ends.into_iter()
                    .map(|e| {
                        if let Some(e) = e {
                            cur = e;
                        }
                        cur
                    })
                    .collect(),
            );
            segs.push(w);
        }

        let mut log = LogWriter::create(&new_gen, &meta, new_gen_no)?;
        let mut history = History::default();
        for (i, c) in retained.iter().enumerate() {
            let ops = if i == 0 {
                floor_state
                    .pruned_roots()
                    .into_iter()
                    .map(PruneOp::Prune)
                    .collect()
            } else {
                c.ops.clone()
            };
            let rec = CommitRecord {
                version: c.version,
                timestamp_ms: c.timestamp_ms,
                tokens: c.tokens,
                hwms: (0..c.hwms.len()).map(|l| new_hwms[l][i]).collect(),
                ops,
                // Every segment the copy sealed is recorded with the last kept commit.
                sealed: if i + 1 == retained.len() {
                    segs.iter_mut()
                        .flat_map(SegmentWriter::take_sealed)
                        .collect()
                } else {
                    Vec::new()
                },
            };
            log.append(&LogEntry::Commit(rec.clone()), false)?;
            history.commits.push(rec);
        }
        for (name, version) in &self.history.tags {
            log.append(
                &LogEntry::Tag {
                    name: name.clone(),
                    version: *version,
                },
                false,
            )?;
        }
        history.tags = self.history.tags.clone();
        log.sync()?;
        sync_dir(&new_gen)?;

        let head_commit = history
            .head()
            .cloned()
            .ok_or_else(|| Error::Invalid("compaction kept no commit".into()))?;
        let new_state: VersionState = rebuild_state(&new_gen, &meta, &history, &head_commit, None)?;
        if new_state.tokens != self.state.tokens || new_state.pruned != self.state.pruned {
            return Err(Error::Invalid(
                "compaction produced a head that differs from the old one; old generation kept"
                    .into(),
            ));
        }
        // Snapshots of the old generation keep reading from full-length maps after the unlink.
        self.storage.map_all(&head_hwms)?;
        write_current(self.dir(), new_gen_no)?;
        std::fs::remove_dir_all(&old_gen).map_err(|e| Error::io(&old_gen, e))?;
        report.bytes_after = segment_bytes(&new_gen);
        let storage = Storage::shared(new_gen, meta);
        self.replace_generation(new_gen_no, storage, segs, log, history, new_state);
        self.write_checkpoint()?;
        Ok(report)
    }
}

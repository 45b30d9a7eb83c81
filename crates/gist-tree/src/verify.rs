//! `verify`: a read-only check of a whole tree — every committed record's checksum and header,
//! the commit log, segment headers and lengths, the index checkpoint, the telemetry log and any
//! file the tree did not write. It never modifies the tree and never panics on damage: each
//! problem is reported with the file it is in.

use std::path::Path;

use serde::Serialize;

use crate::codec::{self, Hwm};
use crate::config::TreeMeta;
use crate::error::Result;
use crate::index::{ABSENT, PRUNED};
use crate::log_end::{end_path, EndRead};
use crate::node::NodeRef;
use crate::open::{checkpoint_path, gen_dir, load, on_stable_generation, Mode};
use crate::segment::segment_path;
use crate::state::scan_level;
use crate::telemetry::AccessStats;

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// The newest committed version.
    pub version: u64,
    /// The oldest readable version.
    pub oldest: u64,
    /// Tokens at the newest version.
    pub tokens: u64,
    /// Committed records checked.
    pub records: u64,
    /// Committed record bytes checked.
    pub bytes: u64,
    /// Bytes past the committed high-water marks (a live writer's pending work, or what
    /// recovery will cut after a crash).
    pub uncommitted_bytes: u64,
    /// Problems, each naming the file (empty when the tree is sound).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the tree in `dir`. An `Err` means `dir` is not a readable tree at all (no or
/// unreadable `tree.json`); damage inside the tree is listed in [`VerifyReport::problems`].
/// A check that found problems while a compaction in another process replaced the generation
/// is repeated on the new one.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    on_stable_generation(
        dir,
        || verify_generation(dir),
        |r| r.as_ref().is_ok_and(|r| !r.ok()),
    )
}

/// One pass of [`verify`] over the generation `CURRENT` names when it starts.
fn verify_generation(dir: &Path) -> Result<VerifyReport> {
    let meta = TreeMeta::load(dir)?;
    let mut report = VerifyReport::default();
    let loaded = match load(dir, &meta, Mode::ReadOnly, false) {
        Ok(l) => l,
        Err(e) => {
            report.problems.push(e.to_string());
            return Ok(report);
        }
    };
    let state = &loaded.state;
    report.version = state.version;
    report.oldest = loaded.history.oldest();
    report.tokens = state.tokens;
    for f in &loaded.report.foreign_files {
        report.problems.push(format!(
            "foreign file {}: not written by this tree",
            f.display()
        ));
    }
    let gen = gen_dir(dir, loaded.gen);
    match &loaded.end {
        EndRead::Found(_) => {}
        EndRead::Missing => report.problems.push(format!(
            "{}: missing (it records the commit log's end after every append; without it a \
             commit log cut back to an entry boundary goes unnoticed; the next writer \
             rewrites it)",
            end_path(&gen).display()
        )),
        EndRead::Damaged(why) => report.problems.push(format!(
            "{why} (no evidence of the commit log's end; the next writer rewrites it)"
        )),
    }
    report.uncommitted_bytes += loaded.log_tail.torn_bytes;
    for (level, h) in state.hwms.iter().enumerate() {
        let level = level as u8;
        if let Err(e) = scan_level(&gen, &meta, level, Hwm::default(), *h, |_, _, data| {
            report.records += 1;
            report.bytes += (codec::FRAME_PREFIX + codec::NODE_HEADER + data.len()) as u64;
            Ok(())
        }) {
            report.problems.push(e.to_string());
        }
        let mut seg = h.seg;
        loop {
            let p = segment_path(&gen, level, seg);
            let Ok(m) = std::fs::metadata(&p) else { break };
            report.uncommitted_bytes += if seg == h.seg {
                m.len().saturating_sub(h.end)
            } else {
                m.len()
            };
            seg += 1;
        }
    }
    // High-water marks never move backwards.
    for pair in loaded.history.commits.windows(2) {
        for (l, (a, b)) in pair[0].hwms.iter().zip(&pair[1].hwms).enumerate() {
            if (b.seg, b.end) < (a.seg, a.end) {
                report.problems.push(format!(
                    "{}: level {l} high-water mark moves back between versions {} and {}",
                    crate::log::log_path(&gen).display(),
                    pair[0].version,
                    pair[1].version
                ));
            }
        }
    }
    // Every visible node has a record.
    for (l, ix) in state.levels.iter().enumerate() {
        for (i, e) in ix.to_vec().into_iter().enumerate() {
            let node = NodeRef::new(l as u8, i as u64);
            if e & ABSENT != 0 && state.hidden_by(node, meta.config.block).is_none() {
                report.problems.push(format!(
                    "{}: node {node} has no record at version {}",
                    gen.display(),
                    state.version
                ));
            }
        }
    }
    let ck = checkpoint_path(&gen);
    if ck.exists() {
        match std::fs::read(&ck)
            .map_err(|e| e.to_string())
            .and_then(|b| codec::parse_checkpoint(&b).map_err(|e| e.0))
        {
            Err(e) => report
                .problems
                .push(format!("{}: {e} (open rescans instead)", ck.display())),
            Ok((h, c)) => {
                if h.tree_id != meta.tree_id {
                    report.problems.push(format!(
                        "foreign file {}: checkpoint of another tree",
                        ck.display()
                    ));
                } else if c.version == state.version {
                    let want: Vec<Vec<u64>> = state.levels.iter().map(|l| l.to_vec()).collect();
                    let strip = |v: &Vec<Vec<u64>>| -> Vec<Vec<u64>> {
                        v.iter()
                            .map(|l| l.iter().map(|e| e & !PRUNED).collect())
                            .collect()
                    };
                    if strip(&want) != strip(&c.entries) || c.hwms != state.hwms {
                        report.problems.push(format!(
                            "{}: disagrees with the records at version {}",
                            ck.display(),
                            c.version
                        ));
                    }
                }
            }
        }
    }
    match AccessStats::load(dir, &meta) {
        Ok(AccessStats {
            damage: Some(d), ..
        }) => report.problems.push(format!(
            "telemetry damage (advisory: the tree's data is unaffected; the writer cuts it \
             on open): {d}"
        )),
        Ok(_) => {}
        Err(e) => report.problems.push(e.to_string()),
    }
    Ok(report)
}

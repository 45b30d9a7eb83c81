//! `stats`: a summary of a tree — versions, named snapshots, nodes and bytes per level, pruned
//! subtrees, and the access telemetry (totals, per level, hottest nodes, last access).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::open::gen_dir;
use crate::snapshot::Reader;
use crate::telemetry::AccessStats;

/// One level's size.
#[derive(Debug, Clone, Serialize)]
pub struct LevelStats {
    /// The level.
    pub level: u8,
    /// Nodes at the head version.
    pub nodes: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes in segment files (all versions).
    pub bytes: u64,
}

/// One node's access count.
#[derive(Debug, Clone, Serialize)]
pub struct HotNode {
    /// `level:index`.
    pub node: String,
    /// Reads.
    pub count: u64,
    /// Unix milliseconds of the last read.
    pub last_ms: u64,
}

/// Access telemetry summed up.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryStats {
    /// Reads recorded.
    pub total_accesses: u64,
    /// Distinct nodes read.
    pub distinct_nodes: u64,
    /// Reads per level.
    pub per_level: Vec<u64>,
    /// The most-read nodes.
    pub hottest: Vec<HotNode>,
    /// Unix milliseconds of the last read recorded.
    pub last_access_ms: u64,
    /// Batches in the telemetry log.
    pub batches: u64,
}

/// The whole summary.
#[derive(Debug, Clone, Serialize)]
pub struct TreeStats {
    /// Arity, width, dtype, segment size.
    pub config: crate::config::TreeConfig,
    /// The newest version.
    pub version: u64,
    /// The oldest readable version.
    pub oldest: u64,
    /// Named snapshots.
    pub tags: BTreeMap<String, u64>,
    /// Tokens at the newest version.
    pub tokens: u64,
    /// Per-level sizes.
    pub levels: Vec<LevelStats>,
    /// Pruned subtree roots (`level:index`).
    pub pruned_roots: Vec<String>,
    /// Access telemetry.
    pub telemetry: TelemetryStats,
}

impl TreeStats {
    /// Collects the summary of the tree in `dir` (read-only), listing the `top` hottest nodes.
    pub fn collect(dir: &Path, top: usize) -> Result<TreeStats> {
        let reader = Reader::open(dir, false)?;
        let snap = reader.snapshot()?;
        let meta = *reader.meta();
        let gen = gen_dir(dir, crate::open::read_current(dir)?);
        let levels = (0..snap.levels() as u8)
            .map(|l| {
                let files: Vec<u64> = std::fs::read_dir(crate::segment::level_dir(&gen, l))
                    .map(|rd| {
                        rd.flatten()
                            .filter_map(|f| f.metadata().ok().map(|m| m.len()))
                            .collect()
                    })
                    .unwrap_or_default();
                LevelStats {
                    level: l,
                    nodes: snap.count(l),
                    segments: files.len() as u64,
                    bytes: files.iter().sum(),
                }
            })
            .collect();
        let access = AccessStats::load(dir, &meta)?;
        let mut per_level = vec![0u64; snap.levels()];
        for (n, a) in &access.nodes {
            if let Some(c) = per_level.get_mut(n.level as usize) {
                *c += a.count;
            }
        }
        let mut hot: Vec<_> = access.nodes.iter().collect();
        hot.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let telemetry = TelemetryStats {
            total_accesses: access.total(),
            distinct_nodes: access.nodes.len() as u64,
            per_level,
            hottest: hot
                .into_iter()
                .take(top)
                .map(|(n, a)| HotNode {
                    node: n.to_string(),
                    count: a.count,
                    last_ms: a.last_ms,
                })
                .collect(),
            last_access_ms: access.nodes.values().map(|a| a.last_ms).max().unwrap_or(0),
            batches: access.batches,
        };
        Ok(TreeStats {
            config: meta.config,
            version: snap.version(),
            oldest: reader.history().oldest(),
            tags: reader.history().tags.clone(),
            tokens: snap.token_count(),
            levels,
            pruned_roots: snap.pruned_roots().iter().map(|n| n.to_string()).collect(),
            telemetry,
        })
    }
}

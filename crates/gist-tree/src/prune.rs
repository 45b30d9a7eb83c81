//! Choosing what to prune: nodes of one level whose utility falls below a threshold, where the
//! utility is a built-in [`Signal`] (telemetry access counts, recency, retrieval score) or any
//! closure.

use crate::error::{Error, Result};
use crate::node::NodeRef;
use crate::snapshot::Snapshot;
use crate::telemetry::AccessStats;

/// A built-in utility signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Reads of the node and its descendants (telemetry).
    Accesses,
    /// Unix milliseconds of the last read of the node or a descendant (0 = never).
    Recency,
    /// The node's retrieval score (nodes without one are never chosen).
    Score,
}

impl Signal {
    /// Parses `accesses`, `recency` or `score`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "accesses" => Ok(Signal::Accesses),
            "recency" => Ok(Signal::Recency),
            "score" => Ok(Signal::Score),
            other => Err(Error::Invalid(format!(
                "unknown utility signal `{other}`; expected accesses, recency or score"
            ))),
        }
    }
}

/// Visible, unpruned nodes of `level` whose `utility` is below `threshold`, in index order.
pub fn select_below(
    snap: &Snapshot,
    level: u8,
    threshold: f64,
    mut utility: impl FnMut(NodeRef) -> Result<f64>,
) -> Result<Vec<NodeRef>> {
    if level == 0 || level as usize >= snap.levels() {
        return Err(Error::Invalid(format!(
            "prune level must be in 1..{} at version {}, got {level}",
            snap.levels(),
            snap.version()
        )));
    }
    let mut out = Vec::new();
    for i in 0..snap.count(level) {
        let node = NodeRef::new(level, i);
        if snap.hidden_by(node).is_some() || snap.is_pruned_root(node) {
            continue;
        }
        if utility(node)? < threshold {
            out.push(node);
        }
    }
    Ok(out)
}

/// Nodes of `level` whose built-in `signal` is below `threshold`.
pub fn select_by_signal(
    snap: &Snapshot,
    level: u8,
    threshold: f64,
    signal: Signal,
    access: &AccessStats,
) -> Result<Vec<NodeRef>> {
    let rolled = access.roll_up(level, snap.config().block);
    select_below(snap, level, threshold, |node| {
        let a = rolled.get(&node.index).copied().unwrap_or_default();
        Ok(match signal {
            Signal::Accesses => a.count as f64,
            Signal::Recency => a.last_ms as f64,
            Signal::Score => snap
                .peek(node)?
                .header
                .provenance
                .score
                .map_or(f64::INFINITY, f64::from),
        })
    })
}

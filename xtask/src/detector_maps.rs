//! The heat maps figures share: one per head detector (layer × head) with a table of every
//! head's four scores, and activation-patching maps over layers and positions.

use metarep_circuits::detectors::HeadScores;
use metarep_eval::plot::{Heatmap, HeatmapPlot};
use metarep_eval::table::{Cell, Table};

use crate::error::BoxError;
use crate::output::ResultDir;

/// Writes `<id>_induction.svg`, `<id>_previous_token.svg`, `<id>_duplicate_token.svg`,
/// `<id>_prefix_matching.svg` and `<id>_heads.{csv,md}` for the scores of `model` on
/// `[BOS, s, s]` sequences with `|s| = segment`.
pub fn write(
    out: &ResultDir,
    id: &str,
    model: &str,
    segment: usize,
    scores: &HeadScores,
) -> Result<(), BoxError> {
    let maps = [
        ("induction", "induction score", &scores.induction),
        (
            "previous_token",
            "previous-token score",
            &scores.previous_token,
        ),
        (
            "duplicate_token",
            "duplicate-token score",
            &scores.duplicate_token,
        ),
        (
            "prefix_matching",
            "prefix-matching score",
            &scores.prefix_matching,
        ),
    ];
    for (file, what, values) in maps {
        let title = format!("{id}: {what} per head ({model}, [BOS, s, s], |s| = {segment})");
        let map = Heatmap::layer_by_head(title, "mean attention weight", values);
        out.plot(&format!("{id}_{file}"), &map)?;
    }
    out.table(&format!("{id}_heads"), &head_table(scores)?)
}

/// What activation-patching maps show, for their colour bars.
pub const RESTORED: &str = "share of the logit difference restored";

/// A patching map of the residual stream, `values[layer][position]` (`hook_resid_pre`), with
/// columns named `positions`.
pub fn resid_map(title: &str, positions: &[String], values: &[Vec<f64>]) -> HeatmapPlot {
    Heatmap::layer_by_position(title, "hook_resid_pre", RESTORED, positions, values)
}

/// One row per head: layer, head and the four scores.
fn head_table(s: &HeadScores) -> Result<Table, BoxError> {
    let mut t = Table::new(vec![
        "layer",
        "head",
        "induction",
        "previous-token",
        "duplicate-token",
        "prefix-matching",
    ]);
    for (l, row) in s.induction.iter().enumerate() {
        for h in 0..row.len() {
            t.push_row(vec![
                Cell::Int(l as i64),
                Cell::Int(h as i64),
                Cell::Num(s.induction[l][h]),
                Cell::Num(s.previous_token[l][h]),
                Cell::Num(s.duplicate_token[l][h]),
                Cell::Num(s.prefix_matching[l][h]),
            ])?;
        }
    }
    Ok(t)
}

//! fig15, IOI part: prompts from `metarep_circuits::ioi` (eight templates × ABBA / BABA orders,
//! names that are one token in this tokenizer): accuracy (`logit[IO] > logit[S]`) and mean logit
//! difference with 95% intervals, overall, per order and per template; on the prompts of the
//! first template, activation patching clean → corrupted (second-clause subject swapped for the
//! indirect object) of the residual stream per layer × position and of every head's output,
//! direct logit attribution of the logit difference per head, and path patching from the top
//! heads to the logits and to the queries of the top name-mover candidates.

use std::time::Instant;

use metarep_circuits::ioi::{
    ioi_attribution, ioi_logit_diffs, ioi_prompts, patch_set, single_token_names, IoiPrompt, Order,
    NAMES, TEMPLATES,
};
use metarep_circuits::patching::{patch, PatchReport};
use metarep_circuits::path_patching::{PathPatcher, Receiver};
use metarep_circuits::ranking::ranked_heads;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::Heatmap;
use metarep_eval::stats::{mean_ci, wilson_ci, Interval};
use metarep_eval::table::{Cell, Table};
use metarep_model::{Component, HookedTransformer, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::detector_maps::{resid_map, RESTORED};
use crate::error::BoxError;
use crate::output::{interval_cells, set_interval, ResultDir};

/// The patching and attribution identities the run must reproduce (absolute tolerance).
const EXACT: f64 = 1e-3;

/// `[ioi]` of `configs/fig15.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoiConfig {
    /// IOI prompts per template × order.
    per_cell: usize,
    /// Prompts per forward pass.
    batch: usize,
    /// Prompts of the first template patched and attributed (both orders, in draw order).
    patch_prompts: usize,
    /// Heads taken from the top of each ranking for path patching.
    top_heads: usize,
}

impl IoiConfig {
    /// Checks the section (keys named `ioi.*`).
    pub fn check(&self) -> Result<(), BoxError> {
        for (key, v) in [
            ("ioi.per_cell", self.per_cell),
            ("ioi.batch", self.batch),
            ("ioi.patch_prompts", self.patch_prompts),
            ("ioi.top_heads", self.top_heads),
        ] {
            checks::at_least_one(key, v)?;
        }
        checks::require(
            self.per_cell >= 2,
            "ioi.per_cell",
            self.per_cell.to_string(),
            "≥ 2 (intervals need two prompts per cell)",
        )?;
        checks::require(
            self.patch_prompts <= 2 * self.per_cell,
            "ioi.patch_prompts",
            self.patch_prompts.to_string(),
            "≤ 2 × ioi.per_cell (the first template's prompts, both orders)",
        )
    }
}

/// Accuracy and mean logit difference of a set of prompts.
struct Score {
    label: String,
    n: usize,
    accuracy: Interval,
    logit_diff: Interval,
}

/// Runs the IOI part on `model`; records into `out` and returns whether both identities held.
pub fn run(
    seed: u64,
    cfg: &IoiConfig,
    model: &HookedTransformer,
    out: &mut ResultDir,
) -> Result<bool, BoxError> {
    let tok = model
        .tokenizer()
        .ok_or("the SmolLM2 GGUF carries no tokenizer")?;
    let names = single_token_names(tok, NAMES)?;
    println!(
        "  IOI: {} of {} names are one token in this tokenizer",
        names.len(),
        NAMES.len()
    );
    let mut rng = seeded(derive_seed(seed, "fig15/names"));
    let prompts = ioi_prompts(tok, tok.bos_id(), TEMPLATES, &names, cfg.per_cell, &mut rng)?;
    let clock = Instant::now();
    let diffs = ioi_logit_diffs(model, &prompts, cfg.batch)?;
    println!(
        "  {} IOI prompts scored in {:.1} s",
        prompts.len(),
        clock.elapsed().as_secs_f64()
    );
    let scores = behaviour(&prompts, &diffs)?;
    out.table("fig15_ioi", &score_table(&scores)?)?;
    for s in &scores {
        println!(
            "    {:<22} n = {:<4} accuracy {:.3} [{:.3}, {:.3}]  logit diff {}",
            s.label,
            s.n,
            s.accuracy.estimate,
            s.accuracy.low,
            s.accuracy.high,
            s.logit_diff.display(3)
        );
    }
    let circuit = circuit(cfg, model, tok, &prompts, out)?;
    record(&scores, &circuit, out);
    Ok(circuit.patch_exact && circuit.attribution_exact)
}

/// Accuracy (Wilson interval) and mean logit difference (Student t interval), 95%: all
/// prompts, each order, each template.
fn behaviour(prompts: &[IoiPrompt], diffs: &[f64]) -> Result<Vec<Score>, BoxError> {
    let score = |label: String, keep: &dyn Fn(&IoiPrompt) -> bool| -> Result<Score, BoxError> {
        let d: Vec<f64> = prompts
            .iter()
            .zip(diffs)
            .filter(|(p, _)| keep(p))
            .map(|(_, &d)| d)
            .collect();
        let hits = d.iter().filter(|&&x| x > 0.0).count();
        Ok(Score {
            label,
            n: d.len(),
            accuracy: wilson_ci(hits, d.len(), 0.95)?,
            logit_diff: mean_ci(&d, 0.95)?,
        })
    };
    let mut scores = vec![score("all".into(), &|_| true)?];
    for order in Order::ALL {
        scores.push(score(format!("order {}", order.name()), &|p| {
            p.order == order
        })?);
    }
    for t in 0..TEMPLATES.len() {
        scores.push(score(format!("template {t}"), &|p| p.template == t)?);
    }
    Ok(scores)
}

fn score_table(scores: &[Score]) -> Result<Table, BoxError> {
    let mut t = Table::new(vec![
        "prompts",
        "n",
        "accuracy",
        "accuracy_low",
        "accuracy_high",
        "logit_diff",
        "logit_diff_low",
        "logit_diff_high",
    ]);
    for s in scores {
        let mut row = vec![Cell::from(s.label.as_str()), Cell::from(s.n as i64)];
        row.extend(interval_cells(&s.accuracy));
        row.extend(interval_cells(&s.logit_diff));
        t.push_row(row)?;
    }
    Ok(t)
}

/// What the circuit analyses of the first template found.
struct Circuit {
    patching: PatchReport,
    /// `[layer][head]`: direct attribution of `logit[IO] − logit[S]`.
    dla: Vec<Vec<f64>>,
    /// Layer 0's residual stream patched at the first position where the prompts differ
    /// restores the whole clean run: its score (1 up to rounding).
    first_difference_score: f64,
    patch_exact: bool,
    attribution_exact: bool,
    /// `(sender, score)`: the top heads' direct paths to the logits.
    to_logits: Vec<(Component, f64)>,
    /// `(sender, receiver, score)`: paths into a name-mover candidate's query.
    to_queries: Vec<(Component, Component, f64)>,
}

/// Patching, attribution and path patching on the first template's first `patch_prompts`
/// prompts; writes the heat maps and the path table.
fn circuit(
    cfg: &IoiConfig,
    model: &HookedTransformer,
    tok: &Tokenizer,
    prompts: &[IoiPrompt],
    out: &ResultDir,
) -> Result<Circuit, BoxError> {
    let rows: Vec<&IoiPrompt> = prompts
        .iter()
        .filter(|p| p.template == 0)
        .take(cfg.patch_prompts)
        .collect();
    let set = patch_set(&rows, model.device())?;
    let clock = Instant::now();
    let patching = patch(model, &set)?;
    println!(
        "  patched {} prompts of template 0 (residual per layer × position, 270 heads) in {:.0} s: logit diff clean {:.3}, corrupted {:.3}",
        rows.len(),
        clock.elapsed().as_secs_f64(),
        patching.clean_logit_diff,
        patching.corrupted_logit_diff
    );
    let first = set.first_difference()?;
    let first_difference_score = patching.resid[0][first];
    let labels = position_labels(tok, rows[0])?;
    out.plot(
        "fig15_patch_resid",
        &resid_map(
            &format!(
                "fig15: IOI residual patching, SmolLM2-135M, template 0 ({} prompts)",
                rows.len()
            ),
            &labels,
            &patching.resid,
        ),
    )?;
    out.plot(
        "fig15_patch_heads",
        &Heatmap::layer_by_head(
            format!(
                "fig15: IOI head-output patching (hook_z), SmolLM2-135M ({} prompts)",
                rows.len()
            ),
            RESTORED,
            &patching.heads,
        ),
    )?;

    let attribution = ioi_attribution(model, &rows)?;
    let attribution_exact = attribution.exact(model, &rows, EXACT)?;
    let dla = attribution.heads;
    out.plot(
        "fig15_dla_heads",
        &Heatmap::layer_by_head(
            "fig15: direct logit attribution of logit[IO] − logit[S] per head, SmolLM2-135M",
            "logit difference (nats)",
            &dla,
        ),
    )?;

    let clock = Instant::now();
    let paths = PathPatcher::new(model, &set)?;
    let movers: Vec<Component> = ranked_heads(&dla)
        .into_iter()
        .take(cfg.top_heads)
        .map(|(c, _)| c)
        .collect();
    let mut to_logits = Vec::new();
    for &c in &movers {
        to_logits.push((c, paths.score(head_of(c)?, &Receiver::Logits)?));
    }
    let senders: Vec<Component> = ranked_heads(&patching.heads)
        .into_iter()
        .filter(|(c, _)| !movers.contains(c))
        .take(cfg.top_heads)
        .map(|(c, _)| c)
        .collect();
    let mut to_queries = Vec::new();
    for &sender in &senders {
        let (sl, _) = head_of(sender)?;
        for &mover in &movers {
            let (ml, mh) = head_of(mover)?;
            if ml > sl {
                let r = Receiver::Queries {
                    layer: ml,
                    heads: vec![mh],
                };
                to_queries.push((sender, mover, paths.score(head_of(sender)?, &r)?));
            }
        }
    }
    println!("  path patching in {:.0} s", clock.elapsed().as_secs_f64());
    out.table("fig15_paths", &path_table(&to_logits, &to_queries)?)?;
    Ok(Circuit {
        first_difference_score,
        patch_exact: (first_difference_score - 1.0).abs() < EXACT,
        attribution_exact,
        patching,
        dla,
        to_logits,
        to_queries,
    })
}

/// `(layer, head)` of a head component.
fn head_of(c: Component) -> Result<(usize, usize), BoxError> {
    match c {
        Component::Head { layer, head } => Ok((layer, head)),
        other => Err(format!("expected an attention head, got {other:?}").into()),
    }
}

/// The tokens of `p`'s clean prompt, names shown by role (`IO`, `S`, `S2`).
fn position_labels(tok: &Tokenizer, p: &IoiPrompt) -> Result<Vec<String>, BoxError> {
    let mut seen_s = false;
    p.clean
        .iter()
        .map(|&id| {
            Ok(if id == p.io {
                "IO".to_string()
            } else if id == p.s {
                let l = if seen_s { "S2" } else { "S" };
                seen_s = true;
                l.to_string()
            } else {
                tok.decode(&[id], false)?.trim().to_string()
            })
        })
        .collect()
}

fn path_table(
    to_logits: &[(Component, f64)],
    to_queries: &[(Component, Component, f64)],
) -> Result<Table, BoxError> {
    let mut t = Table::new(vec!["sender", "receiver", "share_restored"]);
    for (c, v) in to_logits {
        t.push_row(vec![
            Cell::from(c.to_string().as_str()),
            Cell::from("logits"),
            Cell::from(*v),
        ])?;
    }
    for (s, r, v) in to_queries {
        t.push_row(vec![
            Cell::from(s.to_string().as_str()),
            Cell::from(format!("{r} query").as_str()),
            Cell::from(*v),
        ])?;
    }
    Ok(t)
}

/// Metrics: behaviour intervals, the top heads and paths, and the two identities.
fn record(scores: &[Score], c: &Circuit, out: &mut ResultDir) {
    let m = &mut out.metrics;
    for s in scores {
        let key = crate::output::metric_key(&s.label);
        set_interval(m, &format!("{key}_accuracy"), &s.accuracy);
        set_interval(m, &format!("{key}_logit_diff"), &s.logit_diff);
    }
    m.set_number("patch_clean_logit_diff", c.patching.clean_logit_diff);
    m.set_number(
        "patch_corrupted_logit_diff",
        c.patching.corrupted_logit_diff,
    );
    m.set_number("first_difference_layer0_score", c.first_difference_score);
    for (rank, (head, v)) in ranked_heads(&c.patching.heads).iter().take(5).enumerate() {
        println!("    head patching #{}: {head} {v:.3}", rank + 1);
        m.set_number(format!("head_patching_top{}", rank + 1), *v);
    }
    for (rank, (head, v)) in ranked_heads(&c.dla).iter().take(5).enumerate() {
        println!("    DLA #{}: {head} {v:.3}", rank + 1);
        m.set_number(format!("dla_top{}", rank + 1), *v);
    }
    for (head, v) in &c.to_logits {
        println!("    path {head} → logits {v:.3}");
        m.set_number(
            format!(
                "path_{}_logits",
                crate::output::metric_key(&head.to_string())
            ),
            *v,
        );
    }
    for (s, r, v) in &c.to_queries {
        println!("    path {s} → {r} query {v:.3}");
    }
    m.set_bool("patch_first_difference_restores_all", c.patch_exact);
    m.set_bool("attribution_sums_to_logits", c.attribution_exact);
    println!(
        "  check: layer-0 patch at the first differing position restores {:.6} (1 ± {EXACT}): {}; attribution sums to the logits: {}",
        c.first_difference_score, c.patch_exact, c.attribution_exact
    );
}

//! fig8 (induction part): on the `induction-2l` fixture, per-head induction, previous-token,
//! duplicate-token and prefix-matching scores on repeated random tokens (heat maps), the
//! in-context loss on the first and the second repeat, and staged ablations of the top
//! induction heads (alone and cumulatively, zero and mean) with the second-repeat loss each
//! leaves; a scale sweep of the top head (×0 to ×3); activation patching clean → corrupted
//! by layer and position and by head. The arithmetic part is in [`arith`].

pub(crate) mod arith;

use std::path::Path;

use candle_core::Tensor;
use metarep_circuits::ablation::{
    run_ablations, scale_sweep, AblationConfig, AblationKind, AblationReport,
};
use metarep_circuits::detectors::{
    head_scores, repeated_tokens, token_losses, HeadScores, RepeatLosses,
};
use metarep_circuits::patching::{induction_pairs, patch, PatchSet};
use metarep_circuits::ranking::ranked_heads;
use metarep_core::config::load_config;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::{Heatmap, LinePlot, Series, SeriesStyle};
use metarep_eval::table::{Cell, Table};
use metarep_model::interventions::{Intervention, Interventions};
use metarep_model::predictions::EvalSet;
use metarep_model::{Component, HookedTransformer, NoHooks};
use metarep_testbeds::induction::InductionSpec;
use serde::{Deserialize, Serialize};

use crate::detector_maps::{resid_map, RESTORED};
use crate::device::load_options;
use crate::error::BoxError;
use crate::output::ResultDir;

/// An induction head: induction score above this.
pub const INDUCTION_THRESHOLD: f64 = 0.4;
/// Second-repeat loss must be below this fraction of the first-repeat loss.
const SECOND_REPEAT_MAX: f64 = 0.5;
/// Target (reported, not part of the check): zero-ablating the top induction head alone closes
/// at least this fraction of the gap between second- and first-repeat loss. Set before the
/// first run; missed on the fixture, whose three layer-1 induction heads back each other up
/// (docs/results.md).
const TOP_HEAD_GAP_TARGET: f64 = 0.25;

/// `configs/fig8.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig8Config {
    /// Seed of the evaluation batches and the bootstrap.
    pub seed: u64,
    /// Repeated sequences `[BOS, s, s]` scored.
    pub batch: usize,
    /// Length of `s`.
    pub segment: usize,
    /// Bootstrap resamples for the 95% intervals (over sequences).
    pub resamples: usize,
    /// Induction heads ablated in the staged run (the top ones by score).
    pub ablate_top: usize,
    /// The arithmetic part.
    pub arith: arith::ArithConfig,
}

/// The induction-2l model and what the sections share.
struct Induction<'a> {
    cfg: &'a Fig8Config,
    model: HookedTransformer,
    vocab: usize,
    /// `[BOS, s, s]` evaluation sequences.
    tokens: Tensor,
    /// Heads by induction score, highest first.
    ranked: Vec<(Component, f64)>,
}

/// Runs fig8 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig8Config = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, vec![cfg.seed])?;
    let (model, spec) = load_fixture(&mut out)?;
    let tokens = repeated_tokens(
        &mut seeded(derive_seed(cfg.seed, "fig8/tokens")),
        cfg.batch,
        cfg.segment,
        spec.vocab,
    )?;
    let scores = head_scores(&model, &tokens)?;
    let fx = Induction {
        cfg: &cfg,
        model,
        vocab: spec.vocab,
        tokens,
        ranked: ranked_heads(&scores.induction),
    };
    detector_maps(&fx, &scores, &out)?;
    let (clean, top_off) = repeat_losses(&fx, &out)?;
    staged_ablations(&fx, &out)?;
    scale_top_head(&fx, &mut out)?;
    patching(&fx, &mut out)?;
    let all_off = all_induction_heads_zeroed(&fx, &clean)?;
    let induction_pass = record(&fx, &scores, &clean, &top_off, all_off, &mut out);
    let arith_pass = arith::run(&cfg.arith, cfg.seed, cfg.resamples, &mut out)?;
    out.metrics.set_bool("arith_pass", arith_pass);
    out.finish(induction_pass && arith_pass)
}

/// Loads `fixtures/induction-2l` and checks it against its `induction.json`.
fn load_fixture(out: &mut ResultDir) -> Result<(HookedTransformer, InductionSpec), BoxError> {
    let fixture = crate::fixtures::induction_2l::dir(&crate::fixtures::repo_root());
    let model = HookedTransformer::from_dir(&fixture, &load_options())?;
    let spec: InductionSpec =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("induction.json"))?)?;
    if model.config() != &spec.model_config() {
        return Err(format!(
            "{} does not match its induction.json (rebuild: cargo xtask fixtures induction-2l)",
            fixture.display()
        )
        .into());
    }
    out.extra(
        "induction_2l_sha256",
        &crate::fixtures::sha256_file(&fixture.join("model.safetensors"))?,
    )?;
    Ok((model, spec))
}

/// Heat maps and a table of the four detector scores; prints the top heads.
fn detector_maps(fx: &Induction, scores: &HeadScores, out: &ResultDir) -> Result<(), BoxError> {
    crate::detector_maps::write(out, "fig8", "induction-2l", fx.cfg.segment, scores)?;
    println!("  induction scores (threshold {INDUCTION_THRESHOLD}):");
    for &(c, s) in fx.ranked.iter().take(4) {
        let (l, h) = layer_head(c)?;
        println!(
            "    {c}: induction {s:.3}, previous-token {:.3}, duplicate {:.3}, prefix-matching {:.3}",
            scores.previous_token[l][h], scores.duplicate_token[l][h], scores.prefix_matching[l][h]
        );
    }
    Ok(())
}

/// Repeat losses clean and with the top induction head zeroed, and the loss-by-position plot.
fn repeat_losses(
    fx: &Induction,
    out: &ResultDir,
) -> Result<(RepeatLosses, RepeatLosses), BoxError> {
    let clean = token_losses(&fx.model, &fx.tokens, &mut NoHooks)?;
    let top = fx.ranked[0].0;
    let ablated = token_losses(&fx.model, &fx.tokens, &mut zeroed(&[top])?)?;
    let (c, a) = (
        repeat_cis(fx, &clean, "clean")?,
        repeat_cis(fx, &ablated, "ablated")?,
    );
    println!(
        "  loss: first repeat {}, second {}; with {top} zeroed: first {}, second {} ({:.0}% of the gap closed)",
        c.first.display(3), c.second.display(3), a.first.display(3), a.second.display(3),
        100.0 * c.gap_closed(&a)
    );
    out.plot(
        "fig8_loss_by_position",
        &position_plot(&clean, &ablated, top),
    )?;
    Ok((c, a))
}

/// Repeat losses of `losses` with the bootstrap stream of `tag`.
fn repeat_cis(fx: &Induction, losses: &[Vec<f64>], tag: &str) -> Result<RepeatLosses, BoxError> {
    let mut rng = seeded(derive_seed(fx.cfg.seed, &format!("fig8/bootstrap/{tag}")));
    Ok(RepeatLosses::from_token_losses(
        losses,
        fx.cfg.resamples,
        &mut rng,
    )?)
}

/// `(layer, head)` of a head component.
fn layer_head(c: Component) -> Result<(usize, usize), BoxError> {
    match c {
        Component::Head { layer, head } => Ok((layer, head)),
        other => Err(format!("{other} is not a head").into()),
    }
}

/// Interventions zeroing `heads`.
fn zeroed(heads: &[Component]) -> Result<Interventions, BoxError> {
    let list = heads
        .iter()
        .map(|&c| Intervention::zero(c))
        .collect::<Result<_, _>>()?;
    Ok(Interventions::new(list))
}

/// The second-repeat predictions as an evaluation set.
fn second_repeat(fx: &Induction) -> Result<EvalSet, BoxError> {
    let (batch, segment) = (fx.cfg.batch, fx.cfg.segment);
    let n = fx.tokens.dim(1)?;
    let mask: Vec<f32> = (0..batch)
        .flat_map(|_| (0..n - 1).map(|p| f32::from(p > segment)))
        .collect();
    Ok(EvalSet {
        tokens: fx.tokens.clone(),
        mask: Some(Tensor::from_vec(mask, (batch, n - 1), fx.tokens.device())?),
        alternative: None,
    })
}

/// The top induction heads ablated alone and cumulatively, by zero and by mean.
fn staged_ablations(fx: &Induction, out: &ResultDir) -> Result<(), BoxError> {
    let eval = second_repeat(fx)?;
    let reference = repeated_tokens(
        &mut seeded(derive_seed(fx.cfg.seed, "fig8/reference")),
        fx.cfg.batch,
        fx.cfg.segment,
        fx.vocab,
    )?;
    let top: Vec<Component> = fx
        .ranked
        .iter()
        .take(fx.cfg.ablate_top)
        .map(|h| h.0)
        .collect();
    let mut reports = Vec::new();
    for kind in [AblationKind::Zero, AblationKind::Mean] {
        for cumulative in [false, true] {
            let config = AblationConfig {
                cumulative,
                ..AblationConfig::each_alone(&top, kind)
            };
            let report = run_ablations(&fx.model, &config, &eval, Some(&reference))?;
            let deltas: Vec<String> = report
                .stages
                .iter()
                .map(|s| format!("{} {:+.3}", s.name, s.delta.loss))
                .collect();
            println!(
                "  {kind:?} ablation, {}: second-repeat loss {:.3} → Δ {}",
                if cumulative { "cumulative" } else { "alone" },
                report.clean.loss,
                deltas.join(", ")
            );
            reports.push((kind, cumulative, report));
        }
    }
    out.table("fig8_ablations", &ablation_table(&reports)?)
}

/// The top induction head scaled from 0 (off) through 1 (clean) to 3 (amplified).
fn scale_top_head(fx: &Induction, out: &mut ResultDir) -> Result<(), BoxError> {
    let top = fx.ranked[0].0;
    let factors: Vec<f64> = (0..=12).map(|i| 0.25 * i as f64).collect();
    let swept = scale_sweep(&fx.model, &second_repeat(fx)?, &[top], &factors)?;
    let plot = LinePlot::new(format!(
        "fig8: second-repeat loss with {top} scaled (induction-2l)"
    ))
    .x_label("scale factor of the head's output")
    .y_label("loss (nats)")
    .series(Series {
        name: top.to_string(),
        points: factors
            .iter()
            .zip(&swept)
            .map(|(f, m)| (*f, m.loss))
            .collect(),
        style: SeriesStyle::Solid,
        color: Some(0),
    });
    out.plot("fig8_scale_sweep", &plot)?;
    println!(
        "  {top} scaled ×0, ×1, ×2, ×3: second-repeat loss {:.3}, {:.3}, {:.3}, {:.3}",
        swept[0].loss, swept[4].loss, swept[8].loss, swept[12].loss
    );
    out.metrics.set_number("scale0_loss", swept[0].loss);
    out.metrics.set_number("scale3_loss", swept[12].loss);
    Ok(())
}

/// Activation patching: clean `[BOS, s, s₁..s_j]` predicts `s_{j+1}`, `j = 3·segment / 4`
/// (deep enough into the copy for the fixture to be confident); the corrupted prompt has
/// another first copy, so only the clean run's activations can tell the answer.
fn patching(fx: &Induction, out: &mut ResultDir) -> Result<(), BoxError> {
    let mut rng = seeded(derive_seed(fx.cfg.seed, "fig8/patch"));
    let j = 3 * fx.cfg.segment / 4;
    let pairs = induction_pairs(&mut rng, fx.cfg.batch, fx.cfg.segment, fx.vocab, j)?;
    let patched = patch(&fx.model, &PatchSet::from_pairs(&pairs, fx.model.device())?)?;
    let positions: Vec<String> = std::iter::once("BOS".to_string())
        .chain((1..=fx.cfg.segment).map(|i| format!("s{i}")))
        .chain((1..=j).map(|i| format!("s{i}'")))
        .collect();
    let title = format!(
        "fig8: residual stream patched clean → corrupted ([BOS, s, s1'..s{j}'] predicts s{}')",
        j + 1
    );
    out.plot(
        "fig8_patch_resid",
        &resid_map(&title, &positions, &patched.resid),
    )?;
    let title = "fig8: head outputs (hook_z) patched clean → corrupted";
    out.plot(
        "fig8_patch_heads",
        &Heatmap::layer_by_head(title, RESTORED, &patched.heads),
    )?;
    let (best, restored) = ranked_heads(&patched.heads)[0];
    println!(
        "  patching: logit difference clean {:.2}, corrupted {:.2}; best head {best} restores {:.0}%",
        patched.clean_logit_diff,
        patched.corrupted_logit_diff,
        100.0 * restored
    );
    let m = &mut out.metrics;
    m.set_number("patch_clean_logit_diff", patched.clean_logit_diff);
    m.set_number("patch_corrupted_logit_diff", patched.corrupted_logit_diff);
    m.set_number("patch_best_head_restored", restored);
    Ok(())
}

/// Every head above the induction threshold zeroed together: the share of the gap closed.
fn all_induction_heads_zeroed(fx: &Induction, clean: &RepeatLosses) -> Result<f64, BoxError> {
    let heads = induction_heads(fx);
    let losses = token_losses(&fx.model, &fx.tokens, &mut zeroed(&heads)?)?;
    let all = repeat_cis(fx, &losses, "all")?;
    let closed = clean.gap_closed(&all);
    println!(
        "  all {} induction heads zeroed: second repeat {} ({:.0}% of the gap closed)",
        heads.len(),
        all.second.display(3),
        100.0 * closed
    );
    Ok(closed)
}

/// The heads whose induction score is above [`INDUCTION_THRESHOLD`].
fn induction_heads(fx: &Induction) -> Vec<Component> {
    fx.ranked
        .iter()
        .filter(|h| h.1 > INDUCTION_THRESHOLD)
        .map(|h| h.0)
        .collect()
}

/// The induction part's metrics; returns its check.
fn record(
    fx: &Induction,
    scores: &HeadScores,
    clean: &RepeatLosses,
    top_off: &RepeatLosses,
    all_closed: f64,
    out: &mut ResultDir,
) -> bool {
    let (top, top_score) = fx.ranked[0];
    let top_layer = top.layer().unwrap_or(usize::MAX);
    let gap_closed = clean.gap_closed(top_off);
    let above = induction_heads(fx).len();
    let best_layer0 = scores.induction[0].iter().copied().fold(0.0, f64::max);
    let m = &mut out.metrics;
    m.set_number("top_induction_layer", top_layer as f64);
    if let Component::Head { head, .. } = top {
        m.set_number("top_induction_head", head as f64);
    }
    m.set_number("top_induction_score", top_score);
    m.set_number("induction_heads_above_threshold", above as f64);
    m.set_number("loss_first_repeat", clean.first.estimate);
    m.set_number("loss_second_repeat", clean.second.estimate);
    m.set_number("ablated_loss_first_repeat", top_off.first.estimate);
    m.set_number("ablated_loss_second_repeat", top_off.second.estimate);
    m.set_number("top_head_ablation_gap_closed", gap_closed);
    m.set_bool(
        "top_head_ablation_target_met",
        gap_closed >= TOP_HEAD_GAP_TARGET,
    );
    m.set_number("induction_heads_ablation_gap_closed", all_closed);
    m.set_number("best_layer0_induction_score", best_layer0);
    let pass = top_layer == 1
        && top_score > INDUCTION_THRESHOLD
        && best_layer0 < INDUCTION_THRESHOLD
        && clean.second.estimate < SECOND_REPEAT_MAX * clean.first.estimate
        && top_off.second.low > clean.second.high;
    m.set_bool("induction_pass", pass);
    pass
}

fn ablation_table(reports: &[(AblationKind, bool, AblationReport)]) -> Result<Table, BoxError> {
    let mut t = Table::new(vec![
        "kind",
        "mode",
        "stage",
        "heads ablated",
        "loss",
        "Δ loss",
        "accuracy",
        "Δ accuracy",
        "Δ entropy",
    ]);
    for (kind, cumulative, r) in reports {
        for s in &r.stages {
            t.push_row(vec![
                Cell::from(format!("{kind:?}").to_lowercase()),
                Cell::from(if *cumulative { "cumulative" } else { "alone" }),
                Cell::from(s.name.clone()),
                Cell::Int(s.components as i64),
                Cell::Num(s.ablated.loss),
                Cell::Num(s.delta.loss),
                Cell::Num(s.ablated.accuracy),
                Cell::Num(s.delta.accuracy),
                Cell::Num(s.delta.entropy),
            ])?;
        }
    }
    Ok(t)
}

/// Mean loss per position, clean and with the top induction head zeroed.
fn position_plot(clean: &[Vec<f64>], ablated: &[Vec<f64>], top: Component) -> LinePlot {
    let mean_at = |rows: &[Vec<f64>]| -> Vec<(f64, f64)> {
        (0..rows[0].len())
            .map(|p| {
                (
                    p as f64,
                    rows.iter().map(|r| r[p]).sum::<f64>() / rows.len() as f64,
                )
            })
            .collect()
    };
    LinePlot::new("fig8: next-token loss by position on [BOS, s, s] (induction-2l)")
        .x_label("position")
        .y_label("loss (nats)")
        .series(Series {
            name: "clean".into(),
            points: mean_at(clean),
            style: SeriesStyle::Solid,
            color: Some(0),
        })
        .series(Series {
            name: format!("{top} zero-ablated"),
            points: mean_at(ablated),
            style: SeriesStyle::Dashed,
            color: Some(3),
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_induction_fixture_and_the_detectors_agree_on_bos() {
        // The fixture is trained on sequences starting with testbeds' BOS; the detectors and
        // patch pairs build theirs with circuits' BOS.
        assert_eq!(
            metarep_testbeds::induction::BOS,
            metarep_circuits::detectors::BOS
        );
    }
}

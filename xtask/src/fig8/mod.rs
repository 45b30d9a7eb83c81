//! fig8 (induction part): on the `induction-2l` fixture, per-head induction, previous-token,
//! duplicate-token and prefix-matching scores on repeated random tokens (heat maps), the
//! in-context loss on the first and the second repeat, and staged ablations of the top
//! induction heads (alone and cumulatively, zero and mean) with the second-repeat loss each
//! leaves; a scale sweep of the top head (×0 to ×3); activation patching clean → corrupted
//! by layer and position and by head. The arithmetic part is in [`arith`].

mod arith;

use std::path::Path;

use candle_core::Tensor;
use metarep_circuits::ablation::{
    run_ablations, scale_sweep, AblationConfig, AblationKind, AblationReport, Stage,
};
use metarep_circuits::detectors::{
    head_scores, repeat_losses, repeated_tokens, token_losses, HeadScores,
};
use metarep_circuits::patching::{patch, PatchSet};
use metarep_core::config::load_config;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::{Heatmap, LinePlot, Series, SeriesStyle};
use metarep_eval::stats::{bootstrap_ci, BootstrapMethod, Interval};
use metarep_eval::table::{Cell, Table};
use metarep_model::interventions::{Intervention, Interventions};
use metarep_model::predictions::EvalSet;
use metarep_model::{HookedTransformer, LoadOptions, NoHooks};
use metarep_testbeds::induction::InductionSpec;
use serde::{Deserialize, Serialize};

use crate::output::ResultDir;
use crate::BoxError;

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

/// Mean first- and second-repeat loss with 95% bootstrap intervals over sequences.
fn repeat_cis(
    losses: &[Vec<f64>],
    cfg: &Fig8Config,
    tag: &str,
) -> Result<(Interval, Interval), BoxError> {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for row in losses {
        let (a, b) = repeat_losses(row)?;
        first.push(a);
        second.push(b);
    }
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let mut rng = seeded(derive_seed(cfg.seed, &format!("fig8/bootstrap/{tag}")));
    let ci = |xs: &[f64], rng: &mut _| {
        bootstrap_ci(
            xs,
            mean,
            0.95,
            cfg.resamples,
            BootstrapMethod::Percentile,
            rng,
        )
    };
    Ok((ci(&first, &mut rng)?, ci(&second, &mut rng)?))
}

/// Runs fig8 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig8Config = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, vec![cfg.seed])?;
    let root = crate::fixtures::repo_root();
    let fixture = crate::fixtures::induction_2l::dir(&root);
    let model = HookedTransformer::from_dir(&fixture, &LoadOptions::default())?;
    let spec: InductionSpec =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("induction.json"))?)?;
    if model.config() != &spec.model_config() {
        return Err(format!(
            "{} does not match its induction.json (rebuild: cargo xtask fixtures induction-2l)",
            fixture.display()
        )
        .into());
    }
    let tokens = repeated_tokens(
        &mut seeded(derive_seed(cfg.seed, "fig8/tokens")),
        cfg.batch,
        cfg.segment,
        spec.vocab,
    )?;

    // Head detectors.
    let scores = head_scores(&model, &tokens)?;
    let maps: [(&str, &str, &Vec<Vec<f64>>); 4] = [
        ("fig8_induction", "induction score", &scores.induction),
        (
            "fig8_previous_token",
            "previous-token score",
            &scores.previous_token,
        ),
        (
            "fig8_duplicate_token",
            "duplicate-token score",
            &scores.duplicate_token,
        ),
        (
            "fig8_prefix_matching",
            "prefix-matching score",
            &scores.prefix_matching,
        ),
    ];
    for (file, what, values) in maps {
        Heatmap {
            title: format!(
                "fig8: {what} per head (induction-2l, [BOS, s, s], |s| = {})",
                cfg.segment
            ),
            row_label: "layer".into(),
            col_label: "head".into(),
            values: values.clone(),
        }
        .write_svg(dir.join(format!("{file}.svg")))?;
    }
    out.table("fig8_heads", &head_table(&scores)?)?;
    let ranked = HeadScores::ranked(&scores.induction);
    let induction_heads: Vec<(usize, usize, f64)> = ranked
        .iter()
        .copied()
        .filter(|h| h.2 > INDUCTION_THRESHOLD)
        .collect();
    println!("  induction scores (threshold {INDUCTION_THRESHOLD}):");
    for (l, h, s) in ranked.iter().take(4) {
        println!(
            "    L{l}H{h}: induction {s:.3}, previous-token {:.3}, duplicate {:.3}, prefix-matching {:.3}",
            scores.previous_token[*l][*h], scores.duplicate_token[*l][*h], scores.prefix_matching[*l][*h]
        );
    }

    // In-context loss, clean and with the top induction head ablated.
    let clean = token_losses(&model, &tokens, &mut NoHooks)?;
    let (first, second) = repeat_cis(&clean, &cfg, "clean")?;
    let (tl, th, _) = ranked[0];
    let mut top_off = Interventions::new(vec![Intervention::zero_heads(tl, &[th])]);
    let ablated = token_losses(&model, &tokens, &mut top_off)?;
    let (a_first, a_second) = repeat_cis(&ablated, &cfg, "ablated")?;
    let gap_closed = (a_second.estimate - second.estimate) / (first.estimate - second.estimate);
    println!(
        "  loss: first repeat {}, second {}; with L{tl}H{th} zeroed: first {}, second {} ({:.0}% of the gap closed)",
        first.display(3), second.display(3), a_first.display(3), a_second.display(3), 100.0 * gap_closed
    );
    position_plot(&clean, &ablated, tl, th, dir)?;

    // Staged ablations of the top heads: alone and cumulatively, zero and mean.
    let n = tokens.dim(1)?;
    let mask: Vec<f32> = (0..cfg.batch)
        .flat_map(|_| (0..n - 1).map(|p| f32::from(p > cfg.segment)))
        .collect();
    let eval = EvalSet {
        tokens: tokens.clone(),
        mask: Some(Tensor::from_vec(mask, (cfg.batch, n - 1), tokens.device())?),
        alternative: None,
    };
    let reference = repeated_tokens(
        &mut seeded(derive_seed(cfg.seed, "fig8/reference")),
        cfg.batch,
        cfg.segment,
        spec.vocab,
    )?;
    let top: Vec<(usize, usize)> = ranked
        .iter()
        .take(cfg.ablate_top)
        .map(|h| (h.0, h.1))
        .collect();
    let mut reports = Vec::new();
    for kind in [AblationKind::Zero, AblationKind::Mean] {
        for cumulative in [false, true] {
            let stages = top
                .iter()
                .map(|&(l, h)| Stage {
                    name: format!("L{l}H{h}"),
                    kind,
                    heads: vec![(l, h)],
                    neurons: Vec::new(),
                })
                .collect();
            let config = AblationConfig { cumulative, stages };
            let report = run_ablations(&model, &config, &eval, Some(&reference))?;
            reports.push((kind, cumulative, report));
        }
    }
    out.table("fig8_ablations", &ablation_table(&reports)?)?;
    for (kind, cumulative, r) in &reports {
        let deltas: Vec<String> = r
            .stages
            .iter()
            .map(|s| format!("{} {:+.3}", s.name, s.delta.loss))
            .collect();
        println!(
            "  {kind:?} ablation, {}: second-repeat loss {:.3} → Δ {}",
            if *cumulative { "cumulative" } else { "alone" },
            r.clean.loss,
            deltas.join(", ")
        );
    }

    // Scaling the top induction head from 0 (off) through 1 (clean) to 3 (amplified).
    let factors: Vec<f64> = (0..=12).map(|i| 0.25 * i as f64).collect();
    let swept = scale_sweep(&model, &eval, &[(tl, th)], &[], &factors)?;
    LinePlot::new(format!(
        "fig8: second-repeat loss with L{tl}H{th} scaled (induction-2l)"
    ))
    .x_label("scale factor of the head's output")
    .y_label("loss (nats)")
    .series(Series {
        name: format!("L{tl}H{th}"),
        points: factors
            .iter()
            .zip(&swept)
            .map(|(f, m)| (*f, m.loss))
            .collect(),
        style: SeriesStyle::Solid,
        color: Some(0),
    })
    .write_svg(dir.join("fig8_scale_sweep.svg"))?;
    println!(
        "  L{tl}H{th} scaled ×0, ×1, ×2, ×3: second-repeat loss {:.3}, {:.3}, {:.3}, {:.3}",
        swept[0].loss, swept[4].loss, swept[8].loss, swept[12].loss
    );

    // Activation patching: clean [BOS, s, s₁..s_j] predicts s_{j+1}; the corrupted prompt has
    // another first copy, so only the clean run's activations can tell the answer.
    let patch_set = patch_prompts(&cfg, spec.vocab)?;
    let patched = patch(&model, &patch_set)?;
    Heatmap {
        title: "fig8: residual stream patched clean → corrupted (share of the logit difference restored)".into(),
        row_label: "layer (hook_resid_pre)".into(),
        col_label: "position".into(),
        values: patched.resid.clone(),
    }
    .write_svg(dir.join("fig8_patch_resid.svg"))?;
    Heatmap {
        title: "fig8: head outputs patched clean → corrupted".into(),
        row_label: "layer".into(),
        col_label: "head".into(),
        values: patched.heads.clone(),
    }
    .write_svg(dir.join("fig8_patch_heads.svg"))?;
    let best_patch = HeadScores::ranked(&patched.heads)[0];
    println!(
        "  patching: logit difference clean {:.2}, corrupted {:.2}; best head L{}H{} restores {:.0}%",
        patched.clean_logit_diff,
        patched.corrupted_logit_diff,
        best_patch.0,
        best_patch.1,
        100.0 * best_patch.2
    );

    let m = &mut out.metrics;
    m.set_number("scale0_loss", swept[0].loss);
    m.set_number("scale3_loss", swept[12].loss);
    m.set_number("patch_clean_logit_diff", patched.clean_logit_diff);
    m.set_number("patch_corrupted_logit_diff", patched.corrupted_logit_diff);
    m.set_number("patch_best_head_restored", best_patch.2);
    m.set_number("top_induction_layer", tl as f64);
    m.set_number("top_induction_head", th as f64);
    m.set_number("top_induction_score", ranked[0].2);
    m.set_number(
        "induction_heads_above_threshold",
        induction_heads.len() as f64,
    );
    m.set_number("loss_first_repeat", first.estimate);
    m.set_number("loss_second_repeat", second.estimate);
    m.set_number("ablated_loss_first_repeat", a_first.estimate);
    m.set_number("ablated_loss_second_repeat", a_second.estimate);
    m.set_number("top_head_ablation_gap_closed", gap_closed);
    m.set_bool(
        "top_head_ablation_target_met",
        gap_closed >= TOP_HEAD_GAP_TARGET,
    );
    // All heads above the induction threshold zeroed together.
    let mut all_off = Interventions::new(
        induction_heads
            .iter()
            .map(|&(l, h, _)| Intervention::zero_heads(l, &[h]))
            .collect(),
    );
    let (_, all_second) = repeat_cis(&token_losses(&model, &tokens, &mut all_off)?, &cfg, "all")?;
    let all_closed = (all_second.estimate - second.estimate) / (first.estimate - second.estimate);
    println!(
        "  all {} induction heads zeroed: second repeat {} ({:.0}% of the gap closed)",
        induction_heads.len(),
        all_second.display(3),
        100.0 * all_closed
    );
    m.set_number("induction_heads_ablation_gap_closed", all_closed);
    let best_layer0 = scores.induction[0].iter().copied().fold(0.0, f64::max);
    m.set_number("best_layer0_induction_score", best_layer0);
    let induction_pass = tl == 1
        && ranked[0].2 > INDUCTION_THRESHOLD
        && best_layer0 < INDUCTION_THRESHOLD
        && second.estimate < SECOND_REPEAT_MAX * first.estimate
        && a_second.low > second.high;
    out.extra(
        "induction_2l_sha256",
        &crate::fixtures::sha256_file(&fixture.join("model.safetensors"))?,
    )?;
    out.metrics.set_bool("induction_pass", induction_pass);
    let arith_pass = arith::run(&cfg.arith, cfg.seed, cfg.resamples, &mut out, dir)?;
    out.metrics.set_bool("arith_pass", arith_pass);
    out.finish(induction_pass && arith_pass)
}

/// Clean `[BOS, s, s₁..s_j]` and corrupted `[BOS, s', s₁..s_j]` prompts, `j = 3·segment / 4` (deep
/// enough into the copy for the fixture to be confident);
/// the answer is `s_{j+1}`, the alternative `s'_{j+1}`.
fn patch_prompts(cfg: &Fig8Config, vocab: usize) -> Result<PatchSet, BoxError> {
    let j = 3 * cfg.segment / 4;
    let mut rng = seeded(derive_seed(cfg.seed, "fig8/patch"));
    let a = repeated_tokens(&mut rng, cfg.batch, cfg.segment, vocab)?.to_vec2::<u32>()?;
    let b = repeated_tokens(&mut rng, cfg.batch, cfg.segment, vocab)?.to_vec2::<u32>()?;
    let n = 1 + cfg.segment + j;
    let (mut clean, mut corrupted, mut answer, mut alternative) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (x, y) in a.iter().zip(&b) {
        clean.extend_from_slice(&x[..n]);
        corrupted.push(x[0]);
        corrupted.extend_from_slice(&y[1..=cfg.segment]);
        corrupted.extend_from_slice(&x[cfg.segment + 1..n]);
        answer.push(x[j + 1]);
        alternative.push(y[j + 1]);
    }
    let dev = &candle_core::Device::Cpu;
    Ok(PatchSet {
        clean: Tensor::from_vec(clean, (cfg.batch, n), dev)?,
        corrupted: Tensor::from_vec(corrupted, (cfg.batch, n), dev)?,
        answer: Tensor::from_vec(answer, cfg.batch, dev)?,
        alternative: Tensor::from_vec(alternative, cfg.batch, dev)?,
    })
}

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
fn position_plot(
    clean: &[Vec<f64>],
    ablated: &[Vec<f64>],
    l: usize,
    h: usize,
    dir: &Path,
) -> Result<(), BoxError> {
    let mean_at = |rows: &[Vec<f64>]| -> Vec<(f64, f64)> {
        let n = rows[0].len();
        (0..n)
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
            name: format!("L{l}H{h} zero-ablated"),
            points: mean_at(ablated),
            style: SeriesStyle::Dashed,
            color: Some(3),
        })
        .write_svg(dir.join("fig8_loss_by_position.svg"))?;
    Ok(())
}

//! fig13: induction heads in a real pretrained model, SmolLM2-135M-Instruct (GGUF Q4_1,
//! dequantized to f32; `cargo xtask fixtures smollm2`). A greedy completion of a factual
//! prompt; on `[BOS, s, s]` sequences of random non-special tokens (BOS from the GGUF
//! metadata), the four detector scores of all 30 × 9 heads (heat maps), the loss on the first
//! and the second copy with 95% bootstrap intervals, the loss by position, and the top
//! induction heads zero-ablated cumulatively with the second-copy loss after each step. The
//! analysis is `metarep_circuits::repeat_study`; this file loads, writes and checks.

use std::path::Path;
use std::time::Instant;

use metarep_circuits::detectors::TokenDraw;
use metarep_circuits::repeat_study::{repeat_study, RepeatStudy, StudyOptions};
use metarep_core::config::load_config;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::{LinePlot, Series, SeriesStyle};
use metarep_eval::stats::Interval;
use metarep_eval::table::{Cell, Table};
use metarep_model::generate::GenerateOptions;
use metarep_model::{HookedTransformer, NoHooks};
use serde::{Deserialize, Serialize};

use crate::device::load_options;
use crate::error::BoxError;
use crate::fixtures::gguf::smollm2_file;
use crate::output::{interval_cells, set_interval, ResultDir};

/// Second-copy loss must be below this fraction of the first-copy loss.
const SECOND_COPY_MAX: f64 = 0.5;
/// The top induction head's score must reach this.
const TOP_SCORE_MIN: f64 = 0.4;
/// Zeroing this many top induction heads must raise the second-copy loss, 95% intervals apart.
const CHECKED_ABLATION: usize = 5;

/// `configs/fig13.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig13Config {
    /// Seed of the random sequences and of the bootstrap.
    pub seed: u64,
    /// Repeated sequences `[BOS, s, s]` scored.
    pub batch: usize,
    /// Length of `s`.
    pub segment: usize,
    /// Bootstrap resamples of the 95% intervals (over sequences).
    pub resamples: usize,
    /// Top induction heads zeroed cumulatively (≥ 5: the check reads step 5).
    pub ablate_top: usize,
    /// Prompt completed greedily.
    pub prompt: String,
    /// New tokens of the completion.
    pub max_new_tokens: usize,
    /// The completion must contain this text.
    pub expect: String,
    /// Token placed first in every sequence (default: the GGUF's
    /// `tokenizer.ggml.bos_token_id`).
    #[serde(default)]
    pub bos: Option<u32>,
}

/// Runs fig13 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig13Config = load_config(config, overrides)?;
    if cfg.ablate_top < CHECKED_ABLATION {
        return Err(format!(
            "fig13: ablate_top = {} but the check needs the top {CHECKED_ABLATION} heads zeroed",
            cfg.ablate_top
        )
        .into());
    }
    let gguf = smollm2_file(&crate::fixtures::repo_root())?;
    let mut out = ResultDir::start(dir, &cfg, vec![cfg.seed])?;
    out.extra("smollm2_sha256", &crate::fixtures::sha256_file(&gguf)?)?;
    let clock = Instant::now();
    let model = HookedTransformer::from_gguf(&gguf, &load_options())?;
    println!("  loaded {} in {:.1} s", gguf.display(), secs(&clock));
    let completion = complete(&cfg, &model, &mut out)?;

    let clock = Instant::now();
    let bos = match cfg.bos {
        Some(id) => id,
        None => model
            .tokenizer()
            .and_then(|t| t.bos_id())
            .ok_or_else(|| format!("{} declares no BOS token: set `bos`", gguf.display()))?,
    };
    let mut rng = seeded(derive_seed(cfg.seed, "fig13/tokens"));
    let tokens = TokenDraw::for_model(&model, bos)?.repeated(&mut rng, cfg.batch, cfg.segment)?;
    let opts = StudyOptions {
        ablate_top: cfg.ablate_top,
        resamples: cfg.resamples,
        bootstrap_seed: derive_seed(cfg.seed, "fig13/bootstrap"),
    };
    let study = repeat_study(&model, &tokens, &opts)?;
    println!(
        "  {} × [BOS = {bos}, s, s], |s| = {}: detectors, losses and {} ablations in {:.1} s",
        cfg.batch,
        cfg.segment,
        cfg.ablate_top,
        secs(&clock)
    );
    crate::detector_maps::write(&out, "fig13", "SmolLM2-135M", cfg.segment, &study.scores)?;
    report_heads(&study);
    loss_by_position(&cfg, &study, &out)?;
    cumulative_ablation(&study, &out)?;
    let pass = record(&cfg, &study, &completion, &mut out);
    out.finish(pass)
}

fn secs(clock: &Instant) -> f64 {
    clock.elapsed().as_secs_f64()
}

/// The greedy completion of the prompt, printed and kept in the manifest.
fn complete(
    cfg: &Fig13Config,
    model: &HookedTransformer,
    out: &mut ResultDir,
) -> Result<String, BoxError> {
    let tok = model
        .tokenizer()
        .ok_or("the SmolLM2 GGUF carries no tokenizer")?;
    let prompt = tok.encode(&cfg.prompt, true)?.ids;
    let opts = GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        ..GenerateOptions::default()
    };
    let clock = Instant::now();
    let new = model.generate(&prompt, &opts, &mut NoHooks, |_| Ok(()))?;
    let text = tok.decode(&new, true)?;
    println!(
        "  greedy ({} tokens, {:.1} s): {}⟨{text}⟩",
        new.len(),
        secs(&clock),
        cfg.prompt
    );
    out.extra("completion", &text)?;
    Ok(text)
}

/// Prints the top induction heads with their other scores.
fn report_heads(study: &RepeatStudy) {
    let s = &study.scores;
    println!("  top induction heads (induction, previous-token, duplicate, prefix-matching):");
    for &(c, score) in study.ranked.iter().take(8) {
        if let metarep_model::Component::Head { layer: l, head: h } = c {
            println!(
                "    {c}: {score:.3}, {:.3}, {:.3}, {:.3}",
                s.previous_token[l][h], s.duplicate_token[l][h], s.prefix_matching[l][h]
            );
        }
    }
}

/// Mean loss by position, clean and after each ablation step: a table and a plot of the clean
/// curve, the top-5 curve and the last step's.
fn loss_by_position(
    cfg: &Fig13Config,
    study: &RepeatStudy,
    out: &ResultDir,
) -> Result<(), BoxError> {
    let mut header = vec!["position".to_string(), "copy".into(), "clean".into()];
    header.extend((1..=study.ablations.len()).map(|k| format!("top {k} zeroed")));
    let mut t = Table::new(header.iter().map(String::as_str).collect());
    for (p, &clean) in study.by_position.iter().enumerate() {
        // Position p predicts token p + 1: s occupies 1..=segment, its copy the rest.
        let copy = if p < cfg.segment { "first" } else { "second" };
        let mut row = vec![Cell::Int(p as i64), Cell::from(copy), Cell::Num(clean)];
        row.extend(study.ablations.iter().map(|a| Cell::Num(a.by_position[p])));
        t.push_row(row)?;
    }
    out.table("fig13_loss_by_position", &t)?;
    let curve = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter().enumerate().map(|(p, &y)| (p as f64, y)).collect()
    };
    let last = study.ablations.len();
    let mut plot = LinePlot::new(format!(
        "fig13: next-token loss by position on [BOS, s, s], |s| = {} (SmolLM2-135M)",
        cfg.segment
    ))
    .x_label(format!(
        "position (predictions from {} on are of the copy of s)",
        cfg.segment
    ))
    .y_label("loss (nats)")
    .series(Series {
        name: "clean".into(),
        points: curve(&study.by_position),
        style: SeriesStyle::Solid,
        color: Some(0),
    });
    let mut shown = vec![(CHECKED_ABLATION, 3)];
    if last != CHECKED_ABLATION {
        shown.push((last, 1));
    }
    for (k, color) in shown {
        plot = plot.series(Series {
            name: format!("top {k} induction heads zeroed"),
            points: curve(&study.ablations[k - 1].by_position),
            style: SeriesStyle::Dashed,
            color: Some(color),
        });
    }
    out.plot("fig13_loss_by_position", &plot)
}

/// First- and second-copy loss with intervals after each cumulative step: table and plot.
fn cumulative_ablation(study: &RepeatStudy, out: &ResultDir) -> Result<(), BoxError> {
    let mut t = Table::new(vec![
        "heads zeroed",
        "head added",
        "first copy",
        "first low",
        "first high",
        "second copy",
        "second low",
        "second high",
    ]);
    let mut steps = vec![(0usize, "-".to_string(), &study.clean)];
    for (k, a) in study.ablations.iter().enumerate() {
        let added = a.heads.last().map(ToString::to_string).unwrap_or_default();
        steps.push((k + 1, added, &a.losses));
    }
    println!(
        "  loss: first copy {}, second copy {} nats",
        study.clean.first.display(3),
        study.clean.second.display(3)
    );
    for (k, added, l) in &steps {
        let mut row = vec![Cell::Int(*k as i64), Cell::from(added.as_str())];
        row.extend(interval_cells(&l.first));
        row.extend(interval_cells(&l.second));
        t.push_row(row)?;
        if *k > 0 {
            println!(
                "  top {k} zeroed (+{added}): second copy {}",
                l.second.display(3)
            );
        }
    }
    out.table("fig13_ablation", &t)?;
    let line = |name: &str, f: &dyn Fn(&Interval) -> f64, style, color| Series {
        name: name.into(),
        points: steps
            .iter()
            .map(|(k, _, l)| (*k as f64, f(&l.second)))
            .collect(),
        style,
        color: Some(color),
    };
    let plot = LinePlot::new(
        "fig13: second-copy loss as the top induction heads are zeroed cumulatively (SmolLM2-135M)",
    )
    .x_label("top induction heads zeroed")
    .y_label("second-copy loss (nats)")
    .series(line("estimate", &|i| i.estimate, SeriesStyle::Solid, 0))
    .series(line("95% low", &|i| i.low, SeriesStyle::Dashed, 0))
    .series(line("95% high", &|i| i.high, SeriesStyle::Dashed, 0))
    .series(Series {
        name: "first copy (clean)".into(),
        points: steps
            .iter()
            .map(|(k, _, _)| (*k as f64, study.clean.first.estimate))
            .collect(),
        style: SeriesStyle::Dashed,
        color: Some(3),
    });
    out.plot("fig13_ablation", &plot)
}

/// Metrics and the check.
fn record(cfg: &Fig13Config, study: &RepeatStudy, completion: &str, out: &mut ResultDir) -> bool {
    let (top, top_score) = study.ranked[0];
    let clean = &study.clean;
    let checked = &study.ablations[CHECKED_ABLATION - 1].losses;
    let m = &mut out.metrics;
    m.set_number(
        "top_induction_layer",
        top.layer().unwrap_or(usize::MAX) as f64,
    );
    if let metarep_model::Component::Head { head, .. } = top {
        m.set_number("top_induction_head", head as f64);
    }
    m.set_number("top_induction_score", top_score);
    let above = study.ranked.iter().filter(|h| h.1 >= TOP_SCORE_MIN).count();
    m.set_number("heads_induction_score_ge_0_4", above as f64);
    for (key, i) in [
        ("loss_first_copy", &clean.first),
        ("loss_second_copy", &clean.second),
    ] {
        set_interval(m, key, i);
    }
    for (k, a) in study.ablations.iter().enumerate() {
        set_interval(
            m,
            &format!("top{}_zeroed_loss_second_copy", k + 1),
            &a.losses.second,
        );
    }
    let halved = clean.second.estimate < SECOND_COPY_MAX * clean.first.estimate;
    let strong = top_score >= TOP_SCORE_MIN;
    let apart = checked.second.low > clean.second.high;
    let completed = completion.contains(&cfg.expect);
    m.set_bool("second_copy_below_half_first", halved);
    m.set_bool("top_induction_score_ge_0_4", strong);
    m.set_bool("top5_ablation_raises_second_copy_loss", apart);
    m.set_bool("completion_contains_expected", completed);
    println!(
        "  check: second < {SECOND_COPY_MAX} × first {halved}; top score ≥ {TOP_SCORE_MIN} {strong}; \
         top {CHECKED_ABLATION} zeroed: intervals apart {apart}; completion has {:?} {completed}",
        cfg.expect
    );
    halved && strong && apart && completed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_fixture_names_the_command_that_fetches_it() {
        let e = smollm2_file(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cargo xtask fixtures smollm2"), "{e}");
    }

    #[test]
    fn fewer_ablated_heads_than_the_check_reads_is_an_error() {
        let config = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/fig13.toml"
        ));
        let e = run(
            config,
            &["ablate_top=3".into()],
            Path::new("/nonexistent/fig13"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ablate_top = 3"), "{e}");
    }
}

//! fig18: numeric-label text ICL end to end. A small decoder trained on text-formatted
//! regression prompts (`metarep_testbeds::text_regression`, one model per seed) answers held-out
//! prompts with n in-context examples by greedy decoding; `extract_number` reads the answer.
//! Its MAE against the true label sits next to baselines computed on the same printed numbers:
//! ridge (the Bayes oracle), tuned GD, 1-NN, the context mean and zero. Also: the MAE between
//! the model's answers and each baseline's (which solver it is closest to), token accuracy
//! against the ridge oracle's rounded answer, and the fraction of answers that parse.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::baselines::{KNearestNeighbours, MeanLabel, Predictor, Ridge};
use metarep_eval::harness::{SummaryRow, Sweep, SweepResult};
use metarep_eval::tasks::linear::RegressionTask;
use metarep_eval::tasks::text::{numeric_mae, token_accuracy, TextExample};
use metarep_lat_cg::icl::tuned_gd;
use metarep_model::HookedTransformer;
use metarep_testbeds::text_regression::{answer, number_tokens, TextRegressionSpec};
use serde::{Deserialize, Serialize};

use crate::checks::{at_least_one, each, require, CheckedConfig};
use crate::device::{load_options, onto_device};
use crate::error::BoxError;
use crate::fixtures::{read_record, stale};
use crate::output::{metric_key, ResultDir};

/// At the largest n the model's MAE must be at most this fraction of the better of the
/// context-mean and the zero predictor's.
const LEARNED_MAX_RATIO: f64 = 0.8;
/// At every n at least this fraction of the model's answers must parse as numbers.
const PARSED_MIN: f64 = 0.95;

/// The model's series.
const MODEL: &str = "model (greedy text answer)";
/// The ridge oracle's series.
const RIDGE: &str = "ridge (oracle)";
/// The context-mean predictor's series.
const MEAN: &str = "context mean";
/// The zero predictor's series.
const ZERO: &str = "zero";
/// 1-nearest-neighbour's series.
const NN: &str = "1-NN";
/// Prefix of the series of the MAE between the model's answers and a baseline's predictions.
const TO: &str = "model to ";
/// The token-accuracy series.
const TOKEN_ACCURACY: &str = "token accuracy vs rounded ridge answer";
/// The parsed-fraction series.
const PARSED: &str = "answers that parse";

/// `configs/fig18.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig18Config {
    /// One model per seed (its weights and training sequences), and the held-out prompts.
    pub seeds: Vec<u64>,
    /// In-context examples of the held-out prompts (the x axis; each ≤ `model.n_train`).
    pub ns: Vec<usize>,
    /// Held-out prompts per seed and n.
    pub held_out: usize,
    /// Tasks per n on which GD's step is tuned (separate from the held-out ones).
    pub tuning_tasks: usize,
    /// GD steps from w = 0.
    pub gd_steps: usize,
    /// Prompts per forward pass while decoding.
    pub decode_batch: usize,
    /// Load the checked-in `fixtures/text-regression/seed-<seed>/` models instead of
    /// training (their settings must equal `[model]`'s; `cargo xtask fixtures
    /// text-regression` builds them).
    pub fixture: bool,
    /// The task family, the model and its training (`decoder.seed` is replaced by each seed).
    pub model: TextRegressionSpec,
}

impl CheckedConfig for Fig18Config {
    fn check(&self) -> Result<(), BoxError> {
        require(!self.seeds.is_empty(), "seeds", "[]", "at least one seed")?;
        each("ns", &self.ns, at_least_one)?;
        let largest = self.ns.iter().copied().max().unwrap_or(0);
        require(
            largest <= self.model.n_train,
            "ns",
            largest,
            "each n ≤ model.n_train (the model was trained up to it)",
        )?;
        for (key, v) in [
            ("held_out", self.held_out),
            ("tuning_tasks", self.tuning_tasks),
            ("gd_steps", self.gd_steps),
            ("decode_batch", self.decode_batch),
        ] {
            at_least_one(key, v)?;
        }
        Ok(self.model.validate()?)
    }
}

/// Directory of seed `seed`'s checked-in model.
pub fn fixture_dir(seed: u64) -> std::path::PathBuf {
    crate::fixtures::repo_root().join(format!("fixtures/text-regression/seed-{seed}"))
}

/// The settings file written next to each fixture model.
pub const FIXTURE_SPEC: &str = "text-regression.json";

/// Seed `seed`'s model: the checked-in fixture (checked against `spec`) or freshly trained.
fn model_for(cfg: &Fig18Config, seed: u64, dir: &Path) -> Result<HookedTransformer, BoxError> {
    let spec = cfg.model.with_seed(seed);
    if !cfg.fixture {
        let (model, report) = spec.train()?;
        println!(
            "  seed {seed}: trained {} steps, loss {:.3} → {:.3} ({:.0} s)",
            report.steps, report.first_loss, report.final_loss, report.seconds
        );
        let saved = dir.join(format!("model-seed-{seed}"));
        model.save_pretrained(&saved)?;
        return onto_device(model, &saved);
    }
    let dir = fixture_dir(seed);
    let stored: TextRegressionSpec = read_record(&dir, FIXTURE_SPEC, "text-regression")?;
    if stored != spec {
        return Err(stale(
            &dir,
            "text-regression",
            &format!("with other settings than [model] (seed {seed})"),
        ));
    }
    println!("  seed {seed}: {}", dir.display());
    Ok(HookedTransformer::from_dir(&dir, &load_options())?)
}

/// Runs fig18 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig18Config = crate::checks::load_checked(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let mut models = BTreeMap::new();
    for &seed in &cfg.seeds {
        models.insert(seed, model_for(&cfg, seed, dir)?);
    }
    let xs: Vec<f64> = cfg.ns.iter().map(|&n| n as f64).collect();
    let result = Sweep::new(&cfg.seeds, &xs).run(|seed, x| {
        let clock = Instant::now();
        let row = measure(&cfg, &models[&seed], seed, x as usize)?;
        let get = |name: &str| row.iter().find(|r| r.0 == name).map_or(f64::NAN, |r| r.1);
        println!(
            "  seed {seed}, n = {x}: model {:.3}, ridge {:.3}, context mean {:.3}, zero {:.3}; \
             parsed {:.3} ({:.1} s)",
            get(MODEL),
            get(RIDGE),
            get(MEAN),
            get(ZERO),
            get(PARSED),
            clock.elapsed().as_secs_f64()
        );
        Ok::<_, BoxError>(row)
    })?;
    out.table("fig18", &result.table(0.95)?)?;
    write_plots(&cfg, &result, &out)?;
    let pass = record(&cfg, &result, &mut out)?;
    out.finish(pass)
}

/// The GD series' name.
fn gd_name(steps: usize) -> String {
    format!(
        "GD ({steps} step{}, tuned η)",
        if steps == 1 { "" } else { "s" }
    )
}

/// Every series at one (seed, n): MAEs against the true label, the model's distance to each
/// baseline, token accuracy and the parsed fraction.
fn measure(
    cfg: &Fig18Config,
    model: &HookedTransformer,
    seed: u64,
    n: usize,
) -> Result<Vec<(String, f64)>, BoxError> {
    let spec = &cfg.model;
    let prompts = spec.prompt_spec(n);
    let mut rng = seeded(derive_seed(seed, &format!("fig18/held-out/n{n}")));
    let (tasks, examples): (Vec<RegressionTask>, Vec<TextExample>) = spec
        .prompts(n, cfg.held_out, &mut rng)?
        .into_iter()
        .map(|(t, e)| (prompts.as_printed(&t), e))
        .unzip();
    let mut rng = seeded(derive_seed(seed, &format!("fig18/tuning/n{n}")));
    let tuning: Vec<RegressionTask> = spec
        .prompts(n, cfg.tuning_tasks, &mut rng)?
        .into_iter()
        .map(|(t, _)| prompts.as_printed(&t))
        .collect();
    let (gd, _) = tuned_gd(cfg.gd_steps, &tuning)?;
    let ridge = Ridge {
        lambda: spec.noise.powi(2) * spec.dim as f64 / n as f64,
    };
    let nearest = KNearestNeighbours { k: 1 };
    let baselines: [(String, &dyn Predictor); 4] = [
        (RIDGE.into(), &ridge),
        (gd_name(cfg.gd_steps), &gd),
        (NN.into(), &nearest),
        (MEAN.into(), &MeanLabel),
    ];
    let predictions = baselines
        .iter()
        .map(|(name, p)| Ok((name.clone(), predict(*p, &tasks)?)))
        .collect::<Result<Vec<_>, BoxError>>()?;
    let answers = answer(model, &examples, spec.decimals, cfg.decode_batch)?;
    let texts: Vec<String> = answers.iter().map(|a| a.text.clone()).collect();
    let truth: Vec<f64> = examples.iter().map(|e| e.value).collect();
    let (model_mae, missing) = numeric_mae(&texts, &truth)?;
    let mut row = vec![(MODEL.to_string(), model_mae)];
    for (name, pred) in &predictions {
        row.push((name.clone(), mae(pred, &truth)));
    }
    row.push((ZERO.into(), mae(&vec![0.0; truth.len()], &truth)));
    for (name, pred) in &predictions {
        row.push((format!("{TO}{name}"), numeric_mae(&texts, pred)?.0));
    }
    let tokenizer = model
        .tokenizer()
        .ok_or("the text-regression model carries no tokenizer")?;
    let mut accuracy = 0.0;
    for (a, &oracle) in answers.iter().zip(&predictions[0].1) {
        let target = number_tokens(tokenizer, oracle, spec.decimals)?;
        accuracy += token_accuracy(&a.tokens, &target)?;
    }
    row.push((TOKEN_ACCURACY.into(), accuracy / answers.len() as f64));
    row.push((PARSED.into(), 1.0 - missing as f64 / examples.len() as f64));
    Ok(row)
}

/// A predictor's answer at each task's (single) query.
fn predict(p: &dyn Predictor, tasks: &[RegressionTask]) -> Result<Vec<f64>, BoxError> {
    tasks
        .iter()
        .map(|t| Ok(p.predict(&t.x_support, &t.y_support, &t.x_query)?[0]))
        .collect()
}

/// Mean absolute difference.
fn mae(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

/// The setting in words, for titles.
fn setting(cfg: &Fig18Config) -> String {
    let m = &cfg.model;
    format!(
        "d\u{a0}=\u{a0}{}, σ\u{a0}=\u{a0}{}, {} decimal{}",
        m.dim,
        m.noise,
        m.decimals,
        if m.decimals == 1 { "" } else { "s" }
    )
}

/// MAE against the truth by n (log axes), and the model's distance to each baseline by n.
fn write_plots(cfg: &Fig18Config, result: &SweepResult, out: &ResultDir) -> Result<(), BoxError> {
    let m = &cfg.model.decoder;
    let model_note = format!(
        "model: {} transformer block{}, d_model {}, {} heads, digit-level tokens, trained {} \
         steps on {}-example prompts; unparseable answers are left out of its MAE (see the table)",
        m.layers,
        if m.layers == 1 { "" } else { "s" },
        m.d_model,
        m.heads,
        m.steps,
        cfg.model.n_train
    );
    let vs_truth = result
        .select(|s| !s.starts_with(TO) && s != TOKEN_ACCURACY && s != PARSED)
        .plot(
            &format!(
                "fig18: in-context regression written as text, MAE vs in-context examples ({})",
                setting(cfg)
            ),
            "in-context examples n",
            "MAE against the true y",
            true,
            0.95,
        )?
        .log_x(true)
        .note(model_note.clone());
    out.plot("fig18_mae", &vs_truth)?;
    let to_baselines = result
        .select(|s| s.starts_with(TO))
        .plot(
            &format!(
                "fig18: how far the model's answers are from each baseline's ({})",
                setting(cfg)
            ),
            "in-context examples n",
            "MAE between the model's and the baseline's answers",
            true,
            0.95,
        )?
        .log_x(true)
        .note(model_note);
    out.plot("fig18_to_baselines", &to_baselines)
}

/// The summary row of `method` at `x`.
fn row_of<'a>(rows: &'a [SummaryRow], method: &str, x: f64) -> Option<&'a SummaryRow> {
    rows.iter().find(|r| r.method == method && r.x == x)
}

/// One seed's value of `method` at `x`.
fn value(result: &SweepResult, method: &str, x: f64, seed: u64) -> f64 {
    result
        .measurements
        .iter()
        .find(|m| m.method == method && m.x == x && m.seed == seed)
        .map_or(f64::NAN, |m| m.value)
}

/// Metrics and the check (see docs/results.md, fig18): per seed, at the largest n, model MAE ≤
/// 0.8 × min(context mean, zero); model MAE at the largest n below that at the smallest; at
/// every n ≥ 95% of the answers parse.
fn record(cfg: &Fig18Config, result: &SweepResult, out: &mut ResultDir) -> Result<bool, BoxError> {
    let rows = result.summary(0.95)?;
    for r in &rows {
        let key = metric_key(&r.method);
        out.metrics.set_number(format!("{key}_n{}", r.x), r.mean);
    }
    let largest = cfg.ns.iter().copied().max().unwrap_or(0) as f64;
    let smallest = cfg.ns.iter().copied().min().unwrap_or(0) as f64;
    let mut pass = true;
    for &seed in &cfg.seeds {
        let at = |method: &str, x: f64| value(result, method, x, seed);
        let floor = at(MEAN, largest).min(at(ZERO, largest));
        let ratio = at(MODEL, largest) / floor;
        let learned = ratio <= LEARNED_MAX_RATIO;
        let uses = at(MODEL, largest) < at(MODEL, smallest);
        let parsed = cfg
            .ns
            .iter()
            .map(|&n| at(PARSED, n as f64))
            .fold(f64::INFINITY, f64::min);
        let parses = parsed >= PARSED_MIN;
        let m = &mut out.metrics;
        m.set_number(format!("model_mae_over_no_learning_seed_{seed}"), ratio);
        m.set_number(format!("min_parsed_fraction_seed_{seed}"), parsed);
        m.set_bool(format!("learned_pass_seed_{seed}"), learned);
        m.set_bool(format!("uses_examples_pass_seed_{seed}"), uses);
        m.set_bool(format!("parses_pass_seed_{seed}"), parses);
        println!(
            "  check seed {seed}: MAE(n = {largest}) / min(context mean, zero) = {ratio:.3} \
             (≤ {LEARNED_MAX_RATIO}: {learned}); MAE falls from n = {smallest}: {uses}; \
             parsed ≥ {PARSED_MIN} at every n ({parsed:.3}): {parses}"
        );
        pass &= learned && uses && parses;
    }
    if let (Some(model), Some(ridge)) =
        (row_of(&rows, MODEL, largest), row_of(&rows, RIDGE, largest))
    {
        out.metrics
            .set_number("model_over_ridge_mae_largest_n", model.mean / ridge.mean);
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Fig18Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/fig18.toml");
        crate::checks::load_checked(&path, &[]).unwrap()
    }

    #[test]
    fn the_shipped_configs_pass_their_checks_and_share_the_model() {
        let full = config();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/fig18.quick.toml");
        let quick: Fig18Config = crate::checks::load_checked(&path, &[]).unwrap();
        assert_eq!(full.model, quick.model);
        assert_eq!(full.seeds, quick.seeds);
    }

    #[test]
    fn an_n_beyond_the_training_prompts_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/fig18.toml");
        let e = crate::checks::load_checked::<Fig18Config>(&path, &["ns=[1, 99]".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ns = 99"), "{e}");
    }

    #[test]
    fn a_fixture_trained_with_other_settings_is_refused() {
        let mut cfg = config();
        cfg.model.decoder.steps += 1;
        let e = model_for(&cfg, cfg.seeds[0], Path::new("unused"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cargo xtask fixtures text-regression"), "{e}");
    }

    #[test]
    fn a_tiny_run_writes_its_table_figures_and_metrics() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/fig18.quick.toml");
        let sets: Vec<String> = [
            "fixture=false",
            "seeds=[0, 1]",
            "ns=[1, 2]",
            "held_out=6",
            "tuning_tasks=20",
            "model.n_train=2",
            "model.decoder.n_ctx=48",
            "model.decoder.layers=1",
            "model.decoder.d_model=16",
            "model.decoder.heads=2",
            "model.decoder.steps=3",
            "model.decoder.batch=4",
            "model.decoder.warmup=1",
        ]
        .map(String::from)
        .to_vec();
        let dir = tempfile::tempdir().unwrap();
        run(&path, &sets, dir.path()).unwrap();
        for file in [
            "fig18.csv",
            "fig18.md",
            "fig18_mae.svg",
            "fig18_mae.png",
            "fig18_to_baselines.png",
            "metrics.json",
            "manifest.json",
        ] {
            assert!(dir.path().join(file).exists(), "{file}");
        }
        let metrics = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
        for key in ["learned_pass_seed_1", "ridge_oracle_n2", "model_to_1_nn_n1"] {
            assert!(metrics.contains(key), "{key} in {metrics}");
        }
    }

    #[test]
    fn the_check_reads_each_seed_at_the_ends_of_n() {
        let mut cfg = config();
        cfg.seeds = vec![0];
        cfg.ns = vec![1, 16];
        let mut result = SweepResult {
            seeds: vec![0],
            measurements: vec![],
        };
        let mut push = |method: &str, x: f64, value: f64| {
            result
                .measurements
                .push(metarep_eval::harness::Measurement {
                    method: method.into(),
                    x,
                    seed: 0,
                    value,
                })
        };
        for (n, model) in [(1.0, 0.6), (16.0, 0.4)] {
            push(MODEL, n, model);
            push(MEAN, n, 0.7);
            push(ZERO, n, 0.6);
            push(RIDGE, n, 0.05);
            push(PARSED, n, 1.0);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut out = ResultDir::start(dir.path(), &cfg, vec![0]).unwrap();
        // 0.4 / 0.6 = 0.67 ≤ 0.8, falls from 0.6, everything parses.
        assert!(record(&cfg, &result, &mut out).unwrap());
        result.measurements[5].value = 0.5; // model at n = 16: 0.5 / 0.6 = 0.83
        assert!(!record(&cfg, &result, &mut out).unwrap());
        result.measurements[5].value = 0.4;
        result.measurements[9].value = 0.9; // parsed at n = 16
        assert!(!record(&cfg, &result, &mut out).unwrap());
    }
}

//! fig7: linear probes of solver state (GD and CG residuals, iterates, directions, the ridge
//! solution) in every layer's residual stream of trained LATs and of the constructed CG LAT.

use std::path::Path;

use candle_core::Device;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::baselines::StepSize;
use metarep_eval::harness::{Measurement, SweepResult};
use metarep_eval::table::{Cell, Table};
use metarep_lat_cg::construct::cg::{CgLat, CgSpec};
use metarep_lat_cg::icl::{tuned_gd, VonOswaldSetting};
use metarep_lat_cg::problem::{rbf_problem, KrrProblem, RbfProblemSpec};
use metarep_lat_cg::reference::Preconditioner;
use metarep_lat_cg::solver_probe::{probe_layers, ProbeRow, ProbeSet, Target};
use metarep_lat_cg::train::IclTrainConfig;
use serde::{Deserialize, Serialize};

use crate::checks::{self, CheckedConfig};
use crate::error::BoxError;
use crate::output::ResultDir;

/// The constructed-model part of fig7.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConstructedConfig {
    problem: RbfProblemSpec,
    lambda: f64,
    steps: usize,
    train_problems: usize,
    test_problems: usize,
}

/// Settings of fig7 (`configs/fig7.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fig7Config {
    seeds: Vec<u64>,
    depths: Vec<usize>,
    probe_train_tasks: usize,
    probe_test_tasks: usize,
    tuning_tasks: usize,
    train: IclTrainConfig,
    constructed: ConstructedConfig,
}

impl CheckedConfig for Fig7Config {
    fn check(&self) -> Result<(), BoxError> {
        checks::each("seeds", &self.seeds, |_, _| Ok(()))?;
        checks::each("depths", &self.depths, checks::at_least_one)?;
        for (key, v) in [
            ("probe_train_tasks", self.probe_train_tasks),
            ("probe_test_tasks", self.probe_test_tasks),
            ("tuning_tasks", self.tuning_tasks),
            ("constructed.steps", self.constructed.steps),
            (
                "constructed.train_problems",
                self.constructed.train_problems,
            ),
            ("constructed.test_problems", self.constructed.test_problems),
        ] {
            checks::at_least_one(key, v)?;
        }
        checks::non_negative("constructed.lambda", self.constructed.lambda)?;
        checks::rbf_problem("constructed.problem", &self.constructed.problem)
    }
}

/// A CG target must be read by the constructed LAT's probes with at least this cosine.
const MIN_CONSTRUCTED_COSINE: f64 = 0.99;
/// Every shuffled-target control must stay below this held-out R² (it must fail).
const MAX_CONTROL_R2: f64 = 0.1;

/// All probe rows of one model (name) and seed.
struct ModelProbes {
    model: String,
    seed: u64,
    rows: Vec<ProbeRow>,
}

fn constructed_probes(cfg: &ConstructedConfig, seed: u64) -> Result<Vec<ProbeRow>, BoxError> {
    let draw = |stream: &str, count: usize| -> Result<Vec<KrrProblem>, BoxError> {
        let mut rng = seeded(derive_seed(seed, stream));
        Ok((0..count)
            .map(|_| rbf_problem(&mut rng, &cfg.problem, cfg.lambda))
            .collect::<Result<_, _>>()?)
    };
    let (train, test) = (
        draw("fig7/cg-train", cfg.train_problems)?,
        draw("fig7/cg-test", cfg.test_problems)?,
    );
    let first = train.first().ok_or("fig7: train_problems must be ≥ 1")?;
    let model = CgLat::build(
        CgSpec::for_problem(first, cfg.steps, Preconditioner::None)?,
        &Device::Cpu,
    )?;
    Ok(probe_layers(
        &ProbeSet::constructed(&model, &train)?,
        &ProbeSet::constructed(&model, &test)?,
        derive_seed(seed, "fig7/control"),
    )?)
}

fn trained_probes(cfg: &Fig7Config, depth: usize, seed: u64) -> Result<Vec<ProbeRow>, BoxError> {
    let setting = VonOswaldSetting {
        train: cfg.train,
        ..Default::default()
    }
    .depth_scaled(depth);
    let (model, report) = setting.train_lat(depth, seed, None)?;
    let tuning = setting.tasks(derive_seed(seed, "fig7/tuning"), cfg.tuning_tasks)?;
    let eta = match tuned_gd(depth, &tuning)?.0.step {
        StepSize::Fixed(eta) => eta,
        other => return Err(format!("GD grid returned a non-fixed step {other:?}").into()),
    };
    let train = setting.tasks(derive_seed(seed, "fig7/probe-train"), cfg.probe_train_tasks)?;
    let test = setting.tasks(derive_seed(seed, "fig7/probe-test"), cfg.probe_test_tasks)?;
    println!(
        "   seed {seed}: trained {depth}-layer LAT in {:.0}s, GD step η = {eta:.3}",
        report.seconds
    );
    Ok(probe_layers(
        &ProbeSet::trained(&model, &train, eta)?,
        &ProbeSet::trained(&model, &test, eta)?,
        derive_seed(seed, "fig7/control"),
    )?)
}

/// Per (layer, target) of `value` over seeds, plus the shuffled control averaged over targets,
/// as a sweep result (x = layer).
fn sweep(runs: &[&ModelProbes], value: fn(&ProbeRow) -> (f64, f64)) -> SweepResult {
    let mut measurements = Vec::new();
    for run in runs {
        let layers = run.rows.iter().map(|r| r.layer).max().unwrap_or(0);
        for layer in 0..=layers {
            let here: Vec<&ProbeRow> = run.rows.iter().filter(|r| r.layer == layer).collect();
            for r in &here {
                measurements.push(Measurement {
                    method: r.target.name().to_string(),
                    x: layer as f64,
                    seed: run.seed,
                    value: value(r).0,
                });
            }
            let control = here.iter().map(|r| value(r).1).sum::<f64>() / here.len().max(1) as f64;
            measurements.push(Measurement {
                method: "shuffled control (mean over targets)".into(),
                x: layer as f64,
                seed: run.seed,
                value: control,
            });
        }
    }
    SweepResult {
        seeds: runs.iter().map(|r| r.seed).collect(),
        measurements,
    }
}

fn mean_at(runs: &[&ModelProbes], layer: usize, target: Target, f: fn(&ProbeRow) -> f64) -> f64 {
    let vals: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.rows.iter())
        .filter(|r| r.layer == layer && r.target == target)
        .map(f)
        .collect();
    vals.iter().sum::<f64>() / vals.len().max(1) as f64
}

/// Runs fig7 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig7Config = checks::load_checked(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let mut all: Vec<ModelProbes> = Vec::new();
    for &seed in &cfg.seeds {
        all.push(ModelProbes {
            model: "constructed CG LAT".into(),
            seed,
            rows: constructed_probes(&cfg.constructed, seed)?,
        });
        for &depth in &cfg.depths {
            all.push(ModelProbes {
                model: format!("trained LAT, {depth} layers"),
                seed,
                rows: trained_probes(&cfg, depth, seed)?,
            });
        }
    }
    out.table("probes", &probe_table(&all)?)?;
    let mut models: Vec<String> = Vec::new();
    for run in &all {
        if !models.contains(&run.model) {
            models.push(run.model.clone());
        }
    }
    for model in &models {
        let runs: Vec<&ModelProbes> = all.iter().filter(|r| &r.model == model).collect();
        per_model(model, &runs, dir, &mut out)?;
    }
    let (constructed_min, max_control_r2) = record(&all, &mut out);
    out.finish(constructed_min >= MIN_CONSTRUCTED_COSINE && max_control_r2 < MAX_CONTROL_R2)
}

/// Every probe row of every model and seed.
fn probe_table(all: &[ModelProbes]) -> Result<Table, BoxError> {
    let mut table = Table::new(vec![
        "model",
        "seed",
        "layer",
        "target",
        "cosine",
        "r2",
        "control_cosine",
        "control_r2",
    ]);
    for run in all {
        for r in &run.rows {
            table.push_row(vec![
                Cell::from(run.model.as_str()),
                Cell::from(run.seed as i64),
                Cell::from(r.layer as i64),
                Cell::from(r.target.name()),
                Cell::from(r.score.cosine),
                Cell::from(r.score.r2),
                Cell::from(r.score.control_cosine),
                Cell::from(r.score.control_r2),
            ])?;
        }
    }
    Ok(table)
}

/// Cosine and R² by layer for one model (over seeds), and its last layer's scores.
fn per_model(
    model: &str,
    runs: &[&ModelProbes],
    dir: &Path,
    out: &mut ResultDir,
) -> Result<(), BoxError> {
    let slug = model
        .replace("constructed CG LAT", "constructed")
        .replace("trained LAT, ", "trained_")
        .replace(' ', "_");
    let axis = "residual stream after layer t (= solver step t)";
    sweep(runs, |r| (r.score.cosine, r.score.control_cosine)).write(
        dir,
        &format!("{slug}_cosine"),
        &format!("fig7: held-out probe cosine by layer, {model}"),
        (axis, "held-out cosine"),
        false,
    )?;
    sweep(runs, |r| (r.score.r2, r.score.control_r2)).write(
        dir,
        &format!("{slug}_r2"),
        &format!("fig7: held-out probe R² by layer, {model}"),
        (axis, "held-out R²"),
        false,
    )?;
    let last = runs
        .iter()
        .flat_map(|r| r.rows.iter())
        .map(|r| r.layer)
        .max()
        .unwrap_or(0);
    for target in Target::ALL {
        let key = target
            .name()
            .split(' ')
            .take(2)
            .collect::<Vec<_>>()
            .join("_")
            .to_lowercase();
        out.metrics.set_number(
            format!("{slug}_last_layer_cosine_{key}"),
            mean_at(runs, last, target, |r| r.score.cosine),
        );
        out.metrics.set_number(
            format!("{slug}_last_layer_r2_{key}"),
            mean_at(runs, last, target, |r| r.score.r2),
        );
    }
    Ok(())
}

/// The check metrics: the constructed LAT's worst CG-state cosine and the largest control R².
fn record(all: &[ModelProbes], out: &mut ResultDir) -> (f64, f64) {
    let cg_targets = [Target::CgResidual, Target::CgIterate, Target::CgDirection];
    let constructed_min = all
        .iter()
        .filter(|r| r.model == "constructed CG LAT")
        .flat_map(|r| r.rows.iter())
        .filter(|r| cg_targets.contains(&r.target))
        .map(|r| r.score.cosine)
        .fold(f64::INFINITY, f64::min);
    let max_control_r2 = all
        .iter()
        .flat_map(|r| r.rows.iter())
        .map(|r| r.score.control_r2)
        .fold(f64::NEG_INFINITY, f64::max);
    out.metrics
        .set_number("constructed_min_cg_state_cosine", constructed_min);
    out.metrics.set_number("max_control_r2", max_control_r2);
    println!(
        "   constructed CG LAT: min cosine of CG state probes {constructed_min:.5}; max control R² {max_control_r2:.4}"
    );
    (constructed_min, max_control_r2)
}

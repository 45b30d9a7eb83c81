//! fig1: LAT → CG convergence at three condition numbers, with the rate bound.

use std::path::Path;

use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::{LegendPosition, LinePlot, Series, SeriesStyle};
use metarep_eval::table::{Cell, Table};
use metarep_lat_cg::convergence::{run_convergence, ConvergenceRow, ConvergenceRun};
use metarep_lat_cg::problem::{lambda_for_condition, rbf_problem, RbfProblemSpec};
use metarep_lat_cg::reference::Preconditioner;
use serde::{Deserialize, Serialize};

use crate::checks::{self, CheckedConfig};
use crate::device::device;
use crate::error::BoxError;
use crate::output::ResultDir;

/// Settings of fig1 (`configs/fig1.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fig1Config {
    seed: u64,
    problem: RbfProblemSpec,
    kappas: Vec<f64>,
    steps: usize,
}

impl CheckedConfig for Fig1Config {
    fn check(&self) -> Result<(), BoxError> {
        checks::rbf_problem("problem", &self.problem)?;
        checks::each("kappas", &self.kappas, |key, kappa| {
            checks::require(kappa > 1.0, key, kappa, "a condition number > 1")
        })?;
        checks::at_least_one("steps", self.steps)
    }
}

/// Tolerance of `--check` on the LAT-vs-CG deviation.
const MAX_DEV: f64 = 1e-6;

/// Runs fig1 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig1Config = checks::load_checked(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, vec![cfg.seed])?;
    let base = rbf_problem(
        &mut seeded(derive_seed(cfg.seed, "fig1/problem")),
        &cfg.problem,
        0.0,
    )?;
    let mut table = Table::new(vec![
        "kappa",
        "t",
        "lat_error",
        "cg_error",
        "bound",
        "dev_lat_vs_cg",
        "dev_cg_vs_cg",
        "reproducible",
    ]);
    let mut plot = LinePlot::new("LAT → CG: A-norm error vs depth")
        .x_label("CG layers t")
        .y_label("‖α_t − α*‖_A / ‖α*‖_A")
        .log_y(true)
        .legend(LegendPosition::LowerLeft);
    let (mut max_dev, mut bound_holds, mut min_repro) = (0.0f64, true, usize::MAX);
    for (i, &kappa) in cfg.kappas.iter().enumerate() {
        let mut prob = base.clone();
        prob.lambda = lambda_for_condition(&prob.phi, kappa)?;
        let run = run_convergence(&prob, cfg.steps, Preconditioner::None, &device())?;
        add_rows(&mut table, kappa, &run)?;
        plot = add_series(plot, i, kappa, &run);
        record(&mut out, kappa, prob.lambda, &run);
        max_dev = max_dev.max(run.max_dev_reproducible());
        bound_holds &= run.bound_holds();
        min_repro = min_repro.min(run.reproducible_steps);
    }
    out.metrics.set_number("max_rel_dev_lat_vs_cg", max_dev);
    out.metrics
        .set_number("min_reproducible_steps", min_repro as f64);
    out.metrics.set_bool("bound_holds", bound_holds);
    out.table("convergence", &table)?;
    out.plot("fig1", &plot)?;
    out.finish(max_dev <= MAX_DEV && bound_holds && min_repro >= 4)
}

/// One row per depth of the run at `kappa`.
fn add_rows(table: &mut Table, kappa: f64, run: &ConvergenceRun) -> Result<(), BoxError> {
    for r in &run.rows {
        table.push_row(vec![
            Cell::from(kappa),
            Cell::from(r.t as i64),
            Cell::from(r.lat_error),
            Cell::from(r.cg_error),
            Cell::from(r.bound),
            Cell::from(r.dev_lat_vs_cg),
            Cell::from(r.dev_cg_vs_cg),
            Cell::from(r.t <= run.reproducible_steps),
        ])?;
    }
    Ok(())
}

/// LAT, CG and the bound at `kappa` in colour `i`.
fn add_series(plot: LinePlot, i: usize, kappa: f64, run: &ConvergenceRun) -> LinePlot {
    let pts = |f: fn(&ConvergenceRow) -> f64| -> Vec<(f64, f64)> {
        run.rows.iter().map(|r| (r.t as f64, f(r))).collect()
    };
    let series = |name: &str, f: fn(&ConvergenceRow) -> f64, style| Series {
        name: format!("{name}, κ = {kappa}"),
        points: pts(f),
        style,
        color: Some(i),
    };
    plot.series(series("LAT", |r| r.lat_error, SeriesStyle::Markers))
        .series(series("CG", |r| r.cg_error, SeriesStyle::Solid))
        .series(series("bound", |r| r.bound, SeriesStyle::Dashed))
}

/// The metrics of the run at `kappa` (regulariser `lambda`).
fn record(out: &mut ResultDir, kappa: f64, lambda: f64, run: &ConvergenceRun) {
    let tag = format!("kappa_{kappa}");
    let m = &mut out.metrics;
    m.set_number(format!("lambda_{tag}"), lambda);
    m.set_number(
        format!("reproducible_steps_{tag}"),
        run.reproducible_steps as f64,
    );
    m.set_number(
        format!("max_rel_dev_lat_vs_cg_{tag}"),
        run.max_dev_reproducible(),
    );
    m.set_number(
        format!("max_rel_dev_lat_vs_cg_all_steps_{tag}"),
        run.max_dev_all(),
    );
    m.set_number(
        format!("max_rel_dev_cg_vs_cg_all_steps_{tag}"),
        run.max_jitter_all(),
    );
    m.set_number(
        format!("final_error_{tag}"),
        run.rows.last().map_or(f64::NAN, |r| r.lat_error),
    );
    m.set_bool(format!("bound_holds_{tag}"), run.bound_holds());
    println!(
        "   κ = {kappa:>6}: reproducible t ≤ {:>2}, max |LAT−CG| there {:.2e}; all t: |LAT−CG| {:.2e} vs |CG'−CG| {:.2e}",
        run.reproducible_steps,
        run.max_dev_reproducible(),
        run.max_dev_all(),
        run.max_jitter_all()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--set` values that make no sense are refused before anything runs or is written,
    /// naming the key and the value.
    #[test]
    fn invalid_values_are_errors_naming_key_and_value() {
        let config = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/fig1.toml"));
        // Under a file, so that nothing can be written even by root.
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml/fig1"));
        for (set, named) in [
            ("problem.noise=-1.0", "problem.noise = -1"),
            ("problem.n_support=0", "problem.n_support = 0"),
            ("steps=0", "steps = 0"),
            ("kappas=[10.0, 0.5]", "kappas[1] = 0.5"),
        ] {
            let e = run(config, &[set.into()], dir).unwrap_err().to_string();
            assert!(e.contains(named), "{set}: {e}");
        }
    }
}

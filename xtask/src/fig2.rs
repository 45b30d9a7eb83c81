//! fig2: an ill-conditioned K on which plain CG stalls and the Jacobi-preconditioned LAT recovers.

use std::path::Path;

use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::{LegendPosition, LinePlot, Series, SeriesStyle};
use metarep_eval::table::{Cell, Table};
use metarep_lat_cg::convergence::{run_convergence, ConvergenceRun};
use metarep_lat_cg::problem::{log_spaced_scales, rbf_problem, scaled_supports, RbfProblemSpec};
use metarep_lat_cg::reference::Preconditioner;
use serde::{Deserialize, Serialize};

use crate::checks::{self, CheckedConfig};
use crate::device::device;
use crate::error::BoxError;
use crate::output::ResultDir;

/// Settings of fig2 (`configs/fig2.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fig2Config {
    seed: u64,
    problem: RbfProblemSpec,
    spread: f64,
    nugget: f64,
    steps: usize,
    residual_tol: f64,
}

impl CheckedConfig for Fig2Config {
    fn check(&self) -> Result<(), BoxError> {
        checks::rbf_problem("problem", &self.problem)?;
        checks::non_negative("spread", self.spread)?;
        checks::non_negative("nugget", self.nugget)?;
        checks::at_least_one("steps", self.steps)?;
        checks::positive("residual_tol", self.residual_tol)
    }
}

/// Steps to reach the tolerance as a metric value: the step, or -1 when never reached.
fn steps_metric(steps: Option<usize>) -> f64 {
    steps.map_or(-1.0, |s| s as f64)
}

/// Runs fig2 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig2Config = checks::load_checked(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, vec![cfg.seed])?;
    let base = rbf_problem(
        &mut seeded(derive_seed(cfg.seed, "fig2/problem")),
        &cfg.problem,
        0.0,
    )?;
    let prob = scaled_supports(
        &base,
        &log_spaced_scales(cfg.problem.n_support, cfg.spread),
        cfg.nugget,
    )?;
    let plain = run_convergence(&prob, cfg.steps, Preconditioner::None, &device())?;
    let jacobi = run_convergence(&prob, cfg.steps, Preconditioner::Jacobi, &device())?;

    let pass = record(&mut out, &cfg, &plain, &jacobi);
    out.table("residuals", &table(&plain, &jacobi)?)?;
    out.plot("fig2", &plot(&plain, &jacobi))?;
    out.finish(pass)
}

/// Residuals of both runs per depth.
fn table(plain: &ConvergenceRun, jacobi: &ConvergenceRun) -> Result<Table, BoxError> {
    let mut table = Table::new(vec![
        "t",
        "plain_lat_residual",
        "plain_cg_residual",
        "jacobi_lat_residual",
        "jacobi_pcg_residual",
    ]);
    for (p, j) in plain.rows.iter().zip(&jacobi.rows) {
        table.push_row(vec![
            Cell::from(p.t as i64),
            Cell::from(p.lat_residual),
            Cell::from(p.cg_residual),
            Cell::from(j.lat_residual),
            Cell::from(j.cg_residual),
        ])?;
    }
    Ok(table)
}

/// LAT and (P)CG residuals over depth, plain and preconditioned.
fn plot(plain: &ConvergenceRun, jacobi: &ConvergenceRun) -> LinePlot {
    let pts = |run: &ConvergenceRun, lat: bool| -> Vec<(f64, f64)> {
        run.rows
            .iter()
            .map(|r| (r.t as f64, if lat { r.lat_residual } else { r.cg_residual }))
            .collect()
    };
    let series = |name: &str, run, lat, color| Series {
        name: name.into(),
        points: pts(run, lat),
        style: if lat {
            SeriesStyle::Markers
        } else {
            SeriesStyle::Solid
        },
        color: Some(color),
    };
    LinePlot::new("Ill-conditioned K: plain vs Jacobi-preconditioned")
        .x_label("CG layers t")
        .y_label("‖y − Aα_t‖ / ‖y‖")
        .log_y(true)
        .legend(LegendPosition::LowerLeft)
        .series(series("LAT, plain", plain, true, 0))
        .series(series("CG", plain, false, 0))
        .series(series("LAT, Jacobi", jacobi, true, 1))
        .series(series("PCG (Jacobi)", jacobi, false, 1))
}

/// The metrics; returns the check: Jacobi reaches the tolerance in fewer steps and both LATs
/// equal their reference solvers to 1e-6 while reproducible.
fn record(
    out: &mut ResultDir,
    cfg: &Fig2Config,
    plain: &ConvergenceRun,
    jacobi: &ConvergenceRun,
) -> bool {
    let tol = cfg.residual_tol;
    let (plain_steps, jacobi_steps) = (
        plain.lat_steps_to_residual(tol),
        jacobi.lat_steps_to_residual(tol),
    );
    let m = &mut out.metrics;
    m.set_number("kappa_plain", plain.kappa);
    m.set_number("kappa_jacobi", jacobi.kappa);
    m.set_number("residual_tol", tol);
    m.set_number("max_steps", cfg.steps as f64);
    m.set_number("iters_to_tol_plain_lat", steps_metric(plain_steps));
    m.set_number(
        "iters_to_tol_plain_cg",
        steps_metric(plain.cg_steps_to_residual(tol)),
    );
    m.set_number("iters_to_tol_jacobi_lat", steps_metric(jacobi_steps));
    m.set_number(
        "iters_to_tol_jacobi_pcg",
        steps_metric(jacobi.cg_steps_to_residual(tol)),
    );
    m.set_bool("plain_reaches_tol", plain_steps.is_some());
    m.set_bool("jacobi_reaches_tol", jacobi_steps.is_some());
    m.set_number(
        "final_residual_plain_lat",
        plain.rows.last().map_or(f64::NAN, |r| r.lat_residual),
    );
    m.set_number(
        "final_residual_jacobi_lat",
        jacobi.rows.last().map_or(f64::NAN, |r| r.lat_residual),
    );
    m.set_number(
        "reproducible_steps_jacobi",
        jacobi.reproducible_steps as f64,
    );
    m.set_number("max_rel_dev_lat_vs_pcg", jacobi.max_dev_reproducible());
    m.set_number("max_rel_dev_lat_vs_cg_plain", plain.max_dev_reproducible());
    println!(
        "   κ plain {:.2e}, κ Jacobi {:.2e}; steps to {tol:.0e}: plain LAT {:?}, Jacobi LAT {:?}; |LAT−PCG| {:.2e} over t ≤ {}",
        plain.kappa,
        jacobi.kappa,
        plain_steps,
        jacobi_steps,
        jacobi.max_dev_reproducible(),
        jacobi.reproducible_steps
    );
    let faster = match (jacobi_steps, plain_steps) {
        (Some(j), Some(p)) => j < p,
        (Some(_), None) => true,
        _ => false,
    };
    faster && jacobi.max_dev_reproducible() <= 1e-6 && plain.max_dev_reproducible() <= 1e-6
}

//! routes_ablations: shared vs dedicated kernel heads and the temperature ablation of the
//! Route A model, as tables (mean ± 95% CI over seeds), with the acceptance checks that
//! `docs/results.md` states from the theory (routes_ablations, checks 1–8).

use std::path::Path;

use metarep_core::config::load_config;
use metarep_core::metrics::FlatMetrics;
use metarep_eval::harness::SweepResult;
use metarep_softmax_routes::sweeps::{
    head_sharing_table, means, temperature_table, AblationConfig,
};

use crate::device::device;
use crate::error::BoxError;
use crate::output::ResultDir;

/// Largest f64 `‖K̃ − K‖₂ / ‖K‖₂` of either head variant (check 1).
const OPERATOR_TOL: f64 = 1e-12;
/// Largest f64 deviation of the model's α from reference CG over the reproducible steps, and the
/// fewest such steps per seed (check 2, fig1's criterion).
const CG_TOL: f64 = 1e-6;
const MIN_REPRODUCIBLE_STEPS: f64 = 4.0;
/// Largest difference of the two variants' mean f32 RMSE ratios (check 3).
const SHARING_MARGIN: f64 = 0.01;
/// κ(A) / κ_row-sum from which row-sum PCG must need fewer steps (check 6).
const PRECONDITIONS: f64 = 10.0;
/// Largest |RMSE/oracle − 1| where f64 CG has converged within t steps (check 8).
const RMSE_TOL: f64 = 0.05;

/// Runs both ablations, writes `dir` (`head_sharing.*`, `temperature.*`) and records each check's
/// quantities and outcome in `metrics.json`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: AblationConfig = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let (sharing, sharing_table) = head_sharing_table(&cfg, &device())?;
    out.table("head_sharing", &sharing_table)?;
    println!("{}", sharing_table.to_markdown());
    let (temperature, temperature_table) = temperature_table(&cfg, &device())?;
    out.table("temperature", &temperature_table)?;
    println!("{}", temperature_table.to_markdown());
    let sharing_pass = check_sharing(&mut out.metrics, &sharing)?;
    let temperature_pass = check_temperature(&mut out.metrics, &temperature, cfg.steps)?;
    out.finish(sharing_pass && temperature_pass)
}

/// Every measured `(x, value)` of `method` in sweep order (x by x, each over the seeds), so the
/// columns of two methods line up point by point; an error when there is none.
fn column(result: &SweepResult, method: &str) -> Result<Vec<(f64, f64)>, BoxError> {
    let c: Vec<(f64, f64)> = result
        .measurements
        .iter()
        .filter(|m| m.method == method)
        .map(|m| (m.x, m.value))
        .collect();
    if c.is_empty() {
        return Err(format!("the sweep measured no {method:?}").into());
    }
    Ok(c)
}

/// Checks 1–3 (same operator, same CG, shared not worse); records them in `m`.
fn check_sharing(m: &mut FlatMetrics, result: &SweepResult) -> Result<bool, BoxError> {
    let mut same_operator = true;
    let mut same_cg = true;
    for (x, variant) in [(0.0, "shared"), (1.0, "dedicated")] {
        let of = |method: &str| -> Result<Vec<f64>, BoxError> {
            Ok(column(result, method)?
                .into_iter()
                .filter(|p| p.0 == x)
                .map(|p| p.1)
                .collect())
        };
        let op = of("realised K error / ‖K‖ (f64)")?
            .into_iter()
            .fold(0.0, f64::max);
        let steps = of("reproducible CG steps (f64)")?
            .into_iter()
            .fold(f64::INFINITY, f64::min);
        let dev = of("max dev vs CG, reproducible steps (f64)")?
            .into_iter()
            .fold(0.0, f64::max);
        m.set_number(format!("{variant}_max_realised_k_error_f64"), op);
        m.set_number(format!("{variant}_min_reproducible_steps"), steps);
        m.set_number(format!("{variant}_max_dev_vs_cg_reproducible_f64"), dev);
        same_operator &= op <= OPERATOR_TOL;
        same_cg &= steps >= MIN_REPRODUCIBLE_STEPS && dev <= CG_TOL;
    }
    let ratios = means(result, "rmse ratio (f32)")?;
    let (shared, dedicated) = (ratios[0].1, ratios[1].1);
    let not_worse = (shared - dedicated).abs() <= SHARING_MARGIN;
    m.set_number("shared_rmse_ratio_f32", shared);
    m.set_number("dedicated_rmse_ratio_f32", dedicated);
    m.set_number("shared_minus_dedicated_rmse_ratio_f32", shared - dedicated);
    m.set_bool("sharing_same_operator_pass", same_operator);
    m.set_bool("sharing_same_cg_pass", same_cg);
    m.set_bool("shared_not_worse_pass", not_worse);
    Ok(same_operator && same_cg && not_worse)
}

/// Checks 4–8 (conditioning and steps against τ, row-sum PCG, rounding bound, converged RMSE)
/// for models of `t` steps; records them in `m`.
fn check_temperature(
    m: &mut FlatMetrics,
    result: &SweepResult,
    t: usize,
) -> Result<bool, BoxError> {
    let kappa = means(result, "kappa(K + λI)")?;
    let kappa_pre = means(result, "kappa, row-sum preconditioned")?;
    let steps = means(result, "CG steps to 1e-6 residual")?;
    let steps_pre = means(result, "row-sum PCG steps to 1e-6 residual")?;
    for (i, &(tau, k)) in kappa.iter().enumerate() {
        m.set_number(format!("kappa_tau{tau}"), k);
        m.set_number(format!("kappa_row_sum_tau{tau}"), kappa_pre[i].1);
        m.set_number(format!("cg_steps_tau{tau}"), steps[i].1);
        m.set_number(format!("row_sum_steps_tau{tau}"), steps_pre[i].1);
    }
    // `means` is by ascending τ.
    let kappa_falls = kappa.windows(2).all(|w| w[1].1 < w[0].1);
    let steps_fall = steps.windows(2).all(|w| w[1].1 <= w[0].1);
    let mut preconditioned = 0;
    let mut fewer_steps = true;
    for i in 0..kappa.len() {
        if kappa_pre[i].1 * PRECONDITIONS <= kappa[i].1 {
            preconditioned += 1;
            fewer_steps &= steps_pre[i].1 < steps[i].1;
        }
    }
    m.set_number("row_sum_taus_checked", preconditioned as f64);
    let errors = column(result, "eps_f32 / ‖K‖")?;
    let bounds = column(result, "rounding bound / ‖K‖")?;
    let worst_over_bound = errors
        .iter()
        .zip(&bounds)
        .map(|(e, b)| e.1 / b.1)
        .fold(0.0, f64::max);
    let within_bound = worst_over_bound <= 1.0;
    m.set_number("max_kernel_error_over_bound_f32", worst_over_bound);
    // Check 8 on the (τ, seed) points whose f64 CG reaches 1e-6 within t steps.
    let converged: Vec<f64> = column(result, "CG steps to 1e-6 residual")?
        .iter()
        .zip(column(result, "rmse ratio (f32)")?)
        .filter(|(s, _)| s.1 <= t as f64)
        .map(|(_, r)| (r.1 - 1.0).abs())
        .collect();
    let worst_converged = converged.iter().copied().fold(0.0, f64::max);
    let converged_pass = worst_converged <= RMSE_TOL;
    m.set_number("converged_points", converged.len() as f64);
    m.set_number("converged_max_abs_rmse_ratio_minus_1", worst_converged);
    m.set_bool("kappa_falls_with_tau_pass", kappa_falls);
    m.set_bool("cg_steps_fall_with_tau_pass", steps_fall);
    m.set_bool("row_sum_fewer_steps_pass", fewer_steps);
    m.set_bool("kernel_error_within_bound_pass", within_bound);
    m.set_bool("converged_rmse_pass", converged_pass);
    Ok(kappa_falls && steps_fall && fewer_steps && within_bound && converged_pass)
}

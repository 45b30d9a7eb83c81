//! routes_knobs: knob sweeps of the Route A model (λ, κ, depth t, head width m, temperature τ,
//! normalisation on/off), 3 seeds each, through metarep-eval's harness, with the acceptance
//! checks that `docs/results.md` states from the theory (routes_knobs, checks 1–4).

use std::path::Path;

use metarep_core::config::load_config;
use metarep_core::metrics::FlatMetrics;
use metarep_eval::harness::SweepResult;
use metarep_softmax_routes::sweeps::{means, run_knobs, write_knob, Knob, KnobConfig};

use crate::device::device;
use crate::error::BoxError;
use crate::output::ResultDir;

/// The f32 model's relative deviation from the oracle, as the sweeps name it.
const DEV: &str = "rel dev vs oracle";
/// f32 rounding floor of the deviation at convergence (κ(A)·u ≈ 1e3 · 6e-8): consecutive means
/// may move against the predicted trend by this much.
const FLOOR: f64 = 1e-4;
/// Least ratio of the deviation at a sweep's bad end to its good end.
const END_RATIO: f64 = 10.0;
/// Largest |RMSE/oracle − 1| once CG has converged (fig3's criterion), and largest relative
/// difference of the softmax and exponential heads' RMSE ratios.
const RMSE_TOL: f64 = 0.05;
/// Largest ratio of row-sum PCG's deviation to plain CG's at the smallest τ.
const ROW_SUM_FACTOR: f64 = 0.5;

/// Runs every sweep of the config, writes `dir` (`<knob>_quality.*`, `<knob>_deviation.*`) and
/// records each check's quantities and outcome in `metrics.json`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: KnobConfig = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let mut finite = true;
    let mut pass = true;
    for (knob, result) in run_knobs(&cfg, &device())? {
        write_knob(dir, knob, &result)?;
        for row in result.summary(0.95)? {
            finite &= row.mean.is_finite();
            out.metrics.set_number(
                format!("{}: {} @ {}", knob.name(), row.method, row.x),
                row.mean,
            );
        }
        pass &= check(&mut out.metrics, knob, &result)?;
        println!(
            "   {}: {} settings × {} seeds",
            knob.name(),
            result.measurements.len() / result.methods().len().max(1) / cfg.seeds.len().max(1),
            cfg.seeds.len()
        );
    }
    out.metrics.set_bool("all_finite", finite);
    out.finish(finite && pass)
}

/// Runs the checks of `knob` on its sweep, records them in `m`; returns whether all pass.
fn check(m: &mut FlatMetrics, knob: Knob, result: &SweepResult) -> Result<bool, BoxError> {
    let name = knob.name();
    let rises = match knob {
        Knob::Kappa => true,
        Knob::Lambda | Knob::Steps | Knob::Width | Knob::Tau => false,
        Knob::Normalisation => return check_normalisation(m, result),
    };
    // Check 1: ordered from the good end to the bad end, the deviation must not fall by more
    // than FLOOR between neighbours and must end END_RATIO× above where it starts.
    let mut dev = means(result, DEV)?;
    if !rises {
        dev.reverse();
    }
    let monotone = dev.windows(2).all(|w| w[1].1 >= w[0].1 - FLOOR);
    let (good, bad) = (dev[0].1, dev[dev.len() - 1].1);
    let ratio = bad / good;
    let trend = monotone && ratio >= END_RATIO;
    m.set_bool(format!("{name}_monotone"), monotone);
    m.set_number(format!("{name}_end_ratio"), ratio);
    m.set_bool(format!("{name}_trend_pass"), trend);
    if knob != Knob::Steps {
        return Ok(trend);
    }
    // Check 2: at the largest t CG has converged, so the RMSE is the oracle's within 5%.
    let ratios = means(result, "rmse ratio")?;
    let at_max_t = ratios[ratios.len() - 1].1;
    let converged = (at_max_t - 1.0).abs() <= RMSE_TOL;
    m.set_number("steps_rmse_ratio_at_max_t", at_max_t);
    m.set_bool("steps_converged_rmse_pass", converged);
    Ok(trend && converged)
}

/// Checks 3 and 4: softmax and exponential heads give the same RMSE ratio within 5% at every τ;
/// at the smallest τ row-sum PCG's deviation is at most half of plain CG's.
fn check_normalisation(m: &mut FlatMetrics, result: &SweepResult) -> Result<bool, BoxError> {
    let softmax = means(result, "softmax: rmse ratio")?;
    let exponential = means(result, "exponential: rmse ratio")?;
    let worst = softmax
        .iter()
        .zip(&exponential)
        .map(|(s, e)| (s.1 - e.1).abs() / s.1)
        .fold(0.0, f64::max);
    let same = worst <= RMSE_TOL;
    m.set_number("normalisation_softmax_vs_exponential_max_rel_diff", worst);
    m.set_bool("normalisation_same_kernel_pass", same);
    let plain = means(result, &format!("softmax: {DEV}"))?[0].1;
    let row_sum = means(result, &format!("softmax, row-sum PCG: {DEV}"))?[0].1;
    let helps = row_sum <= ROW_SUM_FACTOR * plain;
    m.set_number(
        "normalisation_row_sum_over_plain_dev_at_min_tau",
        row_sum / plain,
    );
    m.set_bool("normalisation_row_sum_helps_pass", helps);
    Ok(same && helps)
}

//! routes_knobs: knob sweeps of the Route A model (λ, κ, depth t, head width m, temperature τ,
//! normalisation on/off), 3 seeds each, through metarep-eval's harness.

use std::path::Path;

use metarep_core::config::load_config;
use metarep_softmax_routes::sweeps::{run_knobs, write_knob, KnobConfig};

use crate::error::BoxError;
use crate::output::ResultDir;

/// Runs every sweep of the config and writes `dir` (`<knob>_quality.*`, `<knob>_deviation.*`).
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: KnobConfig = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let mut finite = true;
    for (knob, result) in run_knobs(&cfg)? {
        write_knob(dir, knob, &result)?;
        for row in result.summary(0.95)? {
            finite &= row.mean.is_finite();
            out.metrics.set_number(
                format!("{}: {} @ {}", knob.name(), row.method, row.x),
                row.mean,
            );
        }
        println!(
            "   {}: {} settings × {} seeds",
            knob.name(),
            result.measurements.len() / result.methods().len().max(1) / cfg.seeds.len().max(1),
            cfg.seeds.len()
        );
    }
    out.metrics.set_bool("all_finite", finite);
    out.finish(finite)
}

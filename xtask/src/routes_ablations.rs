//! routes_ablations: shared vs dedicated kernel heads and the temperature ablation of the
//! Route A model, as tables (mean ± 95% CI over seeds).

use std::path::Path;

use metarep_core::config::load_config;
use metarep_softmax_routes::sweeps::{head_sharing_table, temperature_table, AblationConfig};

use crate::error::BoxError;
use crate::output::ResultDir;

/// Runs both ablations and writes `dir` (`head_sharing.*`, `temperature.*`).
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: AblationConfig = load_config(config, overrides)?;
    let out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let sharing = head_sharing_table(&cfg)?;
    out.table("head_sharing", &sharing)?;
    println!("{}", sharing.to_markdown());
    let temperature = temperature_table(&cfg)?;
    out.table("temperature", &temperature)?;
    println!("{}", temperature.to_markdown());
    out.finish(true)
}

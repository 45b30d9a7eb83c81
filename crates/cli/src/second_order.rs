//! `metarep second-order`: the second-order neuron-effects pipeline of
//! `metarep_second_order` over a run directory, one stage or all of them up to a stage; stages
//! already done are skipped, so an interrupted run resumes.
//!
//! ```text
//! metarep second-order --model DIR --run RUN --config second_order.toml    # every stage
//! metarep second-order effects --model DIR --run RUN                        # up to effects
//! metarep second-order ablate --model DIR --run RUN --force                 # redo ablate
//! ```
//!
//! The config (TOML) holds `metarep_second_order::PipelineConfig`'s fields; without
//! `--config`, the run's saved `config.json` is used.

use std::path::PathBuf;

use metarep_model::HookedTransformer;
use metarep_second_order::{Pipeline, PipelineConfig, Stage};

/// Arguments of `metarep second-order`.
#[derive(clap::Args)]
pub struct Args {
    /// A model directory (with tokenizer.json), a GGUF file or a Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// The pipeline config (TOML); default: the run's saved config.json.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run every stage up to this one: eval, direction, layers, neurons, effects, pca, ablate,
    /// report.
    #[arg(default_value = "report")]
    stage: String,
    /// Run STAGE again even if its output exists.
    #[arg(long)]
    force: bool,
}

/// Runs `metarep second-order`.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let stage = Stage::parse(&args.stage)?;
    let config: PipelineConfig = match &args.config {
        Some(path) => metarep_core::config::load_config(path, &[])?,
        None => {
            let saved = args.run.join("config.json");
            let text = std::fs::read_to_string(&saved)
                .map_err(|e| format!("{}: {e} (give --config for a new run)", saved.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", saved.display()))?
        }
    };
    let model = HookedTransformer::from_pretrained(&args.model, &crate::device::load_options())?;
    let pipeline = Pipeline::open(&model, config, &args.run)?;
    pipeline.run_to(stage, args.force, |line| println!("{line}"))?;
    Ok(())
}

//! `metarep ablate`: staged ablations of attention heads and MLP neurons from a TOML config
//! (see `metarep_circuits::ablation`), evaluated on the next-token predictions of a token-id
//! file; prints (and with `--out` writes) a markdown table of loss, accuracy and entropy deltas.

use std::fmt::Write as _;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use metarep_capture::TokenDataset;
use metarep_circuits::ablation::{run_ablations, AblationConfig};
use metarep_model::predictions::EvalSet;
use metarep_model::HookedTransformer;

/// Arguments of `metarep ablate`.
#[derive(clap::Args)]
pub struct Args {
    /// A model directory (config.json + safetensors), a GGUF file or a Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// The ablation config (TOML: `cumulative`, `[[stages]]` with `name`, `kind` and
    /// `components`, e.g. `["L1H3", "L0N7"]`).
    #[arg(long)]
    config: PathBuf,
    /// Evaluation tokens: `.ids` / `.tokens` (ids per line), `.jsonl` or `.txt`.
    #[arg(long)]
    tokens: PathBuf,
    /// Reference tokens for mean and resample ablations (same format).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    context: usize,
    /// Also write the table to this markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Refuse inputs longer than the model's context length (n_ctx); without it, rotary models
    /// run them with a warning (learned positions always refuse).
    #[arg(long)]
    strict: bool,
}

fn load_tokens(
    path: &std::path::Path,
    model: &HookedTransformer,
    context: usize,
) -> Result<Tensor, Box<dyn std::error::Error>> {
    let data = TokenDataset::load(path, model.text_encoder(), context)?;
    if data.sequences.is_empty() {
        return Err(format!("{}: no sequence of {context} tokens", path.display()).into());
    }
    let flat: Vec<u32> = data.sequences.concat();
    Ok(Tensor::from_vec(
        flat,
        (data.sequences.len(), context),
        &Device::Cpu,
    )?)
}

/// Runs `metarep ablate`.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let model = HookedTransformer::from_pretrained(&args.model, &crate::device::load_options())?
        .with_strict_positions(args.strict);
    model
        .check_positions(args.context)
        .map_err(|e| format!("--context {}: {e}", args.context))?;
    let config: AblationConfig = metarep_core::config::load_config(&args.config, &[])?;
    let tokens = load_tokens(&args.tokens, &model, args.context)?;
    let reference = match &args.reference {
        Some(p) => Some(load_tokens(p, &model, args.context)?),
        None => None,
    };
    let eval = EvalSet {
        tokens,
        mask: None,
        alternative: None,
    };
    let report = run_ablations(&model, &config, &eval, reference.as_ref())?;
    let mut table = String::from(
        "| stage | components | loss | Δ loss | accuracy | Δ accuracy | entropy | Δ entropy |\n|---|---|---|---|---|---|---|---|\n",
    );
    let c = report.clean;
    writeln!(
        table,
        "| clean | 0 | {:.4} | | {:.4} | | {:.4} | |",
        c.loss, c.accuracy, c.entropy
    )?;
    for s in &report.stages {
        let (a, d) = (s.ablated, s.delta);
        writeln!(
            table,
            "| {} | {} | {:.4} | {:+.4} | {:.4} | {:+.4} | {:.4} | {:+.4} |",
            s.name, s.components, a.loss, d.loss, a.accuracy, d.accuracy, a.entropy, d.entropy
        )?;
    }
    print!("{table}");
    if let Some(out) = &args.out {
        metarep_core::fsutil::atomic_write(out, table.as_bytes())?;
    }
    Ok(())
}

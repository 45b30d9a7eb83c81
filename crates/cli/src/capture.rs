//! `metarep capture`: run a model over a token dataset and store the activations of the hooks
//! matching glob patterns as sharded safetensors, one store per hook under `--out`
//! (`OUT/<hook name>/`). Rerunning the same command resumes an interrupted capture.

use std::path::PathBuf;

use metarep_capture::{capture, CaptureSpec, TokenDataset};
use metarep_model::{HookFilter, HookedTransformer};

/// Arguments of `metarep capture`.
#[derive(clap::Args)]
pub struct Args {
    /// A model directory (config.json + safetensors), a GGUF file or a Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// Dataset: `.jsonl` (`text` or `tokens` per line), `.txt` (a document per line) or
    /// `.ids` / `.tokens` (token ids per line).
    #[arg(long)]
    data: PathBuf,
    /// Glob pattern over hook names (repeatable), e.g. 'blocks.6.hook_resid_post'.
    #[arg(long, required = true)]
    hooks: Vec<String>,
    /// Output directory (one store per hook inside).
    #[arg(long)]
    out: PathBuf,
    /// Stored dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Tokens per context (model input length).
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Target tokens per shard (rounded up to whole contexts).
    #[arg(long, default_value_t = 1 << 16)]
    shard_tokens: usize,
    /// Stop after this many contexts (rerun to continue).
    #[arg(long)]
    max_contexts: Option<usize>,
    /// Refuse inputs longer than the model's context length (n_ctx); without it, rotary models
    /// run them with a warning (learned positions always refuse).
    #[arg(long)]
    strict: bool,
}

/// Runs `metarep capture`.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let model = HookedTransformer::from_pretrained(&args.model, &crate::device::load_options())?
        .with_strict_positions(args.strict);
    metarep_model::memory::retain_freed_memory();
    let mut hooks: Vec<_> = HookFilter::Patterns(args.hooks.clone())
        .resolve(model.config())?
        .into_iter()
        .collect();
    if hooks.is_empty() {
        return Err(format!("no hook of this model matches {:?}", args.hooks).into());
    }
    hooks.sort();
    model
        .check_positions(args.context)
        .map_err(|e| format!("--context {}: {e}", args.context))?;
    let data = TokenDataset::load(&args.data, model.text_encoder(), args.context)?;
    let spec = CaptureSpec {
        hooks,
        dtype: args.dtype.to_ascii_lowercase(),
        shard_tokens: args.shard_tokens,
        batch_contexts: args.batch,
        model_name: args.model.clone(),
        max_contexts: args.max_contexts,
    };
    let bar = metarep_core::progress::bar(data.tokens() as u64, "tokens");
    let report = capture(&model, &data, &args.out, &spec, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    println!(
        "{} hook(s), {} tokens stored each ({} this run{}, {:.0} tokens/s){}; dataset: {} contexts of {}, {} tokens dropped at the end",
        report.stores.len(),
        report.tokens_total,
        report.tokens_this_run,
        if report.resumed_at_context > 0 {
            format!(", resumed at context {}", report.resumed_at_context)
        } else {
            String::new()
        },
        report.tokens_this_run as f64 / report.seconds.max(1e-9),
        if report.complete { "" } else { " — incomplete: rerun to continue" },
        data.sequences.len(),
        args.context,
        data.dropped
    );
    for s in &report.stores {
        println!("  {}", s.display());
    }
    Ok(())
}

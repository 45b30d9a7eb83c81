//! `metarep forward`: one forward pass, writing the logits (hidden states for a headless
//! checkpoint), the input tokens and the activations selected by glob patterns over
//! TransformerLens hook names to a safetensors file. The pass runs in f32; `--dtype` is the
//! dtype the tensors are written in.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use metarep_model::{HookFilter, HookedTransformer, Input, LoadOptions, RunTo};

/// Arguments of `metarep forward`.
#[derive(clap::Args)]
pub struct Args {
    /// A model directory (config.json + safetensors), a GGUF file or a Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// Text to tokenize with the model's tokenizer.json.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    text: Option<String>,
    /// Token ids, comma separated (e.g. 1,2,3).
    #[arg(long)]
    tokens: Option<String>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Glob pattern over hook names to cache (repeatable), e.g. 'blocks.*.hook_resid_post'.
    #[arg(long)]
    cache: Vec<String>,
    /// Dtype of the written tensors: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Hub revision.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Read the hub cache only, never the network.
    #[arg(long)]
    offline: bool,
    /// Refuse inputs longer than the model's context length (n_ctx); without it, rotary models
    /// run them with a warning (learned positions always refuse).
    #[arg(long)]
    strict: bool,
}

fn parse_tokens(list: &str) -> Result<Vec<u32>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| format!("--tokens: `{s}` is not a token id (a non-negative integer)"))
        })
        .collect()
}

/// Runs `metarep forward`.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let dtype = match args.dtype.to_ascii_lowercase().as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => return Err(format!("--dtype `{other}`: expected f32, f16 or bf16").into()),
    };
    let opts = LoadOptions {
        revision: args.revision.clone(),
        offline: args.offline || LoadOptions::default().offline,
        ..crate::device::load_options()
    };
    let model =
        HookedTransformer::from_pretrained(&args.model, &opts)?.with_strict_positions(args.strict);
    let ids = match (&args.text, &args.tokens) {
        (_, Some(list)) => parse_tokens(list)?,
        (Some(text), None) => {
            let tok = model.tokenizer().ok_or_else(|| {
                format!(
                    "{} has no tokenizer.json: pass --tokens instead of --text",
                    args.model
                )
            })?;
            tok.encode(text, true)?.ids
        }
        (None, None) => return Err("give --text or --tokens".into()),
    };
    if ids.is_empty() {
        return Err("the input has no tokens".into());
    }
    let input = Input::from_ids(std::slice::from_ref(&ids), &Device::Cpu)?;
    let filter = HookFilter::Patterns(args.cache.clone());
    let to = model.default_output();
    let (out, cache) = model.run_with_cache_to(&input, filter, to)?;
    let out_name = if to == RunTo::Logits {
        "logits"
    } else {
        "hidden"
    };
    let tokens = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    cache.save_safetensors(&args.out, dtype, &[(out_name, &out), ("tokens", &tokens)])?;
    println!(
        "{} tokens → {out_name} {:?}, {} activations → {} ({})",
        ids.len(),
        out.dims(),
        cache.len(),
        args.out.display(),
        args.dtype
    );
    Ok(())
}

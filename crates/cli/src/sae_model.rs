//! What `metarep sae dashboard` and `metarep sae validate` share: an SAE with the model it
//! reads, its hook, and token contexts cut from a text file.

use std::error::Error;
use std::path::{Path, PathBuf};

use metarep_model::{HookPoint, HookedTransformer};
use metarep_sae::saelens::import;
use metarep_sae::Sae;

/// The arguments both commands take: the SAE, its model and hook, and the text.
#[derive(clap::Args)]
pub struct SaeModelArgs {
    /// SAELens-format SAE directory (e.g. `OUT/sae` of `metarep sae train`).
    #[arg(long)]
    pub sae: PathBuf,
    /// The model the SAE reads (a model directory, a GGUF file or a hub id).
    #[arg(long)]
    pub model: String,
    /// A UTF-8 text file: tokenised with the model's tokenizer and cut into contexts.
    #[arg(long)]
    pub text: PathBuf,
    /// Hook (default: `metadata.hook_name` of the SAE's cfg.json).
    #[arg(long)]
    pub hook: Option<String>,
    /// Contexts of `--ctx-len` consecutive tokens taken from the start of the text.
    #[arg(long, default_value_t = 32)]
    pub contexts: usize,
    /// Tokens per context.
    #[arg(long, default_value_t = 128)]
    pub ctx_len: usize,
}

/// An SAE loaded with its model and hook.
pub struct SaeOnModel {
    /// The SAE.
    pub sae: Sae,
    /// The model it reads.
    pub model: HookedTransformer,
    /// Its hook point.
    pub point: HookPoint,
    /// The hook's name.
    pub hook: String,
    /// Token contexts cut from the text.
    pub contexts: Vec<Vec<u32>>,
}

impl SaeOnModel {
    /// The SAE, model and hook `a` names, with the contexts of its text.
    pub fn load(a: &SaeModelArgs) -> Result<Self, Box<dyn Error>> {
        let (sae, info) = import(&a.sae)?;
        let sae = sae.to_device(crate::device::device())?;
        let hook = crate::sae::hook_of(&info, a.hook.as_deref())?;
        let model = HookedTransformer::from_pretrained(&a.model, &crate::device::load_options())?;
        let point = HookPoint::parse_for(&hook, model.config())?;
        let contexts = contexts(&model, &a.text, a.contexts, a.ctx_len)?;
        eprintln!(
            "{} contexts × {} tokens through {} to {} …",
            contexts.len(),
            a.ctx_len,
            a.model,
            hook
        );
        Ok(Self {
            sae,
            model,
            point,
            hook,
            contexts,
        })
    }
}

/// Up to `contexts` runs of `ctx_len` consecutive tokens from the start of the text file `text`,
/// tokenised with `model`'s tokenizer.
fn contexts(
    model: &HookedTransformer,
    text: &Path,
    contexts: usize,
    ctx_len: usize,
) -> Result<Vec<Vec<u32>>, Box<dyn Error>> {
    if ctx_len == 0 || contexts == 0 {
        return Err("--contexts and --ctx-len must be ≥ 1".into());
    }
    let tokenizer = model
        .tokenizer()
        .ok_or("the model has no tokenizer to read --text with")?;
    let raw = std::fs::read_to_string(text).map_err(|e| format!("{}: {e}", text.display()))?;
    let ids = tokenizer.encode(&raw, false)?.ids;
    let out: Vec<Vec<u32>> = ids
        .chunks_exact(ctx_len)
        .take(contexts)
        .map(<[u32]>::to_vec)
        .collect();
    if out.is_empty() {
        return Err(format!(
            "{}: {} tokens, fewer than one context of --ctx-len {ctx_len}",
            text.display(),
            ids.len()
        )
        .into());
    }
    Ok(out)
}

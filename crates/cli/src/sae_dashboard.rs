//! `metarep sae dashboard`: an HTML page of an SAE's latents on a model over a text — each
//! shown latent's top contexts with tokens shaded by activation, its activation histogram, and
//! the tokens its decoder direction promotes and suppresses
//! ([`metarep_sae::dashboard::build_dashboard`]).

use std::error::Error;
use std::path::PathBuf;

use metarep_model::{HookPoint, HookedTransformer, LoadOptions};
use metarep_sae::dashboard::{build_dashboard, render_page, DashboardSettings};
use metarep_sae::saelens::import;

/// `metarep sae dashboard` arguments.
#[derive(clap::Args)]
pub struct DashboardArgs {
    /// SAELens-format SAE directory (e.g. `OUT/sae` of `metarep sae train`).
    #[arg(long)]
    sae: PathBuf,
    /// The model the SAE reads (a model directory, a GGUF file or a hub id).
    #[arg(long)]
    model: String,
    /// A UTF-8 text file: tokenised with the model's tokenizer and cut into contexts.
    #[arg(long)]
    text: PathBuf,
    /// Hook (default: `metadata.hook_name` of the SAE's cfg.json).
    #[arg(long)]
    hook: Option<String>,
    /// Contexts of `--ctx-len` consecutive tokens taken from the start of the text.
    #[arg(long, default_value_t = 64)]
    contexts: usize,
    /// Tokens per context.
    #[arg(long, default_value_t = 128)]
    ctx_len: usize,
    /// Latents shown by activation mass.
    #[arg(long, default_value_t = 8)]
    top_latents: usize,
    /// Further latents shown at random among those that fired.
    #[arg(long, default_value_t = 4)]
    random_latents: usize,
    /// Top contexts per latent.
    #[arg(long, default_value_t = 8)]
    examples: usize,
    /// Positions left out at the start of each context (1: the attention-sink first token).
    #[arg(long, default_value_t = 1)]
    skip_positions: usize,
    /// Seed of the random latents.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The HTML file to write.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `metarep sae dashboard`.
pub fn run(a: DashboardArgs) -> Result<(), Box<dyn Error>> {
    let (sae, info) = import(&a.sae)?;
    let hook = crate::sae::hook_of(&info, a.hook.as_deref())?;
    let model = HookedTransformer::from_pretrained(&a.model, &LoadOptions::default())?;
    let point = HookPoint::parse_for(&hook, model.config())?;
    let tokenizer = model
        .tokenizer()
        .ok_or_else(|| format!("model {} has no tokenizer to read --text with", a.model))?;
    let text =
        std::fs::read_to_string(&a.text).map_err(|e| format!("{}: {e}", a.text.display()))?;
    let ids = tokenizer.encode(&text, false)?.ids;
    if a.ctx_len == 0 || a.contexts == 0 {
        return Err("--contexts and --ctx-len must be ≥ 1".into());
    }
    let contexts: Vec<Vec<u32>> = ids
        .chunks_exact(a.ctx_len)
        .take(a.contexts)
        .map(<[u32]>::to_vec)
        .collect();
    if contexts.is_empty() {
        return Err(format!(
            "{}: {} tokens, fewer than one context of --ctx-len {}",
            a.text.display(),
            ids.len(),
            a.ctx_len
        )
        .into());
    }
    eprintln!(
        "dashboard: {} contexts × {} tokens through {} to {hook} …",
        contexts.len(),
        a.ctx_len,
        a.model
    );
    let settings = DashboardSettings {
        top_latents: a.top_latents,
        random_latents: a.random_latents,
        examples: a.examples,
        skip_positions: a.skip_positions,
        seed: a.seed,
        ..Default::default()
    };
    let mut page = build_dashboard(&model, &sae, point, &contexts, &settings)?;
    page.title = format!("{} at {hook} of {}", a.sae.display(), a.model);
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, render_page(&page)).map_err(|e| format!("{}: {e}", a.out.display()))?;
    println!("wrote {} ({} latents)", a.out.display(), page.cards.len());
    Ok(())
}

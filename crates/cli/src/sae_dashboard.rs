//! `metarep sae dashboard`: an HTML page of an SAE's latents on a model over a text — each
//! shown latent's top contexts with tokens shaded by activation, its activation histogram, and
//! the tokens its decoder direction promotes and suppresses
//! ([`metarep_sae::dashboard::build_dashboard`]).

use std::error::Error;
use std::path::PathBuf;

use metarep_sae::dashboard::{build_dashboard, render_page, DashboardSettings};

use crate::sae_model::{SaeModelArgs, SaeOnModel};

/// `metarep sae dashboard` arguments.
#[derive(clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    on: SaeModelArgs,
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
    let m = SaeOnModel::load(&a.on)?;
    let settings = DashboardSettings {
        top_latents: a.top_latents,
        random_latents: a.random_latents,
        examples: a.examples,
        skip_positions: a.skip_positions,
        seed: a.seed,
        ..Default::default()
    };
    let mut page = build_dashboard(&m.model, &m.sae, m.point, &m.contexts, &settings)?;
    page.title = format!("{} at {} of {}", a.on.sae.display(), m.hook, a.on.model);
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, render_page(&page)).map_err(|e| format!("{}: {e}", a.out.display()))?;
    println!("wrote {} ({} latents)", a.out.display(), page.cards.len());
    Ok(())
}

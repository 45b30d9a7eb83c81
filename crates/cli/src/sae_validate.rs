//! `metarep sae validate`: the SAE validation suite ([`metarep_sae::validation::validate`]) on a
//! model over a text — feature purity, probe leakage and causal ε-sweeps, next to random
//! directions — printed as a summary and, with `--out`, written as JSON.

use std::error::Error;
use std::path::PathBuf;

use metarep_core::fsutil::write_json_pretty;
use metarep_sae::validation::{validate, ValidationReport, ValidationSettings};

use crate::sae_model::{SaeModelArgs, SaeOnModel};

/// `metarep sae validate` arguments.
#[derive(clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    on: SaeModelArgs,
    /// Latents checked by activation mass.
    #[arg(long, default_value_t = 8)]
    top_latents: usize,
    /// Further latents checked at random among those that fired.
    #[arg(long, default_value_t = 8)]
    random_latents: usize,
    /// Random residual directions checked as the baseline.
    #[arg(long, default_value_t = 8)]
    random_directions: usize,
    /// Seed of the random latents and directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the full report here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `metarep sae validate`.
pub fn run(a: ValidateArgs) -> Result<(), Box<dyn Error>> {
    let m = SaeOnModel::load(&a.on)?;
    let settings = ValidationSettings {
        top_latents: a.top_latents,
        random_latents: a.random_latents,
        random_directions: a.random_directions,
        seed: a.seed,
        ..Default::default()
    };
    let report = validate(&m.model, &m.sae, m.point, &m.contexts, &settings)?;
    print_summary(&report);
    if let Some(out) = &a.out {
        write_json_pretty(out, &report)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

fn print_summary(r: &ValidationReport) {
    println!(
        "SAE validation at {} over {} positions",
        r.hook, r.positions
    );
    for (what, checks) in [
        ("SAE latents", &r.latents),
        ("random directions", &r.random),
    ] {
        println!(
            "  {what}: mean purity excess over base rate {:.3}; ε-sweep monotone {}/{} (ε = {:?})",
            ValidationReport::mean_purity(checks),
            ValidationReport::monotone(checks),
            checks.len(),
            r.eps
        );
    }
    for c in &r.latents {
        if let Some(p) = &c.purity {
            println!(
                "    {:<12} purity {:.2} ({}, base rate {:.3}, excess {:.2}){}",
                c.direction,
                p.fraction,
                p.label,
                p.base_rate,
                p.excess,
                if c.monotone {
                    ""
                } else {
                    "; sweep not monotone"
                }
            );
        }
    }
    println!("  probe leakage (held-out balanced accuracy, raw activation vs SAE code):");
    for p in &r.probes {
        println!(
            "    {:<12} base rate {:.3}: raw {:.3}, code {:.3}, gap {:+.1} points{}",
            p.class,
            p.base_rate,
            p.raw_accuracy,
            p.code_accuracy,
            p.gap_points,
            if p.flagged { "  ← flagged" } else { "" }
        );
    }
}

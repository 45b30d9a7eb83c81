//! SAEs on systems whose latent state is known exactly (BFS, DFS, a stack machine), observed
//! through random mixtures: how well each SAE reconstructs, recovers the true features and
//! supports causal edits, next to an untrained null SAE.
//!
//! ```sh
//! cargo run --release --example sae_ground_truth                 # CI-sized config (~1 min)
//! cargo run --release --example sae_ground_truth configs/fig9.toml
//! ```
//!
//! `cargo xtask reproduce fig9` runs the same experiment and writes tables and plots.

use std::path::PathBuf;

use candle_core::Device;
use metarep::core::config::load_config;
use metarep::sae::ground_truth::experiment::run;
use metarep::sae::ground_truth::GroundTruthConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/fig9.quick.toml")
        });
    let cfg: GroundTruthConfig = load_config(&path, &[])?;
    println!("config: {}", path.display());
    println!("system  nonlinear  sae        explained var.  MMCS   F1     causal pass  | null SAE: EV, MMCS");
    run(&cfg, &Device::Cpu, None, |r| {
        println!(
            "{:<7} {:<10} {:<10} {:<15.4} {:<6.3} {:<6.3} {:<12.3} | {:.3}, {:.3}",
            r.system,
            r.nonlinear,
            r.sae,
            r.trained.explained_variance,
            r.trained.mmcs,
            r.trained.f1,
            r.trained.causal_pass,
            r.null.explained_variance,
            r.null.mmcs
        );
    })?;
    Ok(())
}

//! Linear probes of solver state: does a LAT's residual stream carry GD-like or CG-like state?
//!
//! Trains a LAT in the von Oswald et al. setting (d = 10, n = 10), grid-tunes GD for the same
//! number of steps, and fits ridge probes from each layer's support tokens to GD and CG targets
//! (residuals, iterates, directions, the ridge solution), scored on held-out tasks (cosine and
//! R², with a shuffled-target control and the same probe on the query token's row, where no
//! support's state is linearly readable). Then does the same for the constructed CG LAT, whose
//! CG state must read out with cosine ≈ 1. `cargo xtask reproduce fig7` is the full version.
//!
//! Run: `cargo run --release --example icl_probes [-- LAYERS]`

use candle_core::Device;
use metarep::eval::baselines::StepSize;
use metarep::lat_cg::construct::cg::{CgLat, CgSpec};
use metarep::lat_cg::icl::{tuned_gd, VonOswaldSetting};
use metarep::lat_cg::problem::{rbf_problem, RbfProblemSpec};
use metarep::lat_cg::reference::Preconditioner;
use metarep::lat_cg::solver_probe::{probe_layers, ProbeRow, ProbeSet};

fn print(rows: &[ProbeRow]) {
    println!("  layer  target                cosine     R²   shuffled R²  query-row R²");
    for r in rows {
        println!(
            "  {:>5}  {:<20} {:>7.4} {:>7.4} {:>+11.4} {:>+13.4}",
            r.layer,
            r.target.name(),
            r.score.cosine,
            r.score.r2,
            r.score.control_r2,
            r.score.unrelated_r2
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let layers: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .map_err(|_| "LAYERS must be a positive integer")?
        .unwrap_or(3);
    let setting = VonOswaldSetting::default().depth_scaled(layers);
    println!("training a {layers}-layer LAT on in-context regression (d = 10, n = 10) ...");
    let (model, report) = setting.train_lat(layers, 0, &Device::Cpu, None)?;
    println!("  trained in {:.0} s", report.seconds);
    let StepSize::Fixed(eta) = tuned_gd(layers, &setting.tasks(1, 2000)?)?.0.step else {
        return Err("the GD grid gives fixed steps".into());
    };
    let rows = probe_layers(
        &ProbeSet::trained(&model, &setting.tasks(2, 2000)?, eta)?,
        &ProbeSet::trained(&model, &setting.tasks(3, 1000)?, eta)?,
        4,
    )?;
    println!("probes of the trained LAT (GD with the tuned step η = {eta:.3}):");
    print(&rows);

    let spec = RbfProblemSpec {
        n_support: 16,
        n_query: 2,
        dim: 3,
        features: 32,
        lengthscale: 1.0,
        noise: 0.1,
    };
    let mut rng = metarep::core::rng::seeded(5);
    let mut draw = |count: usize| {
        (0..count)
            .map(|_| rbf_problem(&mut rng, &spec, 0.05))
            .collect::<Result<Vec<_>, _>>()
    };
    let (train, test) = (draw(1000)?, draw(100)?);
    let cg = CgLat::build(
        CgSpec::for_problem(&train[0], 6, Preconditioner::None)?,
        &Device::Cpu,
    )?;
    let rows = probe_layers(
        &ProbeSet::constructed(&cg, &train)?,
        &ProbeSet::constructed(&cg, &test)?,
        6,
    )?;
    println!("probes of the constructed CG LAT (6 CG layers, RBF kernel ridge):");
    print(&rows);
    Ok(())
}

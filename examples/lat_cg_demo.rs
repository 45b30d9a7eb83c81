//! A linear-attention transformer whose constructed weights run conjugate gradient.
//!
//! Builds a kernel ridge problem with an RBF kernel through random Fourier features, constructs
//! the LAT, runs t = 1..T CG layers in one forward pass and prints, for every t, the A-norm error
//! of the LAT and of reference CG, the rate bound, and how far the LAT's iterate is from
//! reference CG's, next to how far a second textbook f64 CG is from it (the rounding yardstick).
//!
//! Run: `cargo run --release --example lat_cg_demo [-- SEED]`

use candle_core::Device;
use metarep::core::rng::{seed_arg, seeded};
use metarep::lat_cg::convergence::{run_convergence, REPRODUCIBLE_TOL};
use metarep::lat_cg::problem::{lambda_for_condition, rbf_problem, RbfProblemSpec};
use metarep::lat_cg::reference::Preconditioner;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed = seed_arg()?;
    let spec = RbfProblemSpec {
        n_support: 64,
        n_query: 16,
        dim: 3,
        features: 128,
        lengthscale: 1.0,
        noise: 0.1,
    };
    let kappa_target = 100.0;
    let steps = 25;
    let mut rng = seeded(seed);
    let mut problem = rbf_problem(&mut rng, &spec, 0.0)?;
    problem.lambda = lambda_for_condition(&problem.phi, kappa_target)?;

    println!("LAT → CG demo (seed {seed})");
    println!(
        "  kernel ridge: n = {} supports, {} queries, d = {}, RBF ℓ = {} via {} random Fourier features",
        spec.n_support, spec.n_query, spec.dim, spec.lengthscale, spec.features
    );
    println!("  λ = {:.4e} so that κ(K + λI) = {kappa_target}; LAT depth = 1 setup + {steps} CG + 1 readout layers", problem.lambda);
    let start = std::time::Instant::now();
    let run = run_convergence(&problem, steps, Preconditioner::None, &Device::Cpu)?;
    let elapsed = start.elapsed();
    println!();
    println!("   t    LAT error    CG error       bound     |LAT−CG|    |CG'−CG|");
    for r in &run.rows {
        println!(
            "  {:>2}   {:>10.3e}  {:>10.3e}  {:>10.3e}  {:>10.3e}  {:>10.3e}",
            r.t, r.lat_error, r.cg_error, r.bound, r.dev_lat_vs_cg, r.dev_cg_vs_cg
        );
    }
    println!();
    println!("  errors are ‖α_t − α*‖_A / ‖α*‖_A; deviations ‖α_t − α_t^CG‖ / ‖α_t^CG‖ (CG' = second textbook f64 CG)");
    println!(
        "  reference CG is reproducible (CG' within {REPRODUCIBLE_TOL:.0e}) for t ≤ {}; max |LAT−CG| there: {:.3e}",
        run.reproducible_steps,
        run.max_dev_reproducible()
    );
    println!(
        "  over all t: max |LAT−CG| = {:.3e}, max |CG'−CG| = {:.3e}; bound holds at every t: {}",
        run.max_dev_all(),
        run.max_jitter_all(),
        run.bound_holds()
    );
    println!(
        "  LAT forward (all {} layers, f64): {:.1} ms",
        steps + 2,
        elapsed.as_secs_f64() * 1e3
    );
    Ok(())
}

//! Removes each class of parts of the constructed CG transformer in turn and prints which CG
//! invariant breaks first, which never break, and where the A-norm error ends up — the failure
//! signatures `docs/cg_ablations.md` predicts and `cargo xtask reproduce fig16` checks.
//!
//! Run: `cargo run --release --example cg_ablations [-- SEED]`

use candle_core::Device;
use metarep::core::rng::{seed_arg, seeded};
use metarep::lat_cg::construct::ablation::CgPart;
use metarep::lat_cg::construct::cg::{CgLat, CgSpec};
use metarep::lat_cg::invariants::{run_states, Invariant, InvariantTrace};
use metarep::lat_cg::problem::{rbf_problem, RbfProblemSpec};
use metarep::lat_cg::reference::{inverse_diagonal, Preconditioner};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed = seed_arg()?;
    let spec = RbfProblemSpec {
        n_support: 16,
        n_query: 4,
        dim: 3,
        features: 32,
        lengthscale: 1.0,
        noise: 0.1,
    };
    let problem = rbf_problem(&mut seeded(seed), &spec, 0.1)?;
    let a = problem.system_matrix();
    let dev = Device::Cpu;
    let steps = 6;
    for pre in [Preconditioner::None, Preconditioner::Jacobi] {
        let model = CgLat::build(CgSpec::for_problem(&problem, steps, pre)?, &dev)?;
        let dinv = inverse_diagonal(&a, pre)?;
        println!("\n{pre:?} CG LAT, t = {steps} CG layers (seed {seed}):");
        println!(
            "  {:<26} {:<40} {:<40} A-norm error at t",
            "part removed", "first to break", "never broken"
        );
        let mut parts = vec![None];
        parts.extend(CgPart::all().into_iter().map(Some));
        for part in parts {
            let ablated = match part {
                None => model.clone(),
                Some(CgPart::Preconditioner) if pre == Preconditioner::None => continue,
                Some(p) => model.without(p, &dev)?,
            };
            let run = run_states(&ablated, std::slice::from_ref(&problem), &dev)?;
            let trace = InvariantTrace::measure(&a, &problem.y, &dinv, &run.states[0])?;
            let (first, step) = trace.first_to_break();
            let names = |v: &[Invariant]| {
                let v: Vec<&str> = v.iter().map(|i| i.name()).collect();
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            let first = match step {
                Some(k) => format!("{} at step {k}", names(&first)),
                None => "none".into(),
            };
            let never: Vec<Invariant> = Invariant::ALL
                .into_iter()
                .filter(|&v| trace.first_broken(v).is_none())
                .collect();
            println!(
                "  {:<26} {:<40} {:<40} {:.3e}",
                part.map_or("nothing (intact)".to_string(), CgPart::name),
                first,
                names(&never),
                trace.a_norm_error[steps]
            );
        }
    }
    Ok(())
}

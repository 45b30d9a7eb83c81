//! Softmax attention as a kernel ridge regression solver: the three results of
//! metarep-softmax-routes in one run.
//!
//! - Route A: a softmax transformer whose constructed weights run CG on exponential-kernel KRR;
//!   its f32 predictions against the oracle as depth grows, next to the Nadaraya–Watson smoother
//!   one softmax head computes on its own.
//! - Route B: a small-logit softmax head minus a uniform head as the dot-product mat-vec; its
//!   operator error against the logit scale ε_s.
//! - Width–rank: a width-m CG transformer on a power-law kernel; query error against full KRR and
//!   the bound.
//!
//! Run: `cargo run --release --example softmax_routes`

use candle_core::{DType, Device};
use metarep::core::rng::seeded;
use metarep::softmax_routes::construct::{HeadSharing, Preconditioning};
use metarep::softmax_routes::kernel::{sample_exp_task, ExpTaskSpec};
use metarep::softmax_routes::route_a::{evaluate, RouteAModel};
use metarep::softmax_routes::route_b::{centred_problem, operator_error, CentredSpec};
use metarep::softmax_routes::width_rank::{measure, power_law_task, Sketch, WidthRankSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed = 0;
    let spec = ExpTaskSpec {
        n_support: 64,
        n_query: 64,
        dim: 3,
        width: 3,
        u_norm: 1.0,
        tau: 1.0,
        lambda: 0.1,
        noise: 0.1,
        frequency: 1.5,
    };
    let task = sample_exp_task(&mut seeded(seed), &spec)?;
    println!("Route A (seed {seed}): exp kernel exp(⟨Ux, Ux'⟩/τ), n = 64, d = 3, τ = 1, λ = 0.1");
    println!("  CG steps | RMSE model (f32) | RMSE oracle | ratio | |f − f_oracle|/|f_oracle| | RMSE Nadaraya–Watson");
    for steps in [4, 8, 16, 32, 48] {
        let model = RouteAModel {
            steps,
            sharing: HeadSharing::Shared,
            normalised: true,
            width: None,
            preconditioner: Preconditioning::None,
        };
        let e = evaluate(&task, &model, DType::F32, &Device::Cpu)?;
        println!(
            "  {steps:>8} | {:>16.4} | {:>11.4} | {:>5.3} | {:>24.2e} | {:.4}",
            e.rmse_model, e.rmse_oracle, e.rmse_ratio, e.rel_dev_vs_oracle, e.rmse_nadaraya_watson
        );
    }

    let prob = centred_problem(
        &mut seeded(seed),
        &CentredSpec {
            n_support: 128,
            n_query: 16,
            features: 64,
            lambda: 0.1,
            noise: 0.1,
        },
    )?;
    println!("\nRoute B: (n/ε_s)(softmax_ε_s − uniform) vs ΦΦᵀ, n = 128, p = 64, centred inputs");
    println!("  ε_s     | rel. error f64 | rel. error f32 | bound");
    for eps in [1e-1, 1e-2, 1e-3, 1e-4] {
        let a = operator_error(&prob, eps, DType::F64, &Device::Cpu)?;
        let b = operator_error(&prob, eps, DType::F32, &Device::Cpu)?;
        println!(
            "  {eps:<7e} | {:>14.2e} | {:>14.2e} | {:.2e}",
            a.measured, b.measured, a.bound
        );
    }

    let wr = WidthRankSpec {
        n_support: 64,
        n_query: 32,
        features: 32,
        lambda: 1.0,
        noise: 0.1,
    };
    let task = power_law_task(&mut seeded(seed), &wr, 1.0)?;
    println!("\nWidth–rank: spectrum i^-1, p = 32, λ = 1 (population sketch: fixed weights)");
    println!("  m  | query error | bound    | a-posteriori bound | σ_(m+1)(K) | d_λ");
    for m in [1, 4, 8, 16, 24, 32] {
        let p = measure(&task, wr.lambda, Sketch::Population, m, &Device::Cpu)?;
        println!(
            "  {m:<2} | {:>11.3e} | {:>8.2e} | {:>18.2e} | {:>10.2e} | {:.1}",
            p.error, p.bound, p.bound_a_posteriori, p.sigma_next, p.effective_dim
        );
    }
    Ok(())
}

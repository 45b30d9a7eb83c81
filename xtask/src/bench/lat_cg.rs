//! `lat_cg`: time of one CG layer of the constructed LAT vs one reference CG step (dense mat-vec
//! plus vector updates) at n = 256 and 1024 supports, f32 and f64, read against the ratio of their
//! FLOP counts.

use std::path::Path;

use candle_core::{DType, Device};
use metarep_core::rng::seeded;
use metarep_lat_cg::construct::cg::{CgLat, CgSpec};
use metarep_lat_cg::mask::TokenLayout;
use metarep_lat_cg::problem::{lambda_for_condition, rbf_problem, RbfProblemSpec};
use metarep_lat_cg::reference::{inverse_diagonal, pcg_step, CgState, Preconditioner};
use nalgebra::{DMatrix, DVector, RealField};
use serde::Serialize;

use super::{median_ms, write_report};
use crate::error::BoxError;

#[derive(Serialize)]
struct LatCgRow {
    n_support: usize,
    features: usize,
    dtype: &'static str,
    lat_layer_ms: f64,
    cg_step_ms: f64,
    time_ratio: f64,
    lat_layer_flops: u64,
    cg_step_flops: u64,
    flop_ratio: f64,
    time_ratio_over_flop_ratio: f64,
    within_4x_of_flop_ratio: bool,
}

fn cg_step_ms<T: RealField + Copy>(
    a: &DMatrix<T>,
    state: &CgState<T>,
    dinv: &DVector<T>,
    reps: usize,
) -> Result<f64, BoxError> {
    median_ms(reps, || {
        let w = a * &state.p;
        std::hint::black_box(pcg_step(state, &w, dinv));
        Ok(())
    })
}

/// Runs the benchmark and writes `results/bench/lat_cg.json`.
pub fn run(out: &Path) -> Result<bool, BoxError> {
    let features = 128;
    let mut rows = Vec::new();
    println!(
        "  n     p    dtype  LAT layer ms  CG step ms  time ratio  FLOP ratio  time/FLOP ratio"
    );
    for n in [256usize, 1024] {
        let spec = RbfProblemSpec {
            n_support: n,
            n_query: 1,
            dim: 3,
            features,
            lengthscale: 1.0,
            noise: 0.1,
        };
        let mut prob = rbf_problem(&mut seeded(n as u64), &spec, 0.0)?;
        prob.lambda = lambda_for_condition(&prob.phi, 100.0)?;
        let layout = TokenLayout::new(n, 1)?;
        let model = CgLat::build(
            CgSpec {
                layout,
                features,
                lambda: prob.lambda,
                preconditioner: Preconditioner::None,
                steps: 1,
            },
            &Device::Cpu,
        )?;
        let a = prob.system_matrix();
        let dinv = inverse_diagonal(&a, Preconditioner::None)?;
        let state = CgState {
            alpha: DVector::zeros(n),
            r: prob.y.clone(),
            z: prob.y.clone(),
            p: prob.y.clone(),
        };
        let cg_flops = 2 * (n as u64) * (n as u64) + 10 * n as u64;
        let reps = if n >= 1024 { 5 } else { 20 };
        for (dtype, name) in [(DType::F32, "f32"), (DType::F64, "f64")] {
            let lat = model.lat.to(dtype, &Device::Cpu)?;
            let x = model
                .embed(std::slice::from_ref(&prob), &Device::Cpu)?
                .to_dtype(dtype)?;
            let x = lat.layers[0].forward(&x)?;
            let layer = &lat.layers[1];
            let lat_ms = median_ms(reps, || {
                std::hint::black_box(layer.forward(&x)?);
                Ok(())
            })?;
            let cg_ms = if dtype == DType::F32 {
                let s32 = CgState {
                    alpha: state.alpha.map(|v| v as f32),
                    r: state.r.map(|v| v as f32),
                    z: state.z.map(|v| v as f32),
                    p: state.p.map(|v| v as f32),
                };
                cg_step_ms(&a.map(|v| v as f32), &s32, &dinv.map(|v| v as f32), 200)?
            } else {
                cg_step_ms(&a, &state, &dinv, 200)?
            };
            let lat_flops = layer.flops(1, layout.tokens())?;
            let (time_ratio, flop_ratio) = (lat_ms / cg_ms, lat_flops as f64 / cg_flops as f64);
            println!(
                "  {n:<5} {features:<4} {name}    {lat_ms:>10.3}  {cg_ms:>10.4}  {time_ratio:>10.1}  {flop_ratio:>10.1}  {:>10.3}",
                time_ratio / flop_ratio
            );
            rows.push(LatCgRow {
                n_support: n,
                features,
                dtype: name,
                lat_layer_ms: lat_ms,
                cg_step_ms: cg_ms,
                time_ratio,
                lat_layer_flops: lat_flops,
                cg_step_flops: cg_flops,
                flop_ratio,
                time_ratio_over_flop_ratio: time_ratio / flop_ratio,
                within_4x_of_flop_ratio: time_ratio <= 4.0 * flop_ratio,
            });
        }
    }
    write_report(
        out,
        "lat_cg",
        serde_json::json!({
            "what": "one constructed-LAT CG layer (batch 1, n + 2 tokens) vs one reference CG step (dense mat-vec + updates, nalgebra, 1 thread)",
            "rows": rows,
        }),
    )?;
    Ok(true)
}

//! Shared helpers for the softmax-routes tests.
#![allow(dead_code)]

use metarep_core::rng::seeded;
use metarep_eval::baselines::cg::{agreeing_steps, pcg, pcg_factored, CgTrace, Preconditioner};
use metarep_softmax_routes::kernel::{sample_exp_task, square_root, ExpTask, ExpTaskSpec};
use nalgebra::DMatrix;

/// A Route A task with `n` supports, `m` queries, inputs of dimension `d`.
pub fn exp_task(seed: u64, n: usize, m: usize, d: usize) -> ExpTask {
    let spec = ExpTaskSpec {
        n_support: n,
        n_query: m,
        dim: d,
        width: d,
        u_norm: 1.0,
        tau: 1.0,
        lambda: 0.1,
        noise: 0.1,
        frequency: 1.5,
    };
    sample_exp_task(&mut seeded(seed), &spec).unwrap()
}

/// Reference CG on `a` and the number of steps over which it agrees to 1e-9 with a second
/// textbook f64 CG (mat-vec through a square root of `a − λI`): the steps on which CG is
/// reproducible in f64 and a construction can be held to 1e-6.
pub fn reference(
    a: &DMatrix<f64>,
    lambda: f64,
    y: &nalgebra::DVector<f64>,
    steps: usize,
) -> (CgTrace, usize) {
    let n = a.nrows();
    let root = square_root(&(a - DMatrix::identity(n, n) * lambda));
    let cg = pcg(a, y, steps, Preconditioner::None).unwrap();
    let other = pcg_factored(&root, lambda, y, steps, Preconditioner::None).unwrap();
    let repro = agreeing_steps(&cg, &other, 1e-9);
    (cg, repro)
}

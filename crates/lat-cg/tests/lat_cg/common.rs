//! Shared helpers for the LAT→CG tests.
#![allow(dead_code)]

use candle_core::Device;
use metarep_lat_cg::construct::cg::{CgLat, CgSpec};
use metarep_lat_cg::problem::{
    lambda_for_condition, log_spaced_scales, rbf_problem, scaled_supports, KrrProblem,
    RbfProblemSpec,
};
use metarep_lat_cg::reference::Preconditioner;
use rand::SeedableRng;

/// A random RBF problem with `n` supports, `m` queries, `2n` features and `K + λI` of condition
/// number `kappa`.
pub fn problem(seed: u64, n: usize, m: usize, kappa: f64) -> KrrProblem {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let spec = RbfProblemSpec {
        n_support: n,
        n_query: m,
        dim: 2,
        features: 2 * n,
        lengthscale: 2.0,
        noise: 0.1,
    };
    let mut prob = rbf_problem(&mut rng, &spec, 0.0).unwrap();
    prob.lambda = lambda_for_condition(&prob.phi, kappa).unwrap();
    prob
}

/// A copy of `prob` with support amplitudes spanning `10^{±spread}` and a nugget, on which plain
/// CG is badly conditioned and Jacobi preconditioning is not.
pub fn badly_scaled(prob: KrrProblem, spread: f64) -> KrrProblem {
    let scales = log_spaced_scales(prob.n(), spread);
    scaled_supports(&prob, &scales, 0.1).unwrap()
}

/// The CG LAT for `prob` with `steps` CG layers.
pub fn model(prob: &KrrProblem, steps: usize, pre: Preconditioner) -> CgLat {
    CgLat::build(CgSpec::for_problem(prob, steps, pre).unwrap(), &Device::Cpu).unwrap()
}

/// The residual stream of `m` on `prob` before layer 0 and after every layer.
pub fn states(m: &CgLat, prob: &KrrProblem) -> Vec<candle_core::Tensor> {
    let x = m.embed(std::slice::from_ref(prob), &Device::Cpu).unwrap();
    m.lat.forward_with_states(&x).unwrap()
}

/// For CG layer `k`: its input rows and its attention sublayer's output rows (problem 0).
pub fn layer_io(
    m: &CgLat,
    states: &[candle_core::Tensor],
    k: usize,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let x = &states[m.state_index(k - 1).unwrap()];
    let attn = m.cg_layer(k).unwrap().attention(x).unwrap();
    (
        x.get(0).unwrap().to_vec2().unwrap(),
        attn.get(0).unwrap().to_vec2().unwrap(),
    )
}

/// A problem whose `n` feature rows are random unit vectors in `ℝ^rank` (labels and `q` queries
/// Gaussian): `K + λI` has at most `rank + 1` distinct eigenvalues and a constant diagonal, so
/// plain and Jacobi-preconditioned CG both terminate after `rank + 1` steps in exact arithmetic.
pub fn unit_rows(seed: u64, n: usize, rank: usize, lambda: f64) -> KrrProblem {
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut gauss = |rows: usize, cols: usize| {
        nalgebra::DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut rng))
    };
    let mut phi: nalgebra::DMatrix<f64> = gauss(n, rank);
    for mut row in phi.row_iter_mut() {
        let norm = row.norm();
        row /= norm;
    }
    let y = gauss(n, 1).column(0).into_owned();
    let queries = gauss(2, rank);
    KrrProblem::new(phi, y, lambda, queries).unwrap()
}

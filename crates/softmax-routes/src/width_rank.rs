//! Width–rank: a transformer whose mat-vec heads have query/key width `m < p` runs KRR on the
//! rank-`m` sketch `K̂ = ΦPPᵀΦᵀ` (`P` `[p, m]` with orthonormal columns). Here the model is the
//! LAT CG construction of metarep-lat-cg built for width `m`, fed the embedded features `ΦP`;
//! the query error against full KRR is compared with the bound of `docs/width_rank_theorem.md`.

use candle_core::{DType, Device};
use metarep_eval::baselines::cg::{
    agreeing_steps, exact_solution, pcg, pcg_factored, Preconditioner,
};
use metarep_eval::tasks::kernel::KrrProblem;
use metarep_eval::tasks::linear::{LinearTaskSpec, RegressionTask, Spectrum};
use metarep_lat_cg::construct::cg::{CgLat, CgSpec};
use metarep_lat_cg::convergence::REPRODUCIBLE_TOL;
use nalgebra::{DMatrix, DVector};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::route_a::spectral_norm;

/// Settings of a width–rank task family (a `[task]` table in fig5's config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WidthRankSpec {
    /// Supports `n`.
    pub n_support: usize,
    /// Queries.
    pub n_query: usize,
    /// Feature width `p`.
    pub features: usize,
    /// Ridge `λ > 0`.
    pub lambda: f64,
    /// Label noise standard deviation.
    pub noise: f64,
}

/// Features `φ ~ N(0, Σ)` whose covariance has the power-law spectrum `λ_i = i^{−decay}`
/// (a random rotation; metarep-eval's linear task with an explicit spectrum), linear labels.
pub fn power_law_task(
    rng: &mut impl Rng,
    spec: &WidthRankSpec,
    decay: f64,
) -> Result<RegressionTask> {
    if !(decay.is_finite() && decay >= 0.0) {
        return Err(Error::invalid(
            "spectral decay",
            format!("must be finite and ≥ 0, got {decay}"),
        ));
    }
    let eigenvalues = (1..=spec.features)
        .map(|i| (i as f64).powf(-decay))
        .collect();
    Ok(LinearTaskSpec {
        dim: spec.features,
        n_support: spec.n_support,
        n_query: spec.n_query,
        spectrum: Spectrum::Explicit(eigenvalues),
        noise: spec.noise,
    }
    .sample(rng)?)
}

/// Which rank-`m` subspace the width-`m` heads project onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sketch {
    /// The top-`m` principal directions of the feature distribution: fixed weights, the same
    /// for every prompt (what a width-`m` transformer can hold).
    Population,
    /// The top-`m` right singular vectors of the prompt's `Φ` (Eckart–Young: the best rank-`m`
    /// sketch of this `K`; depends on the prompt, so it is a reference, not fixed weights).
    Optimal,
}

/// The top-`m` eigenvectors `[p, m]` of a symmetric PSD matrix, largest first.
fn top_eigenvectors(a: &DMatrix<f64>, m: usize) -> DMatrix<f64> {
    let eig = a.clone().symmetric_eigen();
    let mut order: Vec<usize> = (0..a.nrows()).collect();
    order.sort_by(|&i, &j| eig.eigenvalues[j].total_cmp(&eig.eigenvalues[i]));
    DMatrix::from_fn(a.nrows(), m, |r, c| eig.eigenvectors[(r, order[c])])
}

/// The projection `P` `[p, m]` (orthonormal columns) of `sketch` for `task`.
pub fn sketch_basis(task: &RegressionTask, sketch: Sketch, m: usize) -> Result<DMatrix<f64>> {
    let p = task.x_support.ncols();
    if m == 0 || m > p {
        return Err(Error::invalid(
            "width m",
            format!("must be in 1..={p}, got {m}"),
        ));
    }
    Ok(match sketch {
        Sketch::Population => top_eigenvectors(&task.covariance, m),
        Sketch::Optimal => top_eigenvectors(&(task.x_support.transpose() * &task.x_support), m),
    })
}

/// Eigenvalues of `K = ΦΦᵀ`, largest first (clamped at 0).
pub fn kernel_spectrum(phi: &DMatrix<f64>) -> Vec<f64> {
    let mut s: Vec<f64> = (phi * phi.transpose())
        .symmetric_eigenvalues()
        .iter()
        .map(|v| v.max(0.0))
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// The λ-dependent effective dimension `tr(K(K + λI)⁻¹) = Σ σ_i/(σ_i + λ)`.
pub fn effective_dimension(spectrum: &[f64], lambda: f64) -> f64 {
    spectrum.iter().map(|s| s / (s + lambda)).sum()
}

/// Spectra of several draws of one kernel family, summarised against the ridge `λ`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpectrumSummary {
    /// The mean spectrum over draws, its first `len` eigenvalues (descending).
    pub mean: Vec<f64>,
    /// [`effective_dimension`] `d_λ` per draw.
    pub effective_dims: Vec<f64>,
    /// Eigenvalues `≥ λ` per draw.
    pub above_lambda: Vec<f64>,
    /// In every draw, `σ_{⌈2d_λ⌉+1} < λ` (or the spectrum is shorter than that).
    pub tail_below_lambda: bool,
}

impl SpectrumSummary {
    /// Summarises `spectra` (each descending, non-empty list) at ridge `lambda`, keeping at
    /// most `len` eigenvalues of the mean.
    pub fn new(spectra: &[Vec<f64>], lambda: f64, len: usize) -> Result<Self> {
        let shortest = spectra.iter().map(Vec::len).min().unwrap_or(0);
        if shortest == 0 {
            return Err(Error::invalid(
                "spectra",
                "need at least one non-empty spectrum",
            ));
        }
        let mean = (0..shortest.min(len))
            .map(|j| spectra.iter().map(|s| s[j]).sum::<f64>() / spectra.len() as f64)
            .collect();
        let effective_dims: Vec<f64> = spectra
            .iter()
            .map(|s| effective_dimension(s, lambda))
            .collect();
        let above_lambda = spectra
            .iter()
            .map(|s| s.iter().filter(|&&v| v >= lambda).count() as f64)
            .collect();
        let tail_below_lambda = spectra.iter().zip(&effective_dims).all(|(s, d)| {
            let m = (2.0 * d).ceil() as usize;
            s.get(m).is_none_or(|&v| v < lambda)
        });
        Ok(SpectrumSummary {
            mean,
            effective_dims,
            above_lambda,
            tail_below_lambda,
        })
    }
}

/// One width–rank measurement. The bound is on exact KRR with the sketch (`sketch_error`); the
/// model adds its solver error (`solver_dev`: `m + 1` finite-precision CG steps).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WidthRankPoint {
    /// Width `m`.
    pub width: usize,
    /// RMS over queries of `|f̂_m(x_q) − f*(x_q)|` (the width-`m` model against full KRR).
    pub error: f64,
    /// RMS over queries of `|f̂_m*(x_q) − f*(x_q)|` for exact KRR on the sketch (what the bound
    /// bounds; `error` adds the model's solver error to it).
    pub sketch_error: f64,
    /// RMS of the full KRR predictions `f*` (the scale of `error`).
    pub f_rms: f64,
    /// RMS over queries of the bound with `‖E‖₂` (Theorem 1).
    pub bound: f64,
    /// The same with `‖E‖₂` replaced by `tr E` (for the optimal sketch, the spectral tail).
    pub bound_tail: f64,
    /// The a-posteriori bound (Remark 2): `√‖E‖₂ ‖α‖` replaced by the norm `‖Qᵀw*‖` of the part of
    /// the full primal solution `w* = Φᵀα` outside the sketch.
    pub bound_a_posteriori: f64,
    /// `‖E‖₂` for `E = K − K̂`.
    pub residual_norm: f64,
    /// `tr E`.
    pub residual_trace: f64,
    /// Spectral tail `Σ_{i>m} σ_i(K)`.
    pub tail: f64,
    /// `σ_{m+1}(K)` (Eckart–Young's operator-norm error of the best rank-`m` sketch).
    pub sigma_next: f64,
    /// `tr(K(K + λI)⁻¹)`.
    pub effective_dim: f64,
    /// `‖f̂_m − f̂_m*‖ / ‖f*‖`: the model against exact KRR on the same sketch (solver error).
    pub solver_dev: f64,
    /// `‖f̂_m − f̂_m^CG‖ / ‖f̂_m^CG‖`: the model against reference f64 CG on the sketched system
    /// after the same `m + 1` steps (the construction's own error).
    pub model_vs_cg: f64,
    /// `‖f̂_m^CG − f̂_m*‖ / ‖f*‖`: reference CG's own distance from exact sketched KRR after `m + 1`
    /// steps (finite-precision CG needs more than `m + 1` steps to terminate).
    pub cg_dev: f64,
    /// Whether two textbook f64 CGs (dense and factored mat-vec) agree to 1e-9 over the first `m`
    /// steps (step `m + 1` then only finishes `α`; its new direction is rounding noise once CG
    /// terminates): where they do not, no CG implementation is reproducible to 1e-6 (fig1's
    /// criterion).
    pub reproducible: bool,
}

impl WidthRankPoint {
    /// The sketched-KRR error is within the a-posteriori bound, and that within the a-priori
    /// bound (up to rounding).
    pub fn within_bounds(&self) -> bool {
        self.sketch_error <= self.bound_a_posteriori + 1e-12 * self.f_rms
            && self.bound_a_posteriori <= self.bound * (1.0 + 1e-12) + 1e-15
    }
}

/// Runs the width-`m` LAT on `task` with ridge `lambda` (f64, `m + 1` CG steps: `K̂ + λI` has at
/// most `m + 1` distinct eigenvalues, so CG terminates there in exact arithmetic; further steps
/// would divide a vanishing residual by itself) on `device` and compares it with full KRR.
pub fn measure(
    task: &RegressionTask,
    lambda: f64,
    sketch: Sketch,
    m: usize,
    device: &Device,
) -> Result<WidthRankPoint> {
    if !(lambda.is_finite() && lambda > 0.0) {
        return Err(Error::invalid(
            "ridge λ",
            format!("the bound needs λ > 0, got {lambda}"),
        ));
    }
    let (x, xq, y) = (&task.x_support, &task.x_query, &task.y_support);
    let n = x.nrows();
    let k = x * x.transpose();
    let alpha = exact_solution(&(&k + DMatrix::identity(n, n) * lambda), y)?;
    let f_star = xq * (x.transpose() * &alpha);
    let p_basis = sketch_basis(task, sketch, m)?;
    let sketched = KrrProblem::new(x * &p_basis, y.clone(), lambda, xq * &p_basis)?;
    let model = CgLat::build(
        CgSpec::for_problem(&sketched, m + 1, Preconditioner::None)?,
        device,
    )?;
    let out = model
        .lat
        .forward(&model.embed(std::slice::from_ref(&sketched), device)?)?;
    let f_model = model
        .predictions(&out.to_dtype(DType::F64)?)?
        .row(0)
        .transpose();
    let f_sketch = sketched.predict(&exact_solution(&sketched.system_matrix(), y)?);
    let e = &k - &sketched.phi * sketched.phi.transpose();
    let (e_op, e_tr) = (spectral_norm(&e), e.trace().max(0.0));
    let complement = DMatrix::identity(x.ncols(), x.ncols()) - &p_basis * p_basis.transpose();
    // Per query: ‖Qᵀφ_q‖·T + ‖Pᵀφ_q‖·√e·T/(2√λ), with T bounding the discarded part of the
    // primal solution ‖Qᵀw*‖ (w* = Φᵀα): a priori T = √e‖α‖ (Theorem 1), a posteriori T = ‖Qᵀw*‖.
    let rms_bound = |e: f64, tail_of_solution: f64| -> f64 {
        let sq: f64 = (0..xq.nrows())
            .map(|q| {
                let phi = xq.row(q).transpose();
                let b = tail_of_solution
                    * ((&complement * &phi).norm()
                        + e.sqrt() * (p_basis.transpose() * &phi).norm() / (2.0 * lambda.sqrt()));
                b * b
            })
            .sum();
        (sq / xq.nrows() as f64).sqrt()
    };
    let solution_tail = (&complement * (x.transpose() * &alpha)).norm();
    let spectrum = kernel_spectrum(x);
    let rms = |v: DVector<f64>| (v.norm_squared() / v.len() as f64).sqrt();
    let f_norm = f_star.norm().max(f64::MIN_POSITIVE);
    let solver_dev = (&f_model - &f_sketch).norm() / f_norm;
    let cg = pcg(&sketched.system_matrix(), y, m + 1, Preconditioner::None)?;
    let other = pcg_factored(&sketched.phi, lambda, y, m + 1, Preconditioner::None)?;
    let reproducible = agreeing_steps(&cg, &other, REPRODUCIBLE_TOL) >= m;
    let f_cg = sketched.predict(&cg.states[m + 1].alpha);
    let model_vs_cg = (&f_model - &f_cg).norm() / f_cg.norm().max(f64::MIN_POSITIVE);
    let cg_dev = (&f_cg - &f_sketch).norm() / f_norm;
    Ok(WidthRankPoint {
        width: m,
        error: rms(&f_model - &f_star),
        sketch_error: rms(&f_sketch - &f_star),
        f_rms: rms(f_star.clone()),
        bound: rms_bound(e_op, e_op.sqrt() * alpha.norm()),
        bound_tail: rms_bound(e_tr, e_tr.sqrt() * alpha.norm()),
        bound_a_posteriori: rms_bound(e_op, solution_tail),
        residual_norm: e_op,
        residual_trace: e_tr,
        tail: spectrum.iter().skip(m).sum(),
        sigma_next: spectrum.get(m).copied().unwrap_or(0.0),
        effective_dim: effective_dimension(&spectrum, lambda),
        solver_dev,
        model_vs_cg,
        cg_dev,
        reproducible,
    })
}

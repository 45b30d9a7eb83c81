//! The exponential kernel `k(x, x') = exp(⟨Ux, Ux'⟩/τ)`, in-context prompts, and the synthetic
//! regression tasks of Route A with their kernel ridge regression (KRR) oracle.

use metarep_eval::baselines::cg::exact_solution;
use metarep_eval::tasks::kernel::{lambda_for_condition, KrrProblem};
use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An in-context prompt: labelled supports and the queries to predict at.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Support inputs `[n, d]` (raw inputs for Route A, features for Route B).
    pub x: DMatrix<f64>,
    /// Support labels `[n]`.
    pub y: DVector<f64>,
    /// Query inputs `[m, d]`.
    pub x_query: DMatrix<f64>,
}

impl Prompt {
    /// Checks `n ≥ 1`, `m ≥ 1`, `d ≥ 1`, matching shapes and finite values (metarep-eval's
    /// checks for a kernel ridge problem, plus at least one query).
    pub fn new(x: DMatrix<f64>, y: DVector<f64>, x_query: DMatrix<f64>) -> Result<Self> {
        if x_query.nrows() == 0 {
            return Err(Error::invalid("prompt", "needs at least one query (m = 0)"));
        }
        let p = KrrProblem::new(x, y, 0.0, x_query)?;
        Ok(Self {
            x: p.phi,
            y: p.y,
            x_query: p.phi_query,
        })
    }

    /// Number of supports `n`.
    pub fn n(&self) -> usize {
        self.x.nrows()
    }

    /// Number of queries `m`.
    pub fn m(&self) -> usize {
        self.x_query.nrows()
    }

    /// Input width `d`.
    pub fn dim(&self) -> usize {
        self.x.ncols()
    }
}

impl From<&KrrProblem> for Prompt {
    /// The prompt of a feature-form problem: `x = Φ`, `x_query = Φ_q` (already validated).
    fn from(p: &KrrProblem) -> Self {
        Self {
            x: p.phi.clone(),
            y: p.y.clone(),
            x_query: p.phi_query.clone(),
        }
    }
}

/// The exponential kernel `k(x, x') = exp(⟨Ux, Ux'⟩/τ)` with `U` `[width, d]` and `τ > 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpKernel {
    /// Projection `U` `[width, d]` (the query/key map of a softmax head).
    pub u: DMatrix<f64>,
    /// Temperature `τ > 0`.
    pub tau: f64,
}

impl ExpKernel {
    /// Checks a finite, non-empty `U` and a finite `τ > 0`.
    pub fn new(u: DMatrix<f64>, tau: f64) -> Result<Self> {
        if u.nrows() == 0 || u.ncols() == 0 || !u.iter().all(|v| v.is_finite()) {
            return Err(Error::invalid(
                "kernel projection U",
                format!(
                    "must be non-empty and finite, got {}×{}",
                    u.nrows(),
                    u.ncols()
                ),
            ));
        }
        if !(tau.is_finite() && tau > 0.0) {
            return Err(Error::invalid(
                "temperature τ",
                format!("must be finite and > 0, got {tau}"),
            ));
        }
        Ok(Self { u, tau })
    }

    /// Input dimension `d`.
    pub fn dim(&self) -> usize {
        self.u.ncols()
    }

    /// Width of `U` (the head's query/key dimension).
    pub fn width(&self) -> usize {
        self.u.nrows()
    }

    /// `‖U‖₂`, the largest singular value.
    pub fn u_norm(&self) -> f64 {
        self.u.singular_values().max()
    }

    fn check(&self, a: &DMatrix<f64>, what: &str) -> Result<()> {
        if a.ncols() != self.dim() {
            return Err(Error::shape(
                what,
                format!("[rows, {}]", self.dim()),
                format!("[{}, {}]", a.nrows(), a.ncols()),
            ));
        }
        Ok(())
    }

    /// Logits `⟨Ua_i, Ub_j⟩/τ` `[rows(a), rows(b)]`.
    pub fn logits(&self, a: &DMatrix<f64>, b: &DMatrix<f64>) -> Result<DMatrix<f64>> {
        self.check(a, "kernel input a")?;
        self.check(b, "kernel input b")?;
        let ua = a * self.u.transpose();
        let ub = b * self.u.transpose();
        Ok(ua * ub.transpose() / self.tau)
    }

    /// Gram matrix `[k(a_i, b_j)]`.
    pub fn gram(&self, a: &DMatrix<f64>, b: &DMatrix<f64>) -> Result<DMatrix<f64>> {
        Ok(self.logits(a, b)?.map(f64::exp))
    }

    /// The kernel of the first `width` rows of `U` (a narrower head).
    pub fn truncated(&self, width: usize) -> Result<Self> {
        if width == 0 || width > self.width() {
            return Err(Error::invalid(
                "kernel width",
                format!("must be in 1..={}, got {width}", self.width()),
            ));
        }
        Self::new(self.u.rows(0, width).into_owned(), self.tau)
    }
}

/// Settings of a Route A task family (a `[task]` table in experiment configs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExpTaskSpec {
    /// Supports `n`.
    pub n_support: usize,
    /// Queries `m`.
    pub n_query: usize,
    /// Input dimension `d`.
    pub dim: usize,
    /// Rows of `U` (≤ d).
    pub width: usize,
    /// `‖U‖₂` (U has orthonormal rows times this).
    pub u_norm: f64,
    /// Temperature `τ`.
    pub tau: f64,
    /// Ridge `λ`.
    pub lambda: f64,
    /// Label noise standard deviation.
    pub noise: f64,
    /// Frequency `ω` of the target `sin(ω √d vᵀx)`.
    pub frequency: f64,
}

/// One Route A task: a prompt, the noise-free query targets, the kernel and the ridge.
#[derive(Debug, Clone)]
pub struct ExpTask {
    /// Supports and queries.
    pub prompt: Prompt,
    /// Noise-free targets at the queries `[m]`.
    pub target: DVector<f64>,
    /// The exponential kernel.
    pub kernel: ExpKernel,
    /// Ridge `λ ≥ 0`.
    pub lambda: f64,
}

/// The KRR solution on a task: coefficients and query predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct Oracle {
    /// `α = (K + λI)⁻¹ y` `[n]`.
    pub alpha: DVector<f64>,
    /// `k(x_q, X) α` `[m]`.
    pub predictions: DVector<f64>,
}

/// Draws a task: `x ~ N(0, I_d/d)` (so `‖x‖ ≈ 1`), `y = sin(ω √d vᵀx) + noise` with a random unit
/// `v`, `U = ‖U‖ · Qᵀ` with `Q` the first `width` columns of a random orthogonal matrix.
pub fn sample_exp_task(rng: &mut impl Rng, spec: &ExpTaskSpec) -> Result<ExpTask> {
    let kernel = sample_exp_kernel(rng, spec)?;
    sample_exp_task_with(rng, spec, kernel)
}

/// `count ≥ 1` tasks that share one kernel (drawn first, as in [`sample_exp_task`]), so one
/// constructed model runs them all; each has its own inputs, direction `v` and noise.
pub fn sample_exp_tasks(
    rng: &mut impl Rng,
    spec: &ExpTaskSpec,
    count: usize,
) -> Result<Vec<ExpTask>> {
    if count == 0 {
        return Err(Error::invalid("task count", "at least one task is needed"));
    }
    let kernel = sample_exp_kernel(rng, spec)?;
    (0..count)
        .map(|_| sample_exp_task_with(rng, spec, kernel.clone()))
        .collect()
}

/// The kernel of a task family: `U = ‖U‖ · Qᵀ` with `Q` the first `width` columns of a random
/// orthogonal `d × d` matrix, and the spec's `τ`.
pub fn sample_exp_kernel(rng: &mut impl Rng, spec: &ExpTaskSpec) -> Result<ExpKernel> {
    let d = spec.dim;
    if d == 0 || spec.width == 0 || spec.width > d {
        return Err(Error::invalid(
            "task spec",
            format!("need 1 ≤ width ≤ dim, got width {} and dim {d}", spec.width),
        ));
    }
    if !spec.u_norm.is_finite() {
        return Err(Error::invalid("task spec", "‖U‖ must be finite"));
    }
    let q: DMatrix<f64> = DMatrix::from_fn(d, d, |_, _| StandardNormal.sample(rng))
        .qr()
        .q();
    ExpKernel::new(q.columns(0, spec.width).transpose() * spec.u_norm, spec.tau)
}

/// A task of `spec` with the given `kernel` (inputs, labels and targets as in
/// [`sample_exp_task`]).
pub fn sample_exp_task_with(
    rng: &mut impl Rng,
    spec: &ExpTaskSpec,
    kernel: ExpKernel,
) -> Result<ExpTask> {
    let d = spec.dim;
    if kernel.dim() != d {
        return Err(Error::shape(
            "kernel projection U",
            format!("[width, {d}]"),
            format!("[{}, {}]", kernel.width(), kernel.dim()),
        ));
    }
    if !(spec.lambda.is_finite() && spec.lambda >= 0.0) {
        return Err(Error::invalid(
            "ridge λ",
            format!("must be finite and ≥ 0, got {}", spec.lambda),
        ));
    }
    if !(spec.noise.is_finite() && spec.noise >= 0.0) {
        return Err(Error::invalid(
            "task spec",
            "the noise must be finite and ≥ 0",
        ));
    }
    let mut normal = || -> f64 { StandardNormal.sample(rng) };
    let mut v = DVector::from_fn(d, |_, _| normal());
    v /= v.norm().max(f64::MIN_POSITIVE);
    let scale = 1.0 / (d as f64).sqrt();
    let x = DMatrix::from_fn(spec.n_support, d, |_, _| normal() * scale);
    let x_query = DMatrix::from_fn(spec.n_query, d, |_, _| normal() * scale);
    let f = |row: nalgebra::DVectorView<f64>| (spec.frequency * row.dot(&v) / scale).sin();
    let y = DVector::from_fn(spec.n_support, |i, _| {
        f(x.row(i).transpose().as_view()) + spec.noise * normal()
    });
    let target = DVector::from_fn(spec.n_query, |i, _| f(x_query.row(i).transpose().as_view()));
    Ok(ExpTask {
        prompt: Prompt::new(x, y, x_query)?,
        target,
        kernel,
        lambda: spec.lambda,
    })
}

impl ExpTask {
    /// Support Gram matrix `K` `[n, n]`.
    pub fn gram(&self) -> Result<DMatrix<f64>> {
        self.kernel.gram(&self.prompt.x, &self.prompt.x)
    }

    /// Query–support kernel `[m, n]`.
    pub fn query_gram(&self) -> Result<DMatrix<f64>> {
        self.kernel.gram(&self.prompt.x_query, &self.prompt.x)
    }

    /// `K + λI`.
    pub fn system_matrix(&self) -> Result<DMatrix<f64>> {
        let n = self.prompt.n();
        Ok(self.gram()? + DMatrix::identity(n, n) * self.lambda)
    }

    /// Exact KRR (Cholesky in f64): the oracle every model is compared with.
    pub fn oracle(&self) -> Result<Oracle> {
        let alpha = exact_solution(&self.system_matrix()?, &self.prompt.y)?;
        let predictions = self.query_gram()? * &alpha;
        Ok(Oracle { alpha, predictions })
    }

    /// The same task with ridge `lambda`.
    pub fn with_lambda(&self, lambda: f64) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(Error::invalid(
                "ridge λ",
                format!("must be finite and ≥ 0, got {lambda}"),
            ));
        }
        Ok(Self {
            lambda,
            ..self.clone()
        })
    }

    /// The ridge that gives `K + λI` condition number `kappa` (an error when `K` is already
    /// better conditioned): metarep-eval's formula for `K = ΦΦᵀ`, applied to `Φ = K^{1/2}`.
    pub fn lambda_for_kappa(&self, kappa: f64) -> Result<f64> {
        Ok(lambda_for_condition(&square_root(&self.gram()?), kappa)?)
    }
}

/// A square root `Φ = V diag(√max(σ, 0))` of a symmetric PSD matrix (`ΦΦᵀ = K` up to rounding):
/// the feature form in which metarep-eval's factored solvers take a kernel.
pub fn square_root(k: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = k.clone().symmetric_eigen();
    &eig.eigenvectors * DMatrix::from_diagonal(&eig.eigenvalues.map(|s| s.max(0.0).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use metarep_core::rng::seeded;

    fn spec() -> ExpTaskSpec {
        ExpTaskSpec {
            n_support: 20,
            n_query: 5,
            dim: 3,
            width: 3,
            u_norm: 1.5,
            tau: 0.5,
            lambda: 0.1,
            noise: 0.0,
            frequency: 1.0,
        }
    }

    #[test]
    fn kernel_matches_its_definition_and_oracle_interpolates_at_small_lambda() {
        let task = sample_exp_task(&mut seeded(3), &spec()).unwrap();
        assert!((task.kernel.u_norm() - 1.5).abs() < 1e-12);
        let (a, b) = (task.prompt.x.row(2), task.prompt.x.row(7));
        let ua = &task.kernel.u * a.transpose();
        let ub = &task.kernel.u * b.transpose();
        let want = (ua.dot(&ub) / 0.5).exp();
        assert!((task.gram().unwrap()[(2, 7)] - want).abs() < 1e-14 * want);
        let sharp = task.with_lambda(1e-10).unwrap();
        let o = sharp.oracle().unwrap();
        let fit = sharp.gram().unwrap() * &o.alpha;
        assert!((fit - &sharp.prompt.y).norm() < 1e-5 * sharp.prompt.y.norm());
        let lam = task.lambda_for_kappa(50.0).unwrap();
        let k = metarep_eval::baselines::cg::condition_number(
            &task.with_lambda(lam).unwrap().system_matrix().unwrap(),
        );
        assert!((k - 50.0).abs() < 1e-6 * 50.0, "κ = {k}");
    }

    #[test]
    fn a_task_family_shares_one_kernel_and_starts_with_the_single_task_draw() {
        let tasks = sample_exp_tasks(&mut seeded(5), &spec(), 3).unwrap();
        let single = sample_exp_task(&mut seeded(5), &spec()).unwrap();
        assert_eq!(tasks[0].prompt, single.prompt);
        assert_eq!(tasks[0].kernel, single.kernel);
        assert!(tasks.iter().all(|t| t.kernel == single.kernel));
        assert_ne!(tasks[1].prompt.x, tasks[0].prompt.x);
        assert!(sample_exp_tasks(&mut seeded(5), &spec(), 0).is_err());
        let narrow = ExpKernel::new(DMatrix::identity(2, 2), 1.0).unwrap();
        assert!(sample_exp_task_with(&mut seeded(5), &spec(), narrow).is_err());
    }

    #[test]
    fn bad_specs_and_prompts_are_errors() {
        let mut s = spec();
        s.width = 4;
        assert!(sample_exp_task(&mut seeded(0), &s).is_err());
        let mut s = spec();
        s.tau = 0.0;
        assert!(sample_exp_task(&mut seeded(0), &s)
            .unwrap_err()
            .to_string()
            .contains("τ"));
        let e = Prompt::new(
            DMatrix::zeros(3, 2),
            DVector::zeros(2),
            DMatrix::zeros(1, 2),
        );
        assert!(e.unwrap_err().to_string().contains("labels"));
        let task = sample_exp_task(&mut seeded(0), &spec()).unwrap();
        assert!(task.kernel.truncated(0).is_err());
        assert_eq!(task.kernel.truncated(2).unwrap().width(), 2);
    }
}

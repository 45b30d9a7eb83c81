//! Kernel ridge regression problems in feature form, `K = ΦΦᵀ`, and random Fourier features.

use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::baselines::cg::system_matrix;
use crate::{Error, Result};

/// A kernel ridge problem `(ΦΦᵀ + λI) α = y` with query points to predict at.
#[derive(Debug, Clone)]
pub struct KrrProblem {
    /// Support features `Φ` `[n, p]` (row i = φ(x_i)).
    pub phi: DMatrix<f64>,
    /// Support labels `y` `[n]`.
    pub y: DVector<f64>,
    /// Ridge `λ ≥ 0`.
    pub lambda: f64,
    /// Query features `[m, p]`.
    pub phi_query: DMatrix<f64>,
}

impl KrrProblem {
    /// Checks shapes, finiteness and `λ ≥ 0`.
    pub fn new(
        phi: DMatrix<f64>,
        y: DVector<f64>,
        lambda: f64,
        phi_query: DMatrix<f64>,
    ) -> Result<Self> {
        if phi.nrows() == 0 {
            return Err(Error::invalid("support set", "empty (n = 0)"));
        }
        if phi.ncols() == 0 {
            return Err(Error::invalid("features", "feature width p = 0"));
        }
        if y.len() != phi.nrows() {
            return Err(Error::shape(
                "labels y",
                format!("[{}]", phi.nrows()),
                format!("[{}]", y.len()),
            ));
        }
        if phi_query.ncols() != phi.ncols() {
            return Err(Error::shape(
                "query features",
                format!("[m, {}]", phi.ncols()),
                format!("[{}, {}]", phi_query.nrows(), phi_query.ncols()),
            ));
        }
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(Error::invalid(
                "ridge λ",
                format!("must be finite and ≥ 0, got {lambda}"),
            ));
        }
        let finite = phi
            .iter()
            .chain(y.iter())
            .chain(phi_query.iter())
            .all(|v| v.is_finite());
        if !finite {
            return Err(Error::invalid(
                "problem data",
                "contains NaN or infinite values",
            ));
        }
        Ok(Self {
            phi,
            y,
            lambda,
            phi_query,
        })
    }

    /// Number of supports `n`.
    pub fn n(&self) -> usize {
        self.phi.nrows()
    }

    /// Feature width `p`.
    pub fn p(&self) -> usize {
        self.phi.ncols()
    }

    /// The system matrix `K + λI`.
    pub fn system_matrix(&self) -> DMatrix<f64> {
        system_matrix(&self.phi, self.lambda)
    }

    /// Predictions `k(x_q)ᵀ α = Φ_q Φᵀ α` at the queries for coefficients `alpha`.
    pub fn predict(&self, alpha: &DVector<f64>) -> DVector<f64> {
        &self.phi_query * (self.phi.transpose() * alpha)
    }
}

/// Random Fourier features for the RBF kernel `exp(−‖x − x'‖² / (2ℓ²))`:
/// `φ(x) = sqrt(2/D) cos(Wx + b)`, `W_ij ~ N(0, 1/ℓ²)`, `b_j ~ U(0, 2π)`.
#[derive(Debug, Clone)]
pub struct RandomFourierFeatures {
    /// Frequencies `[D, d]`.
    pub w: DMatrix<f64>,
    /// Phases `[D]`.
    pub b: DVector<f64>,
}

impl RandomFourierFeatures {
    /// Draws `features` frequencies for inputs of dimension `dim` and length scale `lengthscale`.
    pub fn new(rng: &mut impl Rng, dim: usize, features: usize, lengthscale: f64) -> Result<Self> {
        if dim == 0 || features == 0 {
            return Err(Error::invalid(
                "random Fourier features",
                "dimension and feature count must be ≥ 1",
            ));
        }
        let normal = Normal::new(0.0, 1.0 / lengthscale)
            .map_err(|e| Error::invalid("length scale", format!("{lengthscale}: {e}")))?;
        let uniform = Uniform::new(0.0, 2.0 * std::f64::consts::PI)
            .map_err(|e| Error::invalid("phase distribution", e.to_string()))?;
        let w = DMatrix::from_fn(features, dim, |_, _| normal.sample(rng));
        let b = DVector::from_fn(features, |_, _| uniform.sample(rng));
        Ok(Self { w, b })
    }

    /// Features of the rows of `x` `[n, d]`: `[n, D]`.
    pub fn map(&self, x: &DMatrix<f64>) -> Result<DMatrix<f64>> {
        if x.ncols() != self.w.ncols() {
            return Err(Error::shape(
                "RFF input",
                format!("[n, {}]", self.w.ncols()),
                format!("[{}, {}]", x.nrows(), x.ncols()),
            ));
        }
        let scale = (2.0 / self.w.nrows() as f64).sqrt();
        let mut z = x * self.w.transpose();
        for mut row in z.row_iter_mut() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = scale * (*v + self.b[j]).cos();
            }
        }
        Ok(z)
    }
}

/// Settings of a random RBF kernel ridge problem (a `[problem]` table in experiment configs).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RbfProblemSpec {
    /// Number of supports `n`.
    pub n_support: usize,
    /// Number of queries `m`.
    pub n_query: usize,
    /// Input dimension `d`.
    pub dim: usize,
    /// Number of random Fourier features `D` (the LAT's feature width).
    pub features: usize,
    /// RBF length scale `ℓ`.
    pub lengthscale: f64,
    /// Label noise standard deviation.
    pub noise: f64,
}

/// Draws a problem: `x ~ N(0, I_d)`, `y = sin(vᵀx) + noise` with a random unit `v`, the RBF
/// kernel through random Fourier features, ridge `lambda`.
pub fn rbf_problem(rng: &mut impl Rng, spec: &RbfProblemSpec, lambda: f64) -> Result<KrrProblem> {
    if spec.n_support == 0 {
        return Err(Error::invalid("support set", "empty (n = 0)"));
    }
    let std: Normal<f64> =
        Normal::new(0.0, 1.0).map_err(|e| Error::invalid("normal", e.to_string()))?;
    let rff = RandomFourierFeatures::new(rng, spec.dim, spec.features, spec.lengthscale)?;
    let mut v: DVector<f64> = DVector::from_fn(spec.dim, |_, _| std.sample(rng));
    v /= v.norm().max(f64::MIN_POSITIVE);
    let x = DMatrix::from_fn(spec.n_support, spec.dim, |_, _| std.sample(rng));
    let xq = DMatrix::from_fn(spec.n_query, spec.dim, |_, _| std.sample(rng));
    let y = DVector::from_fn(spec.n_support, |i, _| {
        x.row(i).transpose().dot(&v).sin() + spec.noise * std.sample(rng)
    });
    KrrProblem::new(rff.map(&x)?, y, lambda, rff.map(&xq)?)
}

/// The ridge `λ ≥ 0` that gives `K + λI` condition number `kappa`, for `K = ΦΦᵀ`; an error
/// when `K` alone is already better conditioned than `kappa`.
pub fn lambda_for_condition(phi: &DMatrix<f64>, kappa: f64) -> Result<f64> {
    if kappa.is_nan() || kappa <= 1.0 {
        return Err(Error::invalid(
            "condition number",
            format!("κ must be > 1, got {kappa}"),
        ));
    }
    let k = phi * phi.transpose();
    let eig = k.symmetric_eigen();
    let (max, min) = (eig.eigenvalues.max(), eig.eigenvalues.min().max(0.0));
    let lambda = (max - kappa * min) / (kappa - 1.0);
    if lambda < 0.0 {
        return Err(Error::invalid(
            "condition number",
            format!(
                "K is already better conditioned than κ = {kappa} (λ would be {lambda:.3e} < 0)"
            ),
        ));
    }
    Ok(lambda)
}

/// A problem whose supports carry amplitudes `s_i` and a nugget `μ`:
/// `k'(x_i, x_j) = s_i s_j (k(x_i, x_j) + μ δ_ij)`, in feature form `Φ' = [diag(s) Φ, √μ diag(s)]`
/// (queries get zeros in the nugget block). `K' + λI` is ill-conditioned when the `s_i` span
/// orders of magnitude, and Jacobi preconditioning undoes exactly that scaling.
pub fn scaled_supports(prob: &KrrProblem, scales: &[f64], nugget: f64) -> Result<KrrProblem> {
    let (n, p) = (prob.n(), prob.p());
    if scales.len() != n {
        return Err(Error::shape(
            "support scales",
            format!("[{n}]"),
            format!("[{}]", scales.len()),
        ));
    }
    if nugget.is_nan() || nugget < 0.0 || scales.iter().any(|s| !s.is_finite()) {
        return Err(Error::invalid(
            "scaled supports",
            "nugget must be ≥ 0 and scales finite",
        ));
    }
    let root = nugget.sqrt();
    let phi = DMatrix::from_fn(n, p + n, |i, j| {
        if j < p {
            scales[i] * prob.phi[(i, j)]
        } else if j - p == i {
            scales[i] * root
        } else {
            0.0
        }
    });
    let phi_query = DMatrix::from_fn(prob.phi_query.nrows(), p + n, |q, j| {
        if j < p {
            prob.phi_query[(q, j)]
        } else {
            0.0
        }
    });
    KrrProblem::new(phi, prob.y.clone(), prob.lambda, phi_query)
}

/// Log-uniformly spaced amplitudes `10^{spread·(2i/(n−1) − 1)}`, `i = 0..n`.
pub fn log_spaced_scales(n: usize, spread: f64) -> Vec<f64> {
    (0..n)
        .map(|i| 10f64.powf(spread * (2.0 * i as f64 / (n.max(2) - 1) as f64 - 1.0)))
        .collect()
}

//! Linear baselines: closed forms and iterative solvers of the least-squares problem.

use nalgebra::{DMatrix, DVector};

use super::cg::{pcg, Preconditioner};
use super::LinearFit;
use crate::{Error, Result};

fn hessian(x: &DMatrix<f64>) -> DMatrix<f64> {
    x.transpose() * x / x.nrows() as f64
}

fn check(x: &DMatrix<f64>, y: &DVector<f64>) -> Result<()> {
    super::check_shapes(x, y, &DMatrix::zeros(0, x.ncols()))
}

/// Extreme eigenvalues `(μ, L)` of the symmetric matrix `h`.
fn extremes(h: &DMatrix<f64>) -> (f64, f64) {
    let ev = h.clone().symmetric_eigen().eigenvalues;
    (ev.min().max(0.0), ev.max())
}

/// Ridge regression, the closed-form oracle: `(H + λI) w = Xᵀy / n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ridge {
    /// `λ ≥ 0` (with `λ = 0`, `H` must be invertible).
    pub lambda: f64,
}

impl LinearFit for Ridge {
    fn name(&self) -> String {
        format!("ridge(λ={})", self.lambda)
    }

    fn weights(&self, x: &DMatrix<f64>, y: &DVector<f64>) -> Result<DVector<f64>> {
        check(x, y)?;
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return Err(Error::Invalid(format!(
                "ridge λ must be finite and ≥ 0, got {}",
                self.lambda
            )));
        }
        let d = x.ncols();
        let a = hessian(x) + DMatrix::identity(d, d) * self.lambda;
        let b = x.transpose() * y / x.nrows() as f64;
        a.cholesky().map(|c| c.solve(&b)).ok_or_else(|| {
            Error::Invalid("ridge system is singular: use λ > 0 or MinNormLeastSquares".into())
        })
    }
}

/// Minimum-norm least squares `w = X⁺ y` (SVD pseudo-inverse).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MinNormLeastSquares;

impl LinearFit for MinNormLeastSquares {
    fn name(&self) -> String {
        "min-norm LS".into()
    }

    fn weights(&self, x: &DMatrix<f64>, y: &DVector<f64>) -> Result<DVector<f64>> {
        check(x, y)?;
        let svd = x.clone().svd(true, true);
        let tol = 1e-12 * svd.singular_values.max() * x.nrows().max(x.ncols()) as f64;
        svd.solve(y, tol)
            .map_err(|e| Error::Invalid(format!("pseudo-inverse failed: {e}")))
    }
}

/// Step-size rule for gradient descent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepSize {
    /// A fixed step `η`.
    Fixed(f64),
    /// `η = 1/L`: monotone decrease of the loss.
    InverseSmoothness,
    /// `η = 2/(L + μ)`: the best constant step for a quadratic.
    Tuned,
}

impl StepSize {
    fn resolve(self, h: &DMatrix<f64>) -> Result<f64> {
        let (mu, l) = extremes(h);
        let eta = match self {
            StepSize::Fixed(eta) => eta,
            StepSize::InverseSmoothness => 1.0 / l,
            StepSize::Tuned => 2.0 / (l + mu),
        };
        if eta.is_finite() && eta > 0.0 {
            Ok(eta)
        } else {
            Err(Error::Invalid(format!(
                "step size must be finite and > 0, got {eta}"
            )))
        }
    }
}

/// Gradient descent on `L(w)` from `w₀ = 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientDescent {
    /// Number of steps.
    pub steps: usize,
    /// Step-size rule.
    pub step: StepSize,
}

impl GradientDescent {
    /// Iterates `w₀ .. w_steps`.
    pub fn trajectory(&self, x: &DMatrix<f64>, y: &DVector<f64>) -> Result<Vec<DVector<f64>>> {
        check(x, y)?;
        let h = hessian(x);
        let eta = self.step.resolve(&h)?;
        let b = x.transpose() * y / x.nrows() as f64;
        let mut w = DVector::zeros(x.ncols());
        let mut out = vec![w.clone()];
        for _ in 0..self.steps {
            w -= eta * (&h * &w - &b);
            out.push(w.clone());
        }
        Ok(out)
    }
}

impl LinearFit for GradientDescent {
    fn name(&self) -> String {
        format!("GD({} steps, {:?})", self.steps, self.step)
    }

    fn weights(&self, x: &DMatrix<f64>, y: &DVector<f64>) -> Result<DVector<f64>> {
        self.trajectory(x, y)?
            .pop()
            .ok_or_else(|| Error::Invalid("empty trajectory".into()))
    }
}

/// Jacobi-preconditioned gradient descent: `w ← w − η D⁻¹ ∇L(w)`, `D = diag(H)`, `η = 1/λ_max(D⁻¹H)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreconditionedGd {
    /// Number of steps.
    pub steps: usize,
}

impl LinearFit for PreconditionedGd {
    fn name(&self) -> String {
        format!("Jacobi-preconditioned GD({} steps)", self.steps)
    }

    fn weights(&self, x: &DMatrix<f64>, y: &DVector<f64>) -> Result<DVector<f64>> {
        check(x, y)?;
        let h = hessian(x);
        let d = x.ncols();
        let mut dinv = DVector::zeros(d);
        for i in 0..d {
            if h[(i, i)] <= 0.0 {
                return Err(Error::Invalid(format!(
                    "input feature {i} is identically zero: no Jacobi preconditioner"
                )));
            }
            dinv[i] = 1.0 / h[(i, i)];
        }
        let s = DMatrix::from_diagonal(&dinv.map(f64::sqrt));
        let (_, l) = extremes(&(&s * &h * &s));
        let b = x.transpose() * y / x.nrows() as f64;
        let mut w = DVector::zeros(d);
        for _ in 0..self.steps {
            w -= (1.0 / l) * (&h * &w - &b).component_mul(&dinv);
        }
        Ok(w)
    }
}

/// Newton–Schulz iteration for `(H + λI)⁻¹`: `V ← V(2I − AV)`, `V₀ = Aᵀ/(‖A‖₁‖A‖_∞)`; then
/// `w = V Xᵀy / n`. The residual `I − AV` squares every iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewtonSchulz {
    /// Number of iterations.
    pub iterations: usize,
    /// Ridge `λ ≥ 0`.
    pub lambda: f64,
}

impl NewtonSchulz {
    /// The iterates `V₀ .. V_iterations` for `A = H + λI`.
    pub fn inverse_iterates(&self, a: &DMatrix<f64>) -> Vec<DMatrix<f64>> {
        let norm1 = (0..a.ncols())
            .map(|j| a.column(j).abs().sum())
            .fold(0.0, f64::max);
        let norm_inf = (0..a.nrows())
            .map(|i| a.row(i).abs().sum())
            .fold(0.0, f64::max);
        let mut v = a.transpose() / (norm1 * norm_inf);
        let two = DMatrix::identity(a.nrows(), a.ncols()) * 2.0;
        let mut out = vec![v.clone()];
        for _ in 0..self.iterations {
            v = &v * (&two - a * &v);
            out.push(v.clone());
        }
        out
    }
}

impl LinearFit for NewtonSchulz {
    fn name(&self) -> String {
        format!("Newton–Schulz({} its)", self.iterations)
    }

    fn weights(&self, x: &DMatrix<f64>, y: &DVector<f64>) -> Result<DVector<f64>> {
        check(x, y)?;
        let d = x.ncols();
        let a = hessian(x) + DMatrix::identity(d, d) * self.lambda;
        let v = self
            .inverse_iterates(&a)
            .pop()
            .ok_or_else(|| Error::Invalid("no iterate".into()))?;
        Ok(v * (x.transpose() * y) / x.nrows() as f64)
    }
}

/// (Preconditioned) conjugate gradient on `(H + λI) w = Xᵀy / n` from `w₀ = 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConjugateGradient {
    /// Number of steps.
    pub steps: usize,
    /// Ridge `λ ≥ 0`.
    pub lambda: f64,
    /// Plain or Jacobi.
    pub preconditioner: Preconditioner,
}

impl LinearFit for ConjugateGradient {
    fn name(&self) -> String {
        match self.preconditioner {
            Preconditioner::None => format!("CG({} steps)", self.steps),
            Preconditioner::Jacobi => format!("PCG({} steps)", self.steps),
        }
    }

    fn weights(&self, x: &DMatrix<f64>, y: &DVector<f64>) -> Result<DVector<f64>> {
        check(x, y)?;
        let d = x.ncols();
        let a = hessian(x) + DMatrix::identity(d, d) * self.lambda;
        let b = x.transpose() * y / x.nrows() as f64;
        let trace = pcg(&a, &b, self.steps, self.preconditioner)?;
        Ok(trace
            .states
            .last()
            .map(|s| s.alpha.clone())
            .unwrap_or_else(|| DVector::zeros(d)))
    }
}

/// The averaging estimator `w = Xᵀy / n` (one GD step of size 1 from zero).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Averaging;

impl LinearFit for Averaging {
    fn name(&self) -> String {
        "averaging".into()
    }

    fn weights(&self, x: &DMatrix<f64>, y: &DVector<f64>) -> Result<DVector<f64>> {
        check(x, y)?;
        Ok(x.transpose() * y / x.nrows() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::linear::{LinearTaskSpec, Spectrum};
    use crate::testing::seeded;

    fn task(
        n: usize,
        d: usize,
        noise: f64,
        seed: u64,
    ) -> (DMatrix<f64>, DVector<f64>, DVector<f64>) {
        let spec = LinearTaskSpec {
            dim: d,
            n_support: n,
            n_query: 4,
            spectrum: Spectrum::PowerLaw { kappa: 20.0 },
            noise,
        };
        let t = spec.sample(&mut seeded(seed)).unwrap();
        (t.x_support, t.y_support, t.w_true)
    }

    fn loss(x: &DMatrix<f64>, y: &DVector<f64>, w: &DVector<f64>) -> f64 {
        (x * w - y).norm_squared() / (2.0 * x.nrows() as f64)
    }

    #[test]
    fn ridge_to_zero_equals_least_squares_and_recovers_noise_free_weights() {
        let (x, y, w) = task(40, 5, 0.0, 1);
        let ls = MinNormLeastSquares.weights(&x, &y).unwrap();
        assert!((&ls - &w).norm() < 1e-10 * w.norm());
        let ridge = Ridge { lambda: 1e-12 }.weights(&x, &y).unwrap();
        assert!((&ridge - &ls).norm() < 1e-8 * ls.norm());
    }

    #[test]
    fn min_norm_interpolates_in_the_row_space_when_underdetermined() {
        let (x, y, _) = task(4, 10, 0.1, 2);
        let w = MinNormLeastSquares.weights(&x, &y).unwrap();
        assert!((&x * &w - &y).norm() < 1e-10);
        let closed = x.transpose() * (&x * x.transpose()).try_inverse().unwrap() * &y;
        assert!((&w - &closed).norm() < 1e-9 * closed.norm());
    }

    #[test]
    fn gd_with_inverse_smoothness_step_decreases_the_loss_monotonically_and_converges() {
        let (x, y, _) = task(30, 6, 0.2, 3);
        let traj = GradientDescent {
            steps: 400,
            step: StepSize::InverseSmoothness,
        }
        .trajectory(&x, &y)
        .unwrap();
        for pair in traj.windows(2) {
            assert!(loss(&x, &y, &pair[1]) <= loss(&x, &y, &pair[0]) + 1e-15);
        }
        let ls = MinNormLeastSquares.weights(&x, &y).unwrap();
        let tuned = GradientDescent {
            steps: 400,
            step: StepSize::Tuned,
        }
        .weights(&x, &y)
        .unwrap();
        assert!((&tuned - &ls).norm() < 1e-6 * ls.norm());
    }

    #[test]
    fn jacobi_preconditioned_gd_converges_to_least_squares() {
        let (mut x, y, _) = task(30, 4, 0.1, 4);
        for (j, s) in [1.0, 10.0, 0.1, 3.0].iter().enumerate() {
            x.column_mut(j).scale_mut(*s);
        }
        let ls = MinNormLeastSquares.weights(&x, &y).unwrap();
        let w = PreconditionedGd { steps: 2000 }.weights(&x, &y).unwrap();
        assert!((&w - &ls).norm() < 1e-6 * ls.norm());
    }

    #[test]
    fn newton_schulz_residual_squares_every_iteration() {
        let (x, _, _) = task(30, 5, 0.0, 5);
        let a = hessian(&x) + DMatrix::identity(5, 5) * 0.1;
        let ns = NewtonSchulz {
            iterations: 30,
            lambda: 0.1,
        };
        let eye = DMatrix::<f64>::identity(5, 5);
        // I − AV_k is symmetric (V_k is a polynomial in A), so its spectral norm squares exactly.
        let errs: Vec<f64> = ns
            .inverse_iterates(&a)
            .iter()
            .map(|v| (&eye - &a * v).singular_values().max())
            .collect();
        assert!(errs[0] < 1.0, "{errs:?}");
        for k in 0..errs.len() - 1 {
            if errs[k] > 1e-7 {
                assert!(
                    errs[k + 1] <= errs[k] * errs[k] * (1.0 + 1e-9) + 1e-14,
                    "step {k}: {} → {}",
                    errs[k],
                    errs[k + 1]
                );
            }
        }
        assert!(*errs.last().unwrap() < 1e-12);
    }

    #[test]
    fn cg_is_exact_after_as_many_steps_as_distinct_eigenvalues() {
        // H = Q diag(ev) Qᵀ with three distinct eigenvalues among eight.
        let d = 8;
        let ev = [1.0, 1.0, 2.0, 2.0, 2.0, 5.0, 5.0, 1.0];
        let g = task(d, d, 0.0, 7).0;
        let rot = g.qr().q();
        let x = DMatrix::from_diagonal(&DVector::from_iterator(
            d,
            ev.iter().map(|e: &f64| (e * d as f64).sqrt()),
        )) * rot.transpose();
        let y = DVector::from_fn(d, |i, _| (i as f64 + 1.0).sin());
        let exact = MinNormLeastSquares.weights(&x, &y).unwrap();
        let three = ConjugateGradient {
            steps: 3,
            lambda: 0.0,
            preconditioner: Preconditioner::None,
        }
        .weights(&x, &y)
        .unwrap();
        let two = ConjugateGradient {
            steps: 2,
            lambda: 0.0,
            preconditioner: Preconditioner::None,
        }
        .weights(&x, &y)
        .unwrap();
        assert!(
            (&three - &exact).norm() < 1e-10 * exact.norm(),
            "CG after 3 steps"
        );
        assert!(
            (&two - &exact).norm() > 1e-4 * exact.norm(),
            "2 steps cannot be exact"
        );
    }

    #[test]
    fn averaging_is_one_unit_gd_step() {
        let (x, y, _) = task(10, 3, 0.1, 6);
        let one = GradientDescent {
            steps: 1,
            step: StepSize::Fixed(1.0),
        }
        .weights(&x, &y)
        .unwrap();
        assert!((Averaging.weights(&x, &y).unwrap() - one).norm() < 1e-14);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = DMatrix::<f64>::zeros(3, 2);
        assert!(Ridge { lambda: -1.0 }
            .weights(&x, &DVector::zeros(3))
            .unwrap_err()
            .to_string()
            .contains("λ"));
        assert!(Averaging
            .weights(&x, &DVector::zeros(4))
            .unwrap_err()
            .to_string()
            .contains("labels"));
        assert!(Ridge { lambda: 0.0 }
            .weights(&x, &DVector::zeros(3))
            .unwrap_err()
            .to_string()
            .contains("singular"));
        assert!(PreconditionedGd { steps: 1 }
            .weights(&x, &DVector::zeros(3))
            .unwrap_err()
            .to_string()
            .contains("zero"));
    }
}

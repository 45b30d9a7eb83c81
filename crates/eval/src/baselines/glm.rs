//! GLM baselines for in-context logistic and Poisson regression, all from `w = 0` on a
//! [`GlmProblem`]'s support features: gradient descent and IRLS (Newton) on the mean NLL, the
//! ridge-stabilised MLE, the true weights, and the held-out query scores.
//!
//! Loss convention: `L(w) = (1/n) Σ_i [b(φ_iᵀw) − y_i φ_iᵀw]` (the mean NLL without `c(y)`,
//! which does not depend on `w`), gradient `Φᵀ(μ(Φw) − y)/n`, Hessian `Φᵀ diag(b″(Φw)) Φ/n`.
//! IRLS and the MLE minimise `L(w) + (λ/2)‖w‖²`.

use nalgebra::{DMatrix, DVector};

use crate::tasks::glm::GlmProblem;
use crate::{Error, Result};

/// `L(w)` on the supports of `p`.
pub fn glm_loss(p: &GlmProblem, w: &DVector<f64>) -> f64 {
    let eta = &p.phi_support * w;
    let total: f64 = eta
        .iter()
        .zip(p.y_support.iter())
        .map(|(&e, &y)| p.family.nll_core(e, y))
        .sum();
    total / p.y_support.len() as f64
}

/// `∇L(w) = Φᵀ(μ(Φw) − y)/n`.
pub fn glm_gradient(p: &GlmProblem, w: &DVector<f64>) -> DVector<f64> {
    let eta = &p.phi_support * w;
    let residual = DVector::from_fn(eta.len(), |i, _| p.family.mean(eta[i]) - p.y_support[i]);
    p.phi_support.transpose() * residual / eta.len() as f64
}

/// `∇²L(w) = Φᵀ diag(b″(Φw)) Φ/n`.
pub fn glm_hessian(p: &GlmProblem, w: &DVector<f64>) -> DMatrix<f64> {
    let eta = &p.phi_support * w;
    let mut weighted = p.phi_support.clone();
    for (i, mut row) in weighted.row_iter_mut().enumerate() {
        row *= p.family.variance(eta[i]);
    }
    p.phi_support.transpose() * weighted / eta.len() as f64
}

/// Anything that fits GLM weights on a problem's supports.
pub trait GlmFit {
    /// A short name for tables and plots.
    fn name(&self) -> String;

    /// The fitted weights on the features `[p]`.
    fn weights(&self, p: &GlmProblem) -> Result<DVector<f64>>;
}

/// `steps` steps of gradient descent on `L` from `w = 0` with the constant step `step`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlmGradientDescent {
    /// Number of steps.
    pub steps: usize,
    /// Step size `η > 0`.
    pub step: f64,
}

impl GlmFit for GlmGradientDescent {
    fn name(&self) -> String {
        format!("GLM GD({} steps, η={})", self.steps, self.step)
    }

    fn weights(&self, p: &GlmProblem) -> Result<DVector<f64>> {
        let mut w = DVector::zeros(p.phi_support.ncols());
        for _ in 0..self.steps {
            w -= glm_gradient(p, &w) * self.step;
        }
        Ok(w)
    }
}

/// `steps` IRLS (Newton) steps on `L(w) + (λ/2)‖w‖²` from `w = 0`, each step halved until the
/// objective does not increase beyond its rounding (1e-13 relative; at most 60 halvings, after
/// which the step is not taken).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Irls {
    /// Number of steps.
    pub steps: usize,
    /// Ridge `λ > 0` (keeps the Newton system positive definite).
    pub ridge: f64,
}

impl Irls {
    /// The objective `L(w) + (λ/2)‖w‖²`.
    pub fn objective(&self, p: &GlmProblem, w: &DVector<f64>) -> f64 {
        glm_loss(p, w) + 0.5 * self.ridge * w.norm_squared()
    }

    /// The objective's gradient at `w`.
    pub fn gradient(&self, p: &GlmProblem, w: &DVector<f64>) -> DVector<f64> {
        glm_gradient(p, w) + w * self.ridge
    }

    /// One damped Newton step from `w`.
    pub fn step(&self, p: &GlmProblem, w: &DVector<f64>) -> Result<DVector<f64>> {
        if !(self.ridge > 0.0 && self.ridge.is_finite()) {
            return Err(Error::invalid(
                "IRLS ridge",
                format!("need 0 < λ < ∞, got {}", self.ridge),
            ));
        }
        let d = w.len();
        let h = glm_hessian(p, w) + DMatrix::identity(d, d) * self.ridge;
        let direction = h
            .cholesky()
            .ok_or_else(|| Error::invalid("IRLS system", "not positive definite"))?
            .solve(&-self.gradient(p, w));
        let before = self.objective(p, w);
        // Near the minimum a full step changes the objective by less than its rounding, so a
        // rise of a few ulps is not a rise.
        let rounding = 1e-13 * before.abs().max(1.0);
        let mut t = 1.0;
        for _ in 0..=60 {
            let next = w + &direction * t;
            if self.objective(p, &next) <= before + rounding {
                return Ok(next);
            }
            t *= 0.5;
        }
        Ok(w.clone())
    }
}

impl GlmFit for Irls {
    fn name(&self) -> String {
        format!("IRLS({} steps, λ={})", self.steps, self.ridge)
    }

    fn weights(&self, p: &GlmProblem) -> Result<DVector<f64>> {
        let mut w = DVector::zeros(p.phi_support.ncols());
        for _ in 0..self.steps {
            w = self.step(p, &w)?;
        }
        Ok(w)
    }
}

/// The minimiser of `L(w) + (λ/2)‖w‖²`: [`Irls`] steps until `‖∇‖∞ ≤ tolerance`; an error if
/// `max_steps` steps do not get there, or if no step lowers the objective before it does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlmMle {
    /// Ridge `λ > 0`.
    pub ridge: f64,
    /// Gradient tolerance (max norm).
    pub tolerance: f64,
    /// Most steps.
    pub max_steps: usize,
}

impl GlmFit for GlmMle {
    fn name(&self) -> String {
        format!("GLM MLE(λ={})", self.ridge)
    }

    fn weights(&self, p: &GlmProblem) -> Result<DVector<f64>> {
        let irls = Irls {
            steps: 1,
            ridge: self.ridge,
        };
        let mut w = DVector::zeros(p.phi_support.ncols());
        for _ in 0..=self.max_steps {
            if irls.gradient(p, &w).amax() <= self.tolerance {
                return Ok(w);
            }
            let next = irls.step(p, &w)?;
            if next == w {
                // No step lowers the objective in f64: the tolerance is below rounding.
                break;
            }
            w = next;
        }
        Err(Error::invalid(
            "GLM MLE",
            format!(
                "‖∇‖∞ = {:e} > {:e} after at most {} IRLS steps",
                irls.gradient(p, &w).amax(),
                self.tolerance,
                self.max_steps
            ),
        ))
    }
}

/// The task's true weights: the oracle that knows `w`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TrueWeights;

impl GlmFit for TrueWeights {
    fn name(&self) -> String {
        "true w (oracle)".into()
    }

    fn weights(&self, p: &GlmProblem) -> Result<DVector<f64>> {
        Ok(p.w_true.clone())
    }
}

/// Held-out score of predictions `η̂` at the problems' first queries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlmScore {
    /// Mean over problems of the expected NLL of the query's label at the guarded prediction
    /// ([`crate::tasks::glm::GlmFamily::expected_nll`] of
    /// [`crate::tasks::glm::GlmFamily::guarded`]).
    pub nll: f64,
    /// Mean expected accuracy (logistic only).
    pub accuracy: Option<f64>,
}

impl GlmScore {
    /// The score of `eta[k]` at problem `k`'s first query.
    pub fn of_first_queries(problems: &[GlmProblem], eta: &[f64]) -> Result<Self> {
        let nlls = first_query_nlls(problems, eta)?;
        let mut accuracy = Some(0.0);
        for (p, &e) in problems.iter().zip(eta) {
            accuracy = accuracy
                .zip(p.family.expected_accuracy(e, p.mean_query[0]))
                .map(|(a, b)| a + b);
        }
        let count = problems.len() as f64;
        Ok(Self {
            nll: nlls.iter().sum::<f64>() / count,
            accuracy: accuracy.map(|a| a / count),
        })
    }

    /// The score of `fit`'s predictions `φ_qᵀŵ` at the first queries.
    pub fn of_fit(fit: &dyn GlmFit, problems: &[GlmProblem]) -> Result<Self> {
        Self::of_first_queries(problems, &first_query_predictions(fit, problems)?)
    }
}

/// Each problem's expected NLL ([`crate::tasks::glm::GlmFamily::expected_nll`]) of the guarded
/// `eta[k]` ([`crate::tasks::glm::GlmFamily::guarded`]: Poisson log-rates saturate at ±8) at
/// problem `k`'s first query.
pub fn first_query_nlls(problems: &[GlmProblem], eta: &[f64]) -> Result<Vec<f64>> {
    if problems.is_empty() || problems.len() != eta.len() {
        return Err(Error::shape(
            "first-query predictions",
            format!("one per problem, ≥ 1 problem ({})", problems.len()),
            eta.len(),
        ));
    }
    problems
        .iter()
        .zip(eta)
        .map(|(p, &e)| {
            let mu = *p
                .mean_query
                .get(0)
                .ok_or_else(|| Error::invalid("GLM problem", "no query"))?;
            Ok(p.family.expected_nll(p.family.guarded(e), mu))
        })
        .collect()
}

/// `fit`'s predictions `φ_qᵀŵ` at each problem's first query.
pub fn first_query_predictions(fit: &dyn GlmFit, problems: &[GlmProblem]) -> Result<Vec<f64>> {
    problems
        .iter()
        .map(|p| {
            if p.phi_query.nrows() == 0 {
                return Err(Error::invalid("GLM problem", "no query"));
            }
            Ok(p.phi_query.row(0).dot(&fit.weights(p)?.transpose()))
        })
        .collect()
}

/// The constant GD step for `steps` steps with the lowest mean held-out NLL on `problems`, from
/// the log grid `10^(−2 + 3k/80)`, `k = 0..=80`; with that NLL. Steps that give a non-finite
/// NLL are skipped.
pub fn tuned_glm_gd(steps: usize, problems: &[GlmProblem]) -> Result<(GlmGradientDescent, f64)> {
    let mut best: Option<(GlmGradientDescent, f64)> = None;
    for k in 0..=80 {
        let gd = GlmGradientDescent {
            steps,
            step: 10f64.powf(-2.0 + 3.0 * k as f64 / 80.0),
        };
        let nll = GlmScore::of_fit(&gd, problems)?.nll;
        if nll.is_finite() && best.as_ref().is_none_or(|(_, b)| nll < *b) {
            best = Some((gd, nll));
        }
    }
    best.ok_or_else(|| Error::invalid("GLM GD grid", "every step size diverged"))
}

/// `w`'s non-intercept part `w_x` against the directions one GD step from `w = 0` can take,
/// `span{Φ_xᵀy, Φ_xᵀ1}` (`Φ_x`: the support features without the last, intercept, column): every
/// `(γ/n) Φ_xᵀ(y − c1)` — one GD step of any size `γ` with the labels centred at any `c` — lies in
/// it; a Newton step, which preconditions with `(ΦᵀWΦ)⁻¹`, generally does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GdSpanFit {
    /// Cosine between `w_x` and its projection onto the span (1: a GD step).
    pub cosine: f64,
    /// The projection as `(γ/n) Φ_xᵀ(y − c1)`: the step `γ`.
    pub step: f64,
    /// The projection's label centre `c` (`μ(0)` for GD on the GLM loss: ½ logistic, 1 Poisson).
    pub centre: f64,
}

impl GdSpanFit {
    /// The fit of weights `w` `[p]` on problem `p`'s supports.
    pub fn of(p: &GlmProblem, w: &DVector<f64>) -> Result<Self> {
        let cols = p.phi_support.ncols();
        if cols < 2 || w.len() != cols {
            return Err(Error::shape(
                "weights for the GD-span fit",
                format!("{cols} weights on ≥ 2 features (intercept last)"),
                w.len(),
            ));
        }
        let n = p.phi_support.nrows();
        let phi_x = p.phi_support.columns(0, cols - 1);
        let basis = DMatrix::from_columns(&[
            phi_x.transpose() * &p.y_support,
            phi_x.transpose() * DVector::from_element(n, 1.0),
        ]);
        let w_x = w.rows(0, cols - 1).into_owned();
        let norm = w_x.norm();
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(Error::invalid(
                "weights for the GD-span fit",
                format!("‖w_x‖ = {norm}"),
            ));
        }
        let coef = basis
            .clone()
            .svd(true, true)
            .solve(&w_x, 1e-12)
            .map_err(|e| Error::invalid("GD-span projection", e))?;
        Ok(Self {
            cosine: (basis * &coef).norm() / norm,
            step: n as f64 * coef[0],
            centre: -coef[1] / coef[0],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::glm::{FeatureMap, GlmFamily, GlmTaskSpec};
    use crate::testing::seeded;

    fn problem(family: GlmFamily, n: usize, seed: u64) -> GlmProblem {
        GlmTaskSpec {
            family,
            features: FeatureMap::Linear,
            dim: 3,
            n_support: n,
            n_query: 1,
        }
        .problem(&mut seeded(seed))
        .unwrap()
    }

    #[test]
    fn gradient_and_hessian_match_finite_differences() {
        for family in [GlmFamily::Logistic, GlmFamily::Poisson] {
            let p = problem(family, 30, 1);
            let w = DVector::from_vec(vec![0.3, -0.2, 0.5, 0.1]);
            let (g, h) = (glm_gradient(&p, &w), glm_hessian(&p, &w));
            let eps = 1e-5;
            for j in 0..4 {
                let mut e = DVector::zeros(4);
                e[j] = eps;
                let fd = (glm_loss(&p, &(&w + &e)) - glm_loss(&p, &(&w - &e))) / (2.0 * eps);
                assert!(
                    (fd - g[j]).abs() < 1e-8,
                    "{family:?} ∂L/∂w{j}: {fd} vs {}",
                    g[j]
                );
                let fd_col =
                    (glm_gradient(&p, &(&w + &e)) - glm_gradient(&p, &(&w - &e))) / (2.0 * eps);
                assert!(
                    (fd_col - h.column(j)).amax() < 1e-7,
                    "{family:?} Hessian column {j}"
                );
            }
        }
    }

    #[test]
    fn irls_converges_to_the_mle_and_gd_creeps_towards_it() {
        for family in [GlmFamily::Logistic, GlmFamily::Poisson] {
            // n = 400 ≫ p = 4: the MLE exists and is near the truth.
            let p = problem(family, 400, 2);
            let mle = GlmMle {
                ridge: 1e-6,
                tolerance: 1e-10,
                max_steps: 50,
            }
            .weights(&p)
            .unwrap();
            let irls = Irls {
                steps: 12,
                ridge: 1e-6,
            };
            assert!(irls.gradient(&p, &mle).amax() <= 1e-10);
            assert!(
                (irls.weights(&p).unwrap() - &mle).amax() < 1e-8,
                "{family:?}"
            );
            assert!(
                (&mle - &p.w_true).norm() < 0.5 * p.w_true.norm().max(0.5),
                "{family:?}"
            );
            // Damping: the objective never rises along the iterates (beyond rounding).
            let mut w = DVector::zeros(4);
            for _ in 0..6 {
                let next = irls.step(&p, &w).unwrap();
                let before = irls.objective(&p, &w);
                assert!(irls.objective(&p, &next) <= before + 1e-13 * before.abs().max(1.0));
                w = next;
            }
            let gd = |steps| GlmGradientDescent { steps, step: 0.5 }.weights(&p).unwrap();
            assert!((gd(2000) - &mle).norm() < (gd(20) - &mle).norm());
            assert!((gd(2000) - &mle).norm() < 1e-3, "{family:?}");
        }
    }

    #[test]
    fn the_mle_converges_to_1e_9_on_every_small_problem() {
        // fig17's size: d = 5, n = 40; Poisson counts reach the hundreds on some tasks, where a
        // line search that rejects rounding-level rises stalled above 1e-8.
        for family in [GlmFamily::Logistic, GlmFamily::Poisson] {
            let spec = GlmTaskSpec {
                family,
                features: FeatureMap::Linear,
                dim: 5,
                n_support: 40,
                n_query: 1,
            };
            let mut rng = seeded(6);
            let mle = GlmMle {
                ridge: 1e-3,
                tolerance: 1e-9,
                max_steps: 100,
            };
            for k in 0..3000 {
                let p = spec.problem(&mut rng).unwrap();
                if let Err(e) = mle.weights(&p) {
                    panic!("{family:?} problem {k}: {e}");
                }
            }
        }
    }

    #[test]
    fn one_newton_step_from_zero_is_one_preconditioned_gd_step() {
        // At w = 0 every IRLS weight is b″(0), so Newton's step is (b″(0)ΦᵀΦ/n + λI)⁻¹ times the
        // negative gradient Φᵀ(y − μ(0))/n: GD's first step, preconditioned.
        for family in [GlmFamily::Logistic, GlmFamily::Poisson] {
            let p = problem(family, 25, 3);
            let n = 25.0;
            let ridge = 1e-3;
            let newton = Irls { steps: 1, ridge }.weights(&p).unwrap();
            let gd = GlmGradientDescent {
                steps: 1,
                step: 1.0,
            }
            .weights(&p)
            .unwrap();
            let pre = (p.phi_support.transpose() * &p.phi_support * (family.variance(0.0) / n)
                + DMatrix::identity(4, 4) * ridge)
                .try_inverse()
                .unwrap();
            // The undamped step; the damped one equals it wherever the full step decreases L.
            let full = &pre * &gd;
            let ratio = newton.dot(&full) / full.norm_squared();
            assert!(
                (&newton - &full * ratio).norm() < 1e-12 * full.norm(),
                "{family:?}"
            );
            assert!(
                ratio > 0.0 && ratio <= 1.0 + 1e-12,
                "{family:?}: step × {ratio}"
            );
        }
        // The linear-Gaussian limit: with ΦᵀΦ/n → I (n ≫ p) the preconditioner tends to
        // 1/b″(0), so Newton's first direction is plain GD's. Logistic takes the full step
        // (GD with step 1/b″(0) = 4); Poisson's full step overshoots (e^η is far from its
        // quadratic model at 0) and is halved, which keeps the direction.
        for family in [GlmFamily::Logistic, GlmFamily::Poisson] {
            let p = problem(family, 20_000, 5);
            let newton = Irls {
                steps: 1,
                ridge: 1e-3,
            }
            .weights(&p)
            .unwrap();
            let gd = GlmGradientDescent {
                steps: 1,
                step: 1.0 / family.variance(0.0),
            }
            .weights(&p)
            .unwrap();
            let cos = newton.dot(&gd) / (newton.norm() * gd.norm());
            assert!(cos > 0.999, "{family:?}: cosine {cos}");
            if family == GlmFamily::Logistic {
                assert!(
                    (&newton - &gd).norm() < 0.02 * gd.norm(),
                    "{newton} vs {gd}"
                );
            }
        }
    }

    #[test]
    fn gd_span_fit_recovers_any_gd_step_and_rejects_newton() {
        let p = problem(GlmFamily::Logistic, 20, 4);
        let gd = GlmGradientDescent {
            steps: 1,
            step: 2.7,
        }
        .weights(&p)
        .unwrap();
        let fit = GdSpanFit::of(&p, &gd).unwrap();
        assert!((fit.cosine - 1.0).abs() < 1e-12);
        assert!(
            (fit.step - 2.7).abs() < 1e-9 && (fit.centre - 0.5).abs() < 1e-9,
            "{fit:?}"
        );
        let newton = Irls {
            steps: 1,
            ridge: 1e-3,
        }
        .weights(&p)
        .unwrap();
        let c = GdSpanFit::of(&p, &newton).unwrap().cosine;
        assert!(c < 0.999, "Newton's step stays in the GD span: {c}");
        assert!(GdSpanFit::of(&p, &DVector::zeros(4)).is_err());
    }

    #[test]
    fn scores_average_the_expected_nll_and_tuning_beats_a_bad_step() {
        let problems: Vec<GlmProblem> = (0..200)
            .map(|s| problem(GlmFamily::Logistic, 20, 100 + s))
            .collect();
        let zero = GlmScore::of_first_queries(&problems, &vec![0.0; 200]).unwrap();
        assert!((zero.nll - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(zero.accuracy, Some(0.5));
        let oracle = GlmScore::of_fit(&TrueWeights, &problems).unwrap();
        assert!(oracle.nll < zero.nll && oracle.accuracy.unwrap() > 0.5);
        let (gd, nll) = tuned_glm_gd(1, &problems).unwrap();
        let bad = GlmGradientDescent {
            steps: 1,
            step: 10.0,
        };
        assert!(nll <= GlmScore::of_fit(&bad, &problems).unwrap().nll);
        assert!(nll < zero.nll && gd.step < 10.0);
        assert!(GlmScore::of_first_queries(&problems, &[0.0]).is_err());
        // A Poisson log-rate that would overflow e^η is scored at the guard's bound instead.
        let counts = [problem(GlmFamily::Poisson, 20, 7)];
        let wild = GlmScore::of_first_queries(&counts, &[1e6]).unwrap().nll;
        let mu = counts[0].mean_query[0];
        let at_bound = GlmFamily::Poisson.expected_nll(crate::tasks::glm::POISSON_GUARD_MAX, mu);
        assert!(
            (wild - at_bound).abs() < 1e-9 * at_bound,
            "{wild} vs {at_bound}"
        );
    }
}

//! Generalised linear model tasks with a known feature map: logistic and Poisson regression.
//!
//! `x ~ N(0, I_d)`, features `φ(x) = [x, 1]` (linear + intercept) or `[x, x², 1]` (quadratic),
//! `w ~ N(0, I/p)`, `η = wᵀφ(x)`; labels `y ~ Bernoulli(σ(η))` or `y ~ Poisson(exp(η))`.
//!
//! Each family is an exponential family in `η` with cumulant `b`: `log p(y | η) = yη − b(η) −
//! c(y)`, mean `b′(η)`, variance `b″(η)` ([`GlmFamily::cumulant`], [`GlmFamily::mean`],
//! [`GlmFamily::variance`]); `c(y) = log y!` for Poisson and 0 for logistic.
//!
//! Predictions are scored (and trained) through [`GlmFamily::guarded`]: the identity for
//! logistic; for Poisson the identity on `[−6, 6]`, saturating smoothly at `±8` beyond, so a
//! single wild log-rate costs at most `e^8` instead of dominating a mean over tasks.

use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Bernoulli, Distribution, Poisson, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The GLM family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlmFamily {
    /// Binary labels with `P(y = 1) = σ(η)`.
    Logistic,
    /// Counts with mean `exp(η)`.
    Poisson,
}

/// Where [`GlmFamily::guarded`] stops being the identity for Poisson: `|η| ≤ 6`. Under the
/// tasks' prior (`η | x ~ N(0, (‖x‖² + 1)/p)` for linear features at `d = 5`), `P(|η| > 6)` is
/// 1.2e-5, so the guard leaves the true log-rate of almost every task alone.
pub const POISSON_GUARD_LINEAR: f64 = 6.0;
/// The bound [`GlmFamily::guarded`] saturates at for Poisson: `|η̃| < 8`.
pub const POISSON_GUARD_MAX: f64 = 8.0;

/// The known feature map `φ` (the intercept is always the last feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureMap {
    /// `[x, 1]`.
    Linear,
    /// `[x, x², 1]` (element-wise square).
    Quadratic,
}

impl GlmFamily {
    /// The cumulant `b(η)`: `log(1 + e^η)` (logistic, computed without overflow) or `e^η`.
    pub fn cumulant(self, eta: f64) -> f64 {
        match self {
            GlmFamily::Logistic => eta.max(0.0) + (-eta.abs()).exp().ln_1p(),
            GlmFamily::Poisson => eta.exp(),
        }
    }

    /// The guarded natural parameter a prediction `η` is scored and trained at: `η` itself for
    /// logistic (its NLL grows only linearly in `η`); for Poisson `η` on
    /// `[−a, a]` and `±(a + (m − a)·tanh((|η| − a)/(m − a)))` beyond (`a =`
    /// [`POISSON_GUARD_LINEAR`], `m =` [`POISSON_GUARD_MAX`]): continuous with its derivative,
    /// increasing, and bounded by `m`, so `e^η̃ < e^8` where a raw prediction's `e^η` can
    /// overflow.
    pub fn guarded(self, eta: f64) -> f64 {
        match self {
            GlmFamily::Logistic => eta,
            GlmFamily::Poisson => {
                let (a, m) = (POISSON_GUARD_LINEAR, POISSON_GUARD_MAX);
                let inner = eta.clamp(-a, a);
                inner + (m - a) * ((eta - inner) / (m - a)).tanh()
            }
        }
    }

    /// The mean `μ(η) = b′(η)`: `σ(η)` or `e^η`.
    pub fn mean(self, eta: f64) -> f64 {
        match self {
            GlmFamily::Logistic => 1.0 / (1.0 + (-eta).exp()),
            GlmFamily::Poisson => eta.exp(),
        }
    }

    /// The variance `b″(η)`: `σ(η)(1 − σ(η))` or `e^η` (the IRLS weight).
    pub fn variance(self, eta: f64) -> f64 {
        match self {
            GlmFamily::Logistic => {
                let m = self.mean(eta);
                m * (1.0 - m)
            }
            GlmFamily::Poisson => eta.exp(),
        }
    }

    /// `b(η) − yη`: the NLL of label `y` at natural parameter `η` without `c(y)`, which does not
    /// depend on `η` (what a fit minimises).
    pub fn nll_core(self, eta: f64, y: f64) -> f64 {
        self.cumulant(eta) - y * eta
    }

    /// The NLL at `η` averaged over a label drawn with mean `mu`, `c(y)` included:
    /// `b(η) − μη + E[c(y)]` (exact: the NLL is linear in `y` apart from `c(y)`).
    pub fn expected_nll(self, eta: f64, mu: f64) -> f64 {
        self.nll_core(eta, mu) + self.expected_log_normaliser(mu)
    }

    /// `E[c(y)]` for a label with mean `mu`: 0 (logistic) or `E[log y!]`, `y ~ Poisson(mu)`
    /// (summed over the mass to a tail below 1e-16).
    pub fn expected_log_normaliser(self, mu: f64) -> f64 {
        match self {
            GlmFamily::Logistic => 0.0,
            GlmFamily::Poisson => {
                if mu <= 0.0 {
                    return 0.0;
                }
                let last = (mu + 40.0 * mu.sqrt() + 40.0).ceil() as usize;
                let (ln_mu, mut ln_fact, mut sum) = (mu.ln(), 0.0f64, 0.0);
                for k in 1..=last {
                    ln_fact += (k as f64).ln();
                    sum += (k as f64 * ln_mu - mu - ln_fact).exp() * ln_fact;
                }
                sum
            }
        }
    }

    /// The probability that the label's more likely class under `η` is the label, for a label
    /// with mean `mu` (logistic: `μ` where `η > 0`, `1 − μ` where `η < 0`, ½ at 0); `None` for
    /// Poisson.
    pub fn expected_accuracy(self, eta: f64, mu: f64) -> Option<f64> {
        match self {
            GlmFamily::Logistic => Some(if eta > 0.0 {
                mu
            } else if eta < 0.0 {
                1.0 - mu
            } else {
                0.5
            }),
            GlmFamily::Poisson => None,
        }
    }
}

impl FeatureMap {
    /// The number of features `p` for inputs of dimension `d` (`d + 1` or `2d + 1`).
    pub fn output_dim(&self, d: usize) -> usize {
        match self {
            FeatureMap::Linear => d + 1,
            FeatureMap::Quadratic => 2 * d + 1,
        }
    }

    /// `φ` applied to the rows of `x` `[n, d]`.
    pub fn apply(&self, x: &DMatrix<f64>) -> DMatrix<f64> {
        let d = x.ncols();
        match self {
            FeatureMap::Linear => {
                DMatrix::from_fn(x.nrows(), d + 1, |i, j| if j < d { x[(i, j)] } else { 1.0 })
            }
            FeatureMap::Quadratic => DMatrix::from_fn(x.nrows(), 2 * d + 1, |i, j| {
                if j < d {
                    x[(i, j)]
                } else if j < 2 * d {
                    x[(i, j - d)].powi(2)
                } else {
                    1.0
                }
            }),
        }
    }
}

/// Settings of a GLM task family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlmTaskSpec {
    /// Family.
    pub family: GlmFamily,
    /// Feature map.
    pub features: FeatureMap,
    /// Input dimension `d`.
    pub dim: usize,
    /// Supports `n`.
    pub n_support: usize,
    /// Queries `m`.
    pub n_query: usize,
}

/// One GLM task; `mean_query` is the true conditional mean at the queries.
#[derive(Debug, Clone)]
pub struct GlmTask {
    /// Support inputs `[n, d]`.
    pub x_support: DMatrix<f64>,
    /// Support labels `[n]` (0/1 or counts).
    pub y_support: DVector<f64>,
    /// Query inputs `[m, d]`.
    pub x_query: DMatrix<f64>,
    /// `E[y | x]` at the queries `[m]`.
    pub mean_query: DVector<f64>,
    /// True weights on `φ(x)`.
    pub w_true: DVector<f64>,
}

/// A GLM task seen through its feature map, with its family: what in-context models and GLM
/// baselines read.
#[derive(Debug, Clone)]
pub struct GlmProblem {
    /// Family of the labels.
    pub family: GlmFamily,
    /// Support features `φ(x)` `[n, p]` (intercept last).
    pub phi_support: DMatrix<f64>,
    /// Support labels `[n]`.
    pub y_support: DVector<f64>,
    /// Query features `[m, p]`.
    pub phi_query: DMatrix<f64>,
    /// `E[y | x]` at the queries `[m]`.
    pub mean_query: DVector<f64>,
    /// True weights on `φ(x)` `[p]`.
    pub w_true: DVector<f64>,
}

impl GlmTaskSpec {
    /// The mean function `E[y | η]`.
    pub fn mean(&self, eta: f64) -> f64 {
        self.family.mean(eta)
    }

    /// Draws one task and applies the feature map.
    pub fn problem(&self, rng: &mut impl Rng) -> Result<GlmProblem> {
        let t = self.sample(rng)?;
        Ok(GlmProblem {
            family: self.family,
            phi_support: self.features.apply(&t.x_support),
            y_support: t.y_support,
            phi_query: self.features.apply(&t.x_query),
            mean_query: t.mean_query,
            w_true: t.w_true,
        })
    }

    /// Draws one task.
    pub fn sample(&self, rng: &mut impl Rng) -> Result<GlmTask> {
        if self.dim == 0 || self.n_support == 0 {
            return Err(Error::invalid(
                "GLM task",
                format!(
                    "need d ≥ 1 and n ≥ 1, got d = {}, n = {}",
                    self.dim, self.n_support
                ),
            ));
        }
        let mut normal = |rows: usize, cols: usize| {
            DMatrix::from_fn(rows, cols, |_, _| {
                Distribution::<f64>::sample(&StandardNormal, rng)
            })
        };
        let x_support = normal(self.n_support, self.dim);
        let x_query = normal(self.n_query, self.dim);
        let p = self.features.apply(&x_support).ncols();
        let w_true = normal(p, 1).column(0) / (p as f64).sqrt();
        let eta_s = self.features.apply(&x_support) * &w_true;
        let eta_q = self.features.apply(&x_query) * &w_true;
        let mut y = DVector::zeros(self.n_support);
        for i in 0..self.n_support {
            let mu = self.mean(eta_s[i]);
            y[i] = match self.family {
                GlmFamily::Logistic => {
                    let b = Bernoulli::new(mu)
                        .map_err(|e| Error::invalid("Bernoulli mean", format!("{mu}: {e}")))?;
                    if b.sample(rng) {
                        1.0
                    } else {
                        0.0
                    }
                }
                GlmFamily::Poisson => {
                    let p = Poisson::new(mu)
                        .map_err(|e| Error::invalid("Poisson mean", format!("{mu}: {e}")))?;
                    p.sample(rng)
                }
            };
        }
        Ok(GlmTask {
            x_support,
            y_support: y,
            x_query,
            mean_query: eta_q.map(|e| self.mean(e)),
            w_true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::seeded;

    #[test]
    fn labels_follow_the_declared_mean() {
        for family in [GlmFamily::Logistic, GlmFamily::Poisson] {
            let spec = GlmTaskSpec {
                family,
                features: FeatureMap::Linear,
                dim: 2,
                n_support: 60_000,
                n_query: 1,
            };
            let t = spec.sample(&mut seeded(11)).unwrap();
            let eta = FeatureMap::Linear.apply(&t.x_support) * &t.w_true;
            let mean: f64 = eta.iter().map(|&e| spec.mean(e)).sum::<f64>() / 60_000.0;
            let empirical = t.y_support.mean();
            assert!(
                (empirical - mean).abs() < 0.02 * mean.max(0.1),
                "{family:?}: {empirical} vs {mean}"
            );
            if family == GlmFamily::Logistic {
                assert!(t.y_support.iter().all(|&y| y == 0.0 || y == 1.0));
            } else {
                assert!(t.y_support.iter().all(|&y| y >= 0.0 && y.fract() == 0.0));
            }
        }
    }

    #[test]
    fn cumulant_derivatives_are_the_mean_and_the_variance() {
        for family in [GlmFamily::Logistic, GlmFamily::Poisson] {
            for eta in [-3.0, -0.4, 0.0, 0.7, 2.5] {
                let h = 1e-5;
                let db = (family.cumulant(eta + h) - family.cumulant(eta - h)) / (2.0 * h);
                let dm = (family.mean(eta + h) - family.mean(eta - h)) / (2.0 * h);
                assert!((db - family.mean(eta)).abs() < 1e-8, "{family:?} b′({eta})");
                assert!(
                    (dm - family.variance(eta)).abs() < 1e-8,
                    "{family:?} μ′({eta})"
                );
            }
        }
        // No overflow far out: softplus(±800) = 800 and 0.
        assert_eq!(GlmFamily::Logistic.cumulant(800.0), 800.0);
        assert_eq!(GlmFamily::Logistic.cumulant(-800.0), 0.0);
    }

    #[test]
    fn the_guard_is_the_identity_inside_and_bounded_smooth_and_increasing_outside() {
        for eta in [-6.0, -2.5, 0.0, 3.1, 6.0, 40.0, -1e300, f64::INFINITY] {
            assert_eq!(GlmFamily::Logistic.guarded(eta), eta);
        }
        let g = |eta| GlmFamily::Poisson.guarded(eta);
        for eta in [-6.0, -2.5, 0.0, 3.1, 6.0] {
            assert_eq!(g(eta), eta);
        }
        let mut last = f64::NEG_INFINITY;
        for k in -2000..=2000 {
            let eta = k as f64 * 0.01;
            let v = g(eta);
            assert!(v > last && v.abs() < POISSON_GUARD_MAX, "g({eta}) = {v}");
            last = v;
        }
        assert_eq!(g(f64::INFINITY), POISSON_GUARD_MAX);
        assert_eq!(g(-1e300), -POISSON_GUARD_MAX);
        // Its slope is 1 on both sides of the knee and falls off beyond.
        let h = 1e-7;
        for eta in [POISSON_GUARD_LINEAR - 1e-3, POISSON_GUARD_LINEAR + 1e-3] {
            let slope = (g(eta + h) - g(eta - h)) / (2.0 * h);
            assert!((slope - 1.0).abs() < 1e-5, "g′({eta}) = {slope}");
        }
        let slope = (g(7.0 + h) - g(7.0 - h)) / (2.0 * h);
        assert!(
            (slope - 1.0 / 0.5f64.cosh().powi(2)).abs() < 1e-6,
            "{slope}"
        );
    }

    #[test]
    fn expected_nll_is_the_average_of_the_exact_log_likelihood() {
        // Logistic: the cross-entropy in closed form.
        let (eta, mu): (f64, f64) = (0.8, 0.3);
        let s = 1.0 / (1.0 + (-eta).exp());
        let ce = -mu * s.ln() - (1.0 - mu) * (1.0 - s).ln();
        assert!((GlmFamily::Logistic.expected_nll(eta, mu) - ce).abs() < 1e-12);
        // Poisson: against −log p(y) = μ̂ − y log μ̂ + log y! averaged over samples.
        let mut rng = seeded(3);
        for (eta, mu) in [(0.5f64, 1.7f64), (2.0, 9.0), (-1.0, 0.2)] {
            let poisson = Poisson::new(mu).unwrap();
            let draws = 200_000;
            let mut total = 0.0;
            for _ in 0..draws {
                let y: f64 = poisson.sample(&mut rng);
                let log_fact: f64 = (1..=y as u64).map(|k| (k as f64).ln()).sum();
                total += eta.exp() - y * eta + log_fact;
            }
            let mc = total / draws as f64;
            let exact = GlmFamily::Poisson.expected_nll(eta, mu);
            assert!(
                (mc - exact).abs() < 0.01 * exact.abs().max(1.0),
                "{mc} vs {exact}"
            );
        }
        assert_eq!(GlmFamily::Poisson.expected_accuracy(0.1, 0.5), None);
        assert_eq!(GlmFamily::Logistic.expected_accuracy(-0.1, 0.2), Some(0.8));
    }

    #[test]
    fn quadratic_features_have_the_documented_layout_and_bad_specs_error() {
        let x = DMatrix::from_row_slice(1, 2, &[2.0, -3.0]);
        assert_eq!(
            FeatureMap::Quadratic.apply(&x).as_slice(),
            &[2.0, -3.0, 4.0, 9.0, 1.0]
        );
        assert_eq!(FeatureMap::Quadratic.output_dim(2), 5);
        assert_eq!(
            FeatureMap::Linear.output_dim(2),
            FeatureMap::Linear.apply(&x).ncols()
        );
        let spec = GlmTaskSpec {
            family: GlmFamily::Logistic,
            features: FeatureMap::Linear,
            dim: 0,
            n_support: 3,
            n_query: 1,
        };
        assert!(spec
            .sample(&mut seeded(0))
            .unwrap_err()
            .to_string()
            .contains("d = 0"));
    }
}

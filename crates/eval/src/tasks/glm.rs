//! Generalised linear model tasks with a known feature map: logistic and Poisson regression.
//!
//! `x ~ N(0, I_d)`, features `φ(x) = [x, 1]` (linear + intercept) or `[x, x², 1]` (quadratic),
//! `w ~ N(0, I/p)`, `η = wᵀφ(x)`; labels `y ~ Bernoulli(σ(η))` or `y ~ Poisson(exp(η))`.

use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Bernoulli, Distribution, Poisson, StandardNormal};

use crate::{Error, Result};

/// The GLM family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlmFamily {
    /// Binary labels with `P(y = 1) = σ(η)`.
    Logistic,
    /// Counts with mean `exp(η)`.
    Poisson,
}

/// The known feature map `φ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureMap {
    /// `[x, 1]`.
    Linear,
    /// `[x, x², 1]` (element-wise square).
    Quadratic,
}

impl FeatureMap {
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

impl GlmTaskSpec {
    /// The mean function `E[y | η]`.
    pub fn mean(&self, eta: f64) -> f64 {
        match self.family {
            GlmFamily::Logistic => 1.0 / (1.0 + (-eta).exp()),
            GlmFamily::Poisson => eta.exp(),
        }
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
    fn quadratic_features_have_the_documented_layout_and_bad_specs_error() {
        let x = DMatrix::from_row_slice(1, 2, &[2.0, -3.0]);
        assert_eq!(
            FeatureMap::Quadratic.apply(&x).as_slice(),
            &[2.0, -3.0, 4.0, 9.0, 1.0]
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

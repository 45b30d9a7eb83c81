//! GD++ (von Oswald et al. 2023): gradient descent whose layers also transform every input by
//! `H = I − γ Σ̂`, `Σ̂ = XᵀX / n` (the curvature correction a linear self-attention layer can
//! apply to the x-part of its tokens).
//!
//! Token dynamics per layer, from the layer's input (supports `(x_i, r_i)`, query `(x_q, y_q)`,
//! `r = y` and `y_q = 0` initially):
//!
//! ```text
//! r_j ← r_j − (η/n) Σ_i r_i x_iᵀ x_j        y_q ← y_q − (η/n) Σ_i r_i x_iᵀ x_q
//! x_j ← (I − γ Σ̂) x_j                         x_q ← (I − γ Σ̂) x_q
//! ```
//!
//! The prediction is `−y_q`. With `γ = 0` this is exactly GD from `w₀ = 0` with step `η`.

use nalgebra::{DMatrix, DVector};

use super::{check_shapes, Predictor};
use crate::{Error, Result};

/// GD++ with `steps` layers, step `η` and curvature correction `γ`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GdPlusPlus {
    /// Number of layers.
    pub steps: usize,
    /// GD step size `η > 0`.
    pub eta: f64,
    /// Curvature correction `γ ≥ 0`.
    pub gamma: f64,
}

impl GdPlusPlus {
    /// The input covariance `Σ̂` after each layer (for inspecting the preconditioning effect).
    pub fn covariances(&self, x: &DMatrix<f64>) -> Vec<DMatrix<f64>> {
        let n = x.nrows() as f64;
        let mut xs = x.clone();
        let mut out = vec![xs.transpose() * &xs / n];
        for _ in 0..self.steps {
            let sigma = xs.transpose() * &xs / n;
            let h = DMatrix::identity(x.ncols(), x.ncols()) - sigma * self.gamma;
            xs = &xs * h;
            out.push(xs.transpose() * &xs / n);
        }
        out
    }
}

impl Predictor for GdPlusPlus {
    fn name(&self) -> String {
        format!(
            "GD++({} steps, η={}, γ={})",
            self.steps, self.eta, self.gamma
        )
    }

    fn predict(
        &self,
        x: &DMatrix<f64>,
        y: &DVector<f64>,
        x_query: &DMatrix<f64>,
    ) -> Result<DVector<f64>> {
        check_shapes(x, y, x_query)?;
        if !(self.eta > 0.0 && self.eta.is_finite() && self.gamma >= 0.0 && self.gamma.is_finite())
        {
            return Err(Error::invalid(
                "GD++",
                format!(
                    "need η > 0 and γ ≥ 0, got η = {}, γ = {}",
                    self.eta, self.gamma
                ),
            ));
        }
        let (n, d) = (x.nrows() as f64, x.ncols());
        let (mut xs, mut xq, mut r) = (x.clone(), x_query.clone(), y.clone());
        let mut yq = DVector::zeros(x_query.nrows());
        for _ in 0..self.steps {
            // Σ_i r_i x_i, from the layer's input.
            let g = xs.transpose() * &r * (self.eta / n);
            let h = DMatrix::identity(d, d) - xs.transpose() * &xs * (self.gamma / n);
            r -= &xs * &g;
            yq -= &xq * &g;
            xs = &xs * &h;
            xq = &xq * &h;
        }
        Ok(-yq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baselines::{GradientDescent, StepSize};
    use crate::tasks::linear::{LinearTaskSpec, Spectrum};
    use crate::testing::seeded;

    fn task() -> crate::tasks::linear::RegressionTask {
        let spec = LinearTaskSpec {
            dim: 6,
            n_support: 40,
            n_query: 5,
            spectrum: Spectrum::PowerLaw { kappa: 50.0 },
            noise: 0.0,
        };
        spec.sample(&mut seeded(8)).unwrap()
    }

    #[test]
    fn gamma_zero_is_plain_gd() {
        let t = task();
        for steps in [1, 3, 10] {
            let gdpp = GdPlusPlus {
                steps,
                eta: 0.7,
                gamma: 0.0,
            }
            .predict(&t.x_support, &t.y_support, &t.x_query)
            .unwrap();
            let gd = GradientDescent {
                steps,
                step: StepSize::Fixed(0.7),
            }
            .predict(&t.x_support, &t.y_support, &t.x_query)
            .unwrap();
            assert!((gdpp - gd).norm() < 1e-12, "steps {steps}");
        }
    }

    #[test]
    fn curvature_correction_shrinks_the_condition_number() {
        let t = task();
        let l = t.x_support.transpose() * &t.x_support / 40.0;
        let lmax = l.clone().symmetric_eigen().eigenvalues.max();
        let covs = GdPlusPlus {
            steps: 4,
            eta: 0.5,
            gamma: 1.0 / (3.0 * lmax),
        }
        .covariances(&t.x_support);
        let kappa = |m: &DMatrix<f64>| {
            let ev = m.clone().symmetric_eigen().eigenvalues;
            ev.max() / ev.min()
        };
        for pair in covs.windows(2) {
            assert!(
                kappa(&pair[1]) < kappa(&pair[0]),
                "{} → {}",
                kappa(&pair[0]),
                kappa(&pair[1])
            );
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        let t = task();
        let e = GdPlusPlus {
            steps: 1,
            eta: 0.0,
            gamma: 0.1,
        }
        .predict(&t.x_support, &t.y_support, &t.x_query)
        .unwrap_err();
        assert!(e.to_string().contains("η"));
    }
}

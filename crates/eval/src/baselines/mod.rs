//! Baseline predictors for in-context regression behind one [`Predictor`] trait: ridge oracle,
//! minimum-norm least squares, GD (fixed, 1/L, tuned step), Jacobi-preconditioned GD, GD++,
//! CG/PCG, Newton–Schulz, averaging, k-nearest neighbours, mean label; and, in [`glm`], GLM fits
//! (GD and IRLS on the NLL, the MLE, the true weights) for in-context logistic and Poisson
//! regression.
//!
//! Loss convention for the linear baselines: `L(w) = ‖Xw − y‖² / (2n)`, Hessian `H = XᵀX / n`,
//! smoothness `L = λ_max(H)`, strong convexity `μ = λ_min(H)`.

pub mod cg;
mod gdpp;
pub mod glm;
mod linear;
mod local;

pub use gdpp::GdPlusPlus;
pub use linear::{
    Averaging, ConjugateGradient, GradientDescent, MinNormLeastSquares, NewtonSchulz,
    PreconditionedGd, Ridge, StepSize,
};
pub use local::{KNearestNeighbours, MeanLabel};

use nalgebra::{DMatrix, DVector};

use crate::{Error, Result};

/// Anything that predicts query labels from labelled supports.
pub trait Predictor {
    /// A short name for tables and plots.
    fn name(&self) -> String;

    /// Predictions `[m]` at `x_query` `[m, d]` from supports `x` `[n, d]`, `y` `[n]`.
    fn predict(
        &self,
        x: &DMatrix<f64>,
        y: &DVector<f64>,
        x_query: &DMatrix<f64>,
    ) -> Result<DVector<f64>>;
}

/// A predictor that fits weights `w` `[d]` and predicts `x_query · w`.
pub trait LinearFit {
    /// A short name for tables and plots.
    fn name(&self) -> String;

    /// The fitted weights `[d]`.
    fn weights(&self, x: &DMatrix<f64>, y: &DVector<f64>) -> Result<DVector<f64>>;
}

impl<T: LinearFit> Predictor for T {
    fn name(&self) -> String {
        LinearFit::name(self)
    }

    fn predict(
        &self,
        x: &DMatrix<f64>,
        y: &DVector<f64>,
        x_query: &DMatrix<f64>,
    ) -> Result<DVector<f64>> {
        check_shapes(x, y, x_query)?;
        Ok(x_query * self.weights(x, y)?)
    }
}

/// Checks `x` `[n, d]`, `y` `[n]`, `x_query` `[m, d]` with `n ≥ 1`.
pub fn check_shapes(x: &DMatrix<f64>, y: &DVector<f64>, x_query: &DMatrix<f64>) -> Result<()> {
    if x.nrows() == 0 {
        return Err(Error::Invalid("no support examples (n = 0)".into()));
    }
    if y.len() != x.nrows() {
        return Err(Error::Invalid(format!(
            "labels: {} for {} support inputs",
            y.len(),
            x.nrows()
        )));
    }
    if x_query.ncols() != x.ncols() {
        return Err(Error::Invalid(format!(
            "d mismatch: supports have d = {}, queries d = {}",
            x.ncols(),
            x_query.ncols()
        )));
    }
    Ok(())
}

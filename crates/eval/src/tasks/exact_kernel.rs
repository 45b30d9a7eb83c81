//! Kernel ridge regression with exact kernels (RBF, Laplace, polynomial) and its closed-form
//! oracle `f(x) = k(x, X)(K + λI)⁻¹ y` (the convention used across metarep: `λ` absorbs any
//! factor `n`).

use nalgebra::{DMatrix, DVector};

use crate::{Error, Result};

/// A positive-definite kernel on `ℝ^d`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kernel {
    /// `exp(−‖x − x'‖² / (2ℓ²))`.
    Rbf {
        /// Length scale `ℓ > 0`.
        lengthscale: f64,
    },
    /// `exp(−‖x − x'‖₁ / ℓ)`.
    Laplace {
        /// Length scale `ℓ > 0`.
        lengthscale: f64,
    },
    /// `(xᵀx' + c)^degree`.
    Polynomial {
        /// Degree ≥ 1.
        degree: u32,
        /// Offset `c ≥ 0`.
        offset: f64,
    },
}

impl Kernel {
    fn validate(&self) -> Result<()> {
        let ok = match *self {
            Kernel::Rbf { lengthscale } | Kernel::Laplace { lengthscale } => {
                lengthscale > 0.0 && lengthscale.is_finite()
            }
            Kernel::Polynomial { degree, offset } => {
                degree >= 1 && offset >= 0.0 && offset.is_finite()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "kernel",
                format!("{self:?}: length scale must be > 0, degree ≥ 1, offset ≥ 0"),
            ))
        }
    }

    /// `k(a, b)` for two points given as row slices.
    fn eval(&self, a: &[f64], b: &[f64]) -> f64 {
        match *self {
            Kernel::Rbf { lengthscale } => {
                let d2: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
                (-d2 / (2.0 * lengthscale * lengthscale)).exp()
            }
            Kernel::Laplace { lengthscale } => {
                let d1: f64 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum();
                (-d1 / lengthscale).exp()
            }
            Kernel::Polynomial { degree, offset } => {
                let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                (dot + offset).powi(degree as i32)
            }
        }
    }

    /// Gram matrix `[k(a_i, b_j)]` for the rows of `a` `[n, d]` and `b` `[m, d]`.
    pub fn gram(&self, a: &DMatrix<f64>, b: &DMatrix<f64>) -> Result<DMatrix<f64>> {
        self.validate()?;
        if a.ncols() != b.ncols() {
            return Err(Error::shape(
                "kernel inputs",
                format!("d = {}", a.ncols()),
                format!("d = {}", b.ncols()),
            ));
        }
        let rows = |m: &DMatrix<f64>| -> Vec<Vec<f64>> {
            (0..m.nrows())
                .map(|i| m.row(i).iter().copied().collect())
                .collect()
        };
        let (ra, rb) = (rows(a), rows(b));
        Ok(DMatrix::from_fn(a.nrows(), b.nrows(), |i, j| {
            self.eval(&ra[i], &rb[j])
        }))
    }
}

/// The KRR oracle: coefficients `α = (K + λI)⁻¹ y` and predictions `k(x_q, X) α`.
pub fn krr_oracle(
    kernel: &Kernel,
    x: &DMatrix<f64>,
    y: &DVector<f64>,
    x_query: &DMatrix<f64>,
    lambda: f64,
) -> Result<(DVector<f64>, DVector<f64>)> {
    if x.nrows() == 0 {
        return Err(Error::invalid("support set", "empty (n = 0)"));
    }
    if y.len() != x.nrows() {
        return Err(Error::shape(
            "labels y",
            format!("[{}]", x.nrows()),
            format!("[{}]", y.len()),
        ));
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::invalid(
            "ridge λ",
            format!("must be finite and ≥ 0, got {lambda}"),
        ));
    }
    let n = x.nrows();
    let a = kernel.gram(x, x)? + DMatrix::identity(n, n) * lambda;
    let alpha = a
        .cholesky()
        .ok_or_else(|| {
            Error::invalid(
                "kernel system",
                "K + λI is not positive definite (use λ > 0)",
            )
        })?
        .solve(y);
    Ok((alpha.clone(), kernel.gram(x_query, x)? * alpha))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_on_known_values() {
        let a = DMatrix::from_row_slice(1, 2, &[0.0, 0.0]);
        let b = DMatrix::from_row_slice(1, 2, &[1.0, 1.0]);
        let rbf = Kernel::Rbf { lengthscale: 1.0 }.gram(&a, &b).unwrap()[(0, 0)];
        assert!((rbf - (-1.0f64).exp()).abs() < 1e-15);
        let lap = Kernel::Laplace { lengthscale: 2.0 }.gram(&a, &b).unwrap()[(0, 0)];
        assert!((lap - (-1.0f64).exp()).abs() < 1e-15);
        let poly = Kernel::Polynomial {
            degree: 2,
            offset: 1.0,
        }
        .gram(&b, &b)
        .unwrap()[(0, 0)];
        assert_eq!(poly, 9.0);
    }

    #[test]
    fn polynomial_krr_equals_ridge_on_explicit_features() {
        // (xᵀx')¹ with offset 0 is the linear kernel: KRR = ridge on x with the same λ.
        let x = DMatrix::from_fn(12, 3, |i, j| ((i * 3 + j) as f64 * 0.7).sin());
        let y = DVector::from_fn(12, |i, _| (i as f64).cos());
        let xq = DMatrix::from_fn(4, 3, |i, j| ((i + j) as f64 * 0.3).cos());
        let lambda = 0.3;
        let (_, pred) = krr_oracle(
            &Kernel::Polynomial {
                degree: 1,
                offset: 0.0,
            },
            &x,
            &y,
            &xq,
            lambda,
        )
        .unwrap();
        let w = (x.transpose() * &x + DMatrix::identity(3, 3) * lambda)
            .try_inverse()
            .unwrap()
            * x.transpose()
            * &y;
        assert!((pred - &xq * w).norm() < 1e-10);
    }

    #[test]
    fn interpolates_as_lambda_goes_to_zero_and_rejects_bad_input() {
        let x = DMatrix::from_fn(6, 2, |i, j| (i * 2 + j) as f64 * 0.37);
        let y = DVector::from_fn(6, |i, _| (i as f64 * 1.3).sin());
        let (_, pred) =
            krr_oracle(&Kernel::Laplace { lengthscale: 1.0 }, &x, &y, &x, 1e-12).unwrap();
        assert!((pred - &y).norm() < 1e-8);
        assert!(
            krr_oracle(&Kernel::Rbf { lengthscale: 0.0 }, &x, &y, &x, 0.1)
                .unwrap_err()
                .to_string()
                .contains("kernel")
        );
        assert!(
            krr_oracle(&Kernel::Rbf { lengthscale: 1.0 }, &x, &y, &x, -1.0)
                .unwrap_err()
                .to_string()
                .contains("λ")
        );
        assert!(krr_oracle(
            &Kernel::Rbf { lengthscale: 1.0 },
            &x,
            &DVector::zeros(5),
            &x,
            0.1
        )
        .is_err());
    }
}

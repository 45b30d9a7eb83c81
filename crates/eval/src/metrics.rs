//! Prediction metrics.

use nalgebra::DVector;

use crate::{Error, Result};

fn same_len(a: &DVector<f64>, b: &DVector<f64>) -> Result<()> {
    if a.len() != b.len() || a.is_empty() {
        return Err(Error::Invalid(format!(
            "metric inputs must be non-empty and equally long: {} vs {}",
            a.len(),
            b.len()
        )));
    }
    Ok(())
}

/// Mean squared error.
pub fn mse(pred: &DVector<f64>, target: &DVector<f64>) -> Result<f64> {
    same_len(pred, target)?;
    Ok((pred - target).norm_squared() / pred.len() as f64)
}

/// Root mean squared error.
pub fn rmse(pred: &DVector<f64>, target: &DVector<f64>) -> Result<f64> {
    mse(pred, target).map(f64::sqrt)
}

/// Mean squared error divided by the input dimension `d` (the normalisation of Garg et al.).
pub fn normalized_squared_error(
    pred: &DVector<f64>,
    target: &DVector<f64>,
    dim: usize,
) -> Result<f64> {
    if dim == 0 {
        return Err(Error::Invalid("dimension d must be ≥ 1".into()));
    }
    mse(pred, target).map(|m| m / dim as f64)
}

/// Cosine similarity (0 when either vector is zero).
pub fn cosine(a: &DVector<f64>, b: &DVector<f64>) -> Result<f64> {
    same_len(a, b)?;
    let den = a.norm() * b.norm();
    Ok(if den > 0.0 { a.dot(b) / den } else { 0.0 })
}

/// Spearman rank correlation (average ranks for ties).
pub fn spearman(a: &DVector<f64>, b: &DVector<f64>) -> Result<f64> {
    same_len(a, b)?;
    let ra = DVector::from_vec(crate::stats::average_ranks(a.as_slice()).0);
    let rb = DVector::from_vec(crate::stats::average_ranks(b.as_slice()).0);
    let (ca, cb) = (ra.add_scalar(-ra.mean()), rb.add_scalar(-rb.mean()));
    let den = ca.norm() * cb.norm();
    Ok(if den > 0.0 { ca.dot(&cb) / den } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_known_values() {
        let a = DVector::from_vec(vec![1.0, 2.0, 3.0, 4.0]);
        let b = DVector::from_vec(vec![1.0, 2.0, 3.0, 6.0]);
        assert_eq!(mse(&a, &b).unwrap(), 1.0);
        assert_eq!(rmse(&a, &b).unwrap(), 1.0);
        assert_eq!(normalized_squared_error(&a, &b, 4).unwrap(), 0.25);
        assert!((cosine(&a, &(2.0 * &a)).unwrap() - 1.0).abs() < 1e-15);
        // Monotone transforms have rank correlation 1, reversals −1.
        assert!((spearman(&a, &a.map(f64::exp)).unwrap() - 1.0).abs() < 1e-15);
        assert!((spearman(&a, &(-&a)).unwrap() + 1.0).abs() < 1e-15);
        assert!(mse(&a, &DVector::zeros(3)).is_err());
    }
}

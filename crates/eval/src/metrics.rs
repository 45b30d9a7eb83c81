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

/// Area under the ROC curve of `scores` for the binary `labels` (the probability that a random
/// positive outscores a random negative, ties counting one half: the Mann–Whitney U statistic
/// over `n_pos · n_neg`).
pub fn auroc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    Ok(aurocs(scores, &[labels])?[0])
}

/// [`auroc`] of one score vector against several label vectors, ranking the scores once.
pub fn aurocs(scores: &[f64], label_sets: &[&[bool]]) -> Result<Vec<f64>> {
    let ranks = crate::stats::average_ranks(scores).0;
    label_sets
        .iter()
        .map(|labels| {
            if labels.len() != scores.len() {
                return Err(Error::Invalid(format!(
                    "auroc: {} scores but {} labels",
                    scores.len(),
                    labels.len()
                )));
            }
            let pos = labels.iter().filter(|&&l| l).count();
            let neg = labels.len() - pos;
            if pos == 0 || neg == 0 {
                return Err(Error::Invalid(format!(
                    "auroc needs both classes ({pos} positive, {neg} negative labels)"
                )));
            }
            let rank_sum: f64 = ranks
                .iter()
                .zip(*labels)
                .filter(|(_, &l)| l)
                .map(|(r, _)| r)
                .sum();
            let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
            Ok(u / (pos * neg) as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_on_known_cases() {
        let s = [0.1, 0.4, 0.35, 0.8];
        let l = [false, false, true, true];
        // Pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > both): 3 of 4.
        assert_eq!(auroc(&s, &l).unwrap(), 0.75);
        assert_eq!(auroc(&[1.0, 2.0], &[false, true]).unwrap(), 1.0);
        assert_eq!(auroc(&[2.0, 1.0], &[false, true]).unwrap(), 0.0);
        // All tied: one half.
        assert_eq!(auroc(&[0.0; 4], &l).unwrap(), 0.5);
        assert!(auroc(&s, &[true; 4])
            .unwrap_err()
            .to_string()
            .contains("both classes"));
        assert!(auroc(&s, &l[..2]).is_err());
    }

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

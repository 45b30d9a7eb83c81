//! Non-linear local baselines: k-nearest neighbours and the mean label.

use nalgebra::{DMatrix, DVector};

use super::{check_shapes, Predictor};
use crate::{Error, Result};

/// k-nearest neighbours (Euclidean), averaging the labels of the `k` closest supports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KNearestNeighbours {
    /// Number of neighbours `k ≥ 1` (capped at n).
    pub k: usize,
}

impl Predictor for KNearestNeighbours {
    fn name(&self) -> String {
        format!("{}-NN", self.k)
    }

    fn predict(
        &self,
        x: &DMatrix<f64>,
        y: &DVector<f64>,
        x_query: &DMatrix<f64>,
    ) -> Result<DVector<f64>> {
        check_shapes(x, y, x_query)?;
        if self.k == 0 {
            return Err(Error::Invalid("k-NN needs k ≥ 1".into()));
        }
        let k = self.k.min(x.nrows());
        Ok(DVector::from_fn(x_query.nrows(), |q, _| {
            let mut dist: Vec<(f64, usize)> = (0..x.nrows())
                .map(|i| ((x.row(i) - x_query.row(q)).norm_squared(), i))
                .collect();
            dist.sort_by(|a, b| a.0.total_cmp(&b.0));
            dist[..k].iter().map(|&(_, i)| y[i]).sum::<f64>() / k as f64
        }))
    }
}

/// Predicts the mean support label everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MeanLabel;

impl Predictor for MeanLabel {
    fn name(&self) -> String {
        "mean label".into()
    }

    fn predict(
        &self,
        x: &DMatrix<f64>,
        y: &DVector<f64>,
        x_query: &DMatrix<f64>,
    ) -> Result<DVector<f64>> {
        check_shapes(x, y, x_query)?;
        Ok(DVector::from_element(x_query.nrows(), y.mean()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_nn_returns_the_label_of_a_support_point_and_k_n_the_mean() {
        let x = DMatrix::from_row_slice(3, 2, &[0.0, 0.0, 1.0, 0.0, 0.0, 5.0]);
        let y = DVector::from_vec(vec![1.0, 2.0, 9.0]);
        let q = DMatrix::from_row_slice(2, 2, &[1.0, 0.1, 0.0, 4.0]);
        let p = KNearestNeighbours { k: 1 }.predict(&x, &y, &q).unwrap();
        assert_eq!(p.as_slice(), &[2.0, 9.0]);
        let all = KNearestNeighbours { k: 10 }.predict(&x, &y, &q).unwrap();
        assert_eq!(all, MeanLabel.predict(&x, &y, &q).unwrap());
        assert!(KNearestNeighbours { k: 0 }.predict(&x, &y, &q).is_err());
        assert!(MeanLabel
            .predict(&x, &y, &DMatrix::zeros(1, 3))
            .unwrap_err()
            .to_string()
            .contains("d mismatch"));
    }
}

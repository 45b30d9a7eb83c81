//! A linear (logistic-regression) probe for a binary label, scored by held-out balanced
//! accuracy (the mean of the two classes' recalls, so a rare label's majority guess scores ½):
//! the probe-leakage check fits the same probe on the raw activations and on the SAE's codes.

use candle_core::{DType, Tensor, Var, D};
use metarep_core::optim::{gradients, AdamW};

use crate::error::{Error, Result};

/// Optimiser settings of [`probe_accuracy`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeSettings {
    /// Full-batch AdamW steps.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// L2 penalty on the weights (decoupled weight decay).
    pub weight_decay: f64,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            steps: 300,
            lr: 0.05,
            weight_decay: 1e-4,
        }
    }
}

/// The held-out balanced accuracy of a logistic probe fitted on `train` rows `[n, d]` with
/// labels `train_y`, on `test` rows with labels `test_y`. Features are centred with the training
/// rows' mean and divided by one scale, their root-mean-square (per-feature scaling would blow
/// up an SAE code's rarely active latents); the loss weighs both classes equally.
pub fn probe_accuracy(
    train: &Tensor,
    train_y: &[bool],
    test: &Tensor,
    test_y: &[bool],
    settings: &ProbeSettings,
) -> Result<f64> {
    let (n, d) = train.dims2()?;
    if n != train_y.len() || test.dim(0)? != test_y.len() || test.dim(1)? != d || n == 0 {
        return Err(Error::shape(
            "probe data",
            format!(
                "train [{} rows, d] and test [{} rows, d]",
                train_y.len(),
                test_y.len()
            ),
            format!("{:?} and {:?}", train.dims(), test.dims()),
        ));
    }
    let train = train.to_dtype(DType::F32)?;
    let mean = train.mean_keepdim(0)?;
    let rms = train
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_all()?
        .sqrt()?
        .to_scalar::<f32>()?
        .max(1e-12) as f64;
    let standardise = |x: &Tensor| -> Result<Tensor> {
        Ok((x.to_dtype(DType::F32)?.broadcast_sub(&mean)? / rms)?)
    };
    let (xs, xt) = (standardise(&train)?, standardise(test)?);
    let y: Vec<f32> = train_y.iter().map(|&b| f32::from(u8::from(b))).collect();
    let y = Tensor::from_vec(y, n, train.device())?;
    // Class weights n / (2 n_c): both classes count equally.
    let count = train_y.iter().filter(|&&b| b).count() as f64;
    let positives = count.clamp(1.0, (n as f64 - 1.0).max(1.0));
    let w_pos = n as f64 / (2.0 * positives);
    let w_neg = n as f64 / (2.0 * (n as f64 - positives).max(1.0));
    let weights = ((&y * (w_pos - w_neg))? + w_neg)?;
    let w = Var::zeros((d, 1), DType::F32, train.device())?;
    let b = Var::zeros(1, DType::F32, train.device())?;
    let params = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
    let mut adam = AdamW::new(&params, settings.weight_decay)?;
    for _ in 0..settings.steps {
        let z = xs
            .matmul(w.as_tensor())?
            .squeeze(D::Minus1)?
            .broadcast_add(b.as_tensor())?;
        // Binary cross-entropy with logits: softplus(z) − y·z.
        let softplus = (z.relu()? + z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
        let loss = ((softplus - (&y * &z)?)? * &weights)?.mean_all()?;
        let grads = gradients(&loss, &params)?;
        adam.step(&params, &grads, settings.lr)?;
    }
    let z = xt
        .matmul(w.as_tensor())?
        .squeeze(D::Minus1)?
        .broadcast_add(b.as_tensor())?
        .to_vec1::<f32>()?;
    Ok(balanced_accuracy(&z, test_y))
}

/// The mean over the classes present in `y` of the share of their rows `z` (logits) gets
/// right.
fn balanced_accuracy(z: &[f32], y: &[bool]) -> f64 {
    let recall = |class: bool| {
        let rows: Vec<bool> = z
            .iter()
            .zip(y)
            .filter(|(_, &t)| t == class)
            .map(|(&z, _)| (z > 0.0) == class)
            .collect();
        (!rows.is_empty()).then(|| rows.iter().filter(|&&r| r).count() as f64 / rows.len() as f64)
    };
    let present: Vec<f64> = [recall(true), recall(false)]
        .into_iter()
        .flatten()
        .collect();
    present.iter().sum::<f64>() / present.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::Rng;

    #[test]
    fn a_linear_label_is_read_and_noise_is_not() {
        let mut rng = metarep_core::rng::seeded(1);
        let (n, d) = (600, 8);
        let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x = Tensor::from_vec(x, (n, d), &Device::Cpu).unwrap();
        let rows = x.to_vec2::<f32>().unwrap();
        let linear: Vec<bool> = rows.iter().map(|r| 3.0 * r[2] - r[5] > 0.1).collect();
        let noise: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
        let (tr, te) = (x.narrow(0, 0, 400).unwrap(), x.narrow(0, 400, 200).unwrap());
        let s = ProbeSettings::default();
        let acc = probe_accuracy(&tr, &linear[..400], &te, &linear[400..], &s).unwrap();
        assert!(acc > 0.95, "{acc}");
        let acc = probe_accuracy(&tr, &noise[..400], &te, &noise[400..], &s).unwrap();
        assert!((0.35..0.65).contains(&acc), "{acc}");
        assert!(probe_accuracy(&tr, &linear[..10], &te, &linear[400..], &s).is_err());
        // Balanced: guessing the majority of a 9:1 label scores ½.
        assert_eq!(
            balanced_accuracy(&[-1.0; 10], &[vec![true], vec![false; 9]].concat()),
            0.5
        );
        assert_eq!(balanced_accuracy(&[1.0, -1.0], &[true, false]), 1.0);
    }
}

//! The principal component of one neuron's effects over many examples.
//!
//! Following Gandelsman et al., a neuron's second-order effects are summarised by one
//! direction: centre the effects over examples, keep the `k` examples where the centred effect
//! is largest, and take the first right singular vector of those `k` rows. Its sign is chosen
//! so that most of the kept examples project positively onto it.

use candle_core::{DType, Tensor};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One neuron's principal effect direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeuronPc {
    /// Mean effect over all examples `[d]`.
    pub mean: Vec<f32>,
    /// The first principal direction of the top-`k` centred effects, unit norm `[d]`.
    pub direction: Vec<f32>,
    /// `σ1² / Σ σ²` over the top-`k` centred effects (0 when they are all zero).
    pub explained: f64,
    /// Every example's centred-effect norm `[examples]`, in input order.
    pub norms: Vec<f32>,
    /// The `k`-th largest centred-effect norm (examples at or above it were kept).
    pub threshold: f32,
}

/// The principal component of `effects: [examples, d]` (one neuron) over its `k` examples of
/// largest centred norm (`k` is clamped to the number of examples).
pub fn neuron_pc(effects: &Tensor, k: usize) -> Result<NeuronPc> {
    let (n, d) = effects.dims2().map_err(|_| {
        Error::Invalid(format!(
            "effects must be [examples, d], got shape {:?}",
            effects.dims()
        ))
    })?;
    if n == 0 || d == 0 {
        return Err(Error::Invalid(format!(
            "effects must be a non-empty [examples, d], got [{n}, {d}]"
        )));
    }
    if k == 0 {
        return Err(Error::Invalid("k must be at least 1".into()));
    }
    let rows = effects.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    if rows.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(
            "effects contain NaN or infinite values".into(),
        ));
    }
    let k = k.min(n);
    let mut mean = vec![0f64; d];
    for row in &rows {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v / n as f64;
        }
    }
    let centred: Vec<Vec<f64>> = rows
        .iter()
        .map(|row| row.iter().zip(&mean).map(|(v, m)| v - m).collect())
        .collect();
    let norms: Vec<f64> = centred
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
    let top = &order[..k];
    let m = DMatrix::from_fn(k, d, |i, j| centred[top[i]][j]);
    let svd = m.svd(false, true);
    let v_t = svd
        .v_t
        .ok_or_else(|| Error::Invalid("SVD of the top-k effects did not converge".into()))?;
    let sv = &svd.singular_values;
    let total: f64 = sv.iter().map(|s| s * s).sum();
    let best = (0..sv.len())
        .max_by(|&a, &b| sv[a].total_cmp(&sv[b]))
        .unwrap_or(0);
    let mut direction: Vec<f64> = v_t.row(best).iter().copied().collect();
    let explained = if total > 0.0 {
        sv[best] * sv[best] / total
    } else {
        0.0
    };
    // Sign: most kept examples project positively (ties: the projections' sum is ≥ 0).
    let proj: Vec<f64> = top
        .iter()
        .map(|&i| centred[i].iter().zip(&direction).map(|(a, b)| a * b).sum())
        .collect();
    let pos = proj.iter().filter(|&&p| p > 0.0).count();
    let neg = proj.iter().filter(|&&p| p < 0.0).count();
    if neg > pos || (neg == pos && proj.iter().sum::<f64>() < 0.0) {
        direction.iter_mut().for_each(|v| *v = -*v);
    }
    Ok(NeuronPc {
        mean: mean.iter().map(|&v| v as f32).collect(),
        direction: direction.iter().map(|&v| v as f32).collect(),
        explained,
        norms: norms.iter().map(|&v| v as f32).collect(),
        threshold: norms[top[k - 1]] as f32,
    })
}

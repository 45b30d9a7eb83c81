//! The null from shuffled prompts, against which a neuron's second-order effect on a prompt is
//! called significant.
//!
//! Every prompt is also run with its tokens shuffled: the tokens strictly between its first
//! token and its read-out token are permuted (the first token may be a frame or BOS token and
//! the read-out token is where the effect is read, so both stay), which keeps the bag of tokens
//! and destroys the order. A neuron's effect on a real prompt is *significant* when its centred
//! norm `‖e − μ‖` (μ: the mean effect over the real prompts) is above the 95th percentile of the
//! same norm over the shuffled prompts. A neuron whose effect does not depend on the prompt's
//! structure is significant on about 5% of prompts; one that reads structure on more, and one
//! whose effects are larger on scrambled text on fewer.

use candle_core::{DType, Tensor};
use metarep_core::rng::{derive_seed, seeded};
use rand::seq::SliceRandom;

use crate::error::{Error, Result};

/// The null's quantile: effects above it are significant.
pub const NULL_QUANTILE: f64 = 0.95;

/// `tokens: [b, n]` u32 with each row's tokens strictly between position 0 and its read-out
/// position `positions[r]` permuted; row `r` is shuffled by a generator seeded from `seed` and
/// `first + r` (its index in the whole prompt set), so every chunking gives the same rows.
pub fn shuffle_prompts(
    tokens: &Tensor,
    positions: &[usize],
    seed: u64,
    first: usize,
) -> Result<Tensor> {
    let mut rows = tokens.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    if rows.len() != positions.len() {
        return Err(Error::Invalid(format!(
            "{} prompts but {} read-out positions",
            rows.len(),
            positions.len()
        )));
    }
    for (r, (row, &q)) in rows.iter_mut().zip(positions).enumerate() {
        if q >= row.len() {
            return Err(Error::Invalid(format!(
                "read-out position {q} of prompt {r} is past its {} tokens",
                row.len()
            )));
        }
        if q > 1 {
            let mut rng = seeded(derive_seed(seed, &format!("null/{}", first + r)));
            row[1..q].shuffle(&mut rng);
        }
    }
    let (b, n) = tokens.dims2()?;
    Ok(Tensor::from_vec(rows.concat(), (b, n), tokens.device())?)
}

/// `‖row − mean‖` of every row of `effects: [examples, d]`.
pub fn centred_norms(effects: &Tensor, mean: &[f32]) -> Result<Vec<f32>> {
    let d = mean.len();
    let mean = Tensor::from_vec(mean.to_vec(), (1, d), effects.device())?;
    Ok(effects
        .to_dtype(DType::F32)?
        .broadcast_sub(&mean)?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .to_vec1::<f32>()?)
}

/// The `q`-quantile of `values` (nearest rank; `q` in [0, 1]); an error when empty.
pub fn quantile(values: &[f32], q: f64) -> Result<f32> {
    if values.is_empty() {
        return Err(Error::Invalid("the quantile of no values".into()));
    }
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Ok(v[rank - 1])
}

/// The significance threshold (the [`NULL_QUANTILE`] of the null's centred norms) and the
/// fraction of `norms` (the real prompts' centred norms) above it.
pub fn significance(norms: &[f32], null_norms: &[f32]) -> Result<(f32, f64)> {
    let threshold = quantile(null_norms, NULL_QUANTILE)?;
    let above = norms.iter().filter(|&&x| x > threshold).count();
    Ok((threshold, above as f64 / norms.len().max(1) as f64))
}

//! Causal ε-sweeps: add `ε · direction` to the residual at a hook and measure how the logits of
//! the tokens the direction promotes move.

use candle_core::{DType, Device, Tensor, D};
use metarep_model::hooks::{HookPoint, HookSet};
use metarep_model::{HookedTransformer, Input};

use crate::error::{Error, Result};

/// For each `ε` in `eps`, the mean over positions `skip..` of `contexts` (token ids, one length)
/// of the promoted tokens' mean logit minus the mean logit over the vocabulary, with
/// `ε · direction` (`[d_model]`) added to the activation at `point` at every position. One
/// forward pass runs every `ε` (batch `eps.len() · contexts.len()`).
pub fn epsilon_sweep(
    model: &HookedTransformer,
    point: HookPoint,
    contexts: &[Vec<u32>],
    skip: usize,
    direction: &Tensor,
    promoted: &[u32],
    eps: &[f64],
) -> Result<Vec<f64>> {
    let len = contexts.first().map_or(0, Vec::len);
    if promoted.is_empty() || eps.is_empty() || len <= skip {
        return Err(Error::Invalid(format!(
            "epsilon sweep: need promoted tokens ({}), ε values ({}) and contexts longer than \
             skip = {skip} ({len})",
            promoted.len(),
            eps.len()
        )));
    }
    let batch: Vec<Vec<u32>> = eps.iter().flat_map(|_| contexts.iter().cloned()).collect();
    let input = Input::from_ids(&batch, model.device())?;
    let scales: Vec<f32> = eps
        .iter()
        .flat_map(|&e| std::iter::repeat_n(e as f32, contexts.len()))
        .collect();
    let added = Tensor::from_vec(scales, (batch.len(), 1, 1), model.device())?.broadcast_mul(
        &direction
            .to_dtype(DType::F32)?
            .to_device(model.device())?
            .reshape((1, 1, ()))?,
    )?;
    let mut hooks = HookSet::new().add(point, |_, act| {
        Ok(Some(act.broadcast_add(&added.to_dtype(act.dtype())?)?))
    });
    let logits = model.run_with_hooks(input, &mut hooks)?;
    drop(hooks);
    let logits = logits
        .narrow(1, skip, len - skip)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .contiguous()?;
    let ids = Tensor::new(promoted, &Device::Cpu)?;
    let lift =
        (logits.index_select(&ids, D::Minus1)?.mean(D::Minus1)? - logits.mean(D::Minus1)?)?;
    // [eps · contexts, positions] → mean per ε.
    let per_eps = lift
        .reshape((eps.len(), ()))?
        .to_dtype(DType::F64)?
        .mean(D::Minus1)?
        .to_vec1::<f64>()?;
    Ok(per_eps)
}

/// Whether `values` rise strictly from each to the next.
pub fn strictly_increasing(values: &[f64]) -> bool {
    values.windows(2).all(|w| w[1] > w[0])
}

#[cfg(test)]
mod tests {
    #[test]
    fn increasing_means_every_step_up() {
        assert!(super::strictly_increasing(&[-1.0, 0.0, 2.5]));
        assert!(!super::strictly_increasing(&[-1.0, 0.0, 0.0]));
        assert!(super::strictly_increasing(&[3.0]));
    }
}

//! Sentence embeddings from an encoder's hidden states (BERT / sentence-transformers style).

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::hooks::NoHooks;
use crate::input::Input;
use crate::model::{HookedTransformer, RunTo};

/// How token states become one vector per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real tokens (the attention mask), as sentence-transformers' mean pooling.
    Mean,
    /// The first (`[CLS]`) token's state.
    Cls,
    /// BERT's pooler: `tanh(h_CLS W + b)` (checkpoints that have one).
    Pooler,
}

/// Mean of `hidden: [batch, pos, d]` over the positions where `mask: [batch, pos]` is 1 (all
/// positions when `None`) → `[batch, d]`.
pub fn mean_pool(hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, p, _) = hidden.dims3()?;
    let mask = match mask {
        Some(m) => m.to_dtype(hidden.dtype())?,
        None => Tensor::ones((b, p), hidden.dtype(), hidden.device())?,
    };
    let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
    let counts = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?;
    Ok(summed.broadcast_div(&counts)?)
}

/// Each row of `x: [batch, d]` divided by its L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

impl HookedTransformer {
    /// One embedding per sequence `[batch, d_model]` from the final hidden states, pooled as
    /// `pooling` says, L2-normalised when `normalize` (all-MiniLM-L6-v2: `Mean`, `true`).
    pub fn sentence_embeddings(
        &self,
        input: &Input,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Tensor> {
        let hidden = self.run(input, &mut NoHooks, RunTo::Hidden)?;
        let pooled = match pooling {
            Pooling::Mean => mean_pool(&hidden, input.attention_mask.as_ref())?,
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Pooler => {
                let (w, b) = self.weights().pooler.as_ref().ok_or_else(|| {
                    Error::Unsupported("this checkpoint has no pooler (pooler.dense)".into())
                })?;
                hidden
                    .narrow(1, 0, 1)?
                    .squeeze(1)?
                    .matmul(w)?
                    .broadcast_add(b)?
                    .tanh()?
            }
        };
        let pooled = pooled.to_dtype(DType::F32)?;
        if normalize {
            l2_normalize(&pooled)
        } else {
            Ok(pooled)
        }
    }
}

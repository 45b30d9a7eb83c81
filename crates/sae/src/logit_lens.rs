//! A residual-stream direction's direct effect on the logits: through the final norm's scale
//! (centred for LayerNorm) and the unembedding `W_U` — which tokens an SAE latent's decoder
//! direction promotes and suppresses.

use candle_core::{DType, Device, Tensor, D};
use metarep_model::config::NormKind;
use metarep_model::HookedTransformer;

use crate::error::{Error, Result};

/// A token's logit change per unit of a direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenEffect {
    /// Token id.
    pub token: u32,
    /// `directionᵀ W_U[:, token]`.
    pub effect: f32,
}

/// The `k` tokens whose logits `direction` `[d_model]` raises most and the `k` it lowers most,
/// through `unembed` `[d_model, d_vocab]` (strongest first). For a model with a final norm, pass
/// the direction as the norm sees it (e.g. multiplied by the RMSNorm weight, or centred and
/// multiplied for LayerNorm): the logits move by that, up to the norm's scale.
pub fn logit_effects(
    direction: &Tensor,
    unembed: &Tensor,
    k: usize,
) -> Result<(Vec<TokenEffect>, Vec<TokenEffect>)> {
    let d = direction.dims1()?;
    let (rows, vocab) = unembed.dims2()?;
    if rows != d {
        return Err(Error::Shape {
            what: "unembedding".into(),
            expected: format!("[{d}, d_vocab] for a direction of {d}"),
            got: format!("{:?}", unembed.dims()),
        });
    }
    let logits = direction
        .to_dtype(DType::F32)?
        .unsqueeze(0)?
        .matmul(&unembed.to_dtype(DType::F32)?)?
        .squeeze(0)?
        .to_vec1::<f32>()?;
    let mut order: Vec<u32> = (0..vocab as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let effect = |&token: &u32| TokenEffect {
        token,
        effect: logits[token as usize],
    };
    let k = k.min(vocab);
    let promoted = order[..k].iter().map(effect).collect();
    let suppressed = order.iter().rev().take(k).map(effect).collect();
    Ok((promoted, suppressed))
}

/// The unembedding with the final norm's scale folded in: a residual direction's effect on
/// the logits, up to the norm's (per-position) scale.
pub struct LogitLens {
    unembed: Tensor,
    scale: Option<Tensor>,
    centre: bool,
}

impl LogitLens {
    /// `None` for a model without an unembedding.
    pub fn of(model: &HookedTransformer) -> Result<Option<Self>> {
        let Some(w_u) = model.w_u() else {
            return Ok(None);
        };
        let norm = model.weights().ln_final.as_ref();
        Ok(Some(Self {
            unembed: w_u.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            scale: norm
                .map(|n| n.w.to_dtype(DType::F32)?.to_device(&Device::Cpu))
                .transpose()?,
            centre: norm.is_some() && model.config().norm == NormKind::LayerNorm,
        }))
    }

    /// The tokens `direction` `[d_model]` promotes and suppresses most.
    pub fn effects(
        &self,
        direction: &Tensor,
        k: usize,
    ) -> Result<(Vec<TokenEffect>, Vec<TokenEffect>)> {
        let mut d = direction.to_dtype(DType::F32)?;
        if self.centre {
            d = d.broadcast_sub(&d.mean_keepdim(D::Minus1)?)?;
        }
        if let Some(s) = &self.scale {
            d = (d * s)?;
        }
        logit_effects(&d, &self.unembed, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_effects_rank_the_vocabulary_both_ways() {
        let dev = Device::Cpu;
        let u = Tensor::new(&[[1f32, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 0.0]], &dev).unwrap();
        let d = Tensor::new(&[1f32, 2.0], &dev).unwrap();
        // Logits: [1, 0, -1.5, 3].
        let (up, down) = logit_effects(&d, &u, 2).unwrap();
        assert_eq!(
            up,
            vec![
                TokenEffect {
                    token: 3,
                    effect: 3.0
                },
                TokenEffect {
                    token: 0,
                    effect: 1.0
                }
            ]
        );
        assert_eq!(
            down[0],
            TokenEffect {
                token: 2,
                effect: -1.5
            }
        );
        assert_eq!(down[1].token, 1);
        let bad = Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap();
        assert!(logit_effects(&bad, &u, 2)
            .unwrap_err()
            .to_string()
            .contains("[3, d_vocab]"));
    }
}

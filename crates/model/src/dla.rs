//! Exact direct logit attribution.
//!
//! The final residual stream is a sum of components: token embedding, position embedding, each
//! head's output `z_h W_O[h]` (or each layer's `hook_attn_out`), each layer's attention bias
//! `b_O`, each layer's `hook_mlp_out` ([`Component`]s). With the final norm's scale `s` frozen
//! at its recorded value (`ln_final.hook_scale`, [`FrozenNorm`]), the norm is affine in the
//! stream, so each component `c` contributes `((c − mean(c)) / s) ⊙ w` (LayerNorm; RMSNorm:
//! `c / s ⊙ w`) to the normalised stream and that times `W_U` to the logits; the norm's bias
//! `b` and the unembedding bias `b_U` form one more component, [`Component::Bias`]. The
//! contributions sum to the logits exactly (up to float rounding), which `tests/model/analysis.rs`
//! checks.

use candle_core::{DType, Tensor, D};

use crate::cache::ActivationCache;
use crate::component::Component;
use crate::config::{LmHead, ModelConfig};
use crate::error::{Error, Result};
use crate::frozen_norm::FrozenNorm;
use crate::hooks::{HookFilter, HookPoint};

/// What the contributions are measured on.
#[derive(Debug, Clone)]
pub enum LogitTarget {
    /// The logit of token `ids[b, p]` at each position (`[batch, pos]`, e.g. the next token).
    Tokens(Tensor),
    /// A direction in logit space `[d_vocab]` (e.g. `e_correct − e_wrong` for a logit
    /// difference), at every position.
    Direction(Tensor),
    /// Every logit (`[components, batch, pos, d_vocab]`: small vocabularies only).
    AllLogits,
}

/// Per-component contributions to the logits.
#[derive(Debug, Clone)]
pub struct Attribution {
    /// The components, in order: embed, pos_embed, per layer its heads (or its attention
    /// output), attention bias and MLP output, then the final bias.
    pub labels: Vec<Component>,
    /// `[components, batch, pos]` (`[components, batch, pos, d_vocab]` for
    /// [`LogitTarget::AllLogits`]).
    pub values: Tensor,
}

impl Attribution {
    /// The sum over components: the target logits.
    pub fn total(&self) -> Result<Tensor> {
        Ok(self.values.sum(0)?)
    }

    /// The contribution of `component`.
    pub fn get(&self, component: Component) -> Result<Tensor> {
        let i = self
            .labels
            .iter()
            .position(|&l| l == component)
            .ok_or_else(|| {
                Error::Invalid(format!("no component {component} in the attribution"))
            })?;
        Ok(self.values.get(i)?)
    }
}

/// The hooks [`direct_logit_attribution`] needs cached (per head: `hook_z`; else
/// `hook_attn_out`).
pub fn dla_filter(cfg: &ModelConfig, per_head: bool) -> HookFilter {
    let mut points = vec![HookPoint::Embed, HookPoint::LnFinalScale];
    if cfg.learned_positions {
        points.push(HookPoint::PosEmbed);
    }
    for l in 0..cfg.n_layers {
        points.push(if per_head {
            HookPoint::Z(l)
        } else {
            HookPoint::AttnOut(l)
        });
        if cfg.has_mlp() {
            points.push(HookPoint::MlpOut(l));
        }
    }
    HookFilter::Points(points)
}

/// Residual-stream components `[components, batch, pos, d_model]` with their labels.
#[derive(Debug, Clone)]
pub struct ComponentStack {
    /// The components' writes.
    pub tensor: Tensor,
    /// Which component each row is.
    pub labels: Vec<Component>,
}

/// The components of the final residual stream, summing to the last block's
/// `hook_resid_post`.
pub fn residual_components(cache: &ActivationCache, per_head: bool) -> Result<ComponentStack> {
    let model = cache.model();
    let cfg = model.config();
    if !cfg.additive_residual() {
        return Err(Error::Unsupported(
            "direct logit attribution needs a residual stream that sums the sublayer outputs; \
             BERT renormalises after every block, Gemma normalises each sublayer's output"
                .into(),
        ));
    }
    let mut parts = vec![cache.get(HookPoint::Embed)?.clone()];
    let mut labels = vec![Component::Embed];
    if cfg.learned_positions {
        parts.push(cache.get(HookPoint::PosEmbed)?.contiguous()?);
        labels.push(Component::PosEmbed);
    }
    let shape = parts[0].dims().to_vec();
    let heads = if per_head {
        Some(cache.stack_head_results(None, false)?)
    } else {
        None
    };
    let h = cfg.n_heads;
    for l in 0..cfg.n_layers {
        if let Some(heads) = &heads {
            for head in 0..h {
                parts.push(heads.tensor.get(l * h + head)?);
                labels.push(Component::Head { layer: l, head });
            }
            if cfg.out_bias {
                parts.push(model.b_o(l)?.broadcast_as(shape.as_slice())?.contiguous()?);
                labels.push(Component::AttnBias(l));
            }
        } else {
            parts.push(cache.get(HookPoint::AttnOut(l))?.clone());
            labels.push(Component::AttnOut(l));
        }
        if cfg.has_mlp() {
            parts.push(cache.get(HookPoint::MlpOut(l))?.clone());
            labels.push(Component::Mlp(l));
        }
    }
    Ok(ComponentStack {
        tensor: Tensor::stack(&parts, 0)?,
        labels,
    })
}

/// Exact direct logit attribution of the logits (see the module docs) on `target`, from a cache
/// holding at least [`dla_filter`]'s hooks; per head or per attention layer.
pub fn direct_logit_attribution(
    cache: &ActivationCache,
    target: &LogitTarget,
    per_head: bool,
) -> Result<Attribution> {
    let model = cache.model();
    let cfg = model.config();
    let stack = residual_components(cache, per_head)?;
    if cfg.lm_head != LmHead::Linear {
        return Err(Error::Unsupported(
            "direct logit attribution needs a linear unembedding head".into(),
        ));
    }
    let dtype = stack.tensor.dtype();
    let (c, b, p, d) = stack.tensor.dims4()?;
    // Linearise the final norm at its recorded scale.
    let norm = FrozenNorm::final_of(model);
    let scale = match norm.scaled {
        true => Some(cache.get(HookPoint::LnFinalScale)?),
        false => None,
    };
    let normed = norm.apply(&stack.tensor, scale)?;
    let bias_resid = match norm.b {
        Some(b_ln) => b_ln.broadcast_as((b, p, d))?.contiguous()?,
        None => Tensor::zeros((b, p, d), dtype, model.device())?,
    };
    let w_u = model
        .w_u()
        .ok_or_else(|| Error::Unsupported("the model has no unembedding".into()))?;
    let b_u = model.b_u()?;
    let normed = normed.reshape((c * b * p, d))?;
    let bias_resid = bias_resid.reshape((b * p, d))?;
    let (values, bias) = match target {
        LogitTarget::AllLogits => {
            let v = normed.matmul(w_u)?.reshape((c, b, p, cfg.d_vocab))?;
            let bias =
                bias_resid
                    .matmul(w_u)?
                    .broadcast_add(&b_u)?
                    .reshape((1, b, p, cfg.d_vocab))?;
            (v, bias)
        }
        LogitTarget::Direction(dir) => {
            if dir.dims() != [cfg.d_vocab] {
                return Err(Error::shape(
                    "logit direction",
                    format!("[{}]", cfg.d_vocab),
                    format!("{:?}", dir.dims()),
                ));
            }
            let dir = dir.to_dtype(dtype)?.to_device(model.device())?;
            let u = w_u.matmul(&dir.unsqueeze(1)?)?; // [d, 1]
            let v = normed.matmul(&u)?.reshape((c, b, p))?;
            let bu = (b_u.unsqueeze(0)?.matmul(&dir.unsqueeze(1)?)?).squeeze(1)?; // [1]
            let bias = bias_resid
                .matmul(&u)?
                .reshape((1, b, p))?
                .broadcast_add(&bu)?;
            (v, bias)
        }
        LogitTarget::Tokens(ids) => {
            if ids.dims() != [b, p] {
                return Err(Error::shape(
                    "target tokens",
                    format!("[{b}, {p}]"),
                    format!("{:?}", ids.dims()),
                ));
            }
            let flat = ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
            if let Some(bad) = flat.iter().find(|&&i| i < 0 || i as usize >= cfg.d_vocab) {
                return Err(Error::Invalid(format!(
                    "target token id {bad} is out of range (vocabulary size {})",
                    cfg.d_vocab
                )));
            }
            let idx = ids
                .to_dtype(DType::U32)?
                .to_device(model.device())?
                .flatten_all()?;
            // Columns of W_U for each (b, p): [b·p, d].
            let cols = w_u.t()?.contiguous()?.index_select(&idx, 0)?;
            let v = normed
                .reshape((c, b * p, d))?
                .broadcast_mul(&cols.unsqueeze(0)?)?
                .sum(D::Minus1)?
                .reshape((c, b, p))?;
            let bias = ((bias_resid * &cols)?.sum(D::Minus1)? + b_u.index_select(&idx, 0)?)?
                .reshape((1, b, p))?;
            (v, bias)
        }
    };
    let mut labels = stack.labels;
    labels.push(Component::Bias);
    Ok(Attribution {
        labels,
        values: Tensor::cat(&[values, bias], 0)?,
    })
}

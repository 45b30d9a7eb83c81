//! Direct logit attribution of one chosen token per prompt (e.g. the first answer token at the
//! last prompt position) to every attention head, every MLP layer and every MLP neuron.
//!
//! Heads and MLP layers come from metarep-model's exact decomposition
//! ([`direct_logit_attribution`]). A neuron `n` of layer `l` writes `post_n · W_out[l][n]`
//! into the residual stream; with the final norm linearised at its recorded scale `s` its
//! direct effect on the logit of token `t` is `post_n · (W_out[l][n] · u_t) / s`, where
//! `u_t = w_ln ⊙ W_U[:, t]`, centred for LayerNorm. A layer's neuron effects plus its `b_out`
//! term sum to the layer's `hook_mlp_out` attribution.

use candle_core::{DType, Tensor, D};
use metarep_model::dla::{direct_logit_attribution, dla_filter, LogitTarget};
use metarep_model::ops::rows_at;
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input, NormKind};
use serde::Serialize;

use crate::error::{Error, Result};

/// Mean direct effects on the chosen tokens' logits, over prompts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerAttribution {
    /// `[layer][head]`.
    pub heads: Vec<Vec<f64>>,
    /// `[layer]`: each MLP layer's whole output.
    pub mlps: Vec<f64>,
    /// `[layer][neuron]` (empty for attention-only models).
    pub neurons: Vec<Vec<f64>>,
    /// `[layer]`: the `b_out` term of each MLP layer.
    pub mlp_bias: Vec<f64>,
    /// The mean chosen logit (all components summed).
    pub logit: f64,
}

/// Attributes, for each prompt `r` of `tokens: [batch, n]`, the logit of `targets[r]` at
/// position `positions[r]`.
pub fn answer_attribution(
    model: &HookedTransformer,
    tokens: &Tensor,
    positions: &[usize],
    targets: &[u32],
) -> Result<AnswerAttribution> {
    let cfg = model.config();
    let (b, n) = tokens.dims2()?;
    if positions.len() != b || targets.len() != b {
        return Err(Error::Invalid(format!(
            "attribution: {b} prompts but {} positions and {} targets",
            positions.len(),
            targets.len()
        )));
    }
    if let Some(p) = positions.iter().find(|&&p| p >= n) {
        return Err(Error::Invalid(format!(
            "attribution: position {p} is outside prompts of {n} tokens"
        )));
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= cfg.d_vocab) {
        return Err(Error::Invalid(format!(
            "attribution: target token {t} is outside the vocabulary of {}",
            cfg.d_vocab
        )));
    }
    let mut points = match dla_filter(cfg, true) {
        HookFilter::Points(p) => p,
        other => {
            return Err(Error::Invalid(format!(
                "attribution: unexpected DLA hook filter {other:?}"
            )))
        }
    };
    if cfg.has_mlp() {
        points.extend((0..cfg.n_layers).map(HookPoint::MlpPost));
    }
    let (_, cache) =
        model.run_with_cache(Input::new(tokens.clone()), HookFilter::Points(points))?;
    let mut ids = vec![0u32; b * n];
    for r in 0..b {
        ids[r * n + positions[r]] = targets[r];
    }
    let dla = direct_logit_attribution(
        &cache,
        &LogitTarget::Tokens(Tensor::from_vec(ids, (b, n), tokens.device())?),
        true,
    )?;
    // [components, batch] at the chosen positions.
    let values = dla.values.to_dtype(DType::F32)?.to_vec3::<f32>()?;
    let picked: Vec<f64> = values
        .iter()
        .map(|c| (0..b).map(|r| c[r][positions[r]] as f64).sum::<f64>() / b as f64)
        .collect();
    let label = |name: &str| -> Result<f64> {
        dla.labels
            .iter()
            .position(|l| l == name)
            .map(|i| picked[i])
            .ok_or_else(|| Error::Invalid(format!("attribution: no component `{name}`")))
    };
    let heads = (0..cfg.n_layers)
        .map(|l| {
            (0..cfg.n_heads)
                .map(|h| label(&format!("L{l}H{h}")))
                .collect()
        })
        .collect::<Result<Vec<Vec<f64>>>>()?;
    let (mut mlps, mut neurons, mut mlp_bias) = (Vec::new(), Vec::new(), Vec::new());
    if cfg.has_mlp() {
        let u = unembed_directions(model, &cache, positions, targets)?;
        for l in 0..cfg.n_layers {
            mlps.push(label(&format!("{l}_mlp_out"))?);
            let post = rows_at_f32(cache.get(HookPoint::MlpPost(l))?, positions)?; // [b, d_mlp]
            let w_out = model.w_out(l)?.to_dtype(DType::F32)?; // [d_mlp, d]
            let g = u.matmul(&w_out.t()?)?; // [b, d_mlp]
            let effect = (post * g)?.mean(0)?.to_vec1::<f32>()?;
            neurons.push(effect.iter().map(|&x| x as f64).collect());
            let bias = u.matmul(&model.b_out(l)?.to_dtype(DType::F32)?.unsqueeze(1)?)?;
            mlp_bias.push(bias.mean_all()?.to_scalar::<f32>()? as f64);
        }
    }
    Ok(AnswerAttribution {
        heads,
        mlps,
        neurons,
        mlp_bias,
        logit: picked.iter().sum(),
    })
}

/// [`rows_at`] in f32.
fn rows_at_f32(act: &Tensor, positions: &[usize]) -> Result<Tensor> {
    Ok(rows_at(act, positions)?.to_dtype(DType::F32)?)
}

/// Per prompt, the residual direction whose dot product with a residual write gives its direct
/// effect on the target logit: `(w_ln ⊙ W_U[:, t]) / s`, centred for LayerNorm, `[batch, d]`.
fn unembed_directions(
    model: &HookedTransformer,
    cache: &metarep_model::ActivationCache,
    positions: &[usize],
    targets: &[u32],
) -> Result<Tensor> {
    let w_u = model
        .w_u()
        .ok_or_else(|| Error::Invalid("attribution: the model has no unembedding".into()))?
        .to_dtype(DType::F32)?;
    let idx = Tensor::from_vec(targets.to_vec(), targets.len(), w_u.device())?;
    let mut u = w_u.t()?.contiguous()?.index_select(&idx, 0)?; // [b, d]
    if let Some(ln) = model.ln_final() {
        u = u.broadcast_mul(&ln.w.to_dtype(DType::F32)?)?;
        if model.config().norm == NormKind::LayerNorm {
            u = u.broadcast_sub(&u.mean_keepdim(D::Minus1)?)?;
        }
        let scale = rows_at_f32(cache.get(HookPoint::LnFinalScale)?, positions)?; // [b, 1]
        u = u.broadcast_div(&scale)?;
    }
    Ok(u)
}

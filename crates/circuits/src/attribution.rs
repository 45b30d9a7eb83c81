//! Direct logit attribution of one chosen token per prompt (e.g. the first answer token at the
//! last prompt position) to every attention head, every MLP layer and every MLP neuron.
//!
//! Heads and MLP layers come from metarep-model's exact decomposition
//! ([`direct_logit_attribution`]). A neuron `n` of layer `l` writes `post_n · W_out[l][n]`
//! into the residual stream; with the final norm linearised at its recorded scale `s` its
//! direct effect on the logit of token `t` is `post_n · (W_out[l][n] · u_t) / s`, where
//! `u_t = w_ln ⊙ W_U[:, t]`, centred for LayerNorm. A layer's neuron effects plus its `b_out`
//! term sum to the layer's `hook_mlp_out` attribution.

use candle_core::{DType, Tensor};
use metarep_model::dla::{direct_logit_attribution, dla_filter, LogitTarget};
use metarep_model::ops::rows_at;
use metarep_model::{Component, FrozenNorm, HookFilter, HookPoint, HookedTransformer, Input};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::ranking::{ranked_heads, ranked_neurons_by_magnitude};

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

/// How exactly an [`AnswerAttribution`] reproduces the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AttributionCheck {
    /// The mean chosen logit of a plain forward pass.
    pub logit: f64,
    /// The attribution's sum minus that logit.
    pub sum_minus_logit: f64,
    /// The largest `|MLP output − (neurons + b_out)|` over layers.
    pub layer_gap: f64,
}

impl AttributionCheck {
    /// Both gaps within `tol`.
    pub fn exact(&self, tol: f64) -> bool {
        self.sum_minus_logit.abs() < tol && self.layer_gap < tol
    }
}

impl AnswerAttribution {
    /// Heads by attribution, highest first.
    pub fn ranked_heads(&self) -> Vec<(Component, f64)> {
        ranked_heads(&self.heads)
    }

    /// Neurons by attribution magnitude, largest first.
    pub fn ranked_neurons(&self) -> Vec<(Component, f64)> {
        ranked_neurons_by_magnitude(&self.neurons)
    }

    /// Compares the attribution of `answer_attribution(model, tokens, positions, targets)`
    /// with a plain forward pass on the same prompts.
    pub fn check(
        &self,
        model: &HookedTransformer,
        tokens: &Tensor,
        positions: &[usize],
        targets: &[u32],
    ) -> Result<AttributionCheck> {
        let logits = rows_at_f32(&model.forward(Input::new(tokens.clone()))?, positions)?;
        let ids = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), logits.device())?;
        let logit = logits.gather(&ids, 1)?.mean_all()?.to_scalar::<f32>()? as f64;
        let layer_gap = self
            .mlps
            .iter()
            .zip(&self.neurons)
            .zip(&self.mlp_bias)
            .map(|((m, ns), b)| (m - ns.iter().sum::<f64>() - b).abs())
            .fold(0.0, f64::max);
        Ok(AttributionCheck {
            logit,
            sum_minus_logit: self.logit - logit,
            layer_gap,
        })
    }
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
        &LogitTarget::Tokens(Tensor::from_vec(ids, (b, n), model.device())?),
        true,
    )?;
    // [components, batch] at the chosen positions.
    let values = dla.values.to_dtype(DType::F32)?.to_vec3::<f32>()?;
    let picked: Vec<f64> = values
        .iter()
        .map(|c| (0..b).map(|r| c[r][positions[r]] as f64).sum::<f64>() / b as f64)
        .collect();
    let label = |c: Component| -> Result<f64> {
        dla.labels
            .iter()
            .position(|&l| l == c)
            .map(|i| picked[i])
            .ok_or_else(|| Error::Invalid(format!("attribution: no component {c}")))
    };
    let heads = (0..cfg.n_layers)
        .map(|layer| {
            (0..cfg.n_heads)
                .map(|head| label(Component::Head { layer, head }))
                .collect()
        })
        .collect::<Result<Vec<Vec<f64>>>>()?;
    let (mut mlps, mut neurons, mut mlp_bias) = (Vec::new(), Vec::new(), Vec::new());
    if cfg.has_mlp() {
        let u = unembed_directions(model, &cache, positions, targets)?;
        for l in 0..cfg.n_layers {
            mlps.push(label(Component::Mlp(l))?);
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
    let u = w_u.t()?.contiguous()?.index_select(&idx, 0)?; // [b, d]
    let norm = FrozenNorm::final_of(model).to_dtype(DType::F32)?;
    let scale = match norm.scaled {
        true => Some(rows_at_f32(cache.get(HookPoint::LnFinalScale)?, positions)?), // [b, 1]
        false => None,
    };
    Ok(norm.read_direction(&u, scale.as_ref())?)
}

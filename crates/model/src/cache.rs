//! [`ActivationCache`]: activations recorded by `run_with_cache`, by hook point, with
//! TransformerLens's residual-stream decompositions (`stack_head_results`,
//! `accumulated_resid`, `decompose_resid`, `apply_ln_to_stack`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::component::Component;
use crate::error::{Error, Result};
use crate::frozen_norm::FrozenNorm;
use crate::hooks::HookPoint;
use crate::model::HookedTransformer;

/// Components stacked along a new first dimension, with a label for each.
#[derive(Debug, Clone)]
pub struct Stack {
    /// `[components, batch, pos, d_model]`.
    pub tensor: Tensor,
    /// One label per component (TransformerLens's: `embed`, `0_attn_out`, `L0H3`, `1_pre`, ...).
    pub labels: Vec<String>,
}

impl Stack {
    fn new(parts: Vec<Tensor>, labels: Vec<String>) -> Result<Self> {
        if parts.is_empty() {
            return Err(Error::Invalid("no components to stack".into()));
        }
        Ok(Stack {
            tensor: Tensor::stack(&parts, 0)?,
            labels,
        })
    }

    /// The sum over components `[batch, pos, d_model]`.
    pub fn sum(&self) -> Result<Tensor> {
        Ok(self.tensor.sum(0)?)
    }
}

/// Activations of one forward pass by hook point, with the model that produced them.
#[derive(Debug, Clone)]
pub struct ActivationCache {
    model: HookedTransformer,
    acts: BTreeMap<HookPoint, Tensor>,
}

impl ActivationCache {
    /// Wraps recorded activations of `model`.
    pub fn new(model: HookedTransformer, acts: BTreeMap<HookPoint, Tensor>) -> Self {
        Self { model, acts }
    }

    /// The model the activations came from.
    pub fn model(&self) -> &HookedTransformer {
        &self.model
    }

    /// The activation at `point`; an error names it if it was not cached.
    pub fn get(&self, point: HookPoint) -> Result<&Tensor> {
        self.acts.get(&point).ok_or_else(|| Error::UnknownHook {
            name: point.to_string(),
            reason: format!(
                "not in this cache ({} hooks cached; run_with_cache with a filter that selects it)",
                self.acts.len()
            ),
        })
    }

    /// The activation of the hook called `name`.
    pub fn get_name(&self, name: &str) -> Result<&Tensor> {
        self.get(name.parse()?)
    }

    /// Whether `point` was cached.
    pub fn contains(&self, point: HookPoint) -> bool {
        self.acts.contains_key(&point)
    }

    /// Number of cached activations.
    pub fn len(&self) -> usize {
        self.acts.len()
    }

    /// True when nothing was cached.
    pub fn is_empty(&self) -> bool {
        self.acts.is_empty()
    }

    /// The cached points and activations.
    pub fn iter(&self) -> impl Iterator<Item = (HookPoint, &Tensor)> {
        self.acts.iter().map(|(p, t)| (*p, t))
    }

    /// Adds or replaces an activation.
    pub fn insert(&mut self, point: HookPoint, act: Tensor) {
        self.acts.insert(point, act);
    }

    /// The activations by point.
    pub fn into_map(self) -> BTreeMap<HookPoint, Tensor> {
        self.acts
    }

    /// Writes every activation (TransformerLens names) as `dtype` into a safetensors file, plus
    /// any `extra` named tensors (e.g. `logits`; integer tensors such as token ids keep their
    /// dtype).
    pub fn save_safetensors(
        &self,
        path: &Path,
        dtype: DType,
        extra: &[(&str, &Tensor)],
    ) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(self.acts.len() + extra.len());
        for (name, t) in extra {
            let t = if t.dtype().is_float() {
                t.to_dtype(dtype)?
            } else {
                (*t).clone()
            };
            named.push((name.to_string(), t.contiguous()?));
        }
        for (p, t) in &self.acts {
            named.push((p.to_string(), t.to_dtype(dtype)?.contiguous()?));
        }
        let bytes =
            safetensors::tensor::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), None)
                .map_err(|e| Error::Invalid(format!("serializing activations: {e}")))?;
        Ok(metarep_core::atomic_write(path, &bytes)?)
    }

    /// Decompositions of the residual stream need pre-norm blocks (BERT renormalises it).
    fn require_pre_norm(&self) -> Result<()> {
        if !self.model.config().additive_residual() {
            return Err(Error::Unsupported(
                "residual-stream decompositions need a stream that sums the sublayer outputs; \
                 BERT renormalises it after every block, Gemma normalises each sublayer's output"
                    .into(),
            ));
        }
        Ok(())
    }

    fn layer_bound(&self, layer: Option<usize>) -> Result<usize> {
        let n = self.model.config().n_layers;
        match layer {
            None => Ok(n),
            Some(l) if l <= n => Ok(l),
            Some(l) => Err(Error::Invalid(format!(
                "layer {l} is beyond the model's {n} layers"
            ))),
        }
    }

    /// TransformerLens's `apply_ln_to_stack`: centres each component (LayerNorm) and divides
    /// by the recorded scale of the norm that reads the stream at `layer` (`None` or
    /// `n_layers`: `ln_final.hook_scale`; else `blocks.{layer}.ln1.hook_scale`). The norm's
    /// `w` and `b` are not applied. `stack: [components, batch, pos, d_model]`.
    pub fn apply_ln_to_stack(&self, stack: &Tensor, layer: Option<usize>) -> Result<Tensor> {
        let n = self.model.config().n_layers;
        let scale_at = match layer {
            None => HookPoint::LnFinalScale,
            Some(l) if l == n => HookPoint::LnFinalScale,
            Some(l) => HookPoint::Ln1Scale(l),
        };
        let norm = FrozenNorm::unweighted(self.model.config().norm);
        norm.apply(stack, Some(self.get(scale_at)?))
    }

    /// TransformerLens's `stack_head_results`: each head's output `z_h W_O[h]` for every layer
    /// before `layer` (`None`: all), labels `L{l}H{h}`, `[layers·heads, batch, pos, d_model]`;
    /// from `hook_result` if cached, else from `hook_z`. With `apply_ln`, normalised as by
    /// [`ActivationCache::apply_ln_to_stack`] at `layer`.
    pub fn stack_head_results(&self, layer: Option<usize>, apply_ln: bool) -> Result<Stack> {
        self.require_pre_norm()?;
        let upto = self.layer_bound(layer)?;
        let h = self.model.config().n_heads;
        let mut parts = Vec::with_capacity(upto * h);
        let mut labels = Vec::with_capacity(upto * h);
        for l in 0..upto {
            let result = match self.acts.get(&HookPoint::HeadResult(l)) {
                Some(r) => r.clone(),
                None => self.model.head_results(l, self.get(HookPoint::Z(l))?)?,
            };
            for head in 0..h {
                parts.push(result.narrow(2, head, 1)?.squeeze(2)?);
                labels.push(Component::Head { layer: l, head }.to_string());
            }
        }
        let mut stack = Stack::new(parts, labels)?;
        if apply_ln {
            stack.tensor = self.apply_ln_to_stack(&stack.tensor, layer)?;
        }
        Ok(stack)
    }

    /// TransformerLens's `accumulated_resid`: `hook_resid_pre` of layers `0..=layer` (with
    /// `hook_resid_mid` of layers before `layer` when `incl_mid`); `None` or `n_layers` ends
    /// with the final `hook_resid_post`, labelled `final_post`.
    pub fn accumulated_resid(
        &self,
        layer: Option<usize>,
        incl_mid: bool,
        apply_ln: bool,
    ) -> Result<Stack> {
        self.require_pre_norm()?;
        let upto = self.layer_bound(layer)?;
        let n = self.model.config().n_layers;
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        for l in 0..=upto {
            if l == n {
                parts.push(self.get(HookPoint::ResidPost(n - 1))?.clone());
                labels.push("final_post".to_string());
                continue;
            }
            parts.push(self.get(HookPoint::ResidPre(l))?.clone());
            labels.push(format!("{l}_pre"));
            if incl_mid && l < upto {
                parts.push(self.get(HookPoint::ResidMid(l))?.clone());
                labels.push(format!("{l}_mid"));
            }
        }
        let mut stack = Stack::new(parts, labels)?;
        if apply_ln {
            stack.tensor = self.apply_ln_to_stack(&stack.tensor, Some(upto))?;
        }
        Ok(stack)
    }

    /// TransformerLens's `decompose_resid`: the residual stream entering `layer` (`None`: the
    /// final one) as `embed`, `pos_embed` (when `incl_embeds` and present) and each earlier
    /// layer's `{l}_attn_out` and `{l}_mlp_out`; the components sum to `hook_resid_pre` of
    /// `layer` (the final `hook_resid_post` for `None`).
    pub fn decompose_resid(
        &self,
        layer: Option<usize>,
        incl_embeds: bool,
        apply_ln: bool,
    ) -> Result<Stack> {
        self.require_pre_norm()?;
        let upto = self.layer_bound(layer)?;
        let cfg = self.model.config();
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        if incl_embeds {
            parts.push(self.get(HookPoint::Embed)?.clone());
            labels.push(Component::Embed.to_string());
            if cfg.learned_positions {
                parts.push(self.get(HookPoint::PosEmbed)?.clone());
                labels.push(Component::PosEmbed.to_string());
            }
        }
        for l in 0..upto {
            parts.push(self.get(HookPoint::AttnOut(l))?.clone());
            labels.push(Component::AttnOut(l).to_string());
            if cfg.has_mlp() {
                parts.push(self.get(HookPoint::MlpOut(l))?.clone());
                labels.push(Component::Mlp(l).to_string());
            }
        }
        let mut stack = Stack::new(parts, labels)?;
        if apply_ln {
            stack.tensor = self.apply_ln_to_stack(&stack.tensor, layer)?;
        }
        Ok(stack)
    }
}

//! Second-order neuron effects and an exact decomposition of the normalised read-out stream.
//!
//! Everything lives in the *final normalised space*: with the final norm's scale `s` frozen at
//! its recorded value at the read-out position, a residual write `c` contributes
//! `F(c) = ((c − mean c) / s) ⊙ w_final` to the normalised stream (RMSNorm: no centring; a
//! model without a final norm: `F(c) = c`), and the logits are `F · W_U` plus the final norm's
//! bias and `b_U`.
//!
//! Neuron `n` of MLP layer `l` writes `m_n(p) · W_out[l][n]` at every position `p`. Its
//! **direct effect** is `F(m_n(q) W_out[l][n])` at the read-out position `q`. Its
//! **second-order effect** is what that write produces by flowing through every head `h` of
//! every later attention layer `l' > l`, with the attention pattern `A` held at its recorded
//! value and `ln1` of layer `l'` linearised at its recorded scale `s_{l'}(p)`:
//!
//! `E = F( Σ_{l'>l, h} Σ_p A_{l'h}[q, p] · m_n(p) / s_{l'}(p) · (centred(W_out[l][n]) ⊙ w_ln1) W_V^h W_O^h )`.
//!
//! `ln1`'s bias, `b_V` and `b_O` are not part of it (they do not depend on the neuron). Later
//! MLP layers are *not* on the second-order path: their input contains the neuron's write, but
//! through a non-linearity; their outputs appear only as direct parts of [`Readout::decompose`].
//!
//! [`Readout::second_order`] computes the effect of many neurons of one layer from one forward
//! pass: per (layer `l'`, head `h`) the neuron path matrix
//! `P_{l'h} = (centred(W_out[l]) ⊙ w_ln1) W_V^h W_O^h` (`[neurons, d_model]`, prompt
//! independent, see [`NeuronPaths`]), per prompt the coefficients
//! `α[n, l'h] = Σ_p A_{l'h}[q, p] m_n(p) / s_{l'}(p)` (the pattern row times the activations),
//! then `E[n] = F(Σ_{l'h} α[n, l'h] P_{l'h}[n])`.
//!
//! Supported: pre-norm decoders with LayerNorm or RMSNorm, sequential or parallel residual
//! blocks, grouped-query attention, rotary or learned positions. Post-norm models (BERT) are
//! [`Error::Unsupported`]; neuron calls on attention-only models are errors.

use candle_core::{DType, Device, Tensor, D};
use metarep_model::hooks::HookSet;
use metarep_model::interventions::{Intervention, Interventions};
use metarep_model::ops::rows_at;
use metarep_model::{
    FrozenNorm, HookFilter, HookPoint, HookedTransformer, Input, LmHead, NoHooks, RunTo,
};

use crate::error::{Error, Result};

/// `t` as f32 (a no-op when it already is).
fn f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

/// The final norm in f32, to be linearised at the recorded scale (see the module docs).
fn final_norm(model: &HookedTransformer) -> Result<FrozenNorm> {
    Ok(FrozenNorm::final_of(model).to_dtype(DType::F32)?)
}

/// Block `layer`'s `ln1` in f32.
fn ln1(model: &HookedTransformer, layer: usize) -> Result<FrozenNorm> {
    Ok(FrozenNorm::ln1_of(model, layer)?.to_dtype(DType::F32)?)
}

/// Checks `tokens: [batch, n]` and one read-out position per prompt, returning `(batch, n)`.
fn check_prompts(tokens: &Tensor, positions: &[usize]) -> Result<(usize, usize)> {
    let (b, n) = tokens.dims2().map_err(|_| {
        Error::Invalid(format!(
            "tokens must be [batch, n], got shape {:?}",
            tokens.dims()
        ))
    })?;
    if positions.len() != b {
        return Err(Error::Invalid(format!(
            "{b} prompts but {} read-out positions",
            positions.len()
        )));
    }
    if let Some((r, q)) = positions.iter().enumerate().find(|(_, &q)| q >= n) {
        return Err(Error::Invalid(format!(
            "read-out position {q} of prompt {r} is outside prompts of {n} tokens"
        )));
    }
    Ok((b, n))
}

/// Rejects models the decomposition cannot handle exactly.
fn check_model(model: &HookedTransformer) -> Result<()> {
    let cfg = model.config();
    if !cfg.additive_residual() {
        return Err(Error::Unsupported(
            "post-norm blocks (BERT) or normed sublayer outputs (Gemma): the writes to the \
             stream are not the sublayer outputs, so they do not add up at the read-out; a \
             pre-norm decoder is needed"
                .into(),
        ));
    }
    let w = model.weights();
    if w.embed_ln.is_some() || w.w_token_type.is_some() {
        return Err(Error::Unsupported(
            "embedding norm / token-type embeddings (BERT-style embeddings)".into(),
        ));
    }
    Ok(())
}

/// Checks `layer` has an MLP and every neuron index is below `d_mlp`.
fn check_neurons(model: &HookedTransformer, layer: usize, neurons: &[usize]) -> Result<()> {
    let cfg = model.config();
    if layer >= cfg.n_layers {
        return Err(Error::Invalid(format!(
            "layer {layer} is out of range ({} layers)",
            cfg.n_layers
        )));
    }
    if !cfg.has_mlp() {
        return Err(Error::Unsupported(
            "neuron effects of an attention-only model (it has no MLP neurons)".into(),
        ));
    }
    if neurons.is_empty() {
        return Err(Error::Invalid("no neurons given".into()));
    }
    if let Some(n) = neurons.iter().find(|&&n| n >= cfg.d_mlp) {
        return Err(Error::Invalid(format!(
            "neuron {n} of layer {layer} is out of range (d_mlp = {})",
            cfg.d_mlp
        )));
    }
    Ok(())
}

/// Neuron indices as a `u32` index tensor on `device`.
fn index(neurons: &[usize], device: &Device) -> Result<Tensor> {
    let idx: Vec<u32> = neurons.iter().map(|&n| n as u32).collect();
    Ok(Tensor::from_vec(idx, neurons.len(), device)?)
}

/// The prompt-independent neuron path matrices of one MLP layer:
/// `P_{l'h} = (centred(W_out[l][n]) ⊙ w_ln1_{l'}) W_V[l'][h] W_O[l'][h]` for every head `h` of
/// every later layer `l'` (centring for LayerNorm only), with the final norm's
/// prompt-independent part applied (centring for LayerNorm, `⊙ w_final`), so that a prompt's
/// effect is `Σ α P` divided by its recorded final scale.
///
/// Build once and reuse across batches with [`Readout::second_order_paths`]; memory is
/// `neurons · (n_layers − layer − 1) · n_heads · d_model` floats, so chunk the neurons of wide
/// models.
#[derive(Debug, Clone)]
pub struct NeuronPaths {
    /// The MLP layer the neurons belong to.
    pub layer: usize,
    /// The neurons, in the order of `paths`' first dimension.
    pub neurons: Vec<usize>,
    /// `[neurons, (n_layers − layer − 1) · n_heads, d_model]` f32; the second index runs over
    /// `(l', h)` with `l'` outer; `None` when `layer` is the last layer (no later heads).
    pub paths: Option<Tensor>,
}

impl NeuronPaths {
    /// The path matrices of `neurons` of MLP layer `layer` of `model`.
    pub fn new(model: &HookedTransformer, layer: usize, neurons: &[usize]) -> Result<Self> {
        check_model(model)?;
        check_neurons(model, layer, neurons)?;
        let cfg = model.config();
        let k = neurons.len();
        let h = cfg.n_heads;
        let w_out = f32(&model.w_out(layer)?)?.index_select(&index(neurons, model.device())?, 0)?;
        let mut per_layer = Vec::new();
        for lp in layer + 1..cfg.n_layers {
            let u = ln1(model, lp)?.linear(&w_out)?; // [k, d]
            let u = u
                .unsqueeze(0)?
                .broadcast_as((h, k, cfg.d_model))?
                .contiguous()?;
            let z = u.matmul(&f32(&model.w_v(lp)?)?.contiguous()?)?; // [h, k, d_head]
            per_layer.push(z.matmul(&f32(&model.w_o(lp)?)?.contiguous()?)?); // [h, k, d]
        }
        let paths = if per_layer.is_empty() {
            None
        } else {
            let p = Tensor::cat(&per_layer, 0)?.transpose(0, 1)?.contiguous()?;
            Some(final_norm(model)?.linear(&p)?.contiguous()?)
        };
        Ok(NeuronPaths {
            layer,
            neurons: neurons.to_vec(),
            paths,
        })
    }
}

/// One forward pass over a batch of prompts, keeping what the effect computations need: the
/// attention-pattern rows of the read-out positions (divided by each layer's `ln1` scale), MLP
/// activations, embeddings, attention outputs and the final norm's scale.
#[derive(Debug, Clone)]
pub struct Readout {
    model: HookedTransformer,
    positions: Vec<usize>,
    batch: usize,
    /// The final norm (f32), linearised at `final_scale`.
    final_norm: FrozenNorm,
    /// Its recorded scale at each read-out position `[batch]` (`None`: no final norm).
    final_scale: Option<Tensor>,
    /// Per layer `l'`: `A_{l'h}[r, q_r, p] / s_{l'}(r, p)`, `[batch, n_heads, n]`.
    rows: Vec<Tensor>,
    /// Per layer: `Σ_p A_{l'h}[r, q_r, p]`, `[batch, n_heads]` (1 up to rounding).
    row_sums: Vec<Tensor>,
    /// Per layer: `mlp.hook_post` `[batch, n, d_mlp]` (empty for attention-only models).
    mlp_post: Vec<Tensor>,
    /// `hook_embed` `[batch, n, d_model]`.
    embed: Tensor,
    /// `hook_pos_embed` `[batch, n, d_model]` (learned positions).
    pos_embed: Option<Tensor>,
    /// Per layer: `hook_attn_out` `[batch, n, d_model]`.
    attn_out: Vec<Tensor>,
}

/// Labelled parts of the normalised read-out stream that sum to it exactly.
#[derive(Debug, Clone)]
pub struct Decomposition {
    /// Part labels: `embed`, `pos_embed`, `L{l'} attn ← L{l} neurons`, `L{l'} attn ← rest`,
    /// `L{l} neurons direct`, `L{l} b_out direct`, `bias`.
    pub labels: Vec<String>,
    /// `[parts, batch, d_model]` f32.
    pub parts: Tensor,
}

impl Decomposition {
    /// The part labelled `label` `[batch, d_model]`.
    pub fn get(&self, label: &str) -> Result<Tensor> {
        let i = self
            .labels
            .iter()
            .position(|l| l == label)
            .ok_or_else(|| Error::Invalid(format!("no part labelled `{label}`")))?;
        Ok(self.parts.get(i)?)
    }

    /// The sum of all parts: the normalised read-out stream `[batch, d_model]` (what the
    /// unembedding reads).
    pub fn total(&self) -> Result<Tensor> {
        Ok(self.parts.sum(0)?)
    }

    /// `(Σ parts) · W_U + b_U`: the logits at the read-out positions `[batch, d_vocab]`.
    pub fn logits(&self, model: &HookedTransformer) -> Result<Tensor> {
        if model.config().lm_head != LmHead::Linear {
            return Err(Error::Unsupported(
                "logits of a model without a linear unembedding head".into(),
            ));
        }
        let w_u = model
            .w_u()
            .ok_or_else(|| Error::Unsupported("logits of a model without an unembedding".into()))?;
        let total = self.total()?;
        if total.dim(1)? != model.config().d_model {
            return Err(Error::Invalid(format!(
                "decomposition has width {} but the model's d_model is {}",
                total.dim(1)?,
                model.config().d_model
            )));
        }
        Ok(total
            .matmul(&f32(w_u)?)?
            .broadcast_add(&f32(&model.b_u()?)?)?)
    }
}

impl Readout {
    /// Runs `model` once on `tokens: [batch, n]` and keeps what the effect computations need at
    /// the read-out positions `positions[r] < n` (one per prompt, usually its last token).
    pub fn new(model: &HookedTransformer, tokens: &Tensor, positions: &[usize]) -> Result<Self> {
        check_model(model)?;
        let (b, _) = check_prompts(tokens, positions)?;
        let cfg = model.config();
        let mut points = vec![HookPoint::Embed];
        if cfg.learned_positions {
            points.push(HookPoint::PosEmbed);
        }
        for l in 0..cfg.n_layers {
            points.push(HookPoint::Ln1Scale(l));
            points.push(HookPoint::Pattern(l));
            points.push(HookPoint::AttnOut(l));
            if cfg.has_mlp() {
                points.push(HookPoint::MlpPost(l));
            }
        }
        if model.ln_final().is_some() {
            points.push(HookPoint::LnFinalScale);
        }
        let (_, cache) = model.run_with_cache_to(
            &Input::new(tokens.clone()),
            HookFilter::Points(points),
            RunTo::Hidden,
        )?;
        let mut rows = Vec::with_capacity(cfg.n_layers);
        let mut row_sums = Vec::with_capacity(cfg.n_layers);
        let mut mlp_post = Vec::new();
        let mut attn_out = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            // [b, h, q, k] → [b, q, h, k] → rows at the read-out queries [b, h, k].
            let pattern = f32(cache.get(HookPoint::Pattern(l))?)?;
            let row = rows_at(&pattern.transpose(1, 2)?, positions)?;
            row_sums.push(row.sum(D::Minus1)?);
            let (_, n, _) = cache.get(HookPoint::Ln1Scale(l))?.dims3()?;
            let scale = f32(cache.get(HookPoint::Ln1Scale(l))?)?.reshape((b, 1, n))?;
            rows.push(row.broadcast_div(&scale)?.contiguous()?);
            attn_out.push(f32(cache.get(HookPoint::AttnOut(l))?)?);
            if cfg.has_mlp() {
                mlp_post.push(f32(cache.get(HookPoint::MlpPost(l))?)?);
            }
        }
        let final_norm = final_norm(model)?;
        let final_scale = match final_norm.scaled {
            true => {
                Some(rows_at(&f32(cache.get(HookPoint::LnFinalScale)?)?, positions)?.reshape(b)?)
            }
            false => None,
        };
        let pos_embed = if cfg.learned_positions {
            Some(f32(cache.get(HookPoint::PosEmbed)?)?.contiguous()?)
        } else {
            None
        };
        Ok(Readout {
            model: model.clone(),
            positions: positions.to_vec(),
            batch: b,
            final_norm,
            final_scale,
            rows,
            row_sums,
            mlp_post,
            embed: f32(cache.get(HookPoint::Embed)?)?,
            pos_embed,
            attn_out,
        })
    }

    /// The model this read-out was computed with.
    pub fn model(&self) -> &HookedTransformer {
        &self.model
    }

    /// The read-out position of each prompt.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    /// Number of prompts.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// `F(c)` for residual writes `c: [batch, ...]` at the read-out positions (see the module
    /// docs): centred (LayerNorm), divided by each prompt's recorded final scale, times
    /// `w_final`.
    pub fn normalise(&self, c: &Tensor) -> Result<Tensor> {
        let dims = c.dims().to_vec();
        if dims.len() < 2 || dims[0] != self.batch || dims[dims.len() - 1] != self.d_model() {
            return Err(Error::Invalid(format!(
                "residual writes must be [batch = {}, ..., d_model = {}], got {dims:?}",
                self.batch,
                self.d_model()
            )));
        }
        let scale = match &self.final_scale {
            Some(s) => {
                let mut sdims = vec![1usize; dims.len()];
                sdims[0] = self.batch;
                Some(s.reshape(sdims)?)
            }
            None => None,
        };
        Ok(self.final_norm.apply(&f32(c)?, scale.as_ref())?)
    }

    fn d_model(&self) -> usize {
        self.model.config().d_model
    }

    /// Second-order effects of `neurons` of MLP layer `layer` `[batch, neurons, d_model]` f32
    /// (see the module docs): one matmul chain for all the neurons, no extra forward pass.
    pub fn second_order(&self, layer: usize, neurons: &[usize]) -> Result<Tensor> {
        let paths = NeuronPaths::new(&self.model, layer, neurons)?;
        self.second_order_paths(&paths)
    }

    /// [`Readout::second_order`] with precomputed path matrices (built from the same model).
    pub fn second_order_paths(&self, paths: &NeuronPaths) -> Result<Tensor> {
        let cfg = self.model.config();
        check_neurons(&self.model, paths.layer, &paths.neurons)?;
        let k = paths.neurons.len();
        let (b, d) = (self.batch, cfg.d_model);
        let Some(p) = &paths.paths else {
            return Ok(Tensor::zeros((b, k, d), DType::F32, self.model.device())?);
        };
        let heads = (cfg.n_layers - paths.layer - 1) * cfg.n_heads;
        if p.dims() != [k, heads, d] {
            return Err(Error::Invalid(format!(
                "neuron paths have shape {:?}, expected [{k}, {heads}, {d}] for layer {} of \
                 this model",
                p.dims(),
                paths.layer
            )));
        }
        let rows = Tensor::cat(&self.rows[paths.layer + 1..], 1)?; // [b, K, n]
        let m = self.mlp_post[paths.layer].index_select(&index(&paths.neurons, p.device())?, 2)?;
        let mut alpha = rows.matmul(&m.contiguous()?)?; // [b, K, k]
        if let Some(s) = &self.final_scale {
            alpha = alpha.broadcast_div(&s.reshape((b, 1, 1))?)?;
        }
        let alpha = alpha.permute((2, 0, 1))?.contiguous()?; // [k, b, K]
                                                             // The paths already carry the final norm's centring and weight: e = F(Σ α P).
        Ok(alpha.matmul(p)?.transpose(0, 1)?.contiguous()?) // [b, k, d]
    }

    /// Direct effects `F(m_n(q) W_out[layer][n])` of `neurons` `[batch, neurons, d_model]` f32.
    pub fn direct(&self, layer: usize, neurons: &[usize]) -> Result<Tensor> {
        check_neurons(&self.model, layer, neurons)?;
        let idx = index(neurons, self.model.device())?;
        let mut m = rows_at(&self.mlp_post[layer], &self.positions)?.index_select(&idx, 1)?;
        if let Some(s) = &self.final_scale {
            m = m.broadcast_div(&s.reshape((self.batch, 1))?)?;
        }
        // F(m w) = (m / s) · linear(w): the norm's fixed part applied once per neuron.
        let w = f32(&self.model.w_out(layer)?)?.index_select(&idx, 0)?; // [k, d]
        let g = self.final_norm.linear(&w)?;
        Ok(m.unsqueeze(2)?.broadcast_mul(&g.unsqueeze(0)?)?)
    }

    /// `Σ_h Σ_p A_{l'h}[q, p] (centred(x(p)) / s_{l'}(p) ⊙ w_ln1) W_V^h W_O^h` for residual
    /// writes `x: [batch, n, d_model]` (before the final norm) `→ [batch, d_model]`.
    fn through_heads(&self, lp: usize, x: &Tensor) -> Result<Tensor> {
        let model = &self.model;
        let x = FrozenNorm::ln1_of(model, lp)?.centred(x)?;
        let y = self.rows[lp].matmul(&x.contiguous()?)?; // [b, h, d]
        let y = y.broadcast_mul(&f32(&model.ln1(lp)?.w)?)?;
        let y = y.transpose(0, 1)?.contiguous()?; // [h, b, d]
        let z = y.matmul(&f32(&model.w_v(lp)?)?.contiguous()?)?; // [h, b, d_head]
        let out = z.matmul(&f32(&model.w_o(lp)?)?.contiguous()?)?; // [h, b, d]
        Ok(out.sum(0)?)
    }

    /// The bias terms of attention layer `lp` at the read-out position `[batch, d_model]`:
    /// `Σ_h (Σ_p A_{l'h}[q, p]) (b_ln1 W_V^h + b_V^h) W_O^h + b_O`.
    fn head_biases(&self, lp: usize) -> Result<Tensor> {
        let model = &self.model;
        let cfg = model.config();
        let h = cfg.n_heads;
        let w_v = f32(&model.w_v(lp)?)?.contiguous()?; // [h, d, dh]
        let b_v = f32(&model.b_v(lp)?)?.reshape((h, 1, cfg.d_head))?;
        let v = match &model.ln1(lp)?.b {
            Some(b1) => {
                let b1 = f32(b1)?
                    .reshape((1, 1, cfg.d_model))?
                    .broadcast_as((h, 1, cfg.d_model))?
                    .contiguous()?;
                (b1.matmul(&w_v)? + b_v)?
            }
            None => b_v,
        };
        let per_head = v
            .matmul(&f32(&model.w_o(lp)?)?.contiguous()?)?
            .reshape((h, cfg.d_model))?;
        Ok(self.row_sums[lp]
            .matmul(&per_head)?
            .broadcast_add(&f32(&model.b_o(lp)?)?)?)
    }

    /// The exact decomposition of the normalised read-out stream (see [`Decomposition`]):
    /// embeddings; per attention layer `l'`, the second-order parts of every earlier MLP
    /// layer's neurons and the rest of its output (embeddings, earlier attention outputs,
    /// `b_out` terms, `ln1` bias, `b_V`, `b_O` through the heads); per MLP layer its neurons'
    /// direct effects and its `b_out`; the final norm's bias. Later MLP layers appear as direct
    /// parts only. The parts sum to the stream the unembedding reads.
    pub fn decompose(&self) -> Result<Decomposition> {
        let model = &self.model;
        let cfg = model.config();
        let (b, d) = (self.batch, cfg.d_model);
        let mut labels = Vec::new();
        let mut parts = Vec::new();
        let mut push = |label: String, t: Tensor| {
            labels.push(label);
            parts.push(t);
        };
        push(
            "embed".into(),
            self.normalise(&rows_at(&self.embed, &self.positions)?)?,
        );
        // Everything in the residual stream that is not a neuron write, at every position.
        let mut rest = self.embed.clone();
        if let Some(pe) = &self.pos_embed {
            push(
                "pos_embed".into(),
                self.normalise(&rows_at(pe, &self.positions)?)?,
            );
            rest = (rest + pe)?;
        }
        let (_, n, _) = self.embed.dims3()?;
        let mut neuron_writes: Vec<Tensor> = Vec::new();
        for lp in 0..cfg.n_layers {
            for (l, write) in neuron_writes.iter().enumerate() {
                push(
                    format!("L{lp} attn ← L{l} neurons"),
                    self.normalise(&self.through_heads(lp, write)?)?,
                );
            }
            let rest_part = (self.through_heads(lp, &rest)? + self.head_biases(lp)?)?;
            push(format!("L{lp} attn ← rest"), self.normalise(&rest_part)?);
            rest = (rest + &self.attn_out[lp])?;
            if cfg.has_mlp() {
                let w_out = f32(&model.w_out(lp)?)?;
                let write = self.mlp_post[lp]
                    .reshape((b * n, cfg.d_mlp))?
                    .matmul(&w_out)?
                    .reshape((b, n, d))?;
                push(
                    format!("L{lp} neurons direct"),
                    self.normalise(&rows_at(&write, &self.positions)?)?,
                );
                let b_out = f32(&model.b_out(lp)?)?;
                push(
                    format!("L{lp} b_out direct"),
                    self.normalise(&b_out.unsqueeze(0)?.broadcast_as((b, d))?.contiguous()?)?,
                );
                rest = rest.broadcast_add(&b_out)?;
                neuron_writes.push(write);
            }
        }
        let bias = match &self.final_norm.b {
            Some(bf) => bf.unsqueeze(0)?.broadcast_as((b, d))?.contiguous()?,
            None => Tensor::zeros((b, d), DType::F32, model.device())?,
        };
        push("bias".into(), bias);
        Ok(Decomposition {
            labels,
            parts: Tensor::stack(&parts, 0)?,
        })
    }
}

/// How exactly [`Readout::decompose`] reproduces the model: the largest `|logit|` difference
/// between the decomposition's logits and a plain forward pass at the read-out positions.
pub fn decomposition_gap(
    model: &HookedTransformer,
    tokens: &Tensor,
    positions: &[usize],
) -> Result<f64> {
    let parts = Readout::new(model, tokens, positions)?.decompose()?;
    let logits = f32(&rows_at(
        &model.forward(Input::new(tokens.clone()))?,
        positions,
    )?)?;
    Ok((parts.logits(model)? - logits)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()? as f64)
}

/// The normalised read-out stream (the final norm's output, what the unembedding reads) at
/// `positions` `[batch, d_model]` f32, with `hooks` applied to the forward pass.
pub fn readout_stream<H: metarep_model::Hooks>(
    model: &HookedTransformer,
    tokens: &Tensor,
    positions: &[usize],
    hooks: &mut H,
) -> Result<Tensor> {
    let hidden = model.run(&Input::new(tokens.clone()), hooks, RunTo::Hidden)?;
    Ok(rows_at(&f32(&hidden)?, positions)?)
}

/// The naive (total) effect of neuron `neuron` of layer `layer` `[batch, d_model]` f32: the
/// normalised read-out stream of the clean run minus that of a run with the neuron's activation
/// zeroed at every position. Two forward passes per neuron; it equals direct + second-order
/// effect + higher-order terms (later MLPs, head-to-head chains, changed patterns and norm
/// scales).
pub fn naive_effect(
    model: &HookedTransformer,
    tokens: &Tensor,
    positions: &[usize],
    layer: usize,
    neuron: usize,
) -> Result<Tensor> {
    check_model(model)?;
    check_prompts(tokens, positions)?;
    check_neurons(model, layer, &[neuron])?;
    let clean = readout_stream(model, tokens, positions, &mut NoHooks)?;
    let mut ablate = Interventions::new(vec![Intervention::zero_neurons(layer, &[neuron])]);
    let ablated = readout_stream(model, tokens, positions, &mut ablate)?;
    Ok((clean - ablated)?)
}

/// Direct and second-order effect of one neuron measured by path patching through the model's
/// own forward pass (a reference for [`Readout::direct`] and [`Readout::second_order`]).
#[derive(Debug, Clone)]
pub struct PathPatched {
    /// `[batch, d_model]`: the change of the normalised read-out stream when the neuron is
    /// zeroed and every later attention and MLP output and the final scale are frozen.
    pub direct: Tensor,
    /// `[batch, d_model]`: the sum over later attention layers `l'` of the extra change when
    /// only layer `l'`'s attention is left free, with its pattern and `ln1` scale frozen.
    pub second_order: Tensor,
}

/// Path-patched direct and second-order effects of neuron `neuron` of layer `layer`: runs the
/// model with the neuron zeroed and, by hooks, every later MLP output, every later attention
/// output but one, that layer's pattern and `ln1` scale and the final norm's scale held at their
/// clean values. The attention layer left free sees exactly the neuron's write through a frozen
/// norm and pattern, so these runs measure the quantities [`Readout`] computes in closed form,
/// with nothing but the forward pass: `n_layers − layer + 1` forward passes per neuron.
pub fn path_patched_effect(
    model: &HookedTransformer,
    tokens: &Tensor,
    positions: &[usize],
    layer: usize,
    neuron: usize,
) -> Result<PathPatched> {
    check_model(model)?;
    check_prompts(tokens, positions)?;
    check_neurons(model, layer, &[neuron])?;
    let cfg = model.config();
    let mut points = Vec::new();
    for l in layer + 1..cfg.n_layers {
        points.extend([
            HookPoint::Pattern(l),
            HookPoint::Ln1Scale(l),
            HookPoint::AttnOut(l),
            HookPoint::MlpOut(l),
        ]);
    }
    if model.ln_final().is_some() {
        points.push(HookPoint::LnFinalScale);
    }
    let input = Input::new(tokens.clone());
    let (clean, cache) =
        model.run_with_cache_to(&input, HookFilter::Points(points.clone()), RunTo::Hidden)?;
    let clean = rows_at(&f32(&clean)?, positions)?;
    // One run per free attention layer (`None`: every later attention layer frozen).
    let run = |free: Option<usize>| -> Result<Tensor> {
        let mut hooks = HookSet::new();
        for &p in &points {
            let keep = match p {
                HookPoint::Pattern(l) | HookPoint::Ln1Scale(l) => Some(l) == free,
                HookPoint::AttnOut(l) => Some(l) != free,
                _ => true,
            };
            if keep {
                let value = cache.get(p)?.clone();
                hooks = hooks.add(p, move |_, _| Ok(Some(value.clone())));
            }
        }
        let ablate = Interventions::new(vec![Intervention::zero_neurons(layer, &[neuron])]);
        let ablated = readout_stream(model, tokens, positions, &mut (ablate, hooks))?;
        Ok((&clean - ablated)?)
    };
    let direct = run(None)?;
    let mut second = direct.zeros_like()?;
    for l in layer + 1..cfg.n_layers {
        second = (second + (run(Some(l))? - &direct)?)?;
    }
    Ok(PathPatched {
        direct,
        second_order: second,
    })
}

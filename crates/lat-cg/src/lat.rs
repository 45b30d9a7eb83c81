//! The generic linear-attention transformer (LAT) forward pass.
//!
//! A LAT acts on a token matrix `x` of shape `[batch, tokens, channels]`. Each layer is
//!
//! ```text
//! x ← x + Σ_h P^h(x) (x W_V^h) W_O^h                              (attention heads)
//! x ← x + G_1(x);  x ← x + G_2(x); ...                           (token-wise gated MLP blocks)
//! ```
//!
//! with an explicit 0/1 mask `M^h` of shape `[tokens, tokens]` per head (row = reader, column =
//! key) and scores `S^h = (x W_Q^h)(x W_K^h)ᵀ`. The attention pattern `P^h` depends on the head's
//! [`AttentionKind`]: `S ⊙ M` (unnormalised linear attention, the LAT proper), the row softmax of
//! `scale · S` over the keys `M` allows (a softmax transformer), or `exp(scale · S) ⊙ M`
//! (unnormalised exponential attention). The same code runs trained and constructed weights;
//! nothing here knows about CG.

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};

/// How a head turns scores `S = (x W_Q)(x W_K)ᵀ` and its mask `M` into an attention pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttentionKind {
    /// `P = S ⊙ M`: unnormalised linear attention (the LAT's heads).
    Linear,
    /// `P_ij = exp(scale·S_ij) / Σ_{l: M_il ≠ 0} exp(scale·S_il)` where `M_ij ≠ 0`, else 0; a
    /// row with no allowed key is all zeros. Computed with the row maximum subtracted.
    Softmax {
        /// Logit scale (inverse temperature `1/τ`; `1/√d_k` in a standard transformer).
        scale: f64,
    },
    /// `P_ij = exp(scale·S_ij)` where `M_ij ≠ 0`, else 0: softmax without the row normalisation.
    Exponential {
        /// Logit scale (inverse temperature).
        scale: f64,
    },
}

/// The LAT's name for an [`AttentionHead`]: [`AttentionHead::new`] builds a linear one.
pub type LinearAttentionHead = AttentionHead;

/// One attention head with an explicit mask; its [`AttentionKind`] says how scores become weights.
#[derive(Debug, Clone)]
pub struct AttentionHead {
    /// How scores become the attention pattern.
    pub kind: AttentionKind,
    /// Query projection `[channels, d_k]`.
    pub w_q: Tensor,
    /// Key projection `[channels, d_k]`.
    pub w_k: Tensor,
    /// Value projection `[channels, d_v]`.
    pub w_v: Tensor,
    /// Output projection `[d_v, channels]`.
    pub w_o: Tensor,
    /// Attention mask `[tokens, tokens]`, 1 where reader (row) may read key (column), else 0.
    pub mask: Tensor,
}

/// Scalar activation used inside a [`GatedMlp`] block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `σ(z) = z`; with a gate the block is bilinear.
    Identity,
    /// `σ(z) = max(z, 0)`.
    Relu,
    /// `σ(z) = GELU(z)` (erf form).
    Gelu,
    /// `σ(z) = 1 / z`; the caller guarantees `z ≠ 0` on every token.
    Reciprocal,
}

/// A token-wise MLP block `G(x) = (σ(x W_a + b_a) ⊙ (x W_b + b_b)) W_out`, or without the gate
/// `G(x) = σ(x W_a + b_a) W_out`. The layer adds it to the residual stream.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    /// Activation applied to the `a` branch.
    pub activation: Activation,
    /// Input projection of the activated branch `[channels, hidden]`.
    pub w_a: Tensor,
    /// Bias of the activated branch `[hidden]`.
    pub b_a: Tensor,
    /// Optional linear gate: projection `[channels, hidden]` and bias `[hidden]`.
    pub gate: Option<(Tensor, Tensor)>,
    /// Output projection `[hidden, channels]`.
    pub w_out: Tensor,
}

/// One LAT layer: multi-head attention, then token-wise MLP blocks, each with residual.
#[derive(Debug, Clone, Default)]
pub struct LatLayer {
    /// Attention heads (may be empty: the layer is then MLP-only).
    pub heads: Vec<AttentionHead>,
    /// Token-wise MLP blocks applied in order (may be empty).
    pub mlp: Vec<GatedMlp>,
}

/// A transformer over a fixed token count: a stack of [`LatLayer`]s. With linear heads it is a
/// LAT; with softmax heads, a softmax-attention transformer (same forward pass).
#[derive(Debug, Clone)]
pub struct Lat {
    /// Number of channels of the token matrix.
    pub channels: usize,
    /// Number of tokens (the masks' size).
    pub tokens: usize,
    /// The layers, applied in order.
    pub layers: Vec<LatLayer>,
}

fn dims2(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    t.dims2()
        .map_err(|_| Error::shape(what, "a matrix", format!("{:?}", t.dims())))
}

fn expect_dims(t: &Tensor, what: &str, expected: &[usize]) -> Result<()> {
    if t.dims() != expected {
        return Err(Error::shape(
            what,
            format!("{expected:?}"),
            format!("{:?}", t.dims()),
        ));
    }
    Ok(())
}

impl AttentionHead {
    /// Builds a linear head after checking that all shapes agree with `channels` and `tokens`.
    pub fn new(
        w_q: Tensor,
        w_k: Tensor,
        w_v: Tensor,
        w_o: Tensor,
        mask: Tensor,
        channels: usize,
        tokens: usize,
    ) -> Result<Self> {
        let (_, d_k) = dims2(&w_q, "W_Q")?;
        let (_, d_v) = dims2(&w_v, "W_V")?;
        expect_dims(&w_q, "W_Q", &[channels, d_k])?;
        expect_dims(&w_k, "W_K", &[channels, d_k])?;
        expect_dims(&w_v, "W_V", &[channels, d_v])?;
        expect_dims(&w_o, "W_O", &[d_v, channels])?;
        expect_dims(&mask, "attention mask", &[tokens, tokens])?;
        Ok(Self {
            kind: AttentionKind::Linear,
            w_q,
            w_k,
            w_v,
            w_o,
            mask,
        })
    }

    /// The same head with attention kind `kind`; a non-finite scale is an error.
    pub fn with_kind(mut self, kind: AttentionKind) -> Result<Self> {
        if let AttentionKind::Softmax { scale } | AttentionKind::Exponential { scale } = kind {
            if !scale.is_finite() {
                return Err(Error::invalid(
                    "attention scale",
                    format!("must be finite, got {scale}"),
                ));
            }
        }
        self.kind = kind;
        Ok(self)
    }

    /// Attention pattern `[batch, tokens, tokens]` (row = reader, column = key) for input `x`
    /// `[batch, tokens, channels]` (TransformerLens' `hook_pattern`; for a linear head, the
    /// masked scores).
    pub fn pattern(&self, x: &Tensor) -> Result<Tensor> {
        let q = x.broadcast_matmul(&self.w_q)?;
        let k = x.broadcast_matmul(&self.w_k)?;
        let scores = q.matmul(&k.transpose(1, 2)?.contiguous()?)?;
        let allowed = || -> Result<Tensor> { Ok(self.mask.ne(0.0)?.broadcast_as(scores.shape())?) };
        Ok(match self.kind {
            AttentionKind::Linear => scores.broadcast_mul(&self.mask)?,
            AttentionKind::Softmax { scale } => {
                let neg_inf = Tensor::full(f64::NEG_INFINITY, scores.shape(), scores.device())?
                    .to_dtype(scores.dtype())?;
                let logits = allowed()?.where_cond(&(&scores * scale)?, &neg_inf)?;
                // Subtract the row maximum over the allowed keys (0 for a row with none, whose
                // entries are all −∞ and become 0). The maximum's own term is exp(0) = 1, so a
                // non-empty row sums to ≥ 1 and `max(sum, 1)` only changes the empty rows.
                let row_max = logits.max_keepdim(D::Minus1)?;
                let empty = row_max.eq(f64::NEG_INFINITY)?;
                let row_max = empty.where_cond(&row_max.zeros_like()?, &row_max)?;
                let e = logits.broadcast_sub(&row_max)?.exp()?;
                let sum = e.sum_keepdim(D::Minus1)?.maximum(1.0)?;
                e.broadcast_div(&sum)?
            }
            AttentionKind::Exponential { scale } => {
                allowed()?.where_cond(&(&scores * scale)?.exp()?, &scores.zeros_like()?)?
            }
        })
    }

    /// Head output `[batch, tokens, channels]` for input `x` `[batch, tokens, channels]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let v = x.broadcast_matmul(&self.w_v)?;
        let mixed = self.pattern(x)?.matmul(&v)?;
        Ok(mixed.broadcast_matmul(&self.w_o)?)
    }

    /// Multiply-add count of one forward on `batch` problems (for FLOP accounting).
    pub fn flops(&self, batch: usize) -> Result<u64> {
        let (c, d_k) = dims2(&self.w_q, "W_Q")?;
        let (_, d_v) = dims2(&self.w_v, "W_V")?;
        let n = self.mask.dim(0)? as u64;
        let (c, d_k, d_v) = (c as u64, d_k as u64, d_v as u64);
        let proj = 2 * n * c * (2 * d_k + d_v) + 2 * n * d_v * c;
        let attn = 2 * n * n * d_k + n * n + 2 * n * n * d_v;
        // Scale, exp and (for softmax) max, sum and divide: a few operations per score.
        let weights = match self.kind {
            AttentionKind::Linear => 0,
            AttentionKind::Softmax { .. } => 4 * n * n,
            AttentionKind::Exponential { .. } => 2 * n * n,
        };
        Ok(batch as u64 * (proj + attn + weights))
    }
}

impl GatedMlp {
    /// Builds a block after checking shapes against `channels`.
    pub fn new(
        activation: Activation,
        w_a: Tensor,
        b_a: Tensor,
        gate: Option<(Tensor, Tensor)>,
        w_out: Tensor,
        channels: usize,
    ) -> Result<Self> {
        let (_, hidden) = dims2(&w_a, "MLP W_a")?;
        expect_dims(&w_a, "MLP W_a", &[channels, hidden])?;
        expect_dims(&b_a, "MLP b_a", &[hidden])?;
        if let Some((w_b, b_b)) = &gate {
            expect_dims(w_b, "MLP W_b", &[channels, hidden])?;
            expect_dims(b_b, "MLP b_b", &[hidden])?;
        }
        expect_dims(&w_out, "MLP W_out", &[hidden, channels])?;
        Ok(Self {
            activation,
            w_a,
            b_a,
            gate,
            w_out,
        })
    }

    /// Block output `[batch, tokens, channels]` (to be added to the residual stream).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = x.broadcast_matmul(&self.w_a)?.broadcast_add(&self.b_a)?;
        let a = match self.activation {
            Activation::Identity => a,
            Activation::Relu => a.relu()?,
            Activation::Gelu => a.gelu_erf()?,
            Activation::Reciprocal => a.recip()?,
        };
        let h = match &self.gate {
            Some((w_b, b_b)) => (a * x.broadcast_matmul(w_b)?.broadcast_add(b_b)?)?,
            None => a,
        };
        Ok(h.broadcast_matmul(&self.w_out)?)
    }

    /// Multiply-add count of one forward on `tokens` tokens.
    pub fn flops(&self, tokens: usize) -> Result<u64> {
        let (c, hidden) = dims2(&self.w_a, "MLP W_a")?;
        let gates = if self.gate.is_some() { 2 } else { 1 };
        Ok(tokens as u64 * (2 * c as u64 * hidden as u64 * (gates + 1)))
    }
}

impl LatLayer {
    /// Sum of all heads' outputs (the attention sublayer before the residual add).
    pub fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = x.zeros_like()?;
        for head in &self.heads {
            out = (out + head.forward(x)?)?;
        }
        Ok(out)
    }

    /// The whole layer: `x + attention(x)`, then each MLP block with residual.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = (x + self.attention(x)?)?;
        for block in &self.mlp {
            x = (&x + block.forward(&x)?)?;
        }
        Ok(x)
    }

    /// Multiply-add count of one forward on `batch` problems of `tokens` tokens.
    pub fn flops(&self, batch: usize, tokens: usize) -> Result<u64> {
        let mut total = 0;
        for head in &self.heads {
            total += head.flops(batch)?;
        }
        for block in &self.mlp {
            total += block.flops(batch * tokens)?;
        }
        Ok(total)
    }
}

impl Lat {
    /// Checks that `x` is `[batch, tokens, channels]` for this model.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        if dims.len() != 3 || dims[1] != self.tokens || dims[2] != self.channels {
            return Err(Error::shape(
                "LAT input",
                format!("[batch, {}, {}]", self.tokens, self.channels),
                format!("{dims:?}"),
            ));
        }
        Ok(())
    }

    /// Runs all layers; returns the final token matrix `[batch, tokens, channels]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// Runs all layers and returns the residual stream before layer 0 and after every layer
    /// (`layers.len() + 1` tensors of shape `[batch, tokens, channels]`).
    pub fn forward_with_states(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.check_input(x)?;
        let mut states = vec![x.clone()];
        for layer in &self.layers {
            let next = layer.forward(&states[states.len() - 1])?;
            states.push(next);
        }
        Ok(states)
    }

    /// The device its weights are on (the CPU for a LAT without weights, whose forward pass is
    /// the identity).
    pub fn device(&self) -> Device {
        let heads = self
            .layers
            .iter()
            .flat_map(|l| &l.heads)
            .map(|h| h.w_q.device());
        let mlps = self
            .layers
            .iter()
            .flat_map(|l| &l.mlp)
            .map(|g| g.w_a.device());
        heads.chain(mlps).next().cloned().unwrap_or(Device::Cpu)
    }

    /// Converts every weight and mask to `dtype` on `device`.
    pub fn to(&self, dtype: DType, device: &Device) -> Result<Lat> {
        let cv = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_device(device)?) };
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let mut heads = Vec::with_capacity(layer.heads.len());
            for h in &layer.heads {
                heads.push(AttentionHead {
                    kind: h.kind,
                    w_q: cv(&h.w_q)?,
                    w_k: cv(&h.w_k)?,
                    w_v: cv(&h.w_v)?,
                    w_o: cv(&h.w_o)?,
                    mask: cv(&h.mask)?,
                });
            }
            let mut mlp = Vec::with_capacity(layer.mlp.len());
            for g in &layer.mlp {
                let gate = match &g.gate {
                    Some((w, b)) => Some((cv(w)?, cv(b)?)),
                    None => None,
                };
                mlp.push(GatedMlp {
                    activation: g.activation,
                    w_a: cv(&g.w_a)?,
                    b_a: cv(&g.b_a)?,
                    gate,
                    w_out: cv(&g.w_out)?,
                });
            }
            layers.push(LatLayer { heads, mlp });
        }
        Ok(Lat {
            channels: self.channels,
            tokens: self.tokens,
            layers,
        })
    }
}

/// Reads channels `range` of every token: `[batch, tokens, range.len()]`.
pub fn channels(x: &Tensor, range: std::ops::Range<usize>) -> Result<Tensor> {
    Ok(x.narrow(D::Minus1, range.start, range.len())?)
}

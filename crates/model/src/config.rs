//! The architecture-neutral model configuration (TransformerLens's `HookedTransformerConfig` in
//! spirit): every family is a setting of these fields, and the forward pass reads only them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which checkpoint family a model came from (decides weight names on loading; the forward pass
/// itself reads only the [`ModelConfig`] fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// GPT-2 (`model_type = "gpt2"`).
    Gpt2,
    /// GPT-NeoX / Pythia (`model_type = "gpt_neox"`).
    GptNeox,
    /// Llama family: Llama, Mistral, Qwen2 (`model_type = "llama" | "mistral" | "qwen2"`).
    Llama,
    /// BERT encoder (`model_type = "bert"`).
    Bert,
    /// Gemma 3 text decoder (`model_type = "gemma3_text"`).
    Gemma3,
    /// A model saved by metarep itself (`model_type = "metarep"`: TransformerLens tensor names).
    Metarep,
}

/// Normalisation layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// LayerNorm: centre, divide by `sqrt(mean(x²) + eps)`, scale `w`, shift `b`.
    LayerNorm,
    /// RMSNorm: divide by `sqrt(mean(x²) + eps)`, scale `w`.
    RmsNorm,
}

/// MLP activation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU `x Φ(x)` (HF `gelu`).
    Gelu,
    /// Tanh-approximated GELU (HF `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluNew,
    /// ReLU.
    Relu,
    /// SiLU / swish `x σ(x)`.
    Silu,
}

impl Activation {
    /// Parses an HF `hidden_act` / `activation_function` value.
    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }
}

/// Rotary-embedding frequency rescaling (HF `rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (positions interpolated).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1 "NTK by parts": long wavelengths divided by `factor`, short kept, smooth between.
    Llama3 {
        /// The divisor for long wavelengths.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: usize,
    },
}

/// Rotary position embedding on the first `dim` channels of each query/key head (GPT-NeoX
/// "rotate half" pairing: channel `i` with `i + dim/2`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rotary {
    /// Rotated channels per head (even, ≤ `d_head`).
    pub dim: usize,
    /// Frequency base θ.
    pub base: f64,
    /// Optional frequency rescaling.
    #[serde(default)]
    pub scaling: Option<RopeScaling>,
}

impl Rotary {
    /// The `dim / 2` inverse frequencies `θ^(-2i/dim)`, after scaling.
    pub fn inv_freq(&self) -> Vec<f64> {
        let half = self.dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.base.powf((2 * i) as f64 / self.dim as f64))
            .collect();
        match self.scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// What turns the final residual stream into logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LmHead {
    /// `logits = x W_U (+ b_U)` after the final norm.
    Linear,
    /// BERT's masked-LM head: dense, GELU, LayerNorm, then `W_U` (+ bias).
    BertMlm,
    /// No head: the model only produces hidden states (e.g. a `BertModel` checkpoint).
    None,
}

/// The architecture-neutral configuration; every supported family is a setting of these fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Checkpoint family (weight names on load; informational otherwise).
    pub family: Family,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Residual stream width.
    pub d_model: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// Key/value heads per layer (`< n_heads` for grouped-query attention).
    pub n_kv_heads: usize,
    /// Channels per head.
    pub d_head: usize,
    /// MLP hidden width (0 when `attn_only`).
    pub d_mlp: usize,
    /// Vocabulary size.
    pub d_vocab: usize,
    /// Maximum context length: the learned position table's length, or the length a rotary
    /// model was trained to (HF `max_position_embeddings`).
    pub n_ctx: usize,
    /// Blocks have attention only, no MLP.
    #[serde(default)]
    pub attn_only: bool,
    /// Normalisation kind.
    pub norm: NormKind,
    /// Normalisation epsilon.
    pub eps: f64,
    /// MLP activation.
    pub act: Activation,
    /// Gated MLP (`act(x W_gate) ⊙ (x W_in + b_in)`, Llama's SwiGLU).
    #[serde(default)]
    pub gated_mlp: bool,
    /// A learned absolute position table `W_pos` is added to the embeddings.
    pub learned_positions: bool,
    /// Rotary position embedding on queries and keys.
    #[serde(default)]
    pub rotary: Option<Rotary>,
    /// Attention and MLP read the same residual (`x + attn(ln1 x) + mlp(ln2 x)`).
    #[serde(default)]
    pub parallel_residual: bool,
    /// BERT-style post-norm blocks (norm after each residual add) with a norm on the embeddings.
    #[serde(default)]
    pub post_norm: bool,
    /// Causal (decoder) attention; false for bidirectional encoders.
    pub causal: bool,
    /// Each query attends to at most this many most recent keys, itself included (Mistral;
    /// Gemma's local layers).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Layers exempt from `sliding_window` (Gemma's global layers, which use `rotary`); empty:
    /// the window, if any, applies to every layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub full_attention_layers: Vec<usize>,
    /// Rotary embedding of the sliding-window layers when it differs from `rotary` (Gemma 3's
    /// local base 10 000 against its global 1 000 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rotary: Option<Rotary>,
    /// RMSNorm of each query and key head over `d_head` before the rotary embedding
    /// (`attn.q_ln`, `attn.k_ln`; Gemma 3).
    #[serde(default, skip_serializing_if = "is_false")]
    pub qk_norm: bool,
    /// Norms on the attention and MLP outputs before they join the residual stream
    /// (`ln1_post`, `ln2_post`; Gemma 2 and 3's "sandwich" norms).
    #[serde(default, skip_serializing_if = "is_false")]
    pub post_sublayer_norms: bool,
    /// Token embeddings are multiplied by this before `hook_embed` (Gemma: `√d_model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_scale: Option<f64>,
    /// The factor on `q·k` (default `1/√d_head`; Gemma: `query_pre_attn_scalar^-1/2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_scale: Option<f64>,
    /// Logits are soft-capped to `c·tanh(z/c)` (Gemma's `final_logit_softcapping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_softcap: Option<f64>,
    /// Token-type (segment) embeddings (BERT); 0 for none.
    #[serde(default)]
    pub n_token_types: usize,
    /// Query/key/value projections have biases.
    pub qkv_bias: bool,
    /// The attention output projection has a bias `b_O`.
    pub out_bias: bool,
    /// MLP projections have biases.
    pub mlp_bias: bool,
    /// A final norm before the head (`ln_final`).
    pub final_norm: bool,
    /// The unembedding is the transposed token embedding.
    pub tied_embeddings: bool,
    /// The head turning hidden states into logits.
    pub lm_head: LmHead,
    /// The head adds a bias `b_U` to the logits (BERT's MLM head).
    #[serde(default)]
    pub unembed_bias: bool,
    /// A BERT pooler (`tanh(h_CLS W + b)`) is part of the checkpoint.
    #[serde(default)]
    pub pooler: bool,
    /// The padding token id, when the checkpoint names one.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// A small GPT-2-style decoder (learned positions, LayerNorm, `gelu_new`, tied embeddings):
    /// a convenient starting point for tests and trained fixtures.
    pub fn gpt2_like(
        n_layers: usize,
        d_model: usize,
        n_heads: usize,
        d_vocab: usize,
        n_ctx: usize,
    ) -> Self {
        ModelConfig {
            family: Family::Metarep,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: n_heads,
            d_head: d_model / n_heads.max(1),
            d_mlp: 4 * d_model,
            d_vocab,
            n_ctx,
            attn_only: false,
            norm: NormKind::LayerNorm,
            eps: 1e-5,
            act: Activation::GeluNew,
            gated_mlp: false,
            learned_positions: true,
            rotary: None,
            parallel_residual: false,
            post_norm: false,
            causal: true,
            sliding_window: None,
            full_attention_layers: Vec::new(),
            local_rotary: None,
            qk_norm: false,
            post_sublayer_norms: false,
            embed_scale: None,
            attn_scale: None,
            final_softcap: None,
            n_token_types: 0,
            qkv_bias: true,
            out_bias: true,
            mlp_bias: true,
            final_norm: true,
            tied_embeddings: true,
            lm_head: LmHead::Linear,
            unembed_bias: false,
            pooler: false,
            pad_token_id: None,
        }
    }

    /// Whether the LayerNorms carry a bias (LayerNorm does, RMSNorm does not).
    pub fn norm_bias(&self) -> bool {
        self.norm == NormKind::LayerNorm
    }

    /// Query heads sharing one key/value head.
    pub fn kv_group(&self) -> usize {
        self.n_heads / self.n_kv_heads.max(1)
    }

    /// Whether blocks have an MLP.
    pub fn has_mlp(&self) -> bool {
        !self.attn_only
    }

    /// The sliding window of layer `l` (`None`: it sees every earlier key).
    pub fn window_of(&self, l: usize) -> Option<usize> {
        self.sliding_window
            .filter(|_| !self.full_attention_layers.contains(&l))
    }

    /// The rotary embedding of layer `l` (sliding-window layers use `local_rotary` when set).
    pub fn rotary_of(&self, l: usize) -> Option<&Rotary> {
        match (&self.local_rotary, self.window_of(l)) {
            (Some(local), Some(_)) => Some(local),
            _ => self.rotary.as_ref(),
        }
    }

    /// The factor on `q·k` in attention scores.
    pub fn score_scale(&self) -> f64 {
        self.attn_scale
            .unwrap_or_else(|| 1.0 / (self.d_head as f64).sqrt())
    }

    /// Whether the residual stream is the plain sum of the embeddings and the sublayers'
    /// `hook_attn_out` / `hook_mlp_out` (false for BERT's post-norm blocks and for Gemma's
    /// norms on the sublayer outputs), as residual decompositions need.
    pub fn additive_residual(&self) -> bool {
        !self.post_norm && !self.post_sublayer_norms
    }

    /// Checks that `len` positions fit the context length `n_ctx`; the error names both.
    pub fn check_positions(&self, len: usize) -> Result<()> {
        if len > self.n_ctx {
            return Err(Error::ContextLength {
                len,
                n_ctx: self.n_ctx,
            });
        }
        Ok(())
    }

    /// Checks the fields are consistent (sizes positive, heads divide, rotary fits the head).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| {
            Err(Error::Config {
                path: "<config>".into(),
                key: key.to_string(),
                reason,
            })
        };
        for (key, v) in [
            ("n_layers", self.n_layers),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("d_head", self.d_head),
            ("d_vocab", self.d_vocab),
            ("n_ctx", self.n_ctx),
        ] {
            if v == 0 {
                return bad(key, "must be ≥ 1".into());
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "n_kv_heads",
                format!(
                    "{} does not divide n_heads = {}",
                    self.n_kv_heads, self.n_heads
                ),
            );
        }
        if !self.attn_only && self.d_mlp == 0 {
            return bad("d_mlp", "must be ≥ 1 unless attn_only".into());
        }
        if let Some(r) = &self.rotary {
            if r.dim == 0 || !r.dim.is_multiple_of(2) || r.dim > self.d_head {
                return bad(
                    "rotary.dim",
                    format!("{} must be even, ≥ 2 and ≤ d_head = {}", r.dim, self.d_head),
                );
            }
            if !(r.base.is_finite() && r.base > 0.0) {
                return bad("rotary.base", format!("{} must be positive", r.base));
            }
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad("eps", format!("{} must be finite and ≥ 0", self.eps));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window", "must be ≥ 1".into());
        }
        if let Some(l) = self
            .full_attention_layers
            .iter()
            .find(|&&l| l >= self.n_layers)
        {
            return bad(
                "full_attention_layers",
                format!("layer {l} is beyond the model's {} layers", self.n_layers),
            );
        }
        if let Some(r) = &self.local_rotary {
            if self.rotary.is_none_or(|g| g.dim != r.dim) {
                return bad(
                    "local_rotary",
                    "needs a global `rotary` of the same dim".into(),
                );
            }
        }
        for (key, v) in [
            ("embed_scale", self.embed_scale),
            ("attn_scale", self.attn_scale),
            ("final_softcap", self.final_softcap),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return bad(key, format!("{v} must be finite and positive"));
                }
            }
        }
        if self.post_sublayer_norms && (self.post_norm || self.parallel_residual) {
            return bad(
                "post_sublayer_norms",
                "sublayer output norms need sequential pre-norm blocks".into(),
            );
        }
        if self.post_norm && self.parallel_residual {
            return bad(
                "parallel_residual",
                "post-norm (BERT) blocks cannot be parallel".into(),
            );
        }
        if self.lm_head == LmHead::BertMlm && !self.post_norm {
            return bad(
                "lm_head",
                "the BERT MLM head needs a post-norm model".into(),
            );
        }
        Ok(())
    }
}

/// For `skip_serializing_if`: metarep's config.json omits the Gemma switches when off.
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_short_and_divides_long_wavelengths() {
        let r = Rotary {
            dim: 64,
            base: 500000.0,
            scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
        };
        let plain = Rotary { scaling: None, ..r }.inv_freq();
        let scaled = r.inv_freq();
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[31] - plain[31] / 8.0).abs() < 1e-18);
        let linear = Rotary {
            scaling: Some(RopeScaling::Linear { factor: 2.0 }),
            ..r
        };
        assert_eq!(linear.inv_freq()[3], plain[3] / 2.0);
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = ModelConfig::gpt2_like(2, 32, 4, 64, 16);
        assert!(c.validate().is_ok());
        c.n_kv_heads = 3;
        assert!(c.validate().unwrap_err().to_string().contains("n_kv_heads"));
        let mut c = ModelConfig::gpt2_like(2, 32, 4, 64, 16);
        c.rotary = Some(Rotary {
            dim: 9,
            base: 1e4,
            scaling: None,
        });
        assert!(c.validate().unwrap_err().to_string().contains("rotary.dim"));
    }
}

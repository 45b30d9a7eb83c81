//! What an SAE is: its architecture, widths and the options that change its function.
//!
//! Decoder norms, per architecture (the default of [`Architecture::default_decoder_norm`]):
//!
//! | architecture | default | why |
//! |---|---|---|
//! | ReLU + L1 | folded | L1 weighted by ‖W_dec row‖ (Anthropic, April 2024 update): rescaling a latent cannot cheat the penalty, no projection needed |
//! | TopK, BatchTopK | unit | no sparsity penalty to fold into; rows renormalised after every step |
//! | JumpReLU | unit | the L0 penalty is scale-free; unit rows keep thresholds comparable |
//! | Gated | unit | as in Rajamanoharan et al. (2024); the gate L1 is weighted by the (unit) norms |
//!
//! `unit` may be chosen for any architecture; `folded` only where an L1 penalty exists (ReLU,
//! Gated).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The encoder nonlinearity and how sparsity is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Architecture {
    /// `f = ReLU(W_enc x + b_enc)`, sparsity from an L1 penalty.
    Relu,
    /// The `k` largest pre-activations of each row, then ReLU (Gao et al. 2024).
    #[serde(rename = "topk")]
    TopK {
        /// Active latents per row.
        k: usize,
    },
    /// The `k · batch` largest positive pre-activations of the whole batch (Bussmann et al.
    /// 2024); at inference a JumpReLU with one learned global threshold.
    #[serde(rename = "batchtopk")]
    BatchTopK {
        /// Average active latents per row.
        k: usize,
    },
    /// `f = z · H(z − θ)` with a learned per-latent threshold θ trained through a
    /// straight-through estimator and an L0 penalty (Rajamanoharan et al. 2024).
    #[serde(rename = "jumprelu")]
    JumpRelu {
        /// Initial threshold θ (> 0).
        init_threshold: f64,
        /// Width ε of the rectangle kernel of the pseudo-derivative (> 0).
        bandwidth: f64,
    },
    /// A gate path `1[W_enc x + b_gate > 0]` times a magnitude path
    /// `ReLU(exp(r_mag) ⊙ W_enc x + b_mag)` sharing `W_enc` (Rajamanoharan et al. 2024).
    Gated,
}

impl Architecture {
    /// The decoder-norm handling used unless the config says otherwise.
    pub fn default_decoder_norm(&self) -> DecoderNorm {
        match self {
            Architecture::Relu => DecoderNorm::Folded,
            _ => DecoderNorm::Unit,
        }
    }

    /// Short name (`relu`, `topk`, `batchtopk`, `jumprelu`, `gated`).
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Relu => "relu",
            Architecture::TopK { .. } => "topk",
            Architecture::BatchTopK { .. } => "batchtopk",
            Architecture::JumpRelu { .. } => "jumprelu",
            Architecture::Gated => "gated",
        }
    }
}

/// How inputs are scaled before encoding (the reconstruction is scaled back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputNorm {
    /// Inputs as they are.
    #[default]
    None,
    /// One scalar `s = √d_in / E‖x‖`, estimated from the data before training (SAELens
    /// `expected_average_only_in`; folded into the weights on export).
    ExpectedNorm,
    /// Every row rescaled to norm `√d_in` (SAELens `constant_norm_rescale`).
    PerRow,
}

/// How decoder row norms are kept from absorbing the sparsity penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderNorm {
    /// Rows renormalised to unit norm after every optimiser step.
    Unit,
    /// Rows free; the L1 penalty of each latent is weighted by its row norm.
    Folded,
}

/// The full description of an SAE's function (saved with checkpoints and exports).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeConfig {
    /// Input width.
    pub d_in: usize,
    /// Number of latents.
    pub d_sae: usize,
    /// Encoder nonlinearity.
    pub architecture: Architecture,
    /// Subtract `b_dec` from the input before encoding (SAELens `apply_b_dec_to_input`).
    pub pre_encoder_bias: bool,
    /// Input scaling.
    pub input_norm: InputNorm,
    /// Decoder row-norm handling.
    pub decoder_norm: DecoderNorm,
}

impl SaeConfig {
    /// `d_sae = expansion · d_in`, pre-encoder bias on, no input scaling, the architecture's
    /// default decoder norm.
    pub fn new(d_in: usize, expansion: usize, architecture: Architecture) -> Result<Self> {
        let cfg = Self {
            d_in,
            d_sae: d_in * expansion,
            architecture,
            pre_encoder_bias: true,
            input_norm: InputNorm::None,
            decoder_norm: architecture.default_decoder_norm(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Errors naming the first inconsistent field.
    pub fn validate(&self) -> Result<()> {
        if self.d_in == 0 || self.d_sae == 0 {
            return Err(Error::Config(format!(
                "d_in and d_sae must be ≥ 1, got {} and {}",
                self.d_in, self.d_sae
            )));
        }
        match self.architecture {
            Architecture::TopK { k } | Architecture::BatchTopK { k }
                if k == 0 || k > self.d_sae =>
            {
                return Err(Error::Config(format!(
                    "k must be in 1..={} (d_sae), got {k}",
                    self.d_sae
                )));
            }
            Architecture::JumpRelu {
                init_threshold,
                bandwidth,
            } if !(init_threshold > 0.0 && bandwidth > 0.0) => {
                return Err(Error::Config(format!(
                    "jumprelu init_threshold and bandwidth must be > 0, got {init_threshold} and {bandwidth}"
                )));
            }
            _ => {}
        }
        if self.decoder_norm == DecoderNorm::Folded
            && !matches!(self.architecture, Architecture::Relu | Architecture::Gated)
        {
            return Err(Error::Config(format!(
                "decoder_norm = folded needs an L1 penalty (relu, gated); {} uses unit",
                self.architecture.name()
            )));
        }
        Ok(())
    }

    /// `d_sae / d_in`.
    pub fn expansion(&self) -> f64 {
        self.d_sae as f64 / self.d_in as f64
    }
}

/// An SAE described relative to its input width (for training configs and the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeSpec {
    /// Encoder nonlinearity.
    pub architecture: Architecture,
    /// `d_sae / d_in`.
    pub expansion: usize,
    /// Subtract `b_dec` before encoding.
    #[serde(default = "yes")]
    pub pre_encoder_bias: bool,
    /// Input scaling.
    #[serde(default)]
    pub input_norm: InputNorm,
    /// Decoder row-norm handling (default: the architecture's).
    #[serde(default)]
    pub decoder_norm: Option<DecoderNorm>,
}

fn yes() -> bool {
    true
}

impl SaeSpec {
    /// The full config for inputs of width `d_in`.
    pub fn config(&self, d_in: usize) -> Result<SaeConfig> {
        let cfg = SaeConfig {
            d_in,
            d_sae: d_in * self.expansion,
            architecture: self.architecture,
            pre_encoder_bias: self.pre_encoder_bias,
            input_norm: self.input_norm,
            decoder_norm: self
                .decoder_norm
                .unwrap_or(self.architecture.default_decoder_norm()),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

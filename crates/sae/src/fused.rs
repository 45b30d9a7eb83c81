//! The hand-written training steps of `metarep-kernels` as seen by the trainer: which SAEs and
//! losses they compute ([`FusedStep::for_sae`]) and one step through them, giving what the
//! autograd path gives — the same loss, the same named parts, gradients in parameter order.

use candle_core::{DType, Tensor};
use metarep_kernels::{ReluSaeLoss, ReluSaeStep, SaeParams, TopkRule, TopkSaeLoss, TopkSaeStep};

use crate::config::{Architecture, DecoderNorm};
use crate::error::Result;
use crate::latents::Latents;
use crate::loss::LossConfig;
use crate::sae::{ForwardPass, Sae};

/// What a step's forward and backward produced: the pass, the total loss and its named parts,
/// the gradients (in parameter order) and each latent's fire count.
pub(crate) type StepResult = (ForwardPass, f64, Vec<(String, f64)>, Vec<Tensor>, Vec<u64>);

/// A hand-written step with its buffers (kept across steps).
#[derive(Debug)]
pub enum FusedStep {
    /// ReLU SAEs trained on reconstruction + L1.
    Relu(ReluSaeStep),
    /// TopK and BatchTopK SAEs trained on reconstruction (+ auxiliary-K).
    TopK(TopkSaeStep),
}

impl FusedStep {
    /// The step that computes `loss` on `sae`, if one does: CPU, f32 or f64, no decorrelation,
    /// probe or temporal term; a ReLU SAE without the auxiliary-K term, or a TopK or BatchTopK
    /// SAE without L1 or L0 terms.
    pub fn for_sae(sae: &Sae, loss: &LossConfig) -> Option<Self> {
        let common = sae.w_dec.device().is_cpu()
            && matches!(sae.w_dec.dtype(), DType::F32 | DType::F64)
            && loss.decorrelation.is_none()
            && loss.probe.is_none()
            && loss.temporal.is_none();
        match sae.config.architecture {
            Architecture::Relu if common && loss.aux_k.is_none() => {
                Some(Self::Relu(ReluSaeStep::new()))
            }
            Architecture::TopK { .. } | Architecture::BatchTopK { .. }
                if common && loss.l1 == 0.0 && loss.l0 == 0.0 =>
            {
                Some(Self::TopK(TopkSaeStep::new()))
            }
            _ => None,
        }
    }

    /// Forward, loss and gradients of `sae` on normalised inputs `x` at schedule step `step`;
    /// `dead` marks the dead latents (read by the auxiliary-K term).
    pub(crate) fn run(
        &mut self,
        sae: &Sae,
        x: Tensor,
        cfg: &LossConfig,
        step: usize,
        dead: &[bool],
    ) -> Result<StepResult> {
        let params = SaeParams {
            w_enc: sae.w_enc.as_tensor(),
            b_enc: sae.b_enc.as_tensor(),
            w_dec: sae.w_dec.as_tensor(),
            b_dec: sae.b_dec.as_tensor(),
        };
        let pre_encoder_bias = sae.config.pre_encoder_bias;
        let mut parts = Vec::new();
        match self {
            Self::Relu(fused) => {
                let l1 = cfg.l1 * cfg.sparsity_ramp(step);
                let loss = ReluSaeLoss {
                    reconstruction: cfg.reconstruction,
                    l1,
                    fold_norms: sae.config.decoder_norm == DecoderNorm::Folded,
                    pre_encoder_bias,
                };
                let out = fused.run(&x, &params, &loss)?;
                parts.push(("reconstruction".to_string(), out.reconstruction));
                if cfg.l1 > 0.0 {
                    parts.push(("l1".to_string(), out.l1));
                }
                let value = cfg.reconstruction * out.reconstruction + l1 * out.l1;
                let pass = ForwardPass::new(x, Latents::Dense(out.codes), out.recon, None);
                Ok((pass, value, parts, fused.grads().to_vec(), out.fired))
            }
            Self::TopK(fused) => {
                let (k, rule) = match sae.config.architecture {
                    Architecture::TopK { k } => (k, TopkRule::PerRow),
                    Architecture::BatchTopK { k } => (k, TopkRule::Batch),
                    other => {
                        return Err(crate::Error::Invalid(format!(
                            "the fused TopK step cannot train a {other:?} SAE"
                        )))
                    }
                };
                let loss = TopkSaeLoss {
                    k,
                    rule,
                    reconstruction: cfg.reconstruction,
                    aux_k: cfg.aux_k.map(|a| (a.k_aux, a.coeff)),
                    pre_encoder_bias,
                };
                let out = fused.run(&x, &params, &loss, dead)?;
                parts.push(("reconstruction".to_string(), out.reconstruction));
                let mut value = cfg.reconstruction * out.reconstruction;
                if let (Some(a), Some(aux)) = (cfg.aux_k, out.aux_k) {
                    parts.push(("aux_k".to_string(), aux));
                    value += a.coeff * aux;
                }
                let latents = Latents::Sparse {
                    indices: out.indices,
                    values: out.codes,
                };
                let mut pass = ForwardPass::new(x, latents, out.recon, None);
                pass.batch_min = out.batch_min;
                Ok((pass, value, parts, fused.grads().to_vec(), out.fired))
            }
        }
    }
}

//! An SAE spliced into a language model at its hook point: how much of the model's next-token
//! loss survives when the activation is replaced by the SAE's reconstruction.
//!
//! For token sequences `[batch, pos + 1]` (inputs `[:, :-1]` predicting `[:, 1:]`), four runs
//! per batch: clean, SAE-spliced, zero-ablated and mean-ablated at the hook (the mean is over
//! every token of every sequence given, one vector `[d_in]`). Reported:
//!
//! - `CE loss recovered = (CE_ablate − CE_sae) / (CE_ablate − CE_clean)` against each ablation
//!   (1 = the SAE loses nothing, 0 = no better than ablating the activation);
//! - mean per-token `KL(p_clean ‖ p_run)` of the next-token distributions, for each run.
//!
//! The model and the SAE may differ in dtype; the activation is converted to the SAE's dtype
//! and the reconstruction back.

use candle_core::Tensor;
use metarep_model::hooks::{HookPoint, HookSet};
use metarep_model::ops::log_softmax_last_dim;
use metarep_model::train::cross_entropy;
use metarep_model::{HookedTransformer, Input};

use crate::error::{Error, Result};
use crate::hook_rows::hook_rows;
use crate::sae::Sae;

/// Losses and divergences of an SAE spliced in at one hook.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SpliceScores {
    /// The hook (TransformerLens name).
    pub hook: String,
    /// Predicted tokens the means are over.
    pub tokens: usize,
    /// Mean next-token cross-entropy of the clean model (nats).
    pub ce_clean: f64,
    /// ... with the SAE's reconstruction at the hook.
    pub ce_sae: f64,
    /// ... with the activation set to zero.
    pub ce_zero: f64,
    /// ... with the activation set to its mean.
    pub ce_mean: f64,
    /// `(CE_zero − CE_sae) / (CE_zero − CE_clean)`.
    pub recovered_zero: f64,
    /// `(CE_mean − CE_sae) / (CE_mean − CE_clean)`.
    pub recovered_mean: f64,
    /// Mean per-token `KL(clean ‖ SAE-spliced)` (nats).
    pub kl_sae: f64,
    /// Mean per-token `KL(clean ‖ zero-ablated)`.
    pub kl_zero: f64,
    /// Mean per-token `KL(clean ‖ mean-ablated)`.
    pub kl_mean: f64,
}

/// What replaces the activation at the hook.
enum Replacement<'a> {
    Sae(&'a Sae),
    Zero,
    Mean(&'a Tensor),
}

/// Scores `sae` spliced into `model` at `point` on `sequences` (each `[batch, pos + 1]` token
/// ids). The hook's last dimension must be the SAE's `d_in`.
pub fn splice_scores(
    model: &HookedTransformer,
    sae: &Sae,
    point: HookPoint,
    sequences: &[Tensor],
) -> Result<SpliceScores> {
    let hook = point.name();
    point.check_available(model.config())?;
    if sequences.is_empty() {
        return Err(Error::Invalid("splice_scores: no sequences given".into()));
    }
    let mean = hook_mean(model, point, sequences, sae.config.d_in)?;
    let (mut tokens, mut ce, mut kl) = (0usize, [0f64; 4], [0f64; 3]);
    for seqs in sequences {
        let (b, n) = seqs.dims2()?;
        if n < 2 {
            return Err(Error::shape(
                "sequences",
                "[batch, ≥ 2]",
                format!("{:?}", seqs.dims()),
            ));
        }
        let input = Input::new(seqs.narrow(1, 0, n - 1)?);
        let targets = seqs.narrow(1, 1, n - 1)?;
        let clean = model.forward(input.clone())?;
        let runs = [
            Replacement::Sae(sae),
            Replacement::Zero,
            Replacement::Mean(&mean),
        ]
        .map(|r| run_replaced(model, &input, point, r));
        let count = b * (n - 1);
        tokens += count;
        let clean_logp = log_softmax_last_dim(&clean)?;
        ce[0] += count as f64 * cross_entropy(&clean, &targets, None)?.to_scalar::<f32>()? as f64;
        for (i, run) in runs.into_iter().enumerate() {
            let logits = run?;
            ce[i + 1] +=
                count as f64 * cross_entropy(&logits, &targets, None)?.to_scalar::<f32>()? as f64;
            kl[i] += kl_sum(&clean_logp, &log_softmax_last_dim(&logits)?)?;
        }
    }
    let t = tokens as f64;
    let [ce_clean, ce_sae, ce_zero, ce_mean] = ce.map(|c| c / t);
    let [kl_sae, kl_zero, kl_mean] = kl.map(|k| k / t);
    Ok(SpliceScores {
        hook,
        tokens,
        ce_clean,
        ce_sae,
        ce_zero,
        ce_mean,
        recovered_zero: (ce_zero - ce_sae) / (ce_zero - ce_clean),
        recovered_mean: (ce_mean - ce_sae) / (ce_mean - ce_clean),
        kl_sae,
        kl_zero,
        kl_mean,
    })
}

/// Mean of the activation at `point` over every input token of `sequences`, `[d_in]` (f32).
fn hook_mean(
    model: &HookedTransformer,
    point: HookPoint,
    sequences: &[Tensor],
    d_in: usize,
) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    let mut count = 0usize;
    for seqs in sequences {
        let (_, n) = seqs.dims2()?;
        let input = Input::new(seqs.narrow(1, 0, n.saturating_sub(1).max(1))?);
        let rows = hook_rows(model, point, &input, 0, d_in)?;
        count += rows.dim(0)?;
        let s = rows.sum(0)?;
        sum = Some(match sum {
            None => s,
            Some(acc) => (acc + s)?,
        });
    }
    let sum = sum.ok_or_else(|| Error::Invalid("no tokens".into()))?;
    Ok((sum / count as f64)?.to_device(model.device())?)
}

/// Logits of a run with the activation at `point` replaced.
fn run_replaced(
    model: &HookedTransformer,
    input: &Input,
    point: HookPoint,
    replacement: Replacement<'_>,
) -> Result<Tensor> {
    let mut hooks = HookSet::new().add(point, |_, act| {
        let dims = act.dims().to_vec();
        let d = dims[dims.len() - 1];
        let new = match &replacement {
            Replacement::Zero => act.zeros_like()?,
            Replacement::Mean(m) => m
                .to_dtype(act.dtype())?
                .broadcast_as(act.shape())?
                .contiguous()?,
            Replacement::Sae(sae) => {
                let rows = act.reshape(((), d))?.to_dtype(sae.w_dec.dtype())?;
                sae.reconstruct(&rows)
                    .map_err(|e| {
                        metarep_model::Error::Invalid(format!("SAE at {}: {e}", point.name()))
                    })?
                    .to_dtype(act.dtype())?
                    .reshape(dims.as_slice())?
            }
        };
        Ok(Some(new))
    });
    Ok(model.run_with_hooks(input.clone(), &mut hooks)?)
}

/// `Σ_tokens KL(p ‖ q)` from log-probabilities `[batch, pos, vocab]`.
fn kl_sum(logp: &Tensor, logq: &Tensor) -> Result<f64> {
    let kl = (logp.exp()? * (logp - logq)?)?.sum_all()?;
    Ok(kl.to_scalar::<f32>()? as f64)
}

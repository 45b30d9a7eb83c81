//! Next-token prediction metrics of a model on a set of sequences, with or without hooks:
//! the clean baseline every ablation, scaling and patching experiment compares against.
//!
//! Over the counted positions: mean cross-entropy, accuracy (argmax = target), mean entropy of
//! the output distribution and, when the set names an alternative token per position, the mean
//! logit difference `logit[target] − logit[alternative]`.

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::input::Input;
use crate::model::HookedTransformer;
use crate::ops::log_softmax_last_dim;

/// What is evaluated: sequences, which next-token predictions count, and optional
/// alternatives.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// Token ids `[batch, n]`; position `p` predicts token `p + 1`.
    pub tokens: Tensor,
    /// Which of the `n − 1` predictions count, `[batch, n − 1]` (any dtype, nonzero = yes);
    /// `None`: all.
    pub mask: Option<Tensor>,
    /// An alternative token per prediction `[batch, n − 1]` (u32) for the logit difference.
    pub alternative: Option<Tensor>,
}

/// A clean prompt and a corrupted one of the same length, with the token the clean prompt
/// should predict next (`answer`) and the one the corrupted prompt suggests (`alternative`):
/// one unit of a patching experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptPair {
    /// Clean prompt token ids.
    pub clean: Vec<u32>,
    /// Corrupted prompt token ids (same length).
    pub corrupted: Vec<u32>,
    /// The clean answer.
    pub answer: u32,
    /// The corrupted prompt's answer.
    pub alternative: u32,
}

/// Prediction metrics over the counted positions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Mean cross-entropy (nats).
    pub loss: f64,
    /// Fraction predicted exactly (argmax).
    pub accuracy: f64,
    /// Mean entropy of the output distribution (nats).
    pub entropy: f64,
    /// Mean `logit[target] − logit[alternative]` (NaN without alternatives).
    pub logit_diff: f64,
}

/// Prediction metrics of `model` on `eval` with `hooks` applied.
pub fn metrics<H: Hooks>(
    model: &HookedTransformer,
    eval: &EvalSet,
    hooks: &mut H,
) -> Result<Metrics> {
    let (_, n) = eval_dims(eval)?;
    let input = eval.tokens.narrow(1, 0, n - 1)?;
    score(&model.run_with_hooks(Input::new(input), hooks)?, eval)
}

/// [`metrics`] of a pass that starts at block `start` from `resid`, the residual stream
/// entering that block in the clean pass over `eval` (`[batch, n − 1, d_model]`, e.g. its
/// `blocks.{start}.hook_resid_pre`), as TransformerLens's `start_at_layer`: only blocks
/// `start..` and the head run again. Equals [`metrics`] when `hooks` touch nothing before
/// block `start`; hooks of earlier blocks are not called.
pub fn metrics_from<H: Hooks>(
    model: &HookedTransformer,
    eval: &EvalSet,
    resid: &Tensor,
    start: usize,
    hooks: &mut H,
) -> Result<Metrics> {
    let (b, n) = eval_dims(eval)?;
    let (rb, rn, _) = resid.dims3()?;
    if (rb, rn + 1) != (b, n) {
        return Err(Error::Invalid(format!(
            "metrics_from: a residual stream of {rb} × {rn} positions does not match an \
             evaluation set of {b} sequences of {n} tokens (it needs {b} × {})",
            n.saturating_sub(1)
        )));
    }
    score(
        &model.run_from(resid, start, hooks, model.default_output())?,
        eval,
    )
}

/// `[batch, n]` of `eval`'s tokens, with the n ≥ 2 that a prediction needs.
fn eval_dims(eval: &EvalSet) -> Result<(usize, usize)> {
    let (b, n) = eval.tokens.dims2()?;
    if n < 2 {
        return Err(Error::Invalid(
            "evaluation sequences need ≥ 2 tokens".into(),
        ));
    }
    Ok((b, n))
}

/// The metrics of `logits` `[batch, n − 1, d_vocab]` predicting `eval`'s tokens `1..n`.
fn score(logits: &Tensor, eval: &EvalSet) -> Result<Metrics> {
    let (_, n) = eval.tokens.dims2()?;
    let targets = eval
        .tokens
        .narrow(1, 1, n - 1)?
        .to_dtype(DType::U32)?
        .contiguous()?;
    let logits = logits.to_dtype(DType::F32)?;
    // Targets, mask and alternatives may come from the CPU for a model on a GPU.
    let dev = logits.device().clone();
    let targets = targets.to_device(&dev)?;
    let logp = log_softmax_last_dim(&logits)?;
    let pick = |ids: &Tensor| -> Result<Tensor> {
        Ok(logits
            .gather(&ids.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?)
    };
    let nll = logp
        .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?
        .neg()?;
    let correct = logits
        .argmax(D::Minus1)?
        .eq(&targets)?
        .to_dtype(DType::F32)?;
    let entropy = (logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?;
    let mask = match &eval.mask {
        Some(m) => m.ne(0u32 as f64)?.to_dtype(DType::F32)?.to_device(&dev)?,
        None => Tensor::ones(nll.dims(), DType::F32, nll.device())?,
    };
    if mask.dims() != nll.dims() {
        return Err(Error::Invalid(format!(
            "mask shape {:?}, expected {:?}",
            mask.dims(),
            nll.dims()
        )));
    }
    let count = mask.sum_all()?.to_scalar::<f32>()? as f64;
    if count == 0.0 {
        return Err(Error::Invalid("the mask selects no position".into()));
    }
    let avg = |t: &Tensor| -> Result<f64> {
        Ok((t * &mask)?.sum_all()?.to_scalar::<f32>()? as f64 / count)
    };
    let logit_diff = match &eval.alternative {
        Some(alt) => {
            if alt.dims() != nll.dims() {
                return Err(Error::Invalid(format!(
                    "alternative shape {:?}, expected {:?}",
                    alt.dims(),
                    nll.dims()
                )));
            }
            avg(&(pick(&targets)? - pick(&alt.to_dtype(DType::U32)?.to_device(&dev)?)?)?)?
        }
        None => f64::NAN,
    };
    Ok(Metrics {
        loss: avg(&nll)?,
        accuracy: avg(&correct)?,
        entropy: avg(&entropy)?,
        logit_diff,
    })
}

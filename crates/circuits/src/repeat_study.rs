//! An induction study on repeated random tokens, for any hooked model: the four detector
//! scores of every head ([`head_scores`]), the loss on the first and the second copy with 95%
//! bootstrap intervals over sequences ([`RepeatLosses`]), the mean loss at every position, and
//! the top induction heads zero-ablated cumulatively — the top head, then the top two, … — with
//! the repeat losses after each step.
//!
//! Every bootstrap draws its resamples from a generator seeded by the same
//! [`StudyOptions::bootstrap_seed`], so the clean and the ablated intervals resample the same
//! sequences.

use candle_core::Tensor;
use metarep_model::interventions::{Intervention, Interventions};
use metarep_model::{Component, HookedTransformer, NoHooks};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::detectors::{head_scores, token_losses, HeadScores, RepeatLosses};
use crate::error::{Error, Result};
use crate::ranking::ranked_heads;

/// What [`repeat_study`] computes beyond the detector scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyOptions {
    /// Top induction heads zeroed cumulatively (one ablation step per head; 0: none).
    pub ablate_top: usize,
    /// Percentile-bootstrap resamples of the 95% intervals (≥ 100).
    pub resamples: usize,
    /// Seed of every bootstrap's resampling.
    pub bootstrap_seed: u64,
}

/// The repeat losses with some heads zeroed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AblationStep {
    /// The heads zeroed together, in ranking order.
    pub heads: Vec<Component>,
    /// First- and second-copy loss with 95% intervals.
    pub losses: RepeatLosses,
    /// Mean loss at every predicted position (see [`loss_by_position`]).
    pub by_position: Vec<f64>,
}

/// Everything [`repeat_study`] measures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepeatStudy {
    /// The four detector scores of every head, `[layer][head]`.
    pub scores: HeadScores,
    /// Every head by induction score, highest first.
    pub ranked: Vec<(Component, f64)>,
    /// First- and second-copy loss of the clean model with 95% intervals.
    pub clean: RepeatLosses,
    /// The clean model's mean loss at every predicted position.
    pub by_position: Vec<f64>,
    /// Step `k` (from 0) zeroes the top `k + 1` induction heads.
    pub ablations: Vec<AblationStep>,
}

/// Mean over sequences of per-position losses `[batch][position]` (rows of equal length, as
/// [`token_losses`] returns them): one value per position.
pub fn loss_by_position(losses: &[Vec<f64>]) -> Result<Vec<f64>> {
    let width = losses.first().map_or(0, Vec::len);
    if width == 0 || losses.iter().any(|r| r.len() != width) {
        return Err(Error::Invalid(format!(
            "loss_by_position: {} rows, which must be non-empty and of one length",
            losses.len()
        )));
    }
    let n = losses.len() as f64;
    Ok((0..width)
        .map(|p| losses.iter().map(|r| r[p]).sum::<f64>() / n)
        .collect())
}

/// Runs the study on `tokens` `[batch, 2·len + 1]` of `[BOS, s, s]` sequences (see
/// [`crate::detectors::TokenDraw`]); needs at least two sequences for the intervals.
pub fn repeat_study(
    model: &HookedTransformer,
    tokens: &Tensor,
    opts: &StudyOptions,
) -> Result<RepeatStudy> {
    let scores = head_scores(model, tokens)?;
    let ranked = ranked_heads(&scores.induction);
    if opts.ablate_top > ranked.len() {
        return Err(Error::Invalid(format!(
            "ablate_top = {} but the model has {} heads",
            opts.ablate_top,
            ranked.len()
        )));
    }
    let clean = measure(model, tokens, &[], opts)?;
    let top: Vec<Component> = ranked.iter().map(|h| h.0).take(opts.ablate_top).collect();
    let ablations = (1..=top.len())
        .map(|k| measure(model, tokens, &top[..k], opts))
        .collect::<Result<Vec<_>>>()?;
    Ok(RepeatStudy {
        scores,
        ranked,
        clean: clean.losses,
        by_position: clean.by_position,
        ablations,
    })
}

/// Repeat losses and the loss by position with `heads` zeroed (none: the clean model).
pub fn measure(
    model: &HookedTransformer,
    tokens: &Tensor,
    heads: &[Component],
    opts: &StudyOptions,
) -> Result<AblationStep> {
    let losses = if heads.is_empty() {
        token_losses(model, tokens, &mut NoHooks)?
    } else {
        let zeroed = heads
            .iter()
            .map(|&c| Intervention::zero(c))
            .collect::<metarep_model::Result<Vec<_>>>()?;
        token_losses(model, tokens, &mut Interventions::new(zeroed))?
    };
    let mut rng = StdRng::seed_from_u64(opts.bootstrap_seed);
    Ok(AblationStep {
        heads: heads.to_vec(),
        losses: RepeatLosses::from_token_losses(&losses, opts.resamples, &mut rng)?,
        by_position: loss_by_position(&losses)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_by_position_averages_columns_and_rejects_ragged_rows() {
        let m = loss_by_position(&[vec![1.0, 2.0], vec![3.0, 6.0]]).unwrap();
        assert_eq!(m, vec![2.0, 4.0]);
        assert!(loss_by_position(&[vec![1.0], vec![1.0, 2.0]]).is_err());
        assert!(loss_by_position(&[]).is_err());
    }
}

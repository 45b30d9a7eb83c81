//! Activation patching (clean → corrupted): run the corrupted prompts with one activation
//! taken from the clean run, and see how much of the clean behaviour comes back.
//!
//! The behaviour is the logit difference `logit[answer] − logit[alternative]` at the last
//! position, averaged over prompts. A patch's score is normalised:
//! `(patched − corrupted) / (clean − corrupted)`, 1 when the patch restores the clean logit
//! difference and 0 when it changes nothing. Two sweeps give heat maps: the residual stream
//! (`hook_resid_pre`) per layer and position, and every head's output (`hook_z`) per layer and
//! head (all positions). A patch at block `l` runs only blocks `l..` (from the corrupted run's
//! residual stream there) and unembeds only the last position.

use candle_core::{DType, Device, Tensor, D};
use metarep_model::interventions::{Intervention, Interventions};
use metarep_model::predictions::PromptPair;
use metarep_model::{
    ActivationCache, HookFilter, HookPoint, HookedTransformer, Hooks, Input, RunTo,
};
use serde::Serialize;

use crate::detectors::repeated_tokens;
use crate::error::{Error, Result};

/// Clean and corrupted prompts of the same shape, and the answer and alternative token per
/// prompt (read at the last position).
#[derive(Debug, Clone)]
pub struct PatchSet {
    /// Clean prompts `[batch, pos]`.
    pub clean: Tensor,
    /// Corrupted prompts `[batch, pos]`.
    pub corrupted: Tensor,
    /// The correct answer per prompt `[batch]` (u32).
    pub answer: Tensor,
    /// The alternative per prompt `[batch]` (u32).
    pub alternative: Tensor,
}

impl PatchSet {
    /// Stacks `pairs` (all of one prompt length) into a patch set on `dev`.
    pub fn from_pairs(pairs: &[PromptPair], dev: &Device) -> Result<Self> {
        let n = pairs
            .first()
            .ok_or_else(|| Error::Invalid("patching needs at least one prompt pair".into()))?
            .clean
            .len();
        if let Some((i, p)) = pairs
            .iter()
            .enumerate()
            .find(|(_, p)| p.clean.len() != n || p.corrupted.len() != n)
        {
            return Err(Error::Invalid(format!(
                "prompt pair {i} has {} clean and {} corrupted tokens; pair 0 has {n}",
                p.clean.len(),
                p.corrupted.len()
            )));
        }
        let b = pairs.len();
        let flat = |f: fn(&PromptPair) -> &[u32]| pairs.iter().flat_map(f).copied().collect();
        Ok(PatchSet {
            clean: Tensor::from_vec(flat(|p| &p.clean), (b, n), dev)?,
            corrupted: Tensor::from_vec(flat(|p| &p.corrupted), (b, n), dev)?,
            answer: Tensor::from_vec(pairs.iter().map(|p| p.answer).collect(), b, dev)?,
            alternative: Tensor::from_vec(pairs.iter().map(|p| p.alternative).collect(), b, dev)?,
        })
    }
}

/// Induction prompt pairs: clean `[BOS, s, s₁..s_j]` predicting `s_{j+1}`, corrupted
/// `[BOS, s', s₁..s_j]` (another first copy) suggesting `s'_{j+1}`, so only the clean run's
/// first copy tells the answer; `batch` pairs of segments of `segment` tokens from `1..vocab`,
/// `j = read_at` (`1 ≤ j < segment`).
pub fn induction_pairs(
    rng: &mut impl rand::Rng,
    batch: usize,
    segment: usize,
    vocab: usize,
    read_at: usize,
) -> Result<Vec<PromptPair>> {
    if read_at == 0 || read_at >= segment {
        return Err(Error::Invalid(format!(
            "induction pairs: read position {read_at} must be in 1..{segment}"
        )));
    }
    let a = repeated_tokens(rng, batch, segment, vocab)?.to_vec2::<u32>()?;
    let b = repeated_tokens(rng, batch, segment, vocab)?.to_vec2::<u32>()?;
    let n = 1 + segment + read_at;
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let mut corrupted = vec![x[0]];
            corrupted.extend_from_slice(&y[1..=segment]);
            corrupted.extend_from_slice(&x[segment + 1..n]);
            PromptPair {
                clean: x[..n].to_vec(),
                corrupted,
                answer: x[read_at + 1],
                alternative: y[read_at + 1],
            }
        })
        .collect())
}

/// Normalised patching scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchReport {
    /// Mean logit difference on the clean prompts.
    pub clean_logit_diff: f64,
    /// ... on the corrupted prompts.
    pub corrupted_logit_diff: f64,
    /// `[layer][position]`: residual stream patched at `blocks.{layer}.hook_resid_pre`.
    pub resid: Vec<Vec<f64>>,
    /// `[layer][head]`: one head's `hook_z` patched at every position.
    pub heads: Vec<Vec<f64>>,
}

impl PatchReport {
    /// The report as markdown: the two logit differences, then the residual-stream table
    /// (layers × positions) and the head table (layers × heads) of normalised scores.
    pub fn to_markdown(&self) -> String {
        let grid = |corner: &str, col: &str, rows: &[Vec<f64>]| -> String {
            let cols = rows.first().map_or(0, Vec::len);
            let mut t = format!("| {corner} |");
            for c in 0..cols {
                t.push_str(&format!(" {col} {c} |"));
            }
            t.push_str(&format!("\n|---|{}\n", "---|".repeat(cols)));
            for (l, row) in rows.iter().enumerate() {
                t.push_str(&format!("| layer {l} |"));
                for v in row {
                    t.push_str(&format!(" {v:.3} |"));
                }
                t.push('\n');
            }
            t
        };
        format!(
            "logit difference: clean {:.4}, corrupted {:.4}\n\nresidual stream (hook_resid_pre), share restored:\n\n{}\nhead outputs (hook_z), share restored:\n\n{}",
            self.clean_logit_diff,
            self.corrupted_logit_diff,
            grid("resid_pre", "pos", &self.resid),
            grid("z", "head", &self.heads)
        )
    }
}

/// Per prompt, `logit[answer] − logit[alternative]` at the last position of `tokens: [batch,
/// pos]` under `hooks` (`answer`, `alternative`: `[batch]` u32). Only the last position is
/// unembedded.
pub fn last_logit_diffs<H: Hooks>(
    model: &HookedTransformer,
    tokens: &Tensor,
    answer: &Tensor,
    alternative: &Tensor,
    hooks: &mut H,
) -> Result<Vec<f32>> {
    let hidden = model.run(&Input::new(tokens.clone()), hooks, RunTo::Hidden)?;
    diffs_at_last(model, &hidden, answer, alternative)
}

/// `logit[answer] − logit[alternative]` per row at the last position of `hidden: [batch, pos,
/// d_model]` (what the head reads).
fn diffs_at_last(
    model: &HookedTransformer,
    hidden: &Tensor,
    answer: &Tensor,
    alternative: &Tensor,
) -> Result<Vec<f32>> {
    let last = hidden.dim(1)? - 1;
    let at = model
        .unembed(&hidden.narrow(1, last, 1)?)?
        .squeeze(1)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let pick = |ids: &Tensor| -> Result<Tensor> {
        Ok(at
            .gather(&ids.to_dtype(DType::U32)?.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?)
    };
    Ok((pick(answer)? - pick(alternative)?)?.to_vec1::<f32>()?)
}

fn mean(diffs: &[f32]) -> f64 {
    diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64
}

/// One plain run of `tokens` recording the hooks `filter` selects: its mean `logit[answer] −
/// logit[alternative]` at the last position and the cache.
pub(crate) fn cached_logit_diff(
    model: &HookedTransformer,
    tokens: &Tensor,
    filter: impl Into<HookFilter>,
    set: &PatchSet,
) -> Result<(f64, ActivationCache)> {
    let (hidden, cache) =
        model.run_with_cache_to(&Input::new(tokens.clone()), filter, RunTo::Hidden)?;
    let diffs = diffs_at_last(model, &hidden, &set.answer, &set.alternative)?;
    Ok((mean(&diffs), cache))
}

/// Mean `logit[answer] − logit[alternative]` at the last position of the run that continues
/// from `resid`, the residual stream entering block `start`, under `hooks` (see
/// [`HookedTransformer::run_from`]): what a full run gives when everything before `start` is
/// the run that produced `resid`.
pub(crate) fn logit_diff_from<H: Hooks>(
    model: &HookedTransformer,
    resid: &Tensor,
    start: usize,
    set: &PatchSet,
    hooks: &mut H,
) -> Result<f64> {
    let hidden = model.run_from(resid, start, hooks, RunTo::Hidden)?;
    Ok(mean(&diffs_at_last(
        model,
        &hidden,
        &set.answer,
        &set.alternative,
    )?))
}

impl PatchSet {
    /// `[batch, pos]`: checks the four tensors' shapes agree.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (b, p) = self.clean.dims2()?;
        if self.corrupted.dims() != [b, p]
            || self.answer.dims() != [b]
            || self.alternative.dims() != [b]
        {
            return Err(Error::Invalid(format!(
                "patching needs clean and corrupted [batch, pos] of one shape and answers [batch]: got {:?}, {:?}, {:?}, {:?}",
                self.clean.dims(),
                self.corrupted.dims(),
                self.answer.dims(),
                self.alternative.dims()
            )));
        }
        Ok((b, p))
    }

    /// The first position at which some clean and corrupted prompt differ (`pos` when none
    /// do). In a causal model every activation before it is the same in both runs.
    pub fn first_difference(&self) -> Result<usize> {
        let (_, p) = self.dims()?;
        let differs = self
            .clean
            .ne(&self.corrupted)?
            .to_dtype(DType::F32)?
            .sum(0)?
            .to_vec1::<f32>()?;
        Ok(differs.iter().position(|&d| d > 0.0).unwrap_or(p))
    }
}

/// Runs both sweeps. In a causal model, residual-stream patches at positions before
/// [`PatchSet::first_difference`] replace an activation by itself and score exactly 0; they are
/// not run.
pub fn patch(model: &HookedTransformer, set: &PatchSet) -> Result<PatchReport> {
    let (_, p) = set.dims()?;
    let same_before = if model.config().causal {
        set.first_difference()?
    } else {
        0
    };
    let cfg = model.config();
    let names: Vec<String> = (0..cfg.n_layers)
        .flat_map(|l| [HookPoint::ResidPre(l).name(), HookPoint::Z(l).name()])
        .collect();
    let (clean, cache) = cached_logit_diff(model, &set.clean, HookFilter::patterns(&names), set)?;
    let starts: Vec<HookPoint> = (0..cfg.n_layers).map(HookPoint::ResidPre).collect();
    let (corrupted, corrupted_cache) = cached_logit_diff(model, &set.corrupted, starts, set)?;
    let span = clean - corrupted;
    if span.abs() < 1e-9 {
        return Err(Error::Invalid(
            "clean and corrupted prompts give the same logit difference: nothing to patch".into(),
        ));
    }
    // A patch at block `l` leaves blocks before it as in the corrupted run: start there.
    let score = |l: usize, iv: Intervention| -> Result<f64> {
        let start = corrupted_cache.get(HookPoint::ResidPre(l))?;
        let v = logit_diff_from(model, start, l, set, &mut Interventions::new(vec![iv]))?;
        Ok((v - corrupted) / span)
    };
    let mut resid = Vec::with_capacity(cfg.n_layers);
    let mut heads = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let source = cache.get(HookPoint::ResidPre(l))?.clone();
        resid.push(
            (0..p)
                .map(|pos| {
                    if pos < same_before {
                        return Ok(0.0);
                    }
                    score(
                        l,
                        Intervention::patch(HookPoint::ResidPre(l), source.clone())
                            .at_positions(&[pos]),
                    )
                })
                .collect::<Result<Vec<_>>>()?,
        );
        let z = cache.get(HookPoint::Z(l))?.clone();
        heads.push(
            (0..cfg.n_heads)
                .map(|h| {
                    score(
                        l,
                        Intervention::patch(HookPoint::Z(l), z.clone()).at_channels(&[h]),
                    )
                })
                .collect::<Result<Vec<_>>>()?,
        );
    }
    Ok(PatchReport {
        clean_logit_diff: clean,
        corrupted_logit_diff: corrupted,
        resid,
        heads,
    })
}

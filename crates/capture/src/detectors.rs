//! Attention-head detectors on repeated random tokens, and in-context loss per position.
//!
//! A repeated batch is `[BOS, s_1 … s_L, s_1 … s_L]` with `s` random tokens (ids in
//! `1..vocab`, so BOS = 0 never repeats inside). For every head, from its attention pattern
//! `[batch, head, query, key]`:
//! - **induction**: attention from a second-repeat token (position `q = L + i`, `i = 1..L`)
//!   to the token after its previous occurrence (`q − L + 1`);
//! - **previous-token**: attention from `q` to `q − 1`, over every `q ≥ 1`;
//! - **duplicate-token**: attention from `q` to earlier positions holding the same token;
//! - **prefix-matching**: attention from `q` to earlier positions whose *previous* token is the
//!   token at `q` (the general form of the induction pattern, on any sequence).
//!
//! The last three are averaged over the queries that have such a key (duplicate and
//! prefix-matching: mostly the second repeat). Scores are mean attention weights in `[0, 1]`.
//! [`token_losses`] and [`repeat_losses`] give the in-context loss on the first and the second
//! repeat.

use candle_core::{Device, Tensor, D};
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input};
use rand::Rng;
use serde::Serialize;

use crate::ablation::log_softmax;
use crate::error::{Error, Result};

/// Token id placed first in every repeated sequence.
pub const BOS: u32 = 0;

/// `batch` sequences `[BOS, s, s]` with `s` of `len` tokens drawn uniformly from `1..vocab`:
/// `[batch, 2·len + 1]` u32.
pub fn repeated_tokens(
    rng: &mut impl Rng,
    batch: usize,
    len: usize,
    vocab: usize,
) -> Result<Tensor> {
    if vocab < 2 || len == 0 || batch == 0 {
        return Err(Error::Invalid(format!(
            "repeated tokens need vocab ≥ 2, len ≥ 1, batch ≥ 1 (got {vocab}, {len}, {batch})"
        )));
    }
    let mut ids = Vec::with_capacity(batch * (2 * len + 1));
    for _ in 0..batch {
        let seg: Vec<u32> = (0..len)
            .map(|_| rng.random_range(1..vocab as u32))
            .collect();
        ids.push(BOS);
        ids.extend_from_slice(&seg);
        ids.extend_from_slice(&seg);
    }
    Ok(Tensor::from_vec(ids, (batch, 2 * len + 1), &Device::Cpu)?)
}

/// Per-head scores `[layer][head]` of the four detectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadScores {
    /// Attention to the token after the previous occurrence (second repeat).
    pub induction: Vec<Vec<f64>>,
    /// Attention to the previous position.
    pub previous_token: Vec<Vec<f64>>,
    /// Attention to earlier occurrences of the same token.
    pub duplicate_token: Vec<Vec<f64>>,
    /// Attention to positions right after earlier occurrences of the same token.
    pub prefix_matching: Vec<Vec<f64>>,
}

impl HeadScores {
    /// Heads `(layer, head, score)` of `scores` sorted from the highest score down.
    pub fn ranked(scores: &[Vec<f64>]) -> Vec<(usize, usize, f64)> {
        let mut all: Vec<(usize, usize, f64)> = scores
            .iter()
            .enumerate()
            .flat_map(|(l, hs)| hs.iter().enumerate().map(move |(h, &s)| (l, h, s)))
            .collect();
        all.sort_by(|a, b| b.2.total_cmp(&a.2));
        all
    }
}

/// Runs the four detectors on `tokens` `[batch, 2·len + 1]` (as made by [`repeated_tokens`]).
pub fn head_scores(model: &HookedTransformer, tokens: &Tensor) -> Result<HeadScores> {
    let (batch, n) = tokens.dims2()?;
    if n < 3 || n.is_multiple_of(2) {
        return Err(Error::Invalid(format!(
            "head_scores: sequences of 2·len + 1 tokens expected, got {n}"
        )));
    }
    let len = (n - 1) / 2;
    let ids = tokens.to_vec2::<u32>()?;
    let cfg = model.config();
    let patterns: Vec<String> = (0..cfg.n_layers)
        .map(|l| HookPoint::Pattern(l).name())
        .collect();
    let (_, cache) =
        model.run_with_cache(Input::new(tokens.clone()), HookFilter::patterns(&patterns))?;
    let mut scores = HeadScores {
        induction: Vec::new(),
        previous_token: Vec::new(),
        duplicate_token: Vec::new(),
        prefix_matching: Vec::new(),
    };
    for l in 0..cfg.n_layers {
        // [batch, head, q, k]
        let p = cache
            .get(HookPoint::Pattern(l))?
            .to_dtype(candle_core::DType::F32)?;
        let p = to_vec4(&p)?;
        let heads = p[0].len();
        let mut row = [
            vec![0.0; heads],
            vec![0.0; heads],
            vec![0.0; heads],
            vec![0.0; heads],
        ];
        for h in 0..heads {
            let (mut ind, mut prev, mut dup, mut pre) = ((0.0, 0), (0.0, 0), (0.0, 0), (0.0, 0));
            for b in 0..batch {
                let a = &p[b][h];
                let t = &ids[b];
                for q in 1..n {
                    prev.0 += f64::from(a[q][q - 1]);
                    prev.1 += 1;
                    if q > len {
                        ind.0 += f64::from(a[q][q - len + 1]);
                        ind.1 += 1;
                    }
                    let same: Vec<usize> = (0..q).filter(|&k| t[k] == t[q]).collect();
                    if !same.is_empty() {
                        dup.0 += same.iter().map(|&k| f64::from(a[q][k])).sum::<f64>();
                        dup.1 += 1;
                    }
                    let after: Vec<usize> = (1..q).filter(|&k| t[k - 1] == t[q]).collect();
                    if !after.is_empty() {
                        pre.0 += after.iter().map(|&k| f64::from(a[q][k])).sum::<f64>();
                        pre.1 += 1;
                    }
                }
            }
            for (slot, (sum, count)) in row.iter_mut().zip([ind, prev, dup, pre]) {
                slot[h] = sum / count.max(1) as f64;
            }
        }
        let [ind, prev, dup, pre] = row;
        scores.induction.push(ind);
        scores.previous_token.push(prev);
        scores.duplicate_token.push(dup);
        scores.prefix_matching.push(pre);
    }
    Ok(scores)
}

fn to_vec4(t: &Tensor) -> Result<Vec<Vec<Vec<Vec<f32>>>>> {
    let (b, h, q, k) = t.dims4()?;
    let flat = t.flatten_all()?.to_vec1::<f32>()?;
    Ok((0..b)
        .map(|bi| {
            (0..h)
                .map(|hi| {
                    (0..q)
                        .map(|qi| {
                            let at = ((bi * h + hi) * q + qi) * k;
                            flat[at..at + k].to_vec()
                        })
                        .collect()
                })
                .collect()
        })
        .collect())
}

/// Next-token loss (nats) of every sequence at every predicted position, `[batch][n − 1]`, for
/// `tokens` `[batch, n]` under `model` with `hooks` applied (`&mut NoHooks` for none).
pub fn token_losses<H: metarep_model::Hooks>(
    model: &HookedTransformer,
    tokens: &Tensor,
    hooks: &mut H,
) -> Result<Vec<Vec<f64>>> {
    let (_, n) = tokens.dims2()?;
    if n < 2 {
        return Err(Error::Invalid(
            "token_losses: sequences of ≥ 2 tokens".into(),
        ));
    }
    let input = tokens.narrow(1, 0, n - 1)?;
    let targets = tokens.narrow(1, 1, n - 1)?.contiguous()?;
    let logits = model.run_with_hooks(Input::new(input), hooks)?;
    let logp = log_softmax(&logits.to_dtype(candle_core::DType::F32)?)?;
    let picked = logp
        .gather(
            &targets
                .unsqueeze(D::Minus1)?
                .to_dtype(candle_core::DType::U32)?,
            D::Minus1,
        )?
        .squeeze(D::Minus1)?
        .neg()?
        .to_vec2::<f32>()?;
    Ok(picked
        .into_iter()
        .map(|row| row.into_iter().map(f64::from).collect())
        .collect())
}

/// Mean loss over the first repeat's predictions (positions `1..len`, predicting tokens
/// `2..=len`) and the second's (`len + 1..2·len`, predicting `s_2 … s_L`), from one row of
/// [`token_losses`] of a `[BOS, s, s]` sequence; the transition (predicting the second
/// repeat's first token) belongs to neither.
pub fn repeat_losses(per_position: &[f64]) -> Result<(f64, f64)> {
    let n = per_position.len() + 1;
    if n < 5 || n.is_multiple_of(2) {
        return Err(Error::Invalid(format!(
            "repeat_losses: {} predicted positions is not 2·len",
            per_position.len()
        )));
    }
    let len = (n - 1) / 2;
    let mean = |r: std::ops::Range<usize>| {
        let k = r.len().max(1) as f64;
        per_position[r].iter().sum::<f64>() / k
    };
    Ok((mean(1..len), mean(len + 1..2 * len)))
}

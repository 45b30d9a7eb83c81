//! Attention-head detectors on repeated random tokens, and in-context loss per position.
//!
//! A repeated batch is `[BOS, s_1 … s_L, s_1 … s_L]` with `s` random tokens (ids in
//! `1..vocab`, so BOS = 0 never repeats inside; [`TokenDraw`] picks another BOS and leaves out
//! special tokens, for pretrained models). For every head, from its attention pattern
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
use metarep_eval::stats::{bootstrap_ci, BootstrapMethod, Interval};
use metarep_model::ops::log_softmax_last_dim;
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input};
use rand::Rng;
use serde::Serialize;

use crate::error::{Error, Result};

/// Token id placed first in every repeated sequence of [`repeated_tokens`].
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
    TokenDraw::new(BOS, vocab, &[])?.repeated(rng, batch, len)
}

/// How repeated random sequences are drawn for a given model: which id opens every sequence
/// (its BOS token) and which ids the segments draw from (every id below the vocabulary size
/// but the BOS and the excluded ones, e.g. the tokenizer's special tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDraw {
    /// Placed first in every sequence.
    pub bos: u32,
    /// The ids segment tokens are drawn from, uniformly, in increasing order.
    pub ids: Vec<u32>,
}

impl TokenDraw {
    /// Draws from `0..vocab` without `bos` and `exclude`; an error when `bos` is not below
    /// `vocab` or nothing is left to draw.
    pub fn new(bos: u32, vocab: usize, exclude: &[u32]) -> Result<Self> {
        if bos as usize >= vocab {
            return Err(Error::Invalid(format!(
                "BOS token {bos} is not below the vocabulary size {vocab}"
            )));
        }
        let mut skip = exclude.to_vec();
        skip.push(bos);
        skip.sort_unstable();
        let ids: Vec<u32> = (0..vocab as u32)
            .filter(|t| skip.binary_search(t).is_err())
            .collect();
        if ids.is_empty() {
            return Err(Error::Invalid(format!(
                "no token ids left to draw from (vocabulary {vocab}, BOS {bos}, {} excluded)",
                exclude.len()
            )));
        }
        Ok(TokenDraw { bos, ids })
    }

    /// Draws for `model`: every id of its vocabulary but `bos` and its tokenizer's special
    /// tokens (none excluded when it has no tokenizer).
    pub fn for_model(model: &HookedTransformer, bos: u32) -> Result<Self> {
        let special: Vec<u32> = model.tokenizer().map_or_else(Vec::new, |t| {
            t.inner()
                .get_added_tokens_decoder()
                .iter()
                .filter(|(_, token)| token.special)
                .map(|(&id, _)| id)
                .collect()
        });
        Self::new(bos, model.config().d_vocab, &special)
    }

    /// `batch` sequences `[bos, s, s]` with `s` of `len` tokens drawn uniformly from `ids`:
    /// `[batch, 2·len + 1]` u32.
    pub fn repeated(&self, rng: &mut impl Rng, batch: usize, len: usize) -> Result<Tensor> {
        if len == 0 || batch == 0 || self.ids.is_empty() {
            return Err(Error::Invalid(format!(
                "repeated tokens need len ≥ 1, batch ≥ 1 and ids to draw (got {len}, {batch}, {})",
                self.ids.len()
            )));
        }
        let mut out = Vec::with_capacity(batch * (2 * len + 1));
        for _ in 0..batch {
            let seg: Vec<u32> = (0..len)
                .map(|_| self.ids[rng.random_range(0..self.ids.len() as u32) as usize])
                .collect();
            out.push(self.bos);
            out.extend_from_slice(&seg);
            out.extend_from_slice(&seg);
        }
        Ok(Tensor::from_vec(out, (batch, 2 * len + 1), &Device::Cpu)?)
    }
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

/// Runs the four detectors on `tokens` `[batch, 2·len + 1]` (as made by [`repeated_tokens`]).
pub fn head_scores(model: &HookedTransformer, tokens: &Tensor) -> Result<HeadScores> {
    let (_, n) = tokens.dims2()?;
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
        // Per head: induction, previous-token, duplicate-token, prefix-matching.
        let mut means = vec![[Mean::default(); 4]; p.dim(1)?];
        for (b, t) in ids.iter().enumerate() {
            let per_head = p.get(b)?.to_vec3::<f32>()?;
            for (m, a) in means.iter_mut().zip(&per_head) {
                for q in 1..n {
                    let row = &a[q];
                    if q > len {
                        m[0].add(f64::from(row[q - len + 1]));
                    }
                    m[1].add(f64::from(row[q - 1]));
                    if let Some(v) = mass(row, (0..q).filter(|&k| t[k] == t[q])) {
                        m[2].add(v);
                    }
                    if let Some(v) = mass(row, (1..q).filter(|&k| t[k - 1] == t[q])) {
                        m[3].add(v);
                    }
                }
            }
        }
        let column = |i: usize| -> Vec<f64> { means.iter().map(|m| m[i].get()).collect() };
        scores.induction.push(column(0));
        scores.previous_token.push(column(1));
        scores.duplicate_token.push(column(2));
        scores.prefix_matching.push(column(3));
    }
    Ok(scores)
}

/// A running mean (0 when empty).
#[derive(Debug, Default, Clone, Copy)]
struct Mean {
    sum: f64,
    n: usize,
}

impl Mean {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.n += 1;
    }

    fn get(self) -> f64 {
        self.sum / self.n.max(1) as f64
    }
}

/// Total attention of a query `row` on `keys`, or `None` when there are no such keys.
fn mass(row: &[f32], keys: impl Iterator<Item = usize>) -> Option<f64> {
    keys.map(|k| f64::from(row[k])).reduce(|x, y| x + y)
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
    let logp = log_softmax_last_dim(&logits)?;
    let picked = logp
        .gather(
            &targets
                .unsqueeze(D::Minus1)?
                .to_dtype(candle_core::DType::U32)?
                .to_device(logp.device())?,
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

/// Mean first- and second-repeat loss over sequences with 95% bootstrap intervals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RepeatLosses {
    /// Loss on the first repeat.
    pub first: Interval,
    /// Loss on the second repeat.
    pub second: Interval,
}

impl RepeatLosses {
    /// From [`token_losses`] of `[BOS, s, s]` sequences, with `resamples` percentile-bootstrap
    /// resamples over sequences drawn from `rng` (first repeat first).
    pub fn from_token_losses(
        losses: &[Vec<f64>],
        resamples: usize,
        rng: &mut impl rand::Rng,
    ) -> Result<Self> {
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for row in losses {
            let (a, b) = repeat_losses(row)?;
            first.push(a);
            second.push(b);
        }
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
        let mut ci =
            |xs: &[f64]| bootstrap_ci(xs, mean, 0.95, resamples, BootstrapMethod::Percentile, rng);
        Ok(RepeatLosses {
            first: ci(&first)?,
            second: ci(&second)?,
        })
    }

    /// The share of the gap between first- and second-repeat loss that `ablated` closes:
    /// `(ablated second − second) / (first − second)` (1: induction fully removed).
    pub fn gap_closed(&self, ablated: &RepeatLosses) -> f64 {
        (ablated.second.estimate - self.second.estimate)
            / (self.first.estimate - self.second.estimate)
    }
}

//! Reading a long document through a fixed slot budget: the model's input is a working context
//! (raw tokens and gists, [`crate::working_context`]) and each chunk of new tokens is predicted
//! from it. Gists come from [`Gists`]: made on demand by GistNet, or read from a gist tree.
//!
//! [`stream_nll`] scores a document chunk by chunk under a [`Policy`]: the working context's
//! default oldest-first cover ([`crate::WorkingContext::fit`]), the focus loop (a scorer such as
//! LensNet and the [`crate::focus::Allocator`]), or plain truncation to the newest tokens that
//! fit the same budget. Its [`Reader`] reuses, from one chunk to the next, the keys and values
//! of the context's unchanged start.

use candle_core::{DType, Tensor};
use metarep_gist_tree::NodeRef;
use metarep_model::{HookedTransformer, KvCache, NoHooks, RunTo};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::focus::{focus_input, Allocator, FocusConfig, FocusStats, Scorer};
use crate::gistnet::GistNet;
pub use crate::gists::Gists;
use crate::objective::token_nll;
use crate::working_context::{CoverConfig, PositionRule, Slot, WorkingContext};

/// What the model reads before each chunk.
pub enum Policy<'s> {
    /// The newest tokens that fit the budget, raw.
    Truncate,
    /// The working context's oldest-first cover with GistNet gists.
    Cover,
    /// The focus loop: `scorer` rates moves before each chunk and an
    /// [`Allocator`] with `config` applies them.
    Focus {
        /// LensNet, or a control such as [`crate::focus::RandomScorer`].
        scorer: &'s mut dyn Scorer,
        /// The allocator's settings.
        config: FocusConfig,
    },
}

/// How a document is streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// The working context (its budget also bounds truncation).
    pub cover: CoverConfig,
    /// Position ids of the slots and the chunk after them.
    pub rule: PositionRule,
    /// Tokens predicted per step (they follow the context raw).
    pub chunk: usize,
    /// Tokens read before the first scored chunk.
    pub warmup: usize,
}

impl StreamConfig {
    /// Errors unless `tokens` tokens can be streamed by `net` under this config.
    pub fn validate(&self, tokens: usize, net: &GistNet) -> Result<()> {
        self.cover.validate()?;
        if self.chunk == 0 || self.warmup == 0 || tokens < self.warmup + self.chunk {
            return Err(Error::Config(format!(
                "a document of {tokens} tokens cannot be streamed with warmup {} and chunks of {} \
                 (both ≥ 1)",
                self.warmup, self.chunk
            )));
        }
        if net.config().block != self.cover.block as usize {
            return Err(Error::Config(format!(
                "GistNet block {} differs from the cover's {}",
                net.config().block,
                self.cover.block
            )));
        }
        Ok(())
    }
}

/// Loss of a streamed document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamLoss {
    /// Mean NLL per scored token (nats).
    pub nll: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Mean slots the context used before each chunk.
    pub mean_slots: f64,
    /// Mean tokens the context stood for before each chunk.
    pub mean_span: f64,
    /// The focus loop's telemetry ([`Policy::Focus`] only).
    pub focus: Option<FocusStats>,
}

/// Reads the slots of `wc` (positions by `rule`), then `next` raw tokens after them; returns
/// the mean NLL of `next` (each token predicted from everything before it) and the final
/// hidden state at `next`'s last token `[d_model]` (f32), the focus loop's query.
pub fn read_cover(
    gists: &mut Gists,
    wc: &WorkingContext,
    rule: PositionRule,
    next: &[u32],
) -> Result<(f32, Tensor)> {
    Reader::new().read(gists, wc, rule, next)
}

/// [`read_cover`]'s NLL of `next` after the cover of `wc`, then after each of `trials` (other
/// covers of the same tokens, e.g. `wc` with one move applied). `reader` reads `wc`, after the
/// keys and values it shares with `reader`'s previous read, and keeps that read; each trial is
/// read by a copy of it, reusing the keys and values of the slots it shares with `wc` from the
/// start (same slot at the same position), so a move among the newest slots costs a fraction
/// of a pass. Equal to [`read_cover`] of each up to rounding.
pub fn read_cover_and_trials(
    reader: &mut Reader,
    gists: &mut Gists,
    wc: &WorkingContext,
    trials: &[WorkingContext],
    (rule, next): (PositionRule, &[u32]),
) -> Result<(f32, Vec<f32>)> {
    let (first, _) = reader.read(gists, wc, rule, next)?;
    let each = trials
        .iter()
        .map(|t| Ok(reader.clone().read(gists, t, rule, next)?.0))
        .collect::<Result<_>>()?;
    Ok((first, each))
}

/// What reading a working context runs: its slots, their positions, and the position of the
/// first token after them.
struct Read {
    slots: Vec<Slot>,
    positions: Vec<usize>,
    after: usize,
}

impl Read {
    fn of(wc: &WorkingContext, rule: PositionRule) -> Self {
        let slots = wc.slots();
        let after = match rule {
            PositionRule::SpanEnd => (wc.len() - wc.start()) as usize,
            PositionRule::Slot => slots.len(),
        };
        Read {
            positions: wc.positions(rule),
            slots,
            after,
        }
    }

    /// The input embeddings `[1, slots + next, d_model]` of the slots (at least one), then of
    /// the raw tokens `next`, with their positions (the slots', then `after..`).
    fn embed(self, gists: &mut Gists, next: &[u32]) -> Result<(Tensor, Vec<usize>)> {
        if self.slots.is_empty() {
            return Err(Error::Invalid(
                "reading needs at least one context slot".into(),
            ));
        }
        let model = gists.model();
        let mut input = gists.embed_slots(&self.slots)?;
        let mut positions = self.positions;
        if !next.is_empty() {
            let ids = Tensor::from_slice(next, (1, next.len()), model.device())?;
            let next_emb = model.token_embeddings(&ids)?.to_dtype(model.dtype())?;
            input = Tensor::cat(&[&input, &next_emb], 1)?;
            positions.extend(self.after..self.after + next.len());
        }
        Ok((input, positions))
    }
}

/// The mean NLL of `next` (non-empty), the last `next.len()` tokens of a read whose final
/// hidden states are `hidden` `[n, d_model]` (each predicted from the row before it), and the
/// last row (f32).
fn score_next(model: &HookedTransformer, hidden: &Tensor, next: &[u32]) -> Result<(f32, Tensor)> {
    let (n, c) = (hidden.dim(0)?, next.len());
    let scoring = hidden.narrow(0, n - c - 1, c)?.unsqueeze(0)?;
    let logits = model
        .unembed(&scoring)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let ids = Tensor::from_slice(next, (1, c), model.device())?;
    let mean = token_nll(&logits, &ids)?.to_vec1::<f32>()?[0];
    Ok((mean, hidden.get(n - 1)?.to_dtype(DType::F32)?))
}

/// One input of a read as far as its embedding goes: a gist, or a raw token's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Gist(NodeRef),
    Token(u32),
}

/// Positions a [`Reader`] was asked to read and those it ran through the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Positions read (slots and scored tokens).
    pub read: usize,
    /// Positions run through the model; the others reused the previous read's keys and values.
    pub run: usize,
}

/// Reads working contexts one after another, as a document is streamed chunk by chunk: a read
/// reuses the keys and values of the longest start it shares with the previous read (the same
/// inputs at the same positions, the previous read's scored tokens included), so a cover that
/// only grew by the last chunk costs a pass over the new slots, not over the whole context.
/// Equal to reading everything up to rounding. A reader serves one document (one [`Gists`]):
/// it matches gists by their node.
#[derive(Debug, Clone, Default)]
pub struct Reader {
    /// What the previous read ran, input by input with its position, and its keys and values.
    last: Option<(Vec<(Input, usize)>, KvCache)>,
    stats: ReadStats,
}

impl Reader {
    /// A reader with nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`read_cover`] of `wc` then `next`, after the keys and values it shares with the
    /// previous read.
    pub fn read(
        &mut self,
        gists: &mut Gists,
        wc: &WorkingContext,
        rule: PositionRule,
        next: &[u32],
    ) -> Result<(f32, Tensor)> {
        self.read_then_score(gists, Read::of(wc, rule), next)
    }

    /// The next-token logits `[vocab]` (f32) after the slots of `wc` (positions by `rule`) and
    /// the final hidden state at its last slot `[d_model]` (f32), after the keys and values it
    /// shares with the previous read.
    pub fn read_last(
        &mut self,
        gists: &mut Gists,
        wc: &WorkingContext,
        rule: PositionRule,
    ) -> Result<(Tensor, Tensor)> {
        let hidden = self.run_shared(gists, Read::of(wc, rule), &[])?;
        let last = hidden.get(hidden.dim(0)? - 1)?;
        let logits = gists.model().unembed(&last.reshape((1, 1, ()))?)?;
        Ok((
            logits.flatten_all()?.to_dtype(DType::F32)?,
            last.to_dtype(DType::F32)?,
        ))
    }

    /// The positions read and run so far.
    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    /// Reads `read`'s slots then `next` (non-empty) after the keys and values shared with the
    /// previous read; returns the mean NLL of `next` and the last token's final hidden state
    /// `[d_model]` (f32).
    fn read_then_score(
        &mut self,
        gists: &mut Gists,
        read: Read,
        next: &[u32],
    ) -> Result<(f32, Tensor)> {
        if next.is_empty() {
            return Err(Error::Invalid(
                "scoring needs at least one next token".into(),
            ));
        }
        let hidden = self.run_shared(gists, read, next)?;
        score_next(gists.model(), &hidden, next)
    }

    /// The final hidden states `[k, d_model]` of the last `k` inputs of `read`'s slots then
    /// `next`: those after the start shared with the previous read (always the last slot and
    /// `next`), run after its keys and values, which this read's then replace.
    fn run_shared(&mut self, gists: &mut Gists, read: Read, next: &[u32]) -> Result<Tensor> {
        let tokens = gists.tokens();
        let keys: Vec<Input> = read
            .slots
            .iter()
            .map(|s| match s {
                Slot::Token(t) => Input::Token(tokens[*t as usize]),
                Slot::Gist(n) => Input::Gist(*n),
            })
            .chain(next.iter().map(|t| Input::Token(*t)))
            .collect();
        let n_slots = read.slots.len();
        // Every slot is embedded (a tree's access telemetry counts each read), then only the
        // inputs after the shared start run.
        let (input, positions) = read.embed(gists, next)?;
        let inputs: Vec<(Input, usize)> = keys.into_iter().zip(positions.iter().copied()).collect();
        let model = gists.model();
        let (shared, mut cache) = match self.last.take() {
            Some((prev, cache)) => {
                let shared = prev.iter().zip(&inputs).take_while(|(a, b)| a == b).count();
                // The last slot always runs: its hidden state predicts the first next token.
                let j = shared.min(n_slots - 1);
                (j, cache.truncated(j)?)
            }
            None => (0, KvCache::new(model)),
        };
        let n = inputs.len();
        let hidden = model.run_embeddings_cached(
            &input.narrow(1, shared, n - shared)?,
            &positions[shared..],
            &mut cache,
            &mut NoHooks,
            RunTo::Hidden,
        )?;
        self.stats.read += n;
        self.stats.run += n - shared;
        self.last = Some((inputs, cache));
        Ok(hidden.squeeze(0)?)
    }
}

/// Scores `tokens` chunk by chunk after `warmup` tokens: before each chunk the model reads the
/// context `policy` keeps of everything before it, then the chunk's tokens; the loss is the
/// chunk's next-token NLL (its first token predicted from the context's last slot).
pub fn stream_nll(
    model: &HookedTransformer,
    net: &GistNet,
    tokens: &[u32],
    config: &StreamConfig,
    policy: Policy<'_>,
) -> Result<StreamLoss> {
    stream_gists(&mut Gists::new(model, net, tokens), config, policy)
}

/// [`stream_nll`] over the document of `gists` (for instance one held by a gist tree, whose
/// stored gists are then read and counted in its telemetry).
pub fn stream_gists(
    gists: &mut Gists,
    config: &StreamConfig,
    policy: Policy<'_>,
) -> Result<StreamLoss> {
    let tokens = gists.tokens().to_vec();
    let tokens = tokens.as_slice();
    config.validate(tokens.len(), gists.net())?;
    let mut wc = WorkingContext::new(config.cover)?;
    wc.push(config.warmup as u64);
    let (mut focus, truncate) = match policy {
        Policy::Truncate => (None, true),
        Policy::Cover => (None, false),
        Policy::Focus { scorer, config } => (Some((scorer, Allocator::new(config))), false),
    };
    let (mut total, mut scored, mut slots_sum, mut span_sum, mut steps) = (0.0, 0, 0.0, 0.0, 0);
    let mut query: Option<Tensor> = None;
    let mut reader = Reader::new();
    let mut at = config.warmup;
    while at + config.chunk <= tokens.len() {
        let chunk = &tokens[at..at + config.chunk];
        let (mean, used, start, q) = if truncate {
            let keep = config.cover.budget.min(at);
            let slots: Vec<Slot> = (at - keep..at).map(|t| Slot::Token(t as u64)).collect();
            let read = Read {
                slots,
                positions: (0..keep).collect(),
                after: keep,
            };
            let (mean, q) = reader.read_then_score(gists, read, chunk)?;
            (mean, keep, (at - keep) as u64, q)
        } else {
            if let (Some((scorer, allocator)), Some(q)) = (focus.as_mut(), query.as_ref()) {
                let scores = scorer.score(&focus_input(&wc, gists, q)?)?;
                allocator.step(&mut wc, &scores)?;
            } else {
                wc.fit();
            }
            if let Some((_, allocator)) = focus.as_mut() {
                allocator.record(&wc);
            }
            let (mean, q) = reader.read(gists, &wc, config.rule, chunk)?;
            (mean, wc.used(), wc.start(), q)
        };
        query = Some(q);
        total += f64::from(mean) * config.chunk as f64;
        scored += config.chunk;
        slots_sum += used as f64;
        span_sum += (at as u64 - start) as f64;
        steps += 1;
        if !truncate {
            wc.append(config.chunk as u64);
        }
        at += config.chunk;
    }
    Ok(StreamLoss {
        nll: total / scored as f64,
        tokens: scored,
        mean_slots: slots_sum / steps as f64,
        mean_span: span_sum / steps as f64,
        focus: focus.map(|(_, a)| a.stats().clone()),
    })
}

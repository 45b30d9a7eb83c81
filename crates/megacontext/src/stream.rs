//! Reading a long document through a fixed slot budget: the model's input is a working context
//! (raw tokens and gists, [`crate::working_context`]) and each chunk of new tokens is predicted
//! from it. Gists are made on demand by GistNet — a level-1 gist from its block's token
//! embeddings, a level-k gist from its B level-(k−1) gists — and kept per node, so each is
//! computed once per document.
//!
//! [`stream_nll`] scores a document chunk by chunk under a [`Policy`]: the working context's
//! default oldest-first cover ([`crate::WorkingContext::fit`]), the focus loop (a scorer such as
//! LensNet and the [`crate::focus::Allocator`]), or plain truncation to the newest tokens that
//! fit the same budget.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use metarep_gist_tree::telemetry::Telemetry;
use metarep_gist_tree::NodeRef;
use metarep_model::{HookedTransformer, NoHooks, RunTo};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::focus::{focus_input, Allocator, FocusConfig, FocusStats, Scorer};
use crate::gistnet::GistNet;
use crate::objective::token_nll;
use crate::working_context::{CoverConfig, PositionRule, Slot, WorkingContext};

/// Gists of one document's nodes, made by GistNet on first use.
pub struct Gists<'a> {
    model: &'a HookedTransformer,
    net: &'a GistNet,
    tokens: &'a [u32],
    made: HashMap<NodeRef, Tensor>,
}

impl<'a> Gists<'a> {
    /// Gists of the document `tokens` by `net` over `model`'s token embeddings.
    pub fn new(model: &'a HookedTransformer, net: &'a GistNet, tokens: &'a [u32]) -> Self {
        Gists {
            model,
            net,
            tokens,
            made: HashMap::new(),
        }
    }

    /// The gist of `node` (level ≥ 1, complete within the document) `[d_model]`, no gradient.
    pub fn get(&mut self, node: NodeRef) -> Result<Tensor> {
        if let Some(g) = self.made.get(&node) {
            return Ok(g.clone());
        }
        let b = self.net.config().block;
        let span = node.token_span(b as u32);
        if node.level == 0 || span.end > self.tokens.len() as u64 {
            return Err(Error::Invalid(format!(
                "no gist for {node:?}: gists are of complete nodes of level ≥ 1 (document of {} tokens)",
                self.tokens.len()
            )));
        }
        let children = if node.level == 1 {
            let ids = &self.tokens[span.start as usize..span.end as usize];
            let ids = Tensor::from_slice(ids, (1, b), self.model.device())?;
            self.model.token_embeddings(&ids)?.to_dtype(DType::F32)?
        } else {
            let kids = node
                .children(b as u32)
                .into_iter()
                .map(|k| self.get(k))
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&kids, 0)?.unsqueeze(0)?
        };
        let g = self.net.forward(&children)?.detach().squeeze(0)?;
        self.made.insert(node, g.clone());
        Ok(g)
    }

    /// The vector LensNet reads for a working-context entry `[d_model]` (f32): its gist, or
    /// for a raw block the mean of its tokens' embeddings (those in the document).
    pub fn entry_vector(&mut self, node: NodeRef) -> Result<Tensor> {
        if node.level > 0 {
            return self.get(node);
        }
        let span = node.token_span(self.net.config().block as u32);
        let end = (span.end as usize).min(self.tokens.len());
        let start = span.start as usize;
        if start >= end {
            return Err(Error::Invalid(format!(
                "{node:?} holds no token of a document of {} tokens",
                self.tokens.len()
            )));
        }
        let ids = Tensor::from_slice(
            &self.tokens[start..end],
            (1, end - start),
            self.model.device(),
        )?;
        let e = self.model.token_embeddings(&ids)?.to_dtype(DType::F32)?;
        Ok(e.squeeze(0)?.mean(0)?)
    }

    /// The input embeddings of `slots` in order `[1, slots, d_model]` (model dtype).
    pub fn embed_slots(&mut self, slots: &[Slot]) -> Result<Tensor> {
        let model = self.model;
        let mut rows = Vec::with_capacity(slots.len());
        let mut run: Vec<u32> = Vec::new();
        let flush = |run: &mut Vec<u32>, rows: &mut Vec<Tensor>| -> Result<()> {
            if !run.is_empty() {
                let ids = Tensor::from_slice(run, (1, run.len()), model.device())?;
                let e = model.token_embeddings(&ids)?.to_dtype(DType::F32)?;
                rows.push(e.squeeze(0)?);
                run.clear();
            }
            Ok(())
        };
        for s in slots {
            match s {
                Slot::Token(t) => run.push(self.tokens[*t as usize]),
                Slot::Gist(n) => {
                    flush(&mut run, &mut rows)?;
                    rows.push(self.get(*n)?.unsqueeze(0)?);
                }
            }
        }
        flush(&mut run, &mut rows)?;
        let refs: Vec<&Tensor> = rows.iter().collect();
        Ok(Tensor::cat(&refs, 0)?
            .unsqueeze(0)?
            .to_dtype(model.dtype())?)
    }
}

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
#[derive(Debug, Clone, Serialize)]
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
    model: &HookedTransformer,
    gists: &mut Gists,
    wc: &WorkingContext,
    rule: PositionRule,
    next: &[u32],
) -> Result<(f32, Tensor)> {
    let slots = wc.slots();
    let positions = wc.positions(rule);
    let after = match rule {
        PositionRule::SpanEnd => (wc.len() - wc.start()) as usize,
        PositionRule::Slot => slots.len(),
    };
    read_then_score(model, gists, &slots, positions, after, next)
}

/// Reads `slots` at `positions`, then `next` at positions `after..`; returns the mean NLL of
/// `next` and the last token's final hidden state `[d_model]` (f32).
fn read_then_score(
    model: &HookedTransformer,
    gists: &mut Gists,
    slots: &[Slot],
    mut positions: Vec<usize>,
    after: usize,
    next: &[u32],
) -> Result<(f32, Tensor)> {
    if slots.is_empty() || next.is_empty() {
        return Err(Error::Invalid(
            "reading needs at least one context slot and one next token".into(),
        ));
    }
    let context = gists.embed_slots(slots)?;
    let ids = Tensor::from_slice(next, (1, next.len()), model.device())?;
    let next_emb = model.token_embeddings(&ids)?.to_dtype(model.dtype())?;
    positions.extend(after..after + next.len());
    let input = Tensor::cat(&[&context, &next_emb], 1)?;
    let hidden = model.run_embeddings(&input, &positions, &mut NoHooks, RunTo::Hidden)?;
    let n = hidden.dim(1)?;
    let c = next.len();
    let scoring = hidden.narrow(1, n - c - 1, c)?;
    let logits = model
        .unembed(&scoring)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let mean = token_nll(&logits, &ids)?.to_vec1::<f32>()?[0];
    let query = hidden.get(0)?.get(n - 1)?.to_dtype(DType::F32)?;
    Ok((mean, query))
}

/// Scores `tokens` chunk by chunk after `warmup` tokens: before each chunk the model reads the
/// context `policy` keeps of everything before it, then the chunk's tokens; the loss is the
/// chunk's next-token NLL (its first token predicted from the context's last slot). With
/// `tree`, every gist read is counted in that gist tree's access telemetry.
pub fn stream_nll(
    model: &HookedTransformer,
    net: &GistNet,
    tokens: &[u32],
    config: &StreamConfig,
    policy: Policy<'_>,
    tree: Option<&Telemetry>,
) -> Result<StreamLoss> {
    config.validate(tokens.len(), net)?;
    let mut gists = Gists::new(model, net, tokens);
    let mut wc = WorkingContext::new(config.cover)?;
    wc.push(config.warmup as u64);
    let (mut focus, truncate) = match policy {
        Policy::Truncate => (None, true),
        Policy::Cover => (None, false),
        Policy::Focus { scorer, config } => (Some((scorer, Allocator::new(config))), false),
    };
    let (mut total, mut scored, mut slots_sum, mut span_sum, mut steps) = (0.0, 0, 0.0, 0.0, 0);
    let mut query: Option<Tensor> = None;
    let mut at = config.warmup;
    while at + config.chunk <= tokens.len() {
        let chunk = &tokens[at..at + config.chunk];
        let (mean, used, start, q) = if truncate {
            let keep = config.cover.budget.min(at);
            let slots: Vec<Slot> = (at - keep..at).map(|t| Slot::Token(t as u64)).collect();
            let (mean, q) =
                read_then_score(model, &mut gists, &slots, (0..keep).collect(), keep, chunk)?;
            (mean, keep, (at - keep) as u64, q)
        } else {
            if let (Some((scorer, allocator)), Some(q)) = (focus.as_mut(), query.as_ref()) {
                let scores = scorer.score(&focus_input(&wc, &mut gists, q)?)?;
                allocator.step(&mut wc, &scores)?;
            } else {
                wc.fit();
            }
            if let Some((_, allocator)) = focus.as_mut() {
                allocator.record(&wc, tree);
            } else if let Some(t) = tree {
                wc.entries()
                    .iter()
                    .filter(|e| e.level > 0)
                    .for_each(|e| t.record(*e));
            }
            let (mean, q) = read_cover(model, &mut gists, &wc, config.rule, chunk)?;
            (mean, wc.used(), wc.start(), q)
        };
        query = Some(q);
        total += f64::from(mean) * config.chunk as f64;
        scored += config.chunk;
        slots_sum += used as f64;
        span_sum += (at as u64 - start) as f64;
        steps += 1;
        wc.append(config.chunk as u64);
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

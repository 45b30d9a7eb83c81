//! Reading a long document through a fixed slot budget: the model's input is a working context
//! (raw tokens and gists, [`crate::working_context`]) and each chunk of new tokens is predicted
//! from it. Gists are made on demand by GistNet — a level-1 gist from its block's token
//! embeddings, a level-k gist from its B level-(k−1) gists — and kept per node, so each is
//! computed once per document.
//!
//! [`stream_nll`] scores a document chunk by chunk under a [`Policy`]: the working context's
//! default oldest-first cover ([`crate::WorkingContext::fit`]) or plain truncation to the newest
//! tokens that fit the same budget.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use metarep_gist_tree::NodeRef;
use metarep_model::{HookedTransformer, NoHooks, RunTo};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The newest tokens that fit the budget, raw.
    Truncate,
    /// The working context's oldest-first cover with GistNet gists.
    Cover,
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
}

/// Scores `tokens` chunk by chunk after `warmup` tokens: before each chunk the model reads the
/// context `policy` keeps of everything before it, then the chunk's tokens; the loss is the
/// chunk's next-token NLL (its first token predicted from the context's last slot).
pub fn stream_nll(
    model: &HookedTransformer,
    net: &GistNet,
    tokens: &[u32],
    config: &StreamConfig,
    policy: Policy,
) -> Result<StreamLoss> {
    config.cover.validate()?;
    if config.chunk == 0 || config.warmup == 0 || tokens.len() < config.warmup + config.chunk {
        return Err(Error::Config(format!(
            "a document of {} tokens cannot be streamed with warmup {} and chunks of {} (both ≥ 1)",
            tokens.len(),
            config.warmup,
            config.chunk
        )));
    }
    if net.config().block != config.cover.block as usize {
        return Err(Error::Config(format!(
            "GistNet block {} differs from the cover's {}",
            net.config().block,
            config.cover.block
        )));
    }
    let mut gists = Gists::new(model, net, tokens);
    let mut wc = WorkingContext::new(config.cover)?;
    wc.push(config.warmup as u64);
    let (mut total, mut scored, mut slots_sum, mut span_sum, mut steps) = (0.0, 0, 0.0, 0.0, 0);
    let mut at = config.warmup;
    while at + config.chunk <= tokens.len() {
        let slots: Vec<Slot> = match policy {
            Policy::Cover => wc.slots(),
            Policy::Truncate => {
                let keep = config.cover.budget.min(at) as u64;
                (at as u64 - keep..at as u64).map(Slot::Token).collect()
            }
        };
        let start = match slots.first() {
            Some(Slot::Token(t)) => *t,
            Some(Slot::Gist(n)) => n.token_span(config.cover.block).start,
            None => at as u64,
        };
        let context = gists.embed_slots(&slots)?;
        let chunk_ids = &tokens[at..at + config.chunk];
        let after = match config.chunk {
            1 => None,
            c => {
                let ids = Tensor::from_slice(&chunk_ids[..c - 1], (1, c - 1), model.device())?;
                Some(model.token_embeddings(&ids)?.to_dtype(model.dtype())?)
            }
        };
        // Truncation keeps consecutive raw tokens: both rules number them 0.. .
        let mut positions = match policy {
            Policy::Cover => wc.positions(config.rule),
            Policy::Truncate => (0..slots.len()).collect(),
        };
        let next = match config.rule {
            PositionRule::SpanEnd => at - start as usize,
            PositionRule::Slot => slots.len(),
        };
        positions.extend(next..next + config.chunk - 1);
        let input = match &after {
            Some(a) => Tensor::cat(&[&context, a], 1)?,
            None => context,
        };
        let hidden = model.run_embeddings(&input, &positions, &mut NoHooks, RunTo::Hidden)?;
        let n = hidden.dim(1)?;
        let last = hidden.narrow(1, n - config.chunk, config.chunk)?;
        let logits = model.unembed(&last)?.to_dtype(DType::F32)?.contiguous()?;
        let targets = Tensor::from_slice(chunk_ids, (1, config.chunk), model.device())?;
        let mean = token_nll(&logits, &targets)?.to_vec1::<f32>()?[0];
        total += f64::from(mean) * config.chunk as f64;
        scored += config.chunk;
        slots_sum += slots.len() as f64;
        span_sum += (at as u64 - start) as f64;
        steps += 1;
        wc.push(config.chunk as u64);
        at += config.chunk;
    }
    Ok(StreamLoss {
        nll: total / scored as f64,
        tokens: scored,
        mean_slots: slots_sum / steps as f64,
        mean_span: span_sum / steps as f64,
    })
}

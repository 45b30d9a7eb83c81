//! The focus loop: before each chunk a [`Scorer`] (LensNet; random scores or the recency rule
//! as controls) rates every possible move of the working context, and the [`Allocator`]
//! applies the best ones that keep the budget.
//!
//! **Moves** ([`Candidate`]): expand a gist (costs its children's slots minus one) or collapse
//! the family an entry starts (frees its slots minus one). A candidate's score is the scorer's
//! predicted utility (positive = better than doing nothing).
//!
//! **Allocation**, each step, on a cover that may be over budget after new tokens arrived
//! ([`WorkingContext::append`]):
//! 1. while over budget, apply the best-scored collapse (the least harmful); when none is
//!    allowed, fall back to the oldest-first [`WorkingContext::fit`];
//! 2. then, best first, each expansion scoring above `margin`: free its slots with the
//!    best-scored collapses not touching it, and apply them and it together only when the
//!    expansion's score plus the collapses' scores still clears `margin`; at most `max_moves`
//!    moves a step.
//!
//! **Hysteresis**: a node a move creates (an expansion's children, a collapse's parent) is
//! frozen for `cooldown` steps — it cannot be moved back — and every trade must beat doing
//! nothing by `margin`, so entries do not flap between two covers of equal score.
//!
//! **Telemetry** ([`FocusStats`]): moves per step (swap rate), slot utilisation, and reads per
//! level. Streaming over a gist tree ([`crate::gists::Gists::from_tree`]) also counts every gist the
//! model reads in the tree's own access telemetry.

use std::collections::HashMap;

use candle_core::Tensor;
use metarep_core::rng::{derive_seed, seeded};
use metarep_gist_tree::NodeRef;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lensnet::{FocusInput, LensNet};
use crate::stream::Gists;
use crate::working_context::WorkingContext;

/// The kind of a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Move {
    /// Replace a gist by its children.
    Expand,
    /// Replace the family an entry starts by its parent.
    Collapse,
}

/// One possible move of a working context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The entry's index when the candidate was listed.
    pub entry: usize,
    /// The entry's node (the gist to expand, or the family's first member).
    pub node: NodeRef,
    /// Expand or collapse.
    pub kind: Move,
    /// Change in slots used (> 0 for an expansion, < 0 for a collapse).
    pub slots: i64,
}

/// Every move `wc` allows now, entry by entry: expansions of gists (budget aside) and
/// collapses of whole families.
pub fn candidates(wc: &WorkingContext) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (i, &node) in wc.entries().iter().enumerate() {
        if let Some(cost) = wc.expansion_cost(i) {
            out.push(Candidate {
                entry: i,
                node,
                kind: Move::Expand,
                slots: cost as i64,
            });
        }
        if let Some(gain) = wc.collapse_gain(i) {
            out.push(Candidate {
                entry: i,
                node,
                kind: Move::Collapse,
                slots: -(gain as i64),
            });
        }
    }
    out
}

/// Applies `c` to `wc`, finding its node wherever it now is; returns the nodes the move
/// created (the children of an expansion, the parent of a collapse).
pub fn apply(wc: &mut WorkingContext, c: &Candidate) -> Result<Vec<NodeRef>> {
    let i = wc
        .entries()
        .iter()
        .position(|e| *e == c.node)
        .ok_or_else(|| Error::Cover(format!("{:?} is no longer an entry", c.node)))?;
    let block = wc.config().block;
    match c.kind {
        Move::Expand => {
            wc.expand(i)?;
            Ok(c.node.children(block))
        }
        Move::Collapse => {
            wc.collapse(i)?;
            Ok(vec![c.node.parent(block)])
        }
    }
}

/// Applies `moves` in order, entirely or (on the first that fails) not at all; returns the
/// nodes they created.
pub fn apply_all(wc: &mut WorkingContext, moves: &[Candidate]) -> Result<Vec<NodeRef>> {
    let mut trial = wc.clone();
    let mut made = Vec::new();
    for c in moves {
        made.extend(apply(&mut trial, c)?);
    }
    *wc = trial;
    Ok(made)
}

/// What LensNet reads about `wc` with `query` `[d_model]`: each entry's vector (its gist, or
/// its raw block's mean token embedding), level and geometry relative to the stream's end.
pub fn focus_input(wc: &WorkingContext, gists: &mut Gists, query: &Tensor) -> Result<FocusInput> {
    let mut rows = Vec::with_capacity(wc.entries().len());
    let mut levels = Vec::with_capacity(rows.capacity());
    let mut geometry = Vec::with_capacity(rows.capacity());
    for &e in wc.entries() {
        rows.push(gists.entry_vector(e)?);
        levels.push(e.level);
        let span = wc.span(e);
        geometry.push([(wc.len() - span.end) as f32, (span.end - span.start) as f32]);
    }
    Ok(FocusInput {
        vectors: Tensor::stack(&rows, 0)?,
        levels,
        geometry,
        query: query.clone(),
    })
}

/// Rates moves: `[expand, collapse]` per entry of a [`FocusInput`] (a row's entry that cannot
/// make a move has that score ignored).
pub trait Scorer {
    /// One `[expand, collapse]` pair per entry.
    fn score(&mut self, input: &FocusInput) -> Result<Vec<[f32; 2]>>;
}

impl Scorer for LensNet {
    fn score(&mut self, input: &FocusInput) -> Result<Vec<[f32; 2]>> {
        let rows = self.forward(input)?.detach().to_vec2::<f32>()?;
        Ok(rows.into_iter().map(|r| [r[0], r[1]]).collect())
    }
}

/// The control: scores drawn uniformly from [−1, 1] (seeded), the same scale as a trained
/// LensNet's decisions around 0.
#[derive(Debug, Clone)]
pub struct RandomScorer {
    rng: ChaCha8Rng,
}

impl RandomScorer {
    /// Scores from the stream "random lens" of `seed`.
    pub fn new(seed: u64) -> Self {
        RandomScorer {
            rng: seeded(derive_seed(seed, "random lens")),
        }
    }

    /// The next `[expand, collapse]` pairs for a context of `entries` entries: what
    /// [`Scorer::score`] gives, without the input it ignores.
    pub fn draw(&mut self, entries: usize) -> Vec<[f32; 2]> {
        (0..entries)
            .map(|_| {
                [
                    self.rng.random_range(-1.0..1.0),
                    self.rng.random_range(-1.0..1.0),
                ]
            })
            .collect()
    }
}

impl Scorer for RandomScorer {
    fn score(&mut self, input: &FocusInput) -> Result<Vec<[f32; 2]>> {
        Ok(self.draw(input.levels.len()))
    }
}

/// The rule of thumb a learned scorer has to beat: detail where the stream ends. An entry whose
/// span ends `t` tokens before the query scores `r = exp(−t / scale)`: expanding it `r` (the
/// newest gist first, always above doing nothing), collapsing the family it starts `−r` (the
/// oldest family first, the least harmful). Its ranking does not depend on `scale`; the
/// allocator's trades (sums of scores) do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecencyScorer {
    /// Tokens over which the preference falls by a factor e (> 0).
    pub scale: f32,
}

impl Scorer for RecencyScorer {
    fn score(&mut self, input: &FocusInput) -> Result<Vec<[f32; 2]>> {
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            return Err(Error::Config(format!(
                "the recency scale must be a positive number of tokens, got {}",
                self.scale
            )));
        }
        Ok(input
            .geometry
            .iter()
            .map(|g| {
                let r = (-g[0] / self.scale).exp();
                [r, -r]
            })
            .collect())
    }
}

/// The allocator's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FocusConfig {
    /// Most moves (expansions and the collapses that pay for them) per step.
    pub max_moves: usize,
    /// A trade is made only when its total score exceeds this.
    pub margin: f32,
    /// Steps a node a move created stays frozen.
    pub cooldown: usize,
}

impl Default for FocusConfig {
    /// 4 moves a step, margin 0, nodes frozen for 4 steps.
    fn default() -> Self {
        FocusConfig {
            max_moves: 4,
            margin: 0.0,
            cooldown: 4,
        }
    }
}

/// Focus-loop telemetry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FocusStats {
    /// Allocation steps.
    pub steps: u64,
    /// Expansions applied.
    pub expansions: u64,
    /// Collapses applied (including those that made room for new tokens).
    pub collapses: u64,
    /// Steps that fell back to the oldest-first fit.
    pub fallbacks: u64,
    /// Sum over steps of slots used / budget after allocation.
    pub utilisation_sum: f64,
    /// Gist reads per level (index = level) recorded with [`Allocator::record`].
    pub reads: Vec<u64>,
}

impl FocusStats {
    /// Moves per step.
    pub fn swap_rate(&self) -> f64 {
        (self.expansions + self.collapses) as f64 / self.steps.max(1) as f64
    }

    /// Mean slots used / budget after allocation.
    pub fn utilisation(&self) -> f64 {
        self.utilisation_sum / self.steps.max(1) as f64
    }
}

/// Applies scored moves with hysteresis (see the module docs).
#[derive(Debug, Clone)]
pub struct Allocator {
    config: FocusConfig,
    step: u64,
    frozen: HashMap<NodeRef, u64>,
    stats: FocusStats,
}

impl Allocator {
    /// An allocator with no history.
    pub fn new(config: FocusConfig) -> Self {
        Allocator {
            config,
            step: 0,
            frozen: HashMap::new(),
            stats: FocusStats::default(),
        }
    }

    /// The telemetry so far.
    pub fn stats(&self) -> &FocusStats {
        &self.stats
    }

    fn is_frozen(&self, node: NodeRef) -> bool {
        self.frozen
            .get(&node)
            .is_some_and(|until| *until > self.step)
    }

    fn freeze(&mut self, nodes: Vec<NodeRef>) {
        let until = self.step + self.config.cooldown as u64;
        self.frozen.extend(nodes.into_iter().map(|n| (n, until)));
    }

    /// One allocation step on `wc` with `scores` (one `[expand, collapse]` per entry of `wc`
    /// as it is now); returns the moves made. Leaves `wc` within its budget.
    pub fn step(&mut self, wc: &mut WorkingContext, scores: &[[f32; 2]]) -> Result<usize> {
        if scores.len() != wc.entries().len() {
            return Err(Error::Invalid(format!(
                "{} score pairs for a working context of {} entries",
                scores.len(),
                wc.entries().len()
            )));
        }
        self.step += 1;
        self.frozen.retain(|_, until| *until > self.step);
        let budget = wc.config().budget as i64;
        let scored: Vec<(Candidate, f32)> = candidates(wc)
            .into_iter()
            .filter(|c| !self.is_frozen(c.node))
            .map(|c| {
                let s = scores[c.entry][usize::from(c.kind == Move::Collapse)];
                (c, s)
            })
            .collect();
        let mut collapses: Vec<(Candidate, f32)> = scored
            .iter()
            .filter(|(c, _)| c.kind == Move::Collapse)
            .copied()
            .collect();
        collapses.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut expansions: Vec<(Candidate, f32)> = scored
            .iter()
            .filter(|(c, s)| c.kind == Move::Expand && *s > self.config.margin)
            .copied()
            .collect();
        expansions.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut moves = 0;
        // 1. Room for new tokens: the least harmful collapses first.
        let mut used_collapse = vec![false; collapses.len()];
        for (k, (c, _)) in collapses.iter().enumerate() {
            if (wc.used() as i64) <= budget {
                break;
            }
            if let Ok(made) = apply_all(wc, &[*c]) {
                used_collapse[k] = true;
                self.freeze(made);
                self.stats.collapses += 1;
                moves += 1;
            }
        }
        if wc.used() as i64 > budget {
            self.stats.collapses += wc.fit() as u64;
            self.stats.fallbacks += 1;
        }
        // 2. Expansions paid for by collapses.
        for (e, es) in expansions {
            if moves >= self.config.max_moves {
                break;
            }
            let mut free = budget - wc.used() as i64;
            let mut total = es;
            let mut trade = Vec::new();
            let block = wc.config().block;
            let e_span = e.node.token_span(block);
            for (k, (c, cs)) in collapses.iter().enumerate() {
                if free >= e.slots {
                    break;
                }
                // A family holding the gist to expand cannot pay for it.
                let family = c.node.parent(block).token_span(block);
                if used_collapse[k] || (family.start <= e_span.start && e_span.end <= family.end) {
                    continue;
                }
                trade.push(k);
                free -= c.slots;
                total += cs;
            }
            if free < e.slots || total <= self.config.margin {
                continue;
            }
            if moves + trade.len() + 1 > self.config.max_moves {
                continue;
            }
            let mut plan: Vec<Candidate> = trade.iter().map(|k| collapses[*k].0).collect();
            plan.push(e);
            if let Ok(made) = apply_all(wc, &plan) {
                for k in &trade {
                    used_collapse[*k] = true;
                }
                self.freeze(made);
                self.stats.collapses += trade.len() as u64;
                self.stats.expansions += 1;
                moves += plan.len();
            }
        }
        self.stats.steps += 1;
        self.stats.utilisation_sum += wc.used() as f64 / budget as f64;
        Ok(moves)
    }

    /// Counts the gists of `wc` the model is about to read, per level.
    pub fn record(&mut self, wc: &WorkingContext) {
        for e in wc.entries().iter().filter(|e| e.level > 0) {
            let l = usize::from(e.level);
            if self.stats.reads.len() <= l {
                self.stats.reads.resize(l + 1, 0);
            }
            self.stats.reads[l] += 1;
        }
    }
}

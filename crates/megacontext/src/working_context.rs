//! The working context: a fixed budget of slots holding a contiguous cover of the newest part of
//! the token stream by gist-tree nodes.
//!
//! Entries are [`NodeRef`]s of a tree of arity B (32): a level-0 entry is a block of raw tokens
//! and takes one slot per token (B, fewer for the stream's partial last block); a level-k ≥ 1
//! entry is one gist standing for B^k tokens and takes one slot. Entries are ordered, abut each
//! other, and cover the tokens `start..len` (tokens before `start` have left the working
//! context). Invariants, checked by [`WorkingContext::check`]:
//!
//! - the cover is contiguous and ordered, and ends at the stream's last token;
//! - it uses at most `budget` slots;
//! - the newest `recent` tokens are raw (level-0 entries);
//! - every gist is of a complete node (its whole span is in the stream) of level ≤ `max_level`.
//!
//! Two moves change the cover: **expand** replaces a gist by its children (a level-1 gist by
//! its raw block, a level-k gist by B level-(k−1) gists) and **collapse** replaces a whole
//! family of B siblings by their parent (or a raw block by its level-1 gist). [`WorkingContext::
//! push`] appends tokens and then makes room the default way, oldest first (see
//! [`WorkingContext::fit`]); a focus allocator applies learned moves on top.
//!
//! **Positions.** Each slot gets a position id ([`PositionRule`]). The default,
//! [`PositionRule::SpanEnd`], gives a gist the position of its span's last token and a raw token
//! its own, counted from `start`: ids strictly increase along the slots, and raw tokens keep
//! their true distances to every other raw token, so a rotary model reads the text around
//! gists at its real spacing. [`PositionRule::Slot`] numbers the slots `0..n` instead (for
//! models with a learned position table shorter than the cover's span).

use std::ops::Range;

use metarep_gist_tree::NodeRef;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How slots get position ids (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionRule {
    /// A gist at its span's last token, a raw token at its own (both counted from `start`).
    #[default]
    SpanEnd,
    /// Slot `i` at position `i`.
    Slot,
}

/// The shape of a working context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverConfig {
    /// Tree arity B: tokens per raw block, children per gist.
    pub block: u32,
    /// Slot budget W.
    pub budget: usize,
    /// The newest `recent` tokens are always raw (≥ 1).
    pub recent: usize,
    /// Highest gist level used (≥ 1).
    pub max_level: u8,
}

impl Default for CoverConfig {
    /// B = 32, W = 512, the newest 64 tokens raw, gists up to level 2 (1 024 tokens a slot).
    fn default() -> Self {
        CoverConfig {
            block: 32,
            budget: 512,
            recent: 64,
            max_level: 2,
        }
    }
}

impl CoverConfig {
    /// Errors unless the config can always be met: B ≥ 2, `recent` ≥ 1, `max_level` ≥ 1 and a
    /// budget that holds the raw blocks the newest `recent` tokens fall in
    /// (`budget ≥ recent + B − 1`).
    pub fn validate(&self) -> Result<()> {
        if self.block < 2 {
            return Err(Error::Config(format!("block {} < 2", self.block)));
        }
        if self.recent == 0 || self.max_level == 0 {
            return Err(Error::Config(format!(
                "recent ({}) and max_level ({}) must be ≥ 1",
                self.recent, self.max_level
            )));
        }
        let need = self.recent + self.block as usize - 1;
        if self.budget < need {
            return Err(Error::Config(format!(
                "budget {} cannot hold the newest {} tokens raw: their blocks need up to {need} slots",
                self.budget, self.recent
            )));
        }
        Ok(())
    }
}

/// One slot of the working context, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Slot {
    /// The raw token at stream position `.0`.
    Token(u64),
    /// A gist of a level ≥ 1 node.
    Gist(NodeRef),
}

/// A cover of the stream's tokens `start..len` within a slot budget (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkingContext {
    config: CoverConfig,
    len: u64,
    entries: Vec<NodeRef>,
}

impl WorkingContext {
    /// An empty working context (a stream of no tokens).
    pub fn new(config: CoverConfig) -> Result<Self> {
        config.validate()?;
        Ok(WorkingContext {
            config,
            len: 0,
            entries: Vec::new(),
        })
    }

    /// The config.
    pub fn config(&self) -> &CoverConfig {
        &self.config
    }

    /// A copy with another slot budget (at least the current one), for counterfactual moves
    /// measured beyond the budget.
    pub fn with_budget(&self, budget: usize) -> WorkingContext {
        let mut out = self.clone();
        out.config.budget = budget.max(self.config.budget);
        out
    }

    /// Tokens in the stream so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[NodeRef] {
        &self.entries
    }

    /// The first stream token the cover holds (= `len` when empty).
    pub fn start(&self) -> u64 {
        self.entries
            .first()
            .map_or(self.len, |e| self.span(*e).start)
    }

    /// The tokens an entry stands for (a raw block clipped to the stream's end).
    pub fn span(&self, entry: NodeRef) -> Range<u64> {
        let s = entry.token_span(self.config.block);
        s.start..s.end.min(self.len)
    }

    /// Slots an entry takes: its tokens for a raw block, 1 for a gist.
    pub fn entry_slots(&self, entry: NodeRef) -> usize {
        if entry.level == 0 {
            let s = self.span(entry);
            (s.end - s.start) as usize
        } else {
            1
        }
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.entries.iter().map(|e| self.entry_slots(*e)).sum()
    }

    /// The slots in order.
    pub fn slots(&self) -> Vec<Slot> {
        let mut out = Vec::with_capacity(self.used());
        for &e in &self.entries {
            if e.level == 0 {
                out.extend(self.span(e).map(Slot::Token));
            } else {
                out.push(Slot::Gist(e));
            }
        }
        out
    }

    /// The position id of every slot under `rule` (strictly increasing).
    pub fn positions(&self, rule: PositionRule) -> Vec<usize> {
        let start = self.start();
        match rule {
            PositionRule::Slot => (0..self.used()).collect(),
            PositionRule::SpanEnd => self
                .slots()
                .into_iter()
                .map(|s| match s {
                    Slot::Token(t) => (t - start) as usize,
                    Slot::Gist(n) => (self.span(n).end - 1 - start) as usize,
                })
                .collect(),
        }
    }

    /// Appends `n` tokens to the stream (they enter as raw blocks, extending a partial last
    /// block first), then makes room with [`WorkingContext::fit`].
    pub fn push(&mut self, n: u64) {
        self.append(n);
        self.fit();
    }

    /// Appends `n` tokens as raw blocks without making room: the cover may exceed the budget
    /// until collapses (a focus allocator's, or [`WorkingContext::fit`]) bring it back.
    pub fn append(&mut self, n: u64) {
        let b = self.config.block as u64;
        let end = self.len + n;
        let mut next = self.len.div_ceil(b);
        self.len = end;
        while next * b < end {
            self.entries.push(NodeRef::new(0, next));
            next += 1;
        }
    }

    /// Makes the cover fit the budget, oldest first: repeatedly collapses the oldest entry that
    /// can be collapsed ([`WorkingContext::collapsible`]) and, when none can, drops the oldest
    /// entry (its tokens leave the working context). Returns the collapses made.
    pub fn fit(&mut self) -> usize {
        let mut collapses = 0;
        while self.used() > self.config.budget {
            let oldest = (0..self.entries.len()).find_map(|i| Some((i, self.family_at(i)?)));
            match oldest {
                Some((i, (parent, n))) => {
                    self.entries.splice(i..i + n, [parent]);
                    collapses += 1;
                }
                None => {
                    self.entries.remove(0);
                }
            }
        }
        collapses
    }

    /// Whether [`WorkingContext::collapse`] at entry `i` would succeed (budget aside: a
    /// collapse only frees slots).
    pub fn collapsible(&self, i: usize) -> bool {
        self.family_at(i).is_some()
    }

    /// Slots a collapse at entry `i` would free, if it can collapse.
    pub fn collapse_gain(&self, i: usize) -> Option<usize> {
        let (_, n) = self.family_at(i)?;
        Some(
            self.entries[i..i + n]
                .iter()
                .map(|e| self.entry_slots(*e))
                .sum::<usize>()
                - 1,
        )
    }

    /// The parent a collapse at `i` makes and how many entries it replaces, if any.
    fn family_at(&self, i: usize) -> Option<(NodeRef, usize)> {
        let e = *self.entries.get(i)?;
        let b = self.config.block;
        let parent = e.parent(b);
        if parent.level > self.config.max_level || !self.complete(parent) {
            return None;
        }
        if e.level == 0 {
            let recent_start = self.len.saturating_sub(self.config.recent as u64);
            return (self.span(e).end <= recent_start).then_some((parent, 1));
        }
        let n = b as usize;
        let family = self.entries.get(i..i + n)?;
        let first = parent.index * b as u64;
        let whole = family
            .iter()
            .enumerate()
            .all(|(j, c)| c.level == e.level && c.index == first + j as u64);
        whole.then_some((parent, n))
    }

    /// Whether a node's whole span is in the stream.
    fn complete(&self, node: NodeRef) -> bool {
        node.token_span(self.config.block).end <= self.len
    }

    /// Replaces entry `i` and its siblings by their parent: a raw block (outside the newest
    /// `recent` tokens) by its level-1 gist, or B level-k gists forming one whole family
    /// (entries `i..i + B`, `i` the first) by their level-(k+1) parent (≤ `max_level`).
    pub fn collapse(&mut self, i: usize) -> Result<()> {
        let (parent, n) = self.family_at(i).ok_or_else(|| {
            Error::Cover(format!(
                "entry {i} ({:?}) cannot collapse: it is not the first of a whole family \
                 of a complete parent of level ≤ {} outside the newest {} tokens",
                self.entries.get(i),
                self.config.max_level,
                self.config.recent
            ))
        })?;
        self.entries.splice(i..i + n, [parent]);
        Ok(())
    }

    /// Slots entry `i` would take once expanded minus the one it takes now.
    pub fn expansion_cost(&self, i: usize) -> Option<usize> {
        let e = *self.entries.get(i)?;
        if e.level == 0 {
            return None;
        }
        let kids = e.children(self.config.block);
        Some(kids.iter().map(|k| self.entry_slots(*k)).sum::<usize>() - 1)
    }

    /// Replaces gist `i` by its children (a level-1 gist by its raw block, a level-k gist by
    /// B level-(k−1) gists); errors when entry `i` is raw, missing, or the result would
    /// exceed the budget.
    pub fn expand(&mut self, i: usize) -> Result<()> {
        let cost = self.expansion_cost(i).ok_or_else(|| {
            Error::Cover(format!(
                "entry {i} ({:?}) is not a gist of this context of {} entries",
                self.entries.get(i),
                self.entries.len()
            ))
        })?;
        if self.used() + cost > self.config.budget {
            return Err(Error::Cover(format!(
                "expanding entry {i} needs {cost} more slots: {} used of {}",
                self.used(),
                self.config.budget
            )));
        }
        let kids = self.entries[i].children(self.config.block);
        self.entries.splice(i..i + 1, kids);
        Ok(())
    }

    /// Checks every invariant of the module docs, naming the first one broken.
    pub fn check(&self) -> Result<()> {
        let b = self.config.block;
        let bad = |what: String| Err(Error::Cover(what));
        let mut pos = self.start();
        for (i, &e) in self.entries.iter().enumerate() {
            let s = e.token_span(b);
            if s.start != pos {
                return bad(format!(
                    "entry {i} {e:?} starts at {} instead of {pos}",
                    s.start
                ));
            }
            if e.level > self.config.max_level {
                return bad(format!(
                    "entry {i} {e:?} is above level {}",
                    self.config.max_level
                ));
            }
            if e.level >= 1 && !self.complete(e) {
                return bad(format!("entry {i} {e:?} is a gist of an incomplete node"));
            }
            pos = s.end.min(self.len);
        }
        if pos != self.len {
            return bad(format!(
                "the cover ends at {pos}, the stream at {}",
                self.len
            ));
        }
        if self.used() > self.config.budget {
            return bad(format!(
                "{} slots used of {}",
                self.used(),
                self.config.budget
            ));
        }
        let recent_start = self.len.saturating_sub(self.config.recent as u64);
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.level > 0 && self.span(**e).end > recent_start)
        {
            return bad(format!(
                "gist {e:?} covers some of the newest {} tokens",
                self.config.recent
            ));
        }
        if self.start() > recent_start {
            return bad(format!(
                "the cover starts at {}, inside the newest {} tokens",
                self.start(),
                self.config.recent
            ));
        }
        Ok(())
    }
}

//! Continuing a document longer than the model's context: the model reads a working context
//! over everything so far (raw recent tokens, gists further back — from a gist tree or made by
//! GistNet) and appends one token a step; between steps the focus loop (when given) or the
//! oldest-first cover reshapes the context. A step runs only the inputs after the start of the
//! context it shares with the previous step ([`Reader`]): a step that only appended a token
//! runs two positions.

use std::time::Instant;

use metarep_model::generate::{Chooser, Sampling};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::focus::{focus_input, Allocator, FocusConfig, FocusStats, Scorer};
use crate::gists::Gists;
use crate::stream::Reader;
use crate::working_context::{CoverConfig, PositionRule, WorkingContext};

/// How a continuation is generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateConfig {
    /// The working context.
    pub cover: CoverConfig,
    /// Position ids of the slots.
    pub rule: PositionRule,
    /// Tokens to generate.
    pub max_new: usize,
    /// How each token is chosen.
    pub sampling: Sampling,
}

/// A continuation and what the context looked like while it was made.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The new tokens.
    pub tokens: Vec<u32>,
    /// Mean slots read per step.
    pub mean_slots: f64,
    /// Mean tokens those slots stood for.
    pub mean_span: f64,
    /// The focus loop's telemetry (with a scorer only).
    pub focus: Option<FocusStats>,
    /// Wall seconds spent reading the context and choosing tokens (the decode steps).
    pub decode_seconds: f64,
    /// Wall seconds spent in the focus loop (LensNet's input, its scores, the allocator).
    pub focus_seconds: f64,
}

/// Appends `config.max_new` tokens to the document of `gists` (which gains them), reading it
/// through a working context; with `focus`, its scorer and allocator move the context before
/// every step after the first.
pub fn generate(
    gists: &mut Gists,
    config: &GenerateConfig,
    focus: Option<(&mut dyn Scorer, FocusConfig)>,
) -> Result<Generation> {
    config.cover.validate()?;
    config.sampling.validate()?;
    let n = gists.tokens().len() as u64;
    if n == 0 {
        return Err(Error::Invalid(
            "generation needs a non-empty document to continue".into(),
        ));
    }
    let mut wc = WorkingContext::new(config.cover)?;
    // Block by block, so each fit only scans a budget's worth of entries.
    let step = u64::from(config.cover.block);
    for at in (0..n).step_by(step as usize) {
        wc.push(step.min(n - at));
    }
    let mut focus = focus.map(|(s, c)| (s, Allocator::new(c)));
    let mut chooser = Chooser::new(config.sampling);
    let (mut out, mut slots, mut span) = (Vec::with_capacity(config.max_new), 0.0, 0.0);
    let mut query = None;
    let mut reader = Reader::new();
    let (mut decode_seconds, mut focus_seconds) = (0.0, 0.0);
    for _ in 0..config.max_new {
        let start = Instant::now();
        match (focus.as_mut(), &query) {
            (Some((scorer, allocator)), Some(q)) => {
                let scores = scorer.score(&focus_input(&wc, gists, q)?)?;
                allocator.step(&mut wc, &scores)?;
                allocator.record(&wc);
            }
            _ => {
                wc.fit();
            }
        }
        focus_seconds += start.elapsed().as_secs_f64();
        let start = Instant::now();
        slots += wc.used() as f64;
        span += (wc.len() - wc.start()) as f64;
        let (logits, q) = reader.read_last(gists, &wc, config.rule)?;
        let logits = logits.to_vec1::<f32>()?;
        let token = chooser.choose(&logits);
        decode_seconds += start.elapsed().as_secs_f64();
        out.push(token);
        gists.extend(&[token]);
        wc.append(1);
        query = Some(q);
    }
    let steps = config.max_new.max(1) as f64;
    Ok(Generation {
        tokens: out,
        mean_slots: slots / steps,
        mean_span: span / steps,
        focus: focus.map(|(_, a)| a.stats().clone()),
        decode_seconds,
        focus_seconds,
    })
}

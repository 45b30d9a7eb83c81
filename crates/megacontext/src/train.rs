//! Training GistNet through a frozen base model: each step draws windows from the documents
//! (a function of the seed and the step, so a resumed run repeats the uninterrupted one),
//! replaces each window's block by its gist (or, with `blocks` = m > 1, each of m consecutive
//! blocks by its own gist, so the model learns to read gists in a row as a working context
//! holds them) and minimises the mean NLL of the H tokens after it
//! ([`crate::objective`]), plus, with a `kl_weight`, the mean KL from the full context's
//! predictions to the gist's and, with a `contrastive_weight`, an in-batch contrastive term
//! that keeps gists of different blocks apart ([`crate::objective::contrastive`]). Only GistNet's parameters move: the base model's weights are plain
//! tensors, so gradients pass through it into the gist. The loop is
//! [`metarep_core::train::run`] (warmup + cosine schedule, checkpoints with exact resume, the
//! metrics log, progress bar).

use candle_core::{DType, Tensor};
use metarep_core::optim::WarmupCosine;
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::{run, AdamRun, Plan, RunControl, RunReport};
use metarep_model::HookedTransformer;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gistnet::GistNet;
use crate::objective::{
    contrastive, kl_to_full, logits_after_block, targets, token_nll, Replacement, WindowShape,
};
use crate::working_context::PositionRule;

/// A GistNet training run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GistTrainConfig {
    /// Seed of the window draws.
    pub seed: u64,
    /// Optimisation steps.
    pub steps: usize,
    /// Windows per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: usize,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub clip: f64,
    /// The windows' prefix, block (GistNet's block size) and horizon.
    pub shape: WindowShape,
    /// Consecutive blocks replaced by gists in each window (≥ 1): windows of
    /// P + blocks·B + H tokens.
    #[serde(default = "one")]
    pub blocks: usize,
    /// Positions of the gist and the tokens around it.
    pub rule: PositionRule,
    /// Weight of the mean KL from the full context's predictions to the gist's, added to the
    /// NLL (0: NLL only).
    #[serde(default)]
    pub kl_weight: f64,
    /// Weight of the in-batch contrastive term ([`crate::objective::contrastive`]) added to the
    /// loss (0: off).
    #[serde(default)]
    pub contrastive_weight: f64,
    /// Temperature of the contrastive term's cosine scores.
    #[serde(default = "default_temperature")]
    pub contrastive_temperature: f64,
    /// Metrics line every this many steps (0 = only the last).
    pub log_every: usize,
    /// Checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
}

impl Default for GistTrainConfig {
    /// 1 000 steps of 8 windows (P 64, B 32, H 32), lr 1e-3 with 50 warmup steps, no decay,
    /// clip 1.
    fn default() -> Self {
        GistTrainConfig {
            seed: 0,
            steps: 1000,
            batch: 8,
            lr: 1e-3,
            warmup: 50,
            weight_decay: 0.0,
            clip: 1.0,
            shape: WindowShape {
                prefix: 64,
                block: 32,
                horizon: 32,
            },
            blocks: 1,
            rule: PositionRule::SpanEnd,
            kl_weight: 0.0,
            contrastive_weight: 0.0,
            contrastive_temperature: default_temperature(),
            log_every: 50,
            checkpoint_every: 0,
        }
    }
}

/// One block per window by default.
fn one() -> usize {
    1
}

impl GistTrainConfig {
    /// The shape of a training window: the `blocks` replaced blocks as one block of
    /// `blocks · B` tokens.
    pub fn window_shape(&self) -> WindowShape {
        WindowShape {
            block: self.shape.block * self.blocks,
            ..self.shape
        }
    }
}

/// The contrastive term's default temperature, 0.1.
fn default_temperature() -> f64 {
    0.1
}

/// `n` windows drawn uniformly over the documents' window starts (a document of length L
/// offers `L − len + 1`), by `(seed, stream)`; errors when no document is long enough.
pub fn draw_windows(
    docs: &[Vec<u32>],
    shape: WindowShape,
    n: usize,
    seed: u64,
    stream: &str,
) -> Result<Vec<Vec<u32>>> {
    let len = shape.len();
    let starts: Vec<usize> = docs
        .iter()
        .map(|d| (d.len() + 1).saturating_sub(len))
        .collect();
    let total: usize = starts.iter().sum();
    if total == 0 {
        return Err(Error::Invalid(format!(
            "no document holds a window of {len} tokens (longest: {})",
            docs.iter().map(Vec::len).max().unwrap_or(0)
        )));
    }
    let mut rng = seeded(derive_seed(seed, stream));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut at = rng.random_range(0..total);
        let mut doc = 0;
        while at >= starts[doc] {
            at -= starts[doc];
            doc += 1;
        }
        out.push(docs[doc][at..at + len].to_vec());
    }
    Ok(out)
}

/// The block's token embeddings of each window `[n, B, d_model]` (f32): GistNet's input.
pub fn block_embeddings(
    model: &HookedTransformer,
    windows: &[Vec<u32>],
    shape: WindowShape,
) -> Result<Tensor> {
    let flat: Vec<u32> = windows
        .iter()
        .flat_map(|w| w[shape.prefix..shape.prefix + shape.block].to_vec())
        .collect();
    let ids = Tensor::from_vec(flat, (windows.len(), shape.block), model.device())?;
    Ok(model.token_embeddings(&ids)?.to_dtype(DType::F32)?)
}

/// Trains `net` on windows of `docs` with `model` frozen; writes metrics and checkpoints under
/// `control.out` when given.
pub fn train_gistnet(
    model: &HookedTransformer,
    net: &GistNet,
    docs: &[Vec<u32>],
    config: &GistTrainConfig,
    control: RunControl,
) -> Result<RunReport> {
    config.shape.validate()?;
    if config.blocks == 0 {
        return Err(Error::Config(
            "blocks (gisted blocks per window) must be ≥ 1".into(),
        ));
    }
    if net.config().block != config.shape.block || net.config().d_model != model.config().d_model {
        return Err(Error::Config(format!(
            "GistNet (block {}, d_model {}) does not fit windows of block {} on a model of \
             d_model {}",
            net.config().block,
            net.config().d_model,
            config.shape.block,
            model.config().d_model
        )));
    }
    let params = net.params();
    let loss = |step: usize| -> Result<Tensor> {
        let shape = config.window_shape();
        let windows = draw_windows(
            docs,
            shape,
            config.batch,
            config.seed,
            &format!("train step {step}"),
        )?;
        let (n, b, d) = (windows.len(), config.shape.block, model.config().d_model);
        // [n, m·B, d] → one row of B token embeddings per gisted block.
        let blocks =
            block_embeddings(model, &windows, shape)?.reshape((n * config.blocks, b, d))?;
        let gists = net.forward(&blocks)?;
        let rule = config.rule;
        let replacement = Replacement::Vector(gists.reshape((n, config.blocks, d))?);
        let logits = logits_after_block(model, &windows, shape, &replacement, rule)?;
        let mut loss = token_nll(&logits, &targets(model, &windows, shape)?)?.mean_all()?;
        if config.kl_weight != 0.0 {
            let full = logits_after_block(model, &windows, shape, &Replacement::Full, rule)?;
            let kl = kl_to_full(&full, &logits)?.mean_all()?;
            loss = (loss + (kl * config.kl_weight)?)?;
        }
        if config.contrastive_weight != 0.0 {
            let c = contrastive(&gists, &blocks, config.contrastive_temperature)?;
            loss = (loss + (c * config.contrastive_weight)?)?;
        }
        Ok(loss)
    };
    let mut fit = AdamRun::new(&params, config.weight_decay, config.clip, loss)?;
    let plan = plan(
        config.steps,
        config.lr,
        config.warmup,
        config.log_every,
        config.checkpoint_every,
    );
    run(&mut fit, &plan, config, control)
}

/// The schedule of a net's training: `steps` of warmup + cosine to `lr`, a metrics line every
/// `log_every` steps (0: only the last), a checkpoint every `checkpoint_every` (0: at the end).
pub(crate) fn plan(
    steps: usize,
    lr: f64,
    warmup: usize,
    log_every: usize,
    checkpoint_every: usize,
) -> Plan {
    let mut plan = Plan::new(steps, WarmupCosine { lr, warmup, steps });
    plan.log_every = if log_every == 0 { steps } else { log_every };
    plan.checkpoint_every = checkpoint_every;
    plan
}

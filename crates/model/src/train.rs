//! A small-model trainer: next-token cross-entropy through the same [`HookedTransformer`]
//! forward pass (weights are candle [`Var`]s), AdamW with checkpointed moments, linear warmup
//! then cosine decay, global-norm gradient clipping (all from [`metarep_core::optim`]), a
//! checkpoint every N steps with exact resume, a JSONL metrics log, optional periodic
//! evaluation, and a progress bar (hidden when `METAREP_NO_PROGRESS` is set).
//!
//! Data comes from a [`BatchSource`]: the batch of step `s` must depend only on `(s, seed)`, so
//! that a resumed run sees exactly the batches an uninterrupted one would. Tasks plug in their
//! own sources (repeated random segments for induction heads, arithmetic prompts with a loss
//! mask on the answer, grammar samples, ...); a closure `FnMut(usize, u64) -> Result<LmBatch>`
//! is one.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use metarep_model::train::{LmBatch, RunControl, TrainConfig, Trainer};
//! use metarep_model::ModelConfig;
//!
//! # fn main() -> metarep_model::Result<()> {
//! let mut cfg = ModelConfig::gpt2_like(1, 16, 2, 8, 8);
//! cfg.attn_only = true;
//! let mut trainer = Trainer::new(cfg, 0, DType::F32, &Device::Cpu)?;
//! // Every sequence counts up modulo 8 from a step-dependent start.
//! let mut source = |step: usize, _seed: u64| {
//!     let rows: Vec<u32> = (0..4).flat_map(|b| (0..8).map(move |p| ((step + b + p) % 8) as u32)).collect();
//!     LmBatch::next_token(&Tensor::from_vec(rows, (4, 8), &Device::Cpu)?)
//! };
//! let tc = TrainConfig { steps: 30, lr: 0.03, warmup: 3, ..TrainConfig::default() };
//! let report = trainer.train(&tc, &mut source, RunControl::default())?;
//! assert!(report.final_loss < report.first_loss);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use metarep_core::checkpoint::{load_checkpoint, save_checkpoint};
use metarep_core::metrics::MetricsSink;
use metarep_core::optim::{clip_grad_norm, gradients, AdamW, WarmupCosine};
use metarep_core::rng::derive_seed;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hooks::NoHooks;
use crate::init::{default_init_std, random_weights};
use crate::model::{HookedTransformer, Input, RunTo};
use crate::weights::Weights;

/// One next-token-prediction batch.
#[derive(Debug, Clone)]
pub struct LmBatch {
    /// Input tokens `[batch, pos]`.
    pub tokens: Tensor,
    /// Target tokens `[batch, pos]` (the token each position should predict).
    pub targets: Tensor,
    /// Which targets count `[batch, pos]` (1/0, any dtype); `None` = all.
    pub loss_mask: Option<Tensor>,
}

impl LmBatch {
    /// Inputs `seqs[:, :-1]` predicting `seqs[:, 1:]`, from `seqs: [batch, pos + 1]`.
    pub fn next_token(seqs: &Tensor) -> Result<Self> {
        let (_, n) = seqs.dims2()?;
        if n < 2 {
            return Err(Error::shape(
                "sequences",
                "[batch, ≥ 2]",
                format!("{:?}", seqs.dims()),
            ));
        }
        Ok(LmBatch {
            tokens: seqs.narrow(1, 0, n - 1)?,
            targets: seqs.narrow(1, 1, n - 1)?,
            loss_mask: None,
        })
    }

    /// Adds a loss mask `[batch, pos]` (e.g. 1 on answer tokens only).
    pub fn with_loss_mask(mut self, mask: Tensor) -> Self {
        self.loss_mask = Some(mask);
        self
    }
}

/// A deterministic stream of batches.
pub trait BatchSource {
    /// The batch of step `step`; it must depend only on `(step, seed)`.
    fn batch(&mut self, step: usize, seed: u64) -> Result<LmBatch>;
}

impl<F: FnMut(usize, u64) -> Result<LmBatch>> BatchSource for F {
    fn batch(&mut self, step: usize, seed: u64) -> Result<LmBatch> {
        self(step, seed)
    }
}

/// Mean cross-entropy of `logits: [batch, pos, vocab]` against `targets: [batch, pos]` over the
/// positions `mask` selects (all when `None`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, p, _) = logits.dims3()?;
    if targets.dims() != [b, p] {
        return Err(Error::shape(
            "targets",
            format!("[{b}, {p}]"),
            format!("{:?}", targets.dims()),
        ));
    }
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let idx = targets.to_dtype(DType::U32)?.contiguous()?.unsqueeze(2)?;
    let picked = shifted.gather(&idx, 2)?;
    let nll = (lse - picked)?.squeeze(2)?; // [b, p]
    match mask {
        None => Ok(nll.mean_all()?),
        Some(m) => {
            let m = m.to_dtype(DType::F32)?.to_device(nll.device())?;
            if m.dims() != [b, p] {
                return Err(Error::shape(
                    "loss mask",
                    format!("[{b}, {p}]"),
                    format!("{:?}", m.dims()),
                ));
            }
            let count = m.sum_all()?.to_scalar::<f32>()?;
            if count <= 0.0 {
                return Err(Error::Invalid("loss mask selects no position".into()));
            }
            Ok(((nll * m)?.sum_all()? / count as f64)?)
        }
    }
}

/// Optimiser, schedule, checkpointing and logging settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimisation steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps (then cosine decay to 0 at `steps`).
    pub warmup: usize,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub clip: f64,
    /// Checkpoint every this many steps (0 = only at the end of a run with an output dir).
    pub checkpoint_every: usize,
    /// Log a metrics line every this many steps (0 = never).
    pub log_every: usize,
    /// Evaluate every this many steps (0 = never; needs an evaluator in [`RunControl`]).
    pub eval_every: usize,
    /// Seed passed to the batch source.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            lr: 1e-3,
            warmup: 100,
            weight_decay: 0.0,
            clip: 1.0,
            checkpoint_every: 0,
            log_every: 10,
            eval_every: 0,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            lr: self.lr,
            warmup: self.warmup,
            steps: self.steps,
        }
    }
}

/// An evaluation callback: `(model, step)` → named metrics, logged to `metrics.jsonl`.
pub type Evaluator<'a> = &'a mut dyn FnMut(&HookedTransformer, usize) -> Result<Vec<(String, f64)>>;

/// Where a run writes and how it starts and stops.
#[derive(Default)]
pub struct RunControl<'a> {
    /// Output directory: `metrics.jsonl` and `checkpoint/` (none: nothing written).
    pub out: Option<&'a Path>,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// Stop after this many steps in total (as if interrupted; the schedule still spans
    /// `TrainConfig::steps`).
    pub stop_at: Option<usize>,
    /// Called every `TrainConfig::eval_every` steps and at the end.
    pub eval: Option<Evaluator<'a>>,
}

/// Summary of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Step the run started from (0, or the checkpoint's step).
    pub start_step: usize,
    /// Step it stopped at.
    pub steps: usize,
    /// Loss of the first batch of this run.
    pub first_loss: f64,
    /// Loss of the last batch.
    pub final_loss: f64,
    /// Last evaluation metrics, if any.
    pub eval: Vec<(String, f64)>,
    /// Wall time of this run in seconds.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    adam_t: usize,
    model: ModelConfig,
    train: TrainConfig,
}

/// A model being trained: its parameters are [`Var`]s shared with the model's weights.
pub struct Trainer {
    cfg: ModelConfig,
    params: Vec<(String, Var)>,
    model: HookedTransformer,
}

impl Trainer {
    /// A freshly initialised model (TransformerLens's default initialisation, see
    /// [`crate::init`]) from `seed`.
    pub fn new(cfg: ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let w = random_weights(&cfg, seed, default_init_std(&cfg), dtype, device)?;
        Self::from_weights(cfg, &w)
    }

    /// Continues training an existing model (its weights are copied into variables).
    pub fn from_model(model: &HookedTransformer) -> Result<Self> {
        Self::from_weights(model.config().clone(), model.weights())
    }

    fn from_weights(cfg: ModelConfig, w: &Weights) -> Result<Self> {
        let mut params = Vec::new();
        let mut map = HashMap::new();
        for (name, t) in w.named_tensors() {
            let var = Var::from_tensor(&t.contiguous()?)?;
            map.insert(name.clone(), var.as_tensor().clone());
            params.push((name, var));
        }
        let model = HookedTransformer::new(cfg.clone(), Weights::from_named(&cfg, &map)?)?;
        Ok(Self { cfg, params, model })
    }

    /// The model (its weights are the live parameters).
    pub fn model(&self) -> &HookedTransformer {
        &self.model
    }

    /// The named parameters.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The model's loss on `batch`.
    pub fn loss(&self, batch: &LmBatch) -> Result<Tensor> {
        let logits = self.model.run(
            &Input::new(batch.tokens.clone()),
            &mut NoHooks,
            RunTo::Logits,
        )?;
        cross_entropy(&logits, &batch.targets, batch.loss_mask.as_ref())
    }

    /// Trains for `tc.steps` (or up to `run.stop_at`) on batches from `source`.
    pub fn train(
        &mut self,
        tc: &TrainConfig,
        source: &mut dyn BatchSource,
        mut run: RunControl,
    ) -> Result<TrainReport> {
        if tc.steps == 0 {
            return Err(Error::Invalid("train config: steps must be ≥ 1".into()));
        }
        let mut adam = AdamW::new(&self.params, tc.weight_decay)?;
        let ckpt_dir: Option<PathBuf> = run.out.map(|o| o.join("checkpoint"));
        let mut start = 0;
        if run.resume {
            let dir = ckpt_dir
                .as_ref()
                .ok_or_else(|| Error::Invalid("resume needs an output directory".into()))?;
            let device = self.model.device().clone();
            let (tensors, state): (_, CheckpointState) = load_checkpoint(dir, &device)?;
            if state.model != self.cfg {
                return Err(Error::Invalid(format!(
                    "checkpoint {} was written for a different model config",
                    dir.display()
                )));
            }
            adam.restore(&self.params, &tensors, state.adam_t)?;
            start = state.step;
        }
        let mut sink = match run.out {
            Some(o) => {
                let path = o.join("metrics.jsonl");
                Some(if run.resume {
                    MetricsSink::append(&path)?
                } else {
                    MetricsSink::create(&path)?
                })
            }
            None => None,
        };
        let end = run.stop_at.unwrap_or(tc.steps).min(tc.steps);
        let bar = indicatif::ProgressBar::new(tc.steps as u64);
        if std::env::var_os("METAREP_NO_PROGRESS").is_some() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_position(start as u64);
        let schedule = tc.schedule();
        let clock = std::time::Instant::now();
        let (mut first_loss, mut final_loss) = (f64::NAN, f64::NAN);
        let mut eval = Vec::new();
        for step in start..end {
            let batch = source.batch(step, derive_seed(tc.seed, "train/batches"))?;
            let loss = self.loss(&batch)?;
            let (grads, norm) = clip_grad_norm(&gradients(&loss, &self.params)?, tc.clip)?;
            let lr = schedule.lr_at(step);
            adam.step(&self.params, &grads, lr)?;
            final_loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if step == start {
                first_loss = final_loss;
            }
            if !final_loss.is_finite() {
                return Err(Error::Invalid(format!(
                    "training loss became {final_loss} at step {step}"
                )));
            }
            let done = step + 1;
            let last = done == end;
            if let Some(s) = sink.as_mut() {
                if tc.log_every > 0 && (step % tc.log_every == 0 || last) {
                    s.log(&serde_json::json!({"step": step, "loss": final_loss, "grad_norm": norm, "lr": lr}))?;
                }
            }
            if let Some(f) = run.eval.as_mut() {
                if (tc.eval_every > 0 && done % tc.eval_every == 0) || last {
                    eval = f(&self.model, done)?;
                    if let Some(s) = sink.as_mut() {
                        let mut rec = serde_json::Map::new();
                        rec.insert("step".into(), done.into());
                        for (k, v) in &eval {
                            rec.insert(format!("eval.{k}"), serde_json::json!(v));
                        }
                        s.log(&rec)?;
                    }
                }
            }
            if let Some(dir) = ckpt_dir.as_ref() {
                if (tc.checkpoint_every > 0 && done % tc.checkpoint_every == 0) || last {
                    let state = CheckpointState {
                        step: done,
                        adam_t: adam.t,
                        model: self.cfg.clone(),
                        train: *tc,
                    };
                    save_checkpoint(dir, &adam.checkpoint_tensors(&self.params), &state)?;
                }
            }
            bar.set_message(format!("loss {final_loss:.4}"));
            bar.inc(1);
        }
        bar.finish_and_clear();
        if let Some(s) = sink.as_mut() {
            s.flush()?;
        }
        Ok(TrainReport {
            start_step: start,
            steps: end.max(start),
            first_loss,
            final_loss,
            eval,
            seconds: clock.elapsed().as_secs_f64(),
        })
    }
}

//! A small-model trainer: next-token cross-entropy through the same [`HookedTransformer`]
//! forward pass (weights are candle [`Var`]s), AdamW with checkpointed moments and global-norm
//! gradient clipping (from [`metarep_core::optim`]), run by [`metarep_core::train::run`]
//! (warmup + cosine schedule, checkpoints with exact resume, the JSONL metrics log, optional
//! periodic evaluation, progress bar).
//!
//! Data comes from a [`BatchSource`]: the batch of step `s` must depend only on `(s, seed)`, so
//! that a resumed run sees exactly the batches an uninterrupted one would. Tasks plug in their
//! own sources (repeated random segments for induction heads, arithmetic prompts with a loss
//! mask on the answer, grammar samples, ...); a closure `FnMut(usize, u64) -> Result<LmBatch>`
//! is one.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use metarep_core::train::RunControl;
//! use metarep_model::train::{LmBatch, LmTrainConfig, LmTrainer};
//! use metarep_model::ModelConfig;
//!
//! # fn main() -> metarep_model::Result<()> {
//! let mut cfg = ModelConfig::gpt2_like(1, 16, 2, 8, 8);
//! cfg.attn_only = true;
//! let mut trainer = LmTrainer::new(cfg, 0, DType::F32, &Device::Cpu)?;
//! // Every sequence counts up modulo 8 from a step-dependent start.
//! let mut source = |step: usize, _seed: u64| {
//!     let rows: Vec<u32> = (0..4).flat_map(|b| (0..8).map(move |p| ((step + b + p) % 8) as u32)).collect();
//!     LmBatch::next_token(&Tensor::from_vec(rows, (4, 8), &Device::Cpu)?)
//! };
//! let tc = LmTrainConfig { steps: 30, lr: 0.03, warmup: 3, ..LmTrainConfig::default() };
//! let report = trainer.train(&tc, &mut source, None, RunControl::default())?;
//! assert!(report.final_loss < report.first_loss);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use metarep_core::optim::WarmupCosine;
use metarep_core::rng::derive_seed;
use metarep_core::train::{run, AdamRun, Plan, RunControl, RunReport};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hooks::NoHooks;
use crate::init::{default_init_std, random_weights};
use crate::input::Input;
use crate::model::{HookedTransformer, RunTo};
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
    let idx = targets
        .to_dtype(DType::U32)?
        .to_device(logits.device())?
        .contiguous()?
        .unsqueeze(2)?;
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
pub struct LmTrainConfig {
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
    /// Evaluate every this many steps (0 = only after the last; needs an [`Evaluator`]).
    pub eval_every: usize,
    /// Seed passed to the batch source.
    pub seed: u64,
}

impl Default for LmTrainConfig {
    fn default() -> Self {
        LmTrainConfig {
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

impl LmTrainConfig {
    /// The learning-rate schedule.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            lr: self.lr,
            warmup: self.warmup,
            steps: self.steps,
        }
    }

    /// The run loop's plan.
    pub fn plan(&self) -> Plan {
        Plan {
            steps: self.steps,
            schedule: self.schedule(),
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            eval_every: self.eval_every,
        }
    }
}

/// An evaluation callback: `(model, steps done)` → named metrics, logged to `metrics.jsonl`
/// as `eval.*` every [`LmTrainConfig::eval_every`] steps and after the last.
pub type Evaluator<'a> = &'a mut dyn FnMut(&HookedTransformer, usize) -> Result<Vec<(String, f64)>>;

/// A model being trained: its parameters are [`Var`]s shared with the model's weights.
pub struct LmTrainer {
    cfg: ModelConfig,
    params: Vec<(String, Var)>,
    model: HookedTransformer,
}

impl LmTrainer {
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

    /// Trains for `tc.steps` (or up to `run.stop_at`) on batches from `source`, evaluating
    /// with `eval` when given. A resumed run must use the same model and training config.
    pub fn train(
        &mut self,
        tc: &LmTrainConfig,
        source: &mut dyn BatchSource,
        eval: Option<Evaluator>,
        control: RunControl,
    ) -> Result<RunReport> {
        let seed = derive_seed(tc.seed, "train/batches");
        let this = &*self;
        let loss = |step: usize| this.loss(&source.batch(step, seed)?);
        let mut steps = AdamRun::new(&this.params, tc.weight_decay, tc.clip, loss)?;
        if let Some(f) = eval {
            steps = steps.with_eval(move |done| f(&this.model, done));
        }
        let config = serde_json::json!({ "model": &this.cfg, "train": tc });
        run(&mut steps, &tc.plan(), &config, control)
    }
}

//! Training the generic LAT on in-context regression (von Oswald et al. 2023 setting).
//!
//! Tokens `e_i = (x_i, y_i)` for the `n` supports and `e_q = (x_q, 0)` for the query, one row
//! each (`[batch, n + 1, d + 1]`); every token reads the supports only (the query is never a key);
//! the prediction is the query's `y` channel after the last layer; the loss is `0.5 · MSE`.
//! Weights are candle [`Var`]s used through the same [`Lat`] forward pass as constructions.
//!
//! Training uses AdamW with checkpointed moments and global-norm gradient clipping (from
//! [`metarep_core::optim`]) in the run loop of [`metarep_core::train`] (warmup + cosine
//! schedule, checkpoints with exact resume, the JSONL metrics log, progress bar); each step's
//! batch is drawn from a generator seeded by `(seed, step)`.

use candle_core::{DType, Device, Tensor, Var};
use metarep_core::optim::WarmupCosine;
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::{run, AdamRun, Plan, RunControl, RunReport};
use metarep_eval::tasks::linear::RegressionTask;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lat::{AttentionHead, AttentionKind, Lat, LatLayer};

/// A batch of in-context regression problems as LAT input.
#[derive(Debug, Clone)]
pub struct IclBatch {
    /// Tokens `[batch, n + 1, d + 1]`.
    pub tokens: Tensor,
    /// Query targets `[batch]`.
    pub targets: Tensor,
}

/// Lays out the first query of each task as an [`IclBatch`] (all tasks must share `n` and `d`).
pub fn icl_batch(tasks: &[RegressionTask], dtype: DType, device: &Device) -> Result<IclBatch> {
    let first = tasks
        .first()
        .ok_or_else(|| Error::invalid("batch", "no tasks"))?;
    let (n, d) = (first.x_support.nrows(), first.x_support.ncols());
    let c = d + 1;
    let mut data = Vec::with_capacity(tasks.len() * (n + 1) * c);
    let mut targets = Vec::with_capacity(tasks.len());
    for (b, t) in tasks.iter().enumerate() {
        if t.x_support.nrows() != n || t.x_support.ncols() != d || t.x_query.nrows() == 0 {
            return Err(Error::shape(
                format!("task {b}"),
                format!("n = {n}, d = {d}, ≥ 1 query"),
                format!(
                    "n = {}, d = {}, {} queries",
                    t.x_support.nrows(),
                    t.x_support.ncols(),
                    t.x_query.nrows()
                ),
            ));
        }
        for i in 0..n {
            data.extend(t.x_support.row(i).iter());
            data.push(t.y_support[i]);
        }
        data.extend(t.x_query.row(0).iter());
        data.push(0.0);
        targets.push(t.y_query[0]);
    }
    let tokens = Tensor::from_vec(data, (tasks.len(), n + 1, c), device)?.to_dtype(dtype)?;
    let targets = Tensor::from_vec(targets, tasks.len(), device)?.to_dtype(dtype)?;
    Ok(IclBatch { tokens, targets })
}

/// Which attention a trainable in-context model uses (the rest of the forward pass is shared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IclAttention {
    /// Unnormalised linear attention: the LAT.
    #[default]
    Linear,
    /// Row-softmax attention over the supports with logit scale `1/√(d + 1)`.
    Softmax,
}

impl IclAttention {
    /// The head kind for tokens of `channels` channels.
    pub fn kind(self, channels: usize) -> AttentionKind {
        match self {
            IclAttention::Linear => AttentionKind::Linear,
            IclAttention::Softmax => AttentionKind::Softmax {
                scale: 1.0 / (channels as f64).sqrt(),
            },
        }
    }
}

/// Shape of a trainable in-context LAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IclLatConfig {
    /// Input dimension `d` (tokens have `d + 1` channels).
    pub dim: usize,
    /// Supports per problem `n`.
    pub n_support: usize,
    /// Layers.
    pub layers: usize,
    /// Heads per layer (each with `d_k = d_v = d + 1`).
    pub heads: usize,
    /// Linear (the LAT) or softmax attention.
    #[serde(default)]
    pub attention: IclAttention,
}

/// A LAT (or, with [`IclAttention::Softmax`], a softmax-attention transformer) whose weights are
/// trainable [`Var`]s (attention only, no MLP).
#[derive(Debug, Clone)]
pub struct TrainableLat {
    /// Its shape.
    pub config: IclLatConfig,
    /// Named parameters, in a fixed order (`l{layer}.h{head}.{wq|wk|wv|wo}`).
    pub params: Vec<(String, Var)>,
    mask: Tensor,
}

impl TrainableLat {
    /// Random initialisation `N(0, init_std²)` from `seed`, in `dtype` on `device`.
    pub fn new(
        config: IclLatConfig,
        init_std: f64,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if config.dim == 0 || config.n_support == 0 || config.layers == 0 || config.heads == 0 {
            return Err(Error::invalid(
                "LAT config",
                format!("all sizes must be ≥ 1: {config:?}"),
            ));
        }
        let c = config.dim + 1;
        let mut rng = seeded(seed);
        let mut params = Vec::new();
        for l in 0..config.layers {
            for h in 0..config.heads {
                for name in ["wq", "wk", "wv", "wo"] {
                    let values = metarep_core::rng::normal_vec(&mut rng, c * c, 0.0, init_std)?;
                    let t = Tensor::from_vec(values, (c, c), device)?.to_dtype(dtype)?;
                    params.push((format!("l{l}.h{h}.{name}"), Var::from_tensor(&t)?));
                }
            }
        }
        let tokens = config.n_support + 1;
        let mask: Vec<f64> = (0..tokens * tokens)
            .map(|k| {
                if k % tokens < config.n_support {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (tokens, tokens), device)?.to_dtype(dtype)?;
        Ok(Self {
            config,
            params,
            mask,
        })
    }

    /// The LAT these weights define (tensors share the variables, so gradients flow).
    pub fn lat(&self) -> Result<Lat> {
        let c = self.config.dim + 1;
        let mut layers = Vec::with_capacity(self.config.layers);
        for chunk in self.params.chunks(4 * self.config.heads) {
            let mut heads = Vec::with_capacity(self.config.heads);
            for h in chunk.chunks(4) {
                let t = |i: usize| h[i].1.as_tensor().clone();
                heads.push(
                    AttentionHead::new(
                        t(0),
                        t(1),
                        t(2),
                        t(3),
                        self.mask.clone(),
                        c,
                        self.config.n_support + 1,
                    )?
                    .with_kind(self.config.attention.kind(c))?,
                );
            }
            layers.push(LatLayer { heads, mlp: vec![] });
        }
        Ok(Lat {
            channels: c,
            tokens: self.config.n_support + 1,
            layers,
        })
    }

    /// Query predictions `[batch]`: the query's `y` channel after the last layer.
    pub fn predict(&self, tokens: &Tensor) -> Result<Tensor> {
        let out = self.lat()?.forward(tokens)?;
        let n = self.config.n_support;
        Ok(out
            .narrow(1, n, 1)?
            .narrow(2, self.config.dim, 1)?
            .flatten_all()?)
    }

    /// `0.5 · mean((ŷ − y)²)` on a batch.
    pub fn loss(&self, batch: &IclBatch) -> Result<Tensor> {
        let diff = (self.predict(&batch.tokens)? - &batch.targets)?;
        Ok((diff.sqr()?.mean_all()? * 0.5)?)
    }
}

/// Optimiser and schedule settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IclTrainConfig {
    /// Optimisation steps.
    pub steps: usize,
    /// Problems per batch.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps (then cosine decay to 0).
    pub warmup: usize,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub clip: f64,
    /// Checkpoint every this many steps (0 = only at the end of a run with an output dir).
    pub checkpoint_every: usize,
    /// Log a metrics line every this many steps (0 = never).
    pub log_every: usize,
    /// Seed of the data stream.
    pub seed: u64,
}

impl IclTrainConfig {
    /// Its learning-rate schedule: linear warmup, then cosine decay to 0 at `steps`.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            lr: self.lr,
            warmup: self.warmup,
            steps: self.steps,
        }
    }

    /// Learning rate at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.schedule().lr_at(step)
    }

    /// The run loop's plan.
    pub fn plan(&self) -> Plan {
        Plan {
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            ..Plan::new(self.steps, self.schedule())
        }
    }
}

/// Trains `model` with batches from `sample(step_seed)`; with an output directory it logs
/// `metrics.jsonl` and checkpoints into `out/checkpoint`, from which `resume` continues (with
/// the same model shape and training config).
pub fn train(
    model: &TrainableLat,
    cfg: &IclTrainConfig,
    sample: impl Fn(u64) -> Result<IclBatch>,
    control: RunControl,
) -> Result<RunReport> {
    if cfg.batch == 0 {
        return Err(Error::invalid("train config", "batch must be ≥ 1"));
    }
    let loss = |step: usize| model.loss(&sample(derive_seed(cfg.seed, &format!("batch/{step}")))?);
    let mut steps = AdamRun::new(&model.params, cfg.weight_decay, cfg.clip, loss)?;
    let config = serde_json::json!({ "model": model.config, "train": cfg });
    run(&mut steps, &cfg.plan(), &config, control)
}

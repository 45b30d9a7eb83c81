//! Training the generic LAT on in-context regression (von Oswald et al. 2023 setting) and on
//! in-context GLMs.
//!
//! Tokens `e_i = (x_i, y_i)` for the `n` supports and `e_q = (x_q, 0)` for the query, one row
//! each (`[batch, n + 1, d + 1]`); every token reads the supports only (the query is never a key);
//! the prediction is the query's `y` channel after the last layer; the loss is a [`QueryLoss`] of
//! it: `0.5 · MSE` for regression, the GLM's negative log-likelihood with the prediction as the
//! natural parameter for GLM tasks ([`IclTask`] says which, per task type).
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
use metarep_eval::tasks::glm::{GlmFamily, GlmProblem, POISSON_GUARD_LINEAR};
use metarep_eval::tasks::linear::RegressionTask;
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lat::{AttentionHead, AttentionKind, Lat, LatLayer};

/// The loss of the query prediction `ŷ` against the target `t`, averaged over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryLoss {
    /// `0.5 · (ŷ − t)²`: regression.
    #[default]
    HalfMse,
    /// The GLM negative log-likelihood `b(ŷ) − t ŷ` with `ŷ` the natural parameter (logit or
    /// log-rate) and `t` the label or its mean (the NLL averaged over the label); without
    /// `c(y)`, which does not depend on `ŷ`. Poisson's `b = e^η` continues as its tangent line
    /// beyond `η = 6` ([`POISSON_GUARD_LINEAR`]: the exact NLL wherever the prior puts almost
    /// all true log-rates, a convex loss with a per-task gradient of at most `e^6` beyond, where
    /// a model fed raw counts goes early in training).
    GlmNll(GlmFamily),
}

impl QueryLoss {
    /// The batch mean of the loss of predictions `pred` `[batch]` at targets `targets` `[batch]`:
    /// in their dtype for `HalfMse`, in f64 for `GlmNll` (a model fed raw counts makes log-rates
    /// of 1e4 and more early in training, whose loss is computed without f32's overflow).
    pub fn apply(self, pred: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let per_task = match self {
            QueryLoss::HalfMse => ((pred - targets)?.sqr()? * 0.5)?,
            QueryLoss::GlmNll(family) => {
                let (pred, targets) = (&pred.to_dtype(DType::F64)?, &targets.to_dtype(DType::F64)?);
                let cumulant = match family {
                    // softplus(η) = max(η, 0) + log(1 + e^{−|η|}), finite for every η.
                    GlmFamily::Logistic => {
                        (pred.relu()? + pred.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?
                    }
                    // e^η up to η = a, then its tangent line there.
                    GlmFamily::Poisson => {
                        let a = POISSON_GUARD_LINEAR;
                        (pred.minimum(a)?.exp()? + ((pred - a)?.relu()? * a.exp())?)?
                    }
                };
                (cumulant - (targets * pred)?)?
            }
        };
        Ok(per_task.mean_all()?)
    }
}

/// A batch of in-context problems as LAT input.
#[derive(Debug, Clone)]
pub struct IclBatch {
    /// Tokens `[batch, n + 1, d + 1]`.
    pub tokens: Tensor,
    /// Query targets `[batch]`.
    pub targets: Tensor,
    /// The loss the targets are for.
    pub loss: QueryLoss,
}

impl IclBatch {
    /// The same batch on `device` (a no-op where it already is).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            tokens: self.tokens.to_device(device)?,
            targets: self.targets.to_device(device)?,
            loss: self.loss,
        })
    }
}

/// An in-context problem the LAT can read: supports, queries (the first is the one read) and a
/// target per query, with the loss that fits the targets.
pub trait IclTask {
    /// Support inputs `[n, d]`, support labels `[n]`, query inputs `[m, d]`, query targets `[m]`.
    fn parts(&self) -> (&DMatrix<f64>, &DVector<f64>, &DMatrix<f64>, &DVector<f64>);

    /// The loss of a prediction of the targets.
    fn loss(&self) -> QueryLoss;
}

impl IclTask for RegressionTask {
    fn parts(&self) -> (&DMatrix<f64>, &DVector<f64>, &DMatrix<f64>, &DVector<f64>) {
        (
            &self.x_support,
            &self.y_support,
            &self.x_query,
            &self.y_query,
        )
    }

    fn loss(&self) -> QueryLoss {
        QueryLoss::HalfMse
    }
}

/// The features `φ(x)` are the inputs, the query targets are the true means `E[y | x_q]`, and the
/// loss is the family's NLL.
impl IclTask for GlmProblem {
    fn parts(&self) -> (&DMatrix<f64>, &DVector<f64>, &DMatrix<f64>, &DVector<f64>) {
        (
            &self.phi_support,
            &self.y_support,
            &self.phi_query,
            &self.mean_query,
        )
    }

    fn loss(&self) -> QueryLoss {
        QueryLoss::GlmNll(self.family)
    }
}

/// Lays out the first query of each task as an [`IclBatch`] (all tasks must share `n`, `d` and
/// the loss).
pub fn icl_batch<T: IclTask>(tasks: &[T], dtype: DType, device: &Device) -> Result<IclBatch> {
    let first = tasks
        .first()
        .ok_or_else(|| Error::invalid("batch", "no tasks"))?;
    let (x, _, _, _) = first.parts();
    let (n, d, loss) = (x.nrows(), x.ncols(), first.loss());
    let c = d + 1;
    let mut data = Vec::with_capacity(tasks.len() * (n + 1) * c);
    let mut targets = Vec::with_capacity(tasks.len());
    for (b, t) in tasks.iter().enumerate() {
        let (x_support, y_support, x_query, y_query) = t.parts();
        if x_support.nrows() != n
            || x_support.ncols() != d
            || x_query.nrows() == 0
            || y_query.is_empty()
            || t.loss() != loss
        {
            return Err(Error::shape(
                format!("task {b}"),
                format!("n = {n}, d = {d}, ≥ 1 query with a target, loss {loss:?}"),
                format!(
                    "n = {}, d = {}, {} queries, {} targets, loss {:?}",
                    x_support.nrows(),
                    x_support.ncols(),
                    x_query.nrows(),
                    y_query.len(),
                    t.loss()
                ),
            ));
        }
        for i in 0..n {
            data.extend(x_support.row(i).iter());
            data.push(y_support[i]);
        }
        data.extend(x_query.row(0).iter());
        data.push(0.0);
        targets.push(y_query[0]);
    }
    let tokens = Tensor::from_vec(data, (tasks.len(), n + 1, c), device)?.to_dtype(dtype)?;
    let targets = Tensor::from_vec(targets, tasks.len(), device)?.to_dtype(dtype)?;
    Ok(IclBatch {
        tokens,
        targets,
        loss,
    })
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

    /// The dtype its weights (and so its inputs) are in.
    pub fn dtype(&self) -> DType {
        self.mask.dtype()
    }

    /// The device its weights (and so its inputs) are on.
    pub fn device(&self) -> &Device {
        self.mask.device()
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

    /// The batch's [`QueryLoss`] of the query predictions (`0.5 · MSE` for regression).
    pub fn loss(&self, batch: &IclBatch) -> Result<Tensor> {
        batch
            .loss
            .apply(&self.predict(&batch.tokens)?, &batch.targets)
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

    /// These settings for a `layers`-deep model: the peak learning rate divided by `layers^1.5`.
    /// Unnormalised linear attention stacks into a polynomial of degree ~3^layers; at 5 layers
    /// (fig6) lr 0.02 and 0.02/5 both diverged for some seed, 0.02/5^1.5 did not.
    pub fn depth_scaled(&self, layers: usize) -> Self {
        Self {
            lr: self.lr / (layers.max(1) as f64).powf(1.5),
            ..*self
        }
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
    let loss = |step: usize| {
        let batch = sample(derive_seed(cfg.seed, &format!("batch/{step}")))?;
        model.loss(&batch.to_device(model.device())?)
    };
    let mut steps = AdamRun::new(&model.params, cfg.weight_decay, cfg.clip, loss)?;
    let config = serde_json::json!({ "model": model.config, "train": cfg });
    run(&mut steps, &cfg.plan(), &config, control)
}

/// Trains a fresh model of shape `config` (`dtype` on `device`, init `N(0, 0.02²)` from
/// `derive_seed(seed, "init")`) with `cfg`, its data seed replaced by `derive_seed(seed, "data")`,
/// on batches from `sample(step_seed, cfg.batch)` (moved to `device`); with `out` it writes
/// `metrics.jsonl` there. Returns the model with its report.
pub fn train_seeded(
    config: IclLatConfig,
    cfg: &IclTrainConfig,
    seed: u64,
    (dtype, device): (DType, &Device),
    out: Option<&std::path::Path>,
    sample: impl Fn(u64, usize) -> Result<IclBatch>,
) -> Result<(TrainableLat, RunReport)> {
    let model = TrainableLat::new(config, 0.02, derive_seed(seed, "init"), dtype, device)?;
    let mut cfg = *cfg;
    cfg.seed = derive_seed(seed, "data");
    let report = train(
        &model,
        &cfg,
        |s| sample(s, cfg.batch),
        RunControl {
            out,
            ..Default::default()
        },
    )?;
    Ok((model, report))
}

/// An in-context task family with its training settings: the model shape it needs, its training
/// batches and the training run ([`crate::icl::VonOswaldSetting`], [`crate::glm::GlmIclSetting`]).
pub trait IclSetting: Copy {
    /// The model's input dimension `d` (tokens have `d + 1` channels, the last the label).
    fn input_dim(&self) -> usize;

    /// Supports per problem `n`.
    fn n_support(&self) -> usize;

    /// Optimiser settings.
    fn train_config(&self) -> IclTrainConfig;

    /// The same setting with optimiser settings `train`.
    fn with_train(&self, train: IclTrainConfig) -> Self;

    /// The dtype its models train and run in (f32 unless a setting needs more range).
    fn dtype(&self) -> DType {
        DType::F32
    }

    /// A training batch of `count` problems from generator `seed`, in [`IclSetting::dtype`].
    fn batch(&self, seed: u64, count: usize) -> Result<IclBatch>;

    /// The setting for a `layers`-deep model: [`IclTrainConfig::depth_scaled`].
    fn depth_scaled(&self, layers: usize) -> Self {
        self.with_train(self.train_config().depth_scaled(layers))
    }

    /// The model shape: `layers` layers of `heads` heads of `attention`.
    fn model(&self, layers: usize, heads: usize, attention: IclAttention) -> IclLatConfig {
        IclLatConfig {
            dim: self.input_dim(),
            n_support: self.n_support(),
            layers,
            heads,
            attention,
        }
    }

    /// Trains a model of shape `config` on `device` from `seed` ([`train_seeded`]); with `out`
    /// it writes `metrics.jsonl` there. Returns the model with its report.
    fn train_model(
        &self,
        config: IclLatConfig,
        seed: u64,
        device: &Device,
        out: Option<&std::path::Path>,
    ) -> Result<(TrainableLat, RunReport)> {
        let cfg = self.train_config();
        train_seeded(
            config,
            &cfg,
            seed,
            (self.dtype(), device),
            out,
            |s, count| self.batch(s, count),
        )
    }
}

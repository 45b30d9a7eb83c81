//! In-context linear regression experiments with trained LATs: the von Oswald et al. (2023)
//! setting, baselines evaluated on the same held-out tasks, and the sensitivity comparison.
//!
//! Setting (their Fig. 2): `d = 10`, `n = 10`, `x ~ U(−1, 1)^d`, `w ~ N(0, I)`, no noise, loss
//! `0.5 · MSE` on the query, evaluated on 10 000 held-out tasks.

use candle_core::{DType, Device, Var};
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::{RunControl, RunReport};
use metarep_eval::baselines::{
    ConjugateGradient, GdPlusPlus, GradientDescent, Predictor, StepSize,
};
use metarep_eval::tasks::linear::{uniform_task, RegressionTask};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reference::Preconditioner;
use crate::train::{icl_batch, train, IclAttention, IclLatConfig, IclTrainConfig, TrainableLat};

/// Peak learning rate that trains the softmax variant (1–2 layers, 2 heads) in this setting; not
/// depth-scaled. At 1 layer, lr 0.02 / 0.01 / 0.005 gave held-out loss 1.16 / 1.16 / 0.865.
pub const SOFTMAX_LR: f64 = 0.005;

/// The von Oswald et al. setting plus training settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VonOswaldSetting {
    /// Input dimension `d`.
    pub dim: usize,
    /// In-context examples `n`.
    pub n_support: usize,
    /// Held-out tasks for evaluation.
    pub held_out: usize,
    /// Optimiser settings.
    pub train: IclTrainConfig,
}

impl Default for VonOswaldSetting {
    fn default() -> Self {
        Self {
            dim: 10,
            n_support: 10,
            held_out: 10_000,
            train: IclTrainConfig {
                steps: 4000,
                batch: 256,
                lr: 2e-2,
                warmup: 100,
                weight_decay: 0.0,
                clip: 10.0,
                checkpoint_every: 0,
                log_every: 50,
                seed: 0,
            },
        }
    }
}

impl VonOswaldSetting {
    /// `count` tasks drawn from generator `seed` (one query each).
    pub fn tasks(&self, seed: u64, count: usize) -> Result<Vec<RegressionTask>> {
        let mut rng = seeded(seed);
        (0..count)
            .map(|_| {
                Ok(uniform_task(
                    &mut rng,
                    self.dim,
                    self.n_support,
                    1,
                    (-1.0, 1.0),
                    0.0,
                )?)
            })
            .collect()
    }

    /// The setting for training a `layers`-deep LAT: the peak learning rate divided by
    /// `layers^1.5`. Unnormalised linear attention stacks into a polynomial of degree ~3^layers;
    /// at 5 layers lr 0.02 and 0.02/5 both diverged for some seed, 0.02/5^1.5 did not.
    pub fn depth_scaled(&self, layers: usize) -> Self {
        let mut s = *self;
        s.train.lr = self.train.lr / (layers.max(1) as f64).powf(1.5);
        s
    }

    /// The model shape for this setting: `layers` layers of `heads` heads of `attention`.
    pub fn model(&self, layers: usize, heads: usize, attention: IclAttention) -> IclLatConfig {
        IclLatConfig {
            dim: self.dim,
            n_support: self.n_support,
            layers,
            heads,
            attention,
        }
    }

    /// Trains a LAT with `layers` layers (1 head, f32) from `seed`; returns it with its report.
    pub fn train_lat(
        &self,
        layers: usize,
        seed: u64,
        out: Option<&std::path::Path>,
    ) -> Result<(TrainableLat, RunReport)> {
        self.train_model(self.model(layers, 1, IclAttention::Linear), seed, out)
    }

    /// Trains a model of shape `config` (f32, init `N(0, 0.02²)`) from `seed`; with `out` it
    /// writes `metrics.jsonl` there. Returns the model with its report.
    pub fn train_model(
        &self,
        config: IclLatConfig,
        seed: u64,
        out: Option<&std::path::Path>,
    ) -> Result<(TrainableLat, RunReport)> {
        let device = Device::Cpu;
        let model =
            TrainableLat::new(config, 0.02, derive_seed(seed, "init"), DType::F32, &device)?;
        let mut cfg = self.train;
        cfg.seed = derive_seed(seed, "data");
        let sample = |s: u64| icl_batch(&self.tasks(s, cfg.batch)?, DType::F32, &device);
        let report = train(
            &model,
            &cfg,
            sample,
            RunControl {
                out,
                ..Default::default()
            },
        )?;
        Ok((model, report))
    }
}

/// `0.5 · mean (ŷ − y)²` of a predictor over tasks (first query of each).
pub fn baseline_loss(p: &dyn Predictor, tasks: &[RegressionTask]) -> Result<f64> {
    let mut sum = 0.0;
    for t in tasks {
        let pred = p.predict(
            &t.x_support,
            &t.y_support,
            &t.x_query.rows(0, 1).into_owned(),
        )?;
        sum += 0.5 * (pred[0] - t.y_query[0]).powi(2);
    }
    Ok(sum / tasks.len() as f64)
}

/// `0.5 · MSE` of a trained LAT over tasks.
pub fn lat_loss(model: &TrainableLat, tasks: &[RegressionTask]) -> Result<f64> {
    let mut total = 0.0;
    for chunk in tasks.chunks(2048) {
        let batch = icl_batch(chunk, DType::F32, &Device::Cpu)?;
        let l = model
            .loss(&batch)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        total += l * chunk.len() as f64;
    }
    Ok(total / tasks.len() as f64)
}

/// The best constant GD step for `steps` steps from a log grid (by loss on `tasks`).
pub fn tuned_gd(steps: usize, tasks: &[RegressionTask]) -> Result<(GradientDescent, f64)> {
    let mut best: Option<(GradientDescent, f64)> = None;
    for k in 0..=80 {
        let eta = 10f64.powf(-2.0 + 3.0 * k as f64 / 80.0);
        let gd = GradientDescent {
            steps,
            step: StepSize::Fixed(eta),
        };
        let loss = baseline_loss(&gd, tasks)?;
        if loss.is_finite() && best.as_ref().is_none_or(|(_, b)| loss < *b) {
            best = Some((gd, loss));
        }
    }
    best.ok_or_else(|| Error::invalid("GD grid", "every step size diverged"))
}

/// The best `(η, γ)` of GD++ for `steps` layers from a grid (by loss on `tasks`).
pub fn tuned_gdpp(steps: usize, tasks: &[RegressionTask]) -> Result<(GdPlusPlus, f64)> {
    let mut best: Option<(GdPlusPlus, f64)> = None;
    for k in 0..=24 {
        for g in 0..=12 {
            let eta = 10f64.powf(-1.5 + 2.5 * k as f64 / 24.0);
            let gamma = 0.5 * g as f64 / 12.0;
            let p = GdPlusPlus { steps, eta, gamma };
            let loss = baseline_loss(&p, tasks)?;
            if loss.is_finite() && best.as_ref().is_none_or(|(_, b)| loss < *b) {
                best = Some((p, loss));
            }
        }
    }
    best.ok_or_else(|| Error::invalid("GD++ grid", "every setting diverged"))
}

/// Loss of `steps` steps of CG on the normal equations (λ = 1e-6).
pub fn cg_loss(steps: usize, tasks: &[RegressionTask]) -> Result<f64> {
    baseline_loss(
        &ConjugateGradient {
            steps,
            lambda: 1e-6,
            preconditioner: Preconditioner::None,
        },
        tasks,
    )
}

/// Mean over tasks of the cosine between the LAT's sensitivity `∂ŷ/∂x_q` (autodiff) and `g`'s
/// (e.g. GD's `η Xᵀy / n`), given per task.
pub fn sensitivity_cosine(
    model: &TrainableLat,
    tasks: &[RegressionTask],
    reference: impl Fn(&RegressionTask) -> Vec<f64>,
) -> Result<f64> {
    let batch = icl_batch(tasks, DType::F32, &Device::Cpu)?;
    let tokens = Var::from_tensor(&batch.tokens)?;
    let pred = model.predict(tokens.as_tensor())?;
    // Each prediction depends only on its own task's tokens, so the gradient of the sum gives
    // every task's sensitivity at once.
    let grads = pred.sum_all()?.backward()?;
    let g = grads
        .get(tokens.as_tensor())
        .ok_or_else(|| Error::invalid("sensitivity", "no gradient"))?;
    let (n, d) = (model.config.n_support, model.config.dim);
    let g = g
        .narrow(1, n, 1)?
        .narrow(2, 0, d)?
        .flatten_from(1)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    let mut total = 0.0;
    for (row, t) in g.iter().zip(tasks) {
        let r = reference(t);
        let dot: f64 = row.iter().zip(&r).map(|(a, b)| a * b).sum();
        let norms = row.iter().map(|a| a * a).sum::<f64>().sqrt()
            * r.iter().map(|b| b * b).sum::<f64>().sqrt();
        total += if norms > 0.0 { dot / norms } else { 0.0 };
    }
    Ok(total / tasks.len() as f64)
}

/// GD's one-step sensitivity `∂ŷ/∂x_q = η Xᵀy / n`.
pub fn gd_one_step_sensitivity(eta: f64) -> impl Fn(&RegressionTask) -> Vec<f64> {
    move |t| {
        (t.x_support.transpose() * &t.y_support * (eta / t.x_support.nrows() as f64))
            .iter()
            .copied()
            .collect()
    }
}

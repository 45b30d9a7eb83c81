//! In-context linear regression experiments with trained LATs: the von Oswald et al. (2023)
//! setting, baselines evaluated on the same held-out tasks, and the sensitivity comparison.
//!
//! Setting (their Fig. 2): `d = 10`, `n = 10`, `x ~ U(−1, 1)^d`, `w ~ N(0, I)`, no noise, loss
//! `0.5 · MSE` on the query, evaluated on 10 000 held-out tasks.

use candle_core::{DType, Device, Var};
use metarep_core::rng::seeded;
use metarep_core::train::RunReport;
use metarep_eval::baselines::{
    ConjugateGradient, GdPlusPlus, GradientDescent, Predictor, StepSize,
};
use metarep_eval::tasks::linear::{uniform_task, RegressionTask};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reference::Preconditioner;
use crate::train::{
    icl_batch, IclAttention, IclBatch, IclLatConfig, IclSetting, IclTask, IclTrainConfig,
    TrainableLat,
};

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

    /// The setting for training a `layers`-deep LAT: [`IclTrainConfig::depth_scaled`].
    pub fn depth_scaled(&self, layers: usize) -> Self {
        IclSetting::depth_scaled(self, layers)
    }

    /// The model shape for this setting: `layers` layers of `heads` heads of `attention`.
    pub fn model(&self, layers: usize, heads: usize, attention: IclAttention) -> IclLatConfig {
        IclSetting::model(self, layers, heads, attention)
    }

    /// Trains a LAT with `layers` layers (1 head, f32) on `device` from `seed`; returns it with
    /// its report.
    pub fn train_lat(
        &self,
        layers: usize,
        seed: u64,
        device: &Device,
        out: Option<&std::path::Path>,
    ) -> Result<(TrainableLat, RunReport)> {
        self.train_model(
            self.model(layers, 1, IclAttention::Linear),
            seed,
            device,
            out,
        )
    }

    /// Trains a model of shape `config` on `device` from `seed` ([`IclSetting::train_model`]);
    /// with `out` it writes `metrics.jsonl` there. Returns the model with its report.
    pub fn train_model(
        &self,
        config: IclLatConfig,
        seed: u64,
        device: &Device,
        out: Option<&std::path::Path>,
    ) -> Result<(TrainableLat, RunReport)> {
        IclSetting::train_model(self, config, seed, device, out)
    }
}

impl IclSetting for VonOswaldSetting {
    fn input_dim(&self) -> usize {
        self.dim
    }

    fn n_support(&self) -> usize {
        self.n_support
    }

    fn train_config(&self) -> IclTrainConfig {
        self.train
    }

    fn with_train(&self, train: IclTrainConfig) -> Self {
        Self { train, ..*self }
    }

    fn batch(&self, seed: u64, count: usize) -> Result<IclBatch> {
        icl_batch(&self.tasks(seed, count)?, DType::F32, &Device::Cpu)
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

/// The batch-size-weighted mean [`TrainableLat::loss`] of a trained model over tasks (`0.5 · MSE`
/// for regression tasks).
pub fn lat_loss<T: IclTask>(model: &TrainableLat, tasks: &[T]) -> Result<f64> {
    let mut total = 0.0;
    for chunk in tasks.chunks(2048) {
        let batch = icl_batch(chunk, model.dtype(), model.device())?;
        let l = model
            .loss(&batch)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        total += l * chunk.len() as f64;
    }
    Ok(total / tasks.len() as f64)
}

/// A trained model's prediction at each task's first query.
pub fn lat_predictions<T: IclTask>(model: &TrainableLat, tasks: &[T]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(2048) {
        let batch = icl_batch(chunk, model.dtype(), model.device())?;
        out.extend(
            model
                .predict(&batch.tokens)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?,
        );
    }
    Ok(out)
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

/// Each task's sensitivity `∂ŷ/∂x_q` `[d]` of a model's first-query prediction (autodiff). For a
/// one-layer LAT `ŷ` is linear in `x_q`, so this is the weight vector it applies to the query.
pub fn query_sensitivities<T: IclTask>(model: &TrainableLat, tasks: &[T]) -> Result<Vec<Vec<f64>>> {
    let batch = icl_batch(tasks, model.dtype(), model.device())?;
    let tokens = Var::from_tensor(&batch.tokens)?;
    let pred = model.predict(tokens.as_tensor())?;
    // Each prediction depends only on its own task's tokens, so the gradient of the sum gives
    // every task's sensitivity at once.
    let grads = pred.sum_all()?.backward()?;
    let g = grads
        .get(tokens.as_tensor())
        .ok_or_else(|| Error::invalid("sensitivity", "no gradient"))?;
    let (n, d) = (model.config.n_support, model.config.dim);
    Ok(g.narrow(1, n, 1)?
        .narrow(2, 0, d)?
        .flatten_from(1)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?)
}

/// Mean over tasks of the cosine between the LAT's sensitivity `∂ŷ/∂x_q` (autodiff) and `g`'s
/// (e.g. GD's `η Xᵀy / n`), given per task.
pub fn sensitivity_cosine<T: IclTask>(
    model: &TrainableLat,
    tasks: &[T],
    reference: impl Fn(&T) -> Vec<f64>,
) -> Result<f64> {
    let g = query_sensitivities(model, tasks)?;
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

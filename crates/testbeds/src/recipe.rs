//! The training recipe shared by the fixture models (induction-2l, arith, grammar-lm): f32 on
//! the CPU, AdamW with weight decay 0.01, linear warmup (5% of the steps unless a recipe says
//! otherwise) then cosine decay, gradient clipping at 1, no logging.

use candle_core::{DType, Device};
use metarep_core::train::{RunControl, RunReport};
use metarep_model::train::{LmBatch, LmTrainConfig, LmTrainer};
use metarep_model::{HookedTransformer, ModelConfig};

use crate::error::Result;

/// 5% of `steps` (at least 1): the default warmup.
pub(crate) fn default_warmup(steps: usize) -> usize {
    (steps / 20).max(1)
}

/// Trains a fresh `cfg` model under `seed` for `steps` at peak `lr` after `warmup` steps on
/// `batch(step, seed)`.
pub(crate) fn train_fixture(
    cfg: ModelConfig,
    seed: u64,
    steps: usize,
    lr: f64,
    warmup: usize,
    mut batch: impl FnMut(usize, u64) -> Result<LmBatch>,
) -> Result<(HookedTransformer, RunReport)> {
    let mut trainer = LmTrainer::new(cfg, seed, DType::F32, &Device::Cpu)?;
    let mut source = |step: usize, seed: u64| -> metarep_model::Result<LmBatch> {
        batch(step, seed).map_err(|e| metarep_model::Error::Invalid(e.to_string()))
    };
    let tc = LmTrainConfig {
        steps,
        lr,
        warmup,
        weight_decay: 0.01,
        clip: 1.0,
        log_every: 0,
        seed,
        ..LmTrainConfig::default()
    };
    let report = trainer.train(&tc, &mut source, None, RunControl::default())?;
    Ok((trainer.model().clone(), report))
}

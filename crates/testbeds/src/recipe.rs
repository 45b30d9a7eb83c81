//! The training recipe shared by the fixture models (induction-2l, arith, grammar-lm): f32 on
//! the CPU, AdamW with weight decay 0.01, linear warmup (5% of the steps unless a recipe says
//! otherwise) then cosine decay, gradient clipping at 1, no logging.

use candle_core::{DType, Device};
use metarep_core::train::{RunControl, RunReport};
use metarep_model::train::{LmBatch, LmTrainConfig, LmTrainer};
use metarep_model::{HookedTransformer, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A GPT-2-style decoder ([`ModelConfig::gpt2_like`]) and its training by this recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderSpec {
    /// Transformer blocks.
    pub layers: usize,
    /// Residual width.
    pub d_model: usize,
    /// Heads per layer (dividing `d_model`).
    pub heads: usize,
    /// Context length.
    pub n_ctx: usize,
    /// Training steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps (then cosine decay).
    pub warmup: usize,
    /// Seed of the weights and of the batches.
    pub seed: u64,
}

impl DecoderSpec {
    /// Checks the settings: sizes ≥ 1, `heads` dividing `d_model`, a finite `lr` > 0.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("layers", self.layers),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("n_ctx", self.n_ctx),
            ("steps", self.steps),
            ("batch", self.batch),
        ];
        if let Some((key, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Invalid(format!("decoder: {key} must be ≥ 1")));
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(Error::Invalid(format!(
                "decoder: heads {} do not divide d_model {}",
                self.heads, self.d_model
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Invalid(format!(
                "decoder: lr must be finite and > 0, got {}",
                self.lr
            )));
        }
        Ok(())
    }

    /// The model configuration for a vocabulary of `vocab` ids.
    pub fn model_config(&self, vocab: usize) -> ModelConfig {
        ModelConfig::gpt2_like(self.layers, self.d_model, self.heads, vocab, self.n_ctx)
    }

    /// Trains a fresh model over `vocab` ids on `batch(step, seed)`.
    pub fn train(
        &self,
        vocab: usize,
        batch: impl FnMut(usize, u64) -> Result<LmBatch>,
    ) -> Result<(HookedTransformer, RunReport)> {
        self.validate()?;
        train_fixture(
            self.model_config(vocab),
            self.seed,
            self.steps,
            self.lr,
            self.warmup,
            batch,
        )
    }
}

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

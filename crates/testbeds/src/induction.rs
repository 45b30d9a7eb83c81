//! The `induction-2l` model: a 2-layer attention-only transformer trained with metarep-model's
//! trainer on sequences that repeat a random segment, which makes it form induction heads.
//!
//! A training sequence is `[BOS, r₁, s, r₂, s, r₃]`: a segment `s` of `L` random tokens (`L`
//! uniform in `min_segment..=n_ctx / 2`) appearing twice, with random tokens `r` of random
//! lengths around and between the copies (`n_ctx + 1` tokens in all), so that only matching
//! content, not positions, tells where the repeat is. Token ids are in `1..vocab` (0 is BOS).
//! Batches depend only on `(step, seed)`.

use candle_core::{Device, Tensor};
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::RunReport;
use metarep_model::train::LmBatch;
use metarep_model::{HookedTransformer, ModelConfig};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::recipe::{default_warmup, train_fixture};

/// The BOS token id of the training sequences (the id the head detectors of
/// `metarep_circuits::detectors` put first, too).
pub const BOS: u32 = 0;

/// Model shape and training settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InductionSpec {
    /// Vocabulary (BOS included).
    pub vocab: usize,
    /// Context length.
    pub n_ctx: usize,
    /// Residual width.
    pub d_model: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Shortest repeated segment.
    pub min_segment: usize,
    /// Training steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Peak learning rate (warmup then cosine decay).
    pub lr: f64,
    /// Seed of the weights and the data.
    pub seed: u64,
}

impl Default for InductionSpec {
    fn default() -> Self {
        Self {
            vocab: 64,
            n_ctx: 64,
            d_model: 64,
            heads: 4,
            min_segment: 4,
            steps: 3000,
            batch: 32,
            lr: 3e-3,
            seed: 0,
        }
    }
}

impl InductionSpec {
    /// The 2-layer attention-only model configuration.
    pub fn model_config(&self) -> ModelConfig {
        let mut cfg = ModelConfig::gpt2_like(2, self.d_model, self.heads, self.vocab, self.n_ctx);
        cfg.attn_only = true;
        cfg
    }

    /// The training sequences of one step: `[batch, n_ctx + 1]` u32.
    pub fn batch_tokens(&self, step: usize, seed: u64) -> Result<Tensor> {
        if self.vocab < 2 || self.min_segment == 0 || 2 * self.min_segment > self.n_ctx {
            return Err(Error::Invalid(format!(
                "induction spec: need vocab ≥ 2 and 1 ≤ min_segment ≤ n_ctx / 2 (got {}, {}, {})",
                self.vocab, self.min_segment, self.n_ctx
            )));
        }
        let mut rng = seeded(derive_seed(seed, &format!("induction/step{step}")));
        let n = self.n_ctx + 1;
        let mut ids = Vec::with_capacity(self.batch * n);
        let random = |rng: &mut rand_chacha::ChaCha8Rng, k: usize| -> Vec<u32> {
            (0..k)
                .map(|_| rng.random_range(1..self.vocab as u32))
                .collect()
        };
        for _ in 0..self.batch {
            let len = rng.random_range(self.min_segment..=self.n_ctx / 2);
            let seg = random(&mut rng, len);
            // Split the free tokens into three random gaps.
            let free = self.n_ctx - 2 * len;
            let (a, b) = (rng.random_range(0..=free), rng.random_range(0..=free));
            let (lo, hi) = (a.min(b), a.max(b));
            ids.push(BOS);
            ids.extend(random(&mut rng, lo));
            ids.extend_from_slice(&seg);
            ids.extend(random(&mut rng, hi - lo));
            ids.extend_from_slice(&seg);
            ids.extend(random(&mut rng, free - hi));
        }
        Ok(Tensor::from_vec(ids, (self.batch, n), &Device::Cpu)?)
    }

    /// Trains the model (f32, CPU).
    pub fn train(&self) -> Result<(HookedTransformer, RunReport)> {
        train_fixture(
            self.model_config(),
            self.seed,
            self.steps,
            self.lr,
            default_warmup(self.steps),
            |step, seed| LmBatch::next_token(&self.batch_tokens(step, seed)?).map_err(Into::into),
        )
    }
}

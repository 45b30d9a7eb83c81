//! byte-lm: a small byte-level Llama (the 256 byte values are its vocabulary, no tokenizer)
//! trained by the shared recipe on random spans of a text: a base language model of real text
//! that trains in minutes on a CPU, for experiments that need a frozen LM (MegaContext's quick
//! configs). Trained models come back frozen: plain tensors, no gradient tracking.

use candle_core::{Device, Tensor};
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::RunReport;
use metarep_model::hf_config::parse_hf_config;
use metarep_model::train::LmBatch;
use metarep_model::{HookedTransformer, ModelConfig, Weights};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::recipe::train_fixture;

/// Vocabulary size: one id per byte value.
pub const VOCAB: usize = 256;

/// The model and its training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByteLmSpec {
    /// Transformer blocks.
    pub layers: usize,
    /// Residual width.
    pub d_model: usize,
    /// Attention heads (dividing `d_model`).
    pub heads: usize,
    /// MLP width (SwiGLU).
    pub mlp: usize,
    /// Context length (rotary positions).
    pub n_ctx: usize,
    /// Bytes per training sequence (≤ `n_ctx`).
    pub seq: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Training steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps (then cosine decay).
    pub warmup: usize,
    /// Seed of the weights and of the spans.
    pub seed: u64,
}

/// A text's bytes as token ids.
pub fn encode(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

impl ByteLmSpec {
    /// Checks the settings: sizes ≥ 1, `heads` dividing `d_model`, `seq ≤ n_ctx`, a finite
    /// `lr` > 0.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("layers", self.layers),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("mlp", self.mlp),
            ("seq", self.seq),
            ("batch", self.batch),
            ("steps", self.steps),
        ];
        if let Some((key, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Invalid(format!("byte-lm: {key} must be ≥ 1")));
        }
        if !self.d_model.is_multiple_of(self.heads) || self.seq > self.n_ctx {
            return Err(Error::Invalid(format!(
                "byte-lm: heads {} must divide d_model {} and seq {} fit n_ctx {}",
                self.heads, self.d_model, self.seq, self.n_ctx
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Invalid(format!(
                "byte-lm: lr must be finite and > 0, got {}",
                self.lr
            )));
        }
        Ok(())
    }

    /// The model configuration: a Llama (RMSNorm, rotary positions, SwiGLU) over 256 ids.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let json = serde_json::json!({
            "model_type": "llama", "hidden_size": self.d_model,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads, "intermediate_size": self.mlp,
            "vocab_size": VOCAB, "max_position_embeddings": self.n_ctx,
            "tie_word_embeddings": false
        });
        Ok(parse_hf_config(
            &json.to_string(),
            std::path::Path::new("<byte-lm>"),
        )?)
    }

    /// Trains a fresh model on spans of `seq + 1` bytes drawn uniformly from `text` (each
    /// step's draw a function of the seed and the step); returns it frozen with the report.
    pub fn train(&self, text: &[u32]) -> Result<(HookedTransformer, RunReport)> {
        self.validate()?;
        let len = self.seq + 1;
        if text.len() <= len {
            return Err(Error::Invalid(format!(
                "byte-lm: {} bytes of text cannot fill a training span of {len}",
                text.len()
            )));
        }
        if let Some(bad) = text.iter().find(|&&t| t as usize >= VOCAB) {
            return Err(Error::Invalid(format!("byte-lm: id {bad} is not a byte")));
        }
        let batch = |step: usize, seed: u64| -> Result<LmBatch> {
            let mut rng = seeded(derive_seed(seed, &format!("byte-lm step {step}")));
            let rows: Vec<u32> = (0..self.batch)
                .flat_map(|_| {
                    let at = rng.random_range(0..text.len() - len);
                    text[at..at + len].to_vec()
                })
                .collect();
            let seqs = Tensor::from_vec(rows, (self.batch, len), &Device::Cpu)?;
            Ok(LmBatch::next_token(&seqs)?)
        };
        let (model, report) = train_fixture(
            self.model_config()?,
            self.seed,
            self.steps,
            self.lr,
            self.warmup,
            batch,
        )?;
        Ok((freeze(&model)?, report))
    }
}

/// The same model with its weights detached from any variable (no gradient tracking).
fn freeze(model: &HookedTransformer) -> Result<HookedTransformer> {
    let cfg = model.config().clone();
    let named = model
        .weights()
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    Ok(HookedTransformer::new(
        cfg.clone(),
        Weights::from_named(&cfg, &named)?,
    )?)
}

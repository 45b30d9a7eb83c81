//! Random initialisation (TransformerLens's default "gpt2" scheme): every matrix and embedding
//! `N(0, σ²)` with `σ = 0.8 / √d_model` unless given, norm scales 1, biases 0; each tensor drawn
//! from its own stream derived from the seed and the tensor's name.

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::{derive_seed, normal_vec, seeded};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::HookedTransformer;
use crate::weights::Weights;

/// TransformerLens's default initialisation scale `0.8 / √d_model`.
pub fn default_init_std(cfg: &ModelConfig) -> f64 {
    0.8 / (cfg.d_model as f64).sqrt()
}

/// Random weights for `cfg` (see the module docs) in `dtype` on `device`.
pub fn random_weights(
    cfg: &ModelConfig,
    seed: u64,
    std: f64,
    dtype: DType,
    device: &Device,
) -> Result<Weights> {
    Weights::from_fn(cfg, |name, shape| {
        let last = name.rsplit('.').next().unwrap_or(name);
        let t = if last == "w" {
            Tensor::ones(shape, dtype, device)?
        } else if last.starts_with('b') {
            Tensor::zeros(shape, dtype, device)?
        } else {
            let n: usize = shape.iter().product();
            let values = normal_vec(&mut seeded(derive_seed(seed, name)), n, 0.0, std)?;
            let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
            Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?
        };
        Ok(t)
    })
}

impl HookedTransformer {
    /// A randomly initialised model (see [`crate::init`]).
    pub fn random(cfg: ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let std = default_init_std(&cfg);
        let w = random_weights(&cfg, seed, std, dtype, device)?;
        HookedTransformer::new(cfg, w)
    }
}

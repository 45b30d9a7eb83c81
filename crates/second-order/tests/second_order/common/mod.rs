//! Models shared by the second-order tests.

use candle_core::{Device, Tensor};
use metarep_core::rng::{derive_seed, normal_vec, seeded};
use metarep_model::{Activation, HookedTransformer, ModelConfig, NormKind, Rotary, Weights};

/// A Llama-like config: RMSNorm, no biases, rotary, grouped-query attention, gated SiLU MLP,
/// untied unembedding.
pub fn llama_cfg() -> ModelConfig {
    let mut cfg = ModelConfig::gpt2_like(3, 32, 4, 40, 16);
    cfg.d_mlp = 48;
    cfg.n_kv_heads = 2;
    cfg.norm = NormKind::RmsNorm;
    cfg.act = Activation::Silu;
    cfg.gated_mlp = true;
    cfg.learned_positions = false;
    cfg.rotary = Some(Rotary {
        dim: cfg.d_head,
        base: 10000.0,
        scaling: None,
    });
    cfg.qkv_bias = false;
    cfg.out_bias = false;
    cfg.mlp_bias = false;
    cfg.tied_embeddings = false;
    cfg
}

/// Every tensor random: norm scales `1 + N(0, 0.2²)`, biases `N(0, 0.1²)`, matrices
/// `N(0, (1.6/√d)²)` (twice the default, for less uniform attention).
pub fn rich_model(cfg: ModelConfig, seed: u64) -> HookedTransformer {
    let std = 1.6 / (cfg.d_model as f64).sqrt();
    let w = Weights::from_fn(&cfg, |name, shape| {
        let n: usize = shape.iter().product();
        let last = name.rsplit('.').next().unwrap_or(name);
        let (mean, sd) = if last == "w" {
            (1.0, 0.2)
        } else if last.starts_with('b') {
            (0.0, 0.1)
        } else {
            (0.0, std)
        };
        let v = normal_vec(&mut seeded(derive_seed(seed, name)), n, mean, sd)
            .map_err(|e| metarep_model::Error::Invalid(e.to_string()))?;
        let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    })
    .unwrap();
    HookedTransformer::new(cfg, w).unwrap()
}

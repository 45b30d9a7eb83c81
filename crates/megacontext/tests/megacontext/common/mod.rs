//! The small random base model and GistNet the streaming, generation and LensNet tests share.

use candle_core::{DType, Device};
use metarep_megacontext::{GistNet, GistNetConfig, Skip};
use metarep_model::{HookedTransformer, ModelConfig};

/// A 2-layer Llama (d_model 32, 48 tokens, rotary, grouped KV heads) with random weights.
pub fn tiny_llama() -> HookedTransformer {
    let json = serde_json::json!({
        "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
        "vocab_size": 48, "max_position_embeddings": 512, "tie_word_embeddings": false
    });
    let cfg: ModelConfig =
        metarep_model::hf_config::parse_hf_config(&json.to_string(), std::path::Path::new("<cfg>"))
            .unwrap();
    HookedTransformer::random(cfg, 4, DType::F32, &Device::Cpu).unwrap()
}

/// A GistNet of arity 4 over [`tiny_llama`]'s embeddings, starting at mean pooling.
pub fn tiny_gistnet() -> GistNet {
    let cfg = GistNetConfig {
        width: 16,
        layers: 1,
        heads: 2,
        mlp: 32,
        skip: Skip::Mean,
        ..GistNetConfig::for_model(32, 4)
    };
    GistNet::new(cfg, 1, &Device::Cpu).unwrap()
}

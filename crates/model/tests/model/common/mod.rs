//! Helpers shared by the integration tests: fixture paths and tensor comparison.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use metarep_model::{HookedTransformer, Input, LoadOptions, ModelConfig};

/// `fixtures/` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The parity fixture directory of `case`.
pub fn parity_dir(case: &str) -> PathBuf {
    fixtures().join("parity").join(case)
}

/// Loads a parity fixture model (f32, CPU) and its reference tensors.
pub fn load_case(case: &str) -> (HookedTransformer, HashMap<String, Tensor>) {
    let dir = parity_dir(case);
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {case}: {e}"));
    let refs =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    (model, refs)
}

/// The fixture's input (tokens, and the padding mask / token types when recorded).
pub fn case_input(refs: &HashMap<String, Tensor>) -> Input {
    let mut input = Input::new(refs["input_ids"].clone());
    if let Some(m) = refs.get("attention_mask") {
        input = input.with_attention_mask(m.clone());
    }
    if let Some(t) = refs.get("token_type_ids") {
        input = input.with_token_types(t.clone());
    }
    input
}

/// Max |a − b| over the entries where `valid` holds, treating entries where the reference is
/// masked (≤ −1e30, TransformerLens's `-inf` or `finfo.min`) as requiring ours to be masked too.
pub fn max_abs_diff(ours: &Tensor, reference: &Tensor, valid: &dyn Fn(&[usize]) -> bool) -> f32 {
    assert_eq!(ours.dims(), reference.dims(), "shape mismatch");
    let dims = ours.dims().to_vec();
    let a = ours
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = reference
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut worst = 0f32;
    let mut idx = vec![0usize; dims.len()];
    for (x, y) in a.iter().zip(&b) {
        if valid(&idx) {
            if *y <= -1e30 {
                if *x > -1e30 {
                    return f32::INFINITY;
                }
            } else {
                let d = (x - y).abs();
                if d.is_nan() {
                    return f32::INFINITY;
                }
                worst = worst.max(d);
            }
        }
        for k in (0..dims.len()).rev() {
            idx[k] += 1;
            if idx[k] < dims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    worst
}

/// Small random decoders of each family the forward pass treats differently: GPT-2 (learned
/// positions), Llama (rotary, grouped-query attention), Llama with a sliding window, and
/// Gemma 3 (sliding then global layers, final soft-cap).
pub fn decoder_families() -> Vec<(&'static str, HookedTransformer)> {
    let gpt2 = ModelConfig::gpt2_like(2, 32, 4, 40, 64);
    let llama_json = serde_json::json!({
        "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
        "vocab_size": 40, "max_position_embeddings": 64, "tie_word_embeddings": false
    });
    let llama = metarep_model::hf_config::parse_hf_config(
        &llama_json.to_string(),
        std::path::Path::new("<config>"),
    )
    .unwrap();
    assert!(llama.rotary.is_some() && llama.n_kv_heads == 2);
    let mut windowed = llama.clone();
    windowed.sliding_window = Some(5);
    let gemma_json = serde_json::json!({
        "model_type": "gemma3_text", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "intermediate_size": 48, "vocab_size": 40, "max_position_embeddings": 64,
        "sliding_window": 3, "layer_types": ["sliding_attention", "full_attention"],
        "final_logit_softcapping": 10.0
    });
    let gemma = metarep_model::hf_config::parse_hf_config(
        &gemma_json.to_string(),
        std::path::Path::new("<config>"),
    )
    .unwrap();
    [
        ("gpt2", gpt2),
        ("llama", llama),
        ("llama, window 5", windowed),
        ("gemma3, window 3 then global", gemma),
    ]
    .into_iter()
    .map(|(n, c)| {
        (
            n,
            HookedTransformer::random(c, 3, DType::F32, &Device::Cpu).unwrap(),
        )
    })
    .collect()
}

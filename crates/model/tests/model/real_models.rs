//! Real pretrained models from GGUF files against checked-in references (`cargo xtask fixtures
//! NAME-reference`): SmolLM2-135M-Instruct (Q4_1, `cargo xtask fixtures smollm2`) and Gemma 3
//! 270M (Q4_K_M, `cargo xtask fixtures gemma3-270m`). The tokenizer rebuilt from the GGUF
//! metadata gives llama.cpp's token ids on every text of the suite; on the same ids the logits
//! and residual streams equal transformers' dequantized f32 forward pass; the mean NLL is within
//! 0.1 nats of llama.cpp's (which quantizes activations, so only roughly equal).

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use metarep_core::compare::max_abs_diff;
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input, LoadOptions};

fn model(name: &str, file: &str) -> HookedTransformer {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../target/fixtures/{name}/{file}"));
    HookedTransformer::from_gguf(&path, &LoadOptions::default()).unwrap()
}

fn reference(name: &str) -> (serde_json::Value, HashMap<String, Tensor>) {
    let dir = common::fixtures().join("reference");
    let json = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu)
            .unwrap();
    (serde_json::from_str(&json).unwrap(), tensors)
}

#[test]
#[ignore = "needs cargo xtask fixtures smollm2"]
fn smollm2_matches_llama_cpp_token_ids_and_transformers_logits() {
    let model = model("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf");
    let cfg = model.config();
    assert_eq!(
        (
            cfg.n_layers,
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_vocab
        ),
        (30, 576, 9, 3, 49152)
    );
    // Measured: max |Δ| 6.9e-5.
    check_against_reference(&model, "smollm2", 1e-3);
}

#[test]
#[ignore = "needs cargo xtask fixtures gemma3-270m"]
fn gemma3_matches_llama_cpp_token_ids_and_transformers_logits() {
    let model = model("gemma3-270m", "gemma-3-270m-q4_k_m.gguf");
    let cfg = model.config();
    assert_eq!(
        (
            cfg.n_layers,
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_head,
            cfg.d_vocab
        ),
        (18, 640, 4, 1, 256, 262144)
    );
    assert_eq!(cfg.full_attention_layers, vec![5, 11, 17]);
    assert_eq!(cfg.sliding_window, Some(512));
    check_against_reference(&model, "gemma3-270m", 1e-2);
}

/// Token ids, logits (top 10 of every position and two full rows, max abs ≤ `logit_tol`),
/// residual streams and final norm at the last position, and llama.cpp's mean NLL.
fn check_against_reference(model: &HookedTransformer, name: &str, logit_tol: f64) {
    let cfg = model.config();
    let (refs, tensors) = reference(name);
    let tok = model.tokenizer().expect("the GGUF carries a tokenizer");
    let texts: Vec<String> = serde_json::from_value(refs["texts"].clone()).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(refs["ids"].clone()).unwrap();
    let scored_ids: HashMap<String, Vec<u32>> =
        serde_json::from_value(refs["scored_ids"].clone()).unwrap();
    for (text, want) in texts.iter().zip(&ids) {
        let got = tok.encode(text, false).unwrap().ids;
        assert_eq!(&got, want, "token ids of {text:?}");
    }
    let mut worst = 0f64;
    for (key, scored) in refs["logits"].as_object().unwrap() {
        let i: usize = key.parse().unwrap();
        let seq = &scored_ids[key];
        let input = Input::from_ids(std::slice::from_ref(seq), &Device::Cpu).unwrap();
        let mut points: Vec<HookPoint> = (0..cfg.n_layers).map(HookPoint::ResidPre).collect();
        points.push(HookPoint::LnFinalNormalized);
        let (logits, cache) = model
            .run_with_cache(input, HookFilter::Points(points))
            .unwrap();
        let logits = logits.squeeze(0).unwrap();
        let top: Vec<Vec<f64>> = serde_json::from_value(scored["top_values"].clone()).unwrap();
        let top_ids: Vec<Vec<u32>> = serde_json::from_value(scored["top_ids"].clone()).unwrap();
        for (p, (vals, tids)) in top.iter().zip(&top_ids).enumerate() {
            let row = logits.get(p).unwrap().to_vec1::<f32>().unwrap();
            for (v, &t) in vals.iter().zip(tids) {
                let d = (row[t as usize] as f64 - v).abs();
                worst = worst.max(d);
                assert!(
                    d <= logit_tol,
                    "text {i}, position {p}, token {t}: {} vs {v}",
                    row[t as usize]
                );
            }
        }
        let n = seq.len();
        for (row, pos) in [("first", 0), ("last", n - 1)] {
            let want = &tensors[&format!("text{i}.logits.{row}")];
            let d = max_abs_diff(&logits.get(pos).unwrap(), want).unwrap();
            worst = worst.max(d);
            assert!(d <= logit_tol, "text {i}: full {row} row differs by {d}");
        }
        let last = |t: &Tensor| t.squeeze(0).unwrap().get(n - 1).unwrap();
        for l in 0..cfg.n_layers {
            let got = last(cache.get(HookPoint::ResidPre(l)).unwrap());
            let want = &tensors[&format!("text{i}.resid_pre.{l}")];
            let scale = metarep_core::compare::max_abs(want).unwrap().max(1.0);
            let d = max_abs_diff(&got, want).unwrap();
            assert!(
                d <= 1e-4 * scale,
                "text {i}: resid_pre {l} differs by {d} (scale {scale})"
            );
        }
        // TransformerLens's RMSNorm `hook_normalized` is before the weight; transformers'
        // last hidden state after it.
        let w = &model.ln_final().unwrap().w;
        let got = last(cache.get(HookPoint::LnFinalNormalized).unwrap())
            .broadcast_mul(w)
            .unwrap();
        let d = max_abs_diff(&got, &tensors[&format!("text{i}.final_normed")]).unwrap();
        let scale = metarep_core::compare::max_abs(&tensors[&format!("text{i}.final_normed")])
            .unwrap()
            .max(1.0);
        assert!(
            d <= 1e-4 * scale,
            "text {i}: final normalised stream differs by {d} (scale {scale})"
        );
    }
    println!("{name} logits vs transformers: max |Δ| {worst:.2e} (tolerance {logit_tol})");

    // Mean NLL of the English sentence against llama.cpp's.
    let en = &scored_ids["0"];
    let logits = model
        .forward(Input::from_ids(std::slice::from_ref(en), &Device::Cpu).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let lp = metarep_model::ops::log_softmax_last_dim(&logits)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let nll: f64 = (0..en.len() - 1)
        .map(|p| -(lp[p][en[p + 1] as usize] as f64))
        .sum::<f64>()
        / (en.len() - 1) as f64;
    let llama = refs["nll_llama_cpp"].as_f64().unwrap();
    println!("{name} mean NLL: metarep {nll:.4}, llama.cpp {llama:.4}");
    assert!((nll - llama).abs() <= 0.1, "NLL {nll} vs llama.cpp {llama}");
}

//! The real SmolLM2-135M-Instruct (Q4_1 GGUF, `cargo xtask fixtures smollm2`) against the
//! checked-in reference (`cargo xtask fixtures smollm2-reference`): the tokenizer rebuilt from
//! the GGUF metadata gives llama.cpp's token ids on every text of the suite; on the same ids the
//! logits and residual streams equal transformers' dequantized f32 forward pass; the mean NLL is
//! within 0.1 nats of llama.cpp's.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use metarep_core::compare::max_abs_diff;
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input, LoadOptions};

/// Logits must equal transformers' to this (max abs, nats).
const LOGIT_TOL: f64 = 1e-3;

fn model() -> HookedTransformer {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    HookedTransformer::from_gguf(&path, &LoadOptions::default()).unwrap()
}

fn reference() -> (serde_json::Value, HashMap<String, Tensor>) {
    let dir = common::fixtures().join("reference");
    let json = std::fs::read_to_string(dir.join("smollm2.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("smollm2.safetensors"), &Device::Cpu).unwrap();
    (serde_json::from_str(&json).unwrap(), tensors)
}

#[test]
#[ignore = "needs cargo xtask fixtures smollm2"]
fn smollm2_matches_llama_cpp_token_ids_and_transformers_logits() {
    let model = model();
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
    let (refs, tensors) = reference();
    let tok = model.tokenizer().expect("the GGUF carries a tokenizer");
    let texts: Vec<String> = serde_json::from_value(refs["texts"].clone()).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(refs["ids"].clone()).unwrap();
    for (text, want) in texts.iter().zip(&ids) {
        let got = tok.encode(text, false).unwrap().ids;
        assert_eq!(&got, want, "token ids of {text:?}");
    }
    let mut worst = 0f64;
    for (key, scored) in refs["logits"].as_object().unwrap() {
        let i: usize = key.parse().unwrap();
        let input = Input::from_ids(std::slice::from_ref(&ids[i]), &Device::Cpu).unwrap();
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
                    d <= LOGIT_TOL,
                    "text {i}, position {p}, token {t}: {} vs {v}",
                    row[t as usize]
                );
            }
        }
        let n = ids[i].len();
        for (name, pos) in [("first", 0), ("last", n - 1)] {
            let want = &tensors[&format!("text{i}.logits.{name}")];
            let d = max_abs_diff(&logits.get(pos).unwrap(), want).unwrap();
            worst = worst.max(d);
            assert!(d <= LOGIT_TOL, "text {i}: full {name} row differs by {d}");
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
        assert!(
            d <= 1e-3,
            "text {i}: final normalised stream differs by {d}"
        );
    }
    println!("SmolLM2 logits vs transformers: max |Δ| {worst:.2e} (tolerance {LOGIT_TOL})");

    // Mean NLL of the English sentence against llama.cpp's.
    let en = &ids[0];
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
    println!("mean NLL: metarep {nll:.4}, llama.cpp {llama:.4}");
    assert!((nll - llama).abs() <= 0.1, "NLL {nll} vs llama.cpp {llama}");
}

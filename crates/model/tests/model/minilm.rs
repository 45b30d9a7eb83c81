//! The real all-MiniLM-L6-v2 (BERT) reproduces sentence-transformers' embeddings (cosine ≥
//! 0.9999 per sentence). The model is fetched outside git by `cargo xtask fixtures minilm`
//! (or found at `$METAREP_MINILM_DIR`); the test is ignored unless asked for
//! (`cargo test -- --include-ignored`, as `.ci/run` does after fetching the fixture).

use crate::common;

use std::path::PathBuf;

use candle_core::Device;
use metarep_model::pooling::Pooling;
use metarep_model::{HookedTransformer, LoadOptions};

fn model_dir() -> PathBuf {
    std::env::var_os("METAREP_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures/all-MiniLM-L6-v2")
        })
}

#[test]
#[ignore = "needs cargo xtask fixtures minilm"]
fn minilm_matches_sentence_transformers() {
    let dir = model_dir();
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap();
    let cfg = model.config();
    assert_eq!((cfg.n_layers, cfg.d_model, cfg.n_heads), (6, 384, 12));
    assert!(cfg.pooler && cfg.lm_head == metarep_model::LmHead::None);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("minilm/reference.json")).unwrap(),
    )
    .unwrap();
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(reference["token_ids"].clone()).unwrap();
    let expected: Vec<Vec<f32>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    let tok = model.tokenizer().expect("tokenizer.json");
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let batch = tok.batch(&refs, true, &Device::Cpu).unwrap();
    for (enc, want) in batch.encodings.iter().zip(&ids) {
        assert_eq!(&enc.ids, want);
    }
    let emb = model
        .sentence_embeddings(&batch.input, Pooling::Mean, true)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (i, (got, want)) in emb.iter().zip(&expected).enumerate() {
        let dot: f32 = got.iter().zip(want).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (norm(got) * norm(want));
        println!("sentence {i}: cosine {cos:.7}");
        assert!(
            cos >= 0.9999,
            "sentence {i} ({}): cosine {cos}",
            sentences[i]
        );
    }
    // The pooler output exists and is bounded by tanh.
    let pooled = model
        .sentence_embeddings(&batch.input, Pooling::Pooler, false)
        .unwrap();
    assert_eq!(pooled.dims(), &[5, 384]);
}

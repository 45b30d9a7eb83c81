//! Inputs longer than a rotary model's context length (`n_ctx`, HF `max_position_embeddings`):
//! `metarep forward`, `generate` and `capture` run them with one warning, and refuse them under
//! `--strict` with an error naming the length and the limit.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use common::metarep;
use metarep_model::hf_config::parse_hf_config;
use metarep_model::{HookedTransformer, Tokenizer};

/// The model's context length.
const N_CTX: usize = 8;

/// A random Llama-style (rotary) model with `n_ctx` [`N_CTX`] over the fixture tokenizer's
/// vocabulary, saved with it into `dir`.
fn saved_rotary_model(dir: &Path) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let tok = Tokenizer::from_file(&fixtures.join("parity/tokenizer/tokenizer.json")).unwrap();
    let json = serde_json::json!({
        "model_type": "llama", "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 24,
        "vocab_size": tok.vocab_size(), "max_position_embeddings": N_CTX,
        "tie_word_embeddings": true
    });
    let cfg = parse_hf_config(&json.to_string(), Path::new("<config>")).unwrap();
    assert!(cfg.rotary.is_some() && !cfg.learned_positions);
    HookedTransformer::random(cfg, 1, DType::F32, &Device::Cpu)
        .unwrap()
        .with_tokenizer(tok)
        .save_pretrained(dir)
        .unwrap();
}

/// Runs `metarep args… [--strict]`; asserts the plain run succeeds with exactly one warning
/// naming `len` and the limit, and the strict one fails with an error naming both.
fn warns_then_refuses(args: &[&str], len: usize) {
    let (ok, _, err) = metarep(args);
    assert!(ok, "{err}");
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    let named = |err: &str| {
        err.contains(&format!("{len} positions")) && err.contains(&format!("n_ctx = {N_CTX}"))
    };
    assert!(named(&err), "{err}");
    let (ok, _, err) = metarep(&[args, &["--strict"]].concat());
    assert!(!ok && err.contains("error:") && named(&err), "{err}");
}

#[test]
fn forward_generate_and_capture_warn_past_the_context_and_strict_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    saved_rotary_model(&model);
    let model = model.to_str().unwrap();
    let out = dir.path().join("out.safetensors");
    let tokens = (0..12).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    warns_then_refuses(
        &[
            "forward",
            "--model",
            model,
            "--tokens",
            &tokens,
            "--out",
            out.to_str().unwrap(),
        ],
        12,
    );

    // Generation steps past the context one position at a time: one warning, not one per step;
    // strict refuses before generating, counting the prompt (7 tokens) and --max-new-tokens
    // (the last new token is never fed back: 7 + 2 new tokens need exactly the 8 positions).
    let generate = |new: &str, strict: &[&str]| {
        let args = ["generate", "--model", model, "--prompt", "The lazy fox"];
        metarep(&[&args[..], &["--max-new-tokens", new], strict].concat())
    };
    let (ok, _, err) = generate("2", &["--strict"]);
    assert!(ok && !err.contains("warning:"), "{err}");
    let (ok, _, err) = generate("20", &[]);
    assert!(ok, "{err}");
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    assert!(err.contains(&format!("n_ctx = {N_CTX}")), "{err}");
    let (ok, _, err) = generate("20", &["--strict"]);
    assert!(!ok && err.contains(&format!("n_ctx = {N_CTX}")), "{err}");
    assert!(err.contains("--max-new-tokens"), "{err}");

    let data = dir.path().join("data.jsonl");
    let ids = (0..24)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(&data, format!("{{\"tokens\": [{ids}]}}\n")).unwrap();
    let acts = dir.path().join("acts");
    warns_then_refuses(
        &[
            "capture",
            "--model",
            model,
            "--data",
            data.to_str().unwrap(),
            "--hooks",
            "blocks.0.hook_resid_post",
            "--out",
            acts.to_str().unwrap(),
            "--context",
            "12",
        ],
        12,
    );
}

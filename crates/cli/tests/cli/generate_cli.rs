//! `metarep generate` prints the text the library generates (greedy and seeded sampling),
//! stops at the checkpoint's end-of-sequence id and at `--stop` strings, and names bad input;
//! on the real SmolLM2 GGUF (ignored without the fixture) it completes a prompt.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use common::metarep;
use metarep_model::generate::{GenerateOptions, Sampling};
use metarep_model::{HookedTransformer, ModelConfig, NoHooks, Tokenizer};

const PROMPT: &str = "The lazy fox";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A random model over the fixture tokenizer's vocabulary, saved with it into `dir`.
fn saved_model(dir: &Path) -> HookedTransformer {
    let tok = Tokenizer::from_file(&fixtures().join("parity/tokenizer/tokenizer.json")).unwrap();
    let cfg = ModelConfig::gpt2_like(2, 32, 2, tok.vocab_size(), 64);
    let model = HookedTransformer::random(cfg, 7, DType::F32, &Device::Cpu)
        .unwrap()
        .with_tokenizer(tok);
    model.save_pretrained(dir).unwrap();
    model
}

/// The library's continuation of [`PROMPT`] under `sampling`, as token ids.
fn library(model: &HookedTransformer, n: usize, sampling: Sampling) -> Vec<u32> {
    let tok = model.tokenizer().unwrap();
    let prompt = tok.encode(PROMPT, true).unwrap().ids;
    let opts = GenerateOptions {
        max_new_tokens: n,
        sampling,
        stop_tokens: vec![],
    };
    model
        .generate(&prompt, &opts, &mut NoHooks, |_| Ok(()))
        .unwrap()
}

fn text(model: &HookedTransformer, ids: &[u32]) -> String {
    model.tokenizer().unwrap().decode(ids, false).unwrap()
}

fn generate(dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        PROMPT,
    ];
    args.extend_from_slice(extra);
    metarep(&args)
}

#[test]
fn greedy_and_seeded_sampling_print_what_the_library_generates() {
    let dir = tempfile::tempdir().unwrap();
    let model = saved_model(dir.path());
    let want = library(&model, 12, Sampling::Greedy);
    let (ok, out, err) = generate(dir.path(), &["--max-new-tokens", "12"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}\n", text(&model, &want)));
    assert!(
        err.contains("12 generated") && err.contains("--max-new-tokens"),
        "{err}"
    );

    let sampling = Sampling::Sample {
        temperature: 0.8,
        top_k: Some(40),
        top_p: Some(0.9),
        seed: 3,
    };
    let want = library(&model, 12, sampling);
    let (ok, out, err) = generate(
        dir.path(),
        &[
            "--max-new-tokens",
            "12",
            "--temperature",
            "0.8",
            "--top-k",
            "40",
            "--top-p",
            "0.9",
            "--seed",
            "3",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}\n", text(&model, &want)));
}

#[test]
fn generation_ends_at_the_configs_eos_id_and_at_stop_strings() {
    let dir = tempfile::tempdir().unwrap();
    let model = saved_model(dir.path());
    let greedy = library(&model, 16, Sampling::Greedy);
    // The first token that is new to the continuation after its start becomes the EOS id.
    let k = (1..greedy.len())
        .find(|&i| !greedy[..i].contains(&greedy[i]))
        .expect("a random model's greedy continuation has two distinct tokens");
    // metarep's own config.json has no such key; Hugging Face's generation_config.json does.
    std::fs::write(
        dir.path().join("generation_config.json"),
        serde_json::json!({ "eos_token_id": [greedy[k]] }).to_string(),
    )
    .unwrap();
    let (ok, out, err) = generate(dir.path(), &["--max-new-tokens", "16"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}\n", text(&model, &greedy[..k])));
    assert!(err.contains("end-of-sequence"), "{err}");

    let full = text(&model, &greedy[..k]);
    let cut = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[cut..].chars().take(2).collect();
    let before = &full[..full.find(&stop).unwrap()];
    let (ok, out, err) = generate(dir.path(), &["--max-new-tokens", "16", "--stop", &stop]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!("{before}\n"),
        "stop string {stop:?} in {full:?}"
    );
    assert!(err.contains("stop string"), "{err}");
}

fn fails_with(args: &[&str], needle: &str) {
    let (ok, out, err) = metarep(args);
    assert!(
        !ok && err.contains(needle),
        "expected failure mentioning {needle:?}, got: {out}{err}"
    );
}

#[test]
fn bad_input_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    saved_model(dir.path());
    let m = dir.path().to_str().unwrap();
    let base = ["generate", "--model", m, "--prompt", PROMPT];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    fails_with(&with(&["--temperature", "0"]), "temperature");
    fails_with(&with(&["--temperature", "1", "--top-p", "1.5"]), "top_p");
    fails_with(&with(&["--temperature", "1", "--top-k", "0"]), "top_k");
    fails_with(&with(&["--top-k", "5"]), "--temperature");
    fails_with(&with(&["--max-new-tokens", "0"]), "--max-new-tokens");
    let bare = fixtures().join("parity/gpt2");
    fails_with(
        &[
            "generate",
            "--model",
            bare.to_str().unwrap(),
            "--prompt",
            PROMPT,
        ],
        "no tokenizer",
    );
    fails_with(
        &[
            "generate",
            "--model",
            "/nonexistent/m.gguf",
            "--prompt",
            "x",
        ],
        "/nonexistent/m.gguf",
    );
}

/// The SmolLM2 fixture.
fn smollm2() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[test]
#[ignore = "needs cargo xtask fixtures smollm2"]
fn smollm2_gguf_completes_a_prompt_and_runs_forward() {
    let gguf = smollm2();
    let g = gguf.to_str().unwrap();
    let (ok, out, err) = metarep(&[
        "generate",
        "--model",
        g,
        "--prompt",
        "The capital of France is Paris. The capital of Germany is",
        "--max-new-tokens",
        "3",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with(" Berlin"), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let acts = dir.path().join("acts.safetensors");
    let (ok, _, err) = metarep(&[
        "forward",
        "--model",
        g,
        "--text",
        "Hello world",
        "--out",
        acts.to_str().unwrap(),
        "--cache",
        "blocks.29.hook_resid_post",
    ]);
    assert!(ok, "{err}");
    let written = candle_core::safetensors::load(&acts, &Device::Cpu).unwrap();
    assert_eq!(written["logits"].dims()[2], 49152);
}

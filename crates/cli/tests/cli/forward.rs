//! `metarep forward` writes the same logits and activations the library computes, in the
//! requested dtype, and reports bad input by name.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use metarep_model::{HookFilter, HookedTransformer, Input, LoadOptions, ModelConfig, Tokenizer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn metarep(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metarep"))
        .args(args)
        .env("METAREP_NO_PROGRESS", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    metarep_core::compare::max_abs_diff(a, b).unwrap()
}

#[test]
fn forward_writes_logits_and_globbed_activations() {
    let model_dir = fixtures().join("parity/gpt2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("acts.safetensors");
    let (ok, text) = metarep(&[
        "forward",
        "--model",
        model_dir.to_str().unwrap(),
        "--tokens",
        "3,1,4,1,5",
        "--out",
        out.to_str().unwrap(),
        "--cache",
        "blocks.*.hook_resid_post",
        "--cache",
        "blocks.0.attn.hook_pattern",
        "--dtype",
        "f16",
    ]);
    assert!(ok, "{text}");
    let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = written.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "blocks.0.attn.hook_pattern",
            "blocks.0.hook_resid_post",
            "blocks.1.hook_resid_post",
            "logits",
            "tokens"
        ]
    );
    assert_eq!(written["logits"].dtype(), DType::F16);
    assert_eq!(written["tokens"].dtype(), DType::U32);
    assert_eq!(written["blocks.0.attn.hook_pattern"].dims(), &[1, 4, 5, 5]);
    let model = HookedTransformer::from_dir(&model_dir, &LoadOptions::default()).unwrap();
    let input = Input::from_ids(&[vec![3, 1, 4, 1, 5]], &Device::Cpu).unwrap();
    let (logits, cache) = model
        .run_with_cache(input, "blocks.1.hook_resid_post")
        .unwrap();
    assert!(max_diff(&written["logits"], &logits) < 5e-3);
    assert!(
        max_diff(
            &written["blocks.1.hook_resid_post"],
            cache.get_name("blocks.1.hook_resid_post").unwrap()
        ) < 5e-3
    );
}

#[test]
fn forward_tokenizes_text_with_the_model_tokenizer() {
    // A random model over the fixture tokenizer's 300-token vocabulary, saved with it.
    let tok = Tokenizer::from_file(&fixtures().join("parity/tokenizer/tokenizer.json")).unwrap();
    let cfg = ModelConfig::gpt2_like(1, 16, 2, tok.vocab_size(), 32);
    let model = HookedTransformer::random(cfg, 0, DType::F32, &Device::Cpu)
        .unwrap()
        .with_tokenizer(tok.clone());
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let out = dir.path().join("out.safetensors");
    let (ok, text) = metarep(&[
        "forward",
        "--model",
        dir.path().to_str().unwrap(),
        "--text",
        "The lazy fox",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let ids = tok.encode("The lazy fox", true).unwrap().ids;
    assert_eq!(
        written["tokens"].to_vec2::<u32>().unwrap(),
        vec![ids.clone()]
    );
    let logits = model
        .run_with_cache(
            Input::from_ids(&[ids], &Device::Cpu).unwrap(),
            HookFilter::Points(vec![]),
        )
        .unwrap()
        .0;
    assert_eq!(max_diff(&written["logits"], &logits), 0.0);
}

fn fails_with(args: &[&str], needle: &str) {
    let (ok, text) = metarep(args);
    assert!(
        !ok && text.contains(needle),
        "expected failure mentioning {needle:?}, got: {text}"
    );
}

#[test]
fn bad_input_is_reported_by_name() {
    let model = fixtures().join("parity/gpt2");
    let m = model.to_str().unwrap();
    let out = Path::new("/nonexistent-dir/never-written.safetensors")
        .to_str()
        .unwrap();
    fails_with(
        &["forward", "--model", m, "--tokens", "1,99", "--out", out],
        "token id 99",
    );
    fails_with(
        &["forward", "--model", m, "--tokens", "1,x", "--out", out],
        "`x`",
    );
    fails_with(
        &[
            "forward",
            "--model",
            m,
            "--tokens",
            "1",
            "--out",
            out,
            "--cache",
            "blocks.*.hook_nope",
        ],
        "blocks.*.hook_nope",
    );
    fails_with(
        &[
            "forward", "--model", m, "--tokens", "1", "--out", out, "--dtype", "f8",
        ],
        "f8",
    );
    fails_with(
        &["forward", "--model", m, "--text", "hi", "--out", out],
        "no tokenizer.json",
    );
    let cache = tempfile::tempdir().unwrap();
    let (ok, text) = {
        let out = Command::new(env!("CARGO_BIN_EXE_metarep"))
            .args([
                "forward",
                "--model",
                "nobody/no-such-model",
                "--tokens",
                "1",
                "--out",
                out,
                "--offline",
            ])
            .env("HF_HOME", cache.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert!(
        !ok && text.contains("nobody/no-such-model")
            && text.contains(&cache.path().display().to_string()),
        "{text}"
    );
}

#[test]
fn the_device_flag_runs_on_the_cpu_and_names_what_is_wrong() {
    let model_dir = fixtures().join("parity/gpt2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    let run = |device: &str| {
        metarep(&[
            "forward",
            "--device",
            device,
            "--model",
            model_dir.to_str().unwrap(),
            "--tokens",
            "1,2,3",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (ok, text) = run("cpu");
    assert!(ok, "{text}");
    let (ok, text) = run("gpu");
    assert!(!ok && text.contains("unknown device `gpu`"), "{text}");
    // Without a GPU (and, in a build without the feature, without CUDA support) a CUDA device
    // is an error that names the flag; with `--features cuda` on a GPU machine it runs.
    if !cfg!(feature = "cuda") {
        let (ok, text) = run("cuda:0");
        assert!(!ok && text.contains("--device cuda:0"), "{text}");
        assert!(text.contains("--features cuda"), "{text}");
    }
}

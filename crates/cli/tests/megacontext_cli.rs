//! `metarep megacontext eval` as a user runs it: a byte-level model directory, a GistNet
//! checkpoint and a text; JSON losses for the cover and truncation; bad flags are named.

use std::process::Command;

use candle_core::{DType, Device};
use metarep_megacontext::{GistNet, GistNetConfig};
use metarep_model::{HookedTransformer, ModelConfig};

#[test]
fn eval_reads_a_text_through_the_budget_for_both_policies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::gpt2_like(1, 16, 2, 256, 512);
    let model = HookedTransformer::random(cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let model_dir = dir.path().join("model");
    model.save_pretrained(&model_dir).unwrap();
    let net = GistNet::new(GistNetConfig::for_model(16, 8), 0, &Device::Cpu).unwrap();
    let net_dir = dir.path().join("gistnet");
    net.save(&net_dir).unwrap();
    let text = dir.path().join("doc.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(12),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_metarep"))
            .args(["megacontext", "eval", "--model"])
            .arg(&model_dir)
            .arg("--gistnet")
            .arg(&net_dir)
            .arg("--text")
            .arg(&text)
            .args([
                "--budget", "40", "--recent", "16", "--chunk", "8", "--warmup", "64",
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stdout, stderr) = run(&["--bytes", "--rule", "slot"]);
    assert_eq!(code, Some(0), "{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["tokens"], 540);
    for policy in ["cover", "truncate"] {
        assert!(j[policy]["nll"].as_f64().unwrap().is_finite(), "{policy}");
        assert_eq!(j[policy]["tokens"], 472, "{policy}");
    }
    assert!(j["cover"]["mean_span"].as_f64() > j["truncate"]["mean_span"].as_f64());
    // No tokenizer and no --bytes, and an unknown rule: errors that say so.
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--bytes"), "{stderr}");
    let (code, _, stderr) = run(&["--bytes", "--rule", "middle"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("span_end or slot"), "{stderr}");
}

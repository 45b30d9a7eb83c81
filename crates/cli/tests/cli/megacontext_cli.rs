//! `metarep megacontext` as a user runs it: a byte-level model directory, a GistNet (and a
//! LensNet) checkpoint and a text; `eval` prints JSON losses per policy; `ingest` builds a gist
//! tree and resumes an interrupted one; `eval` and `generate` read the tree; bad flags and
//! mismatched texts are named.

use std::process::Command;

use candle_core::{DType, Device};
use metarep_megacontext::{GistNet, GistNetConfig, LensNet, LensNetConfig};
use metarep_model::{HookedTransformer, ModelConfig};

/// A random byte-vocabulary GPT-2-style model and an untrained GistNet of arity 8, saved under
/// `dir`: (model directory, GistNet directory).
fn save_nets(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = ModelConfig::gpt2_like(1, 16, 2, 256, 512);
    let model = HookedTransformer::random(cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let model_dir = dir.join("model");
    model.save_pretrained(&model_dir).unwrap();
    let net = GistNet::new(GistNetConfig::for_model(16, 8), 0, &Device::Cpu).unwrap();
    let net_dir = dir.join("gistnet");
    net.save(&net_dir).unwrap();
    (model_dir, net_dir)
}

#[test]
fn eval_reads_a_text_through_the_budget_for_both_policies() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, net_dir) = save_nets(dir.path());
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

/// Runs `metarep megacontext ARGS`: (exit code, stdout, stderr).
fn metarep(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metarep"))
        .arg("megacontext")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn ingest_resumes_and_eval_and_generate_read_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, net_dir) = save_nets(dir.path());
    let lens = LensNet::new(LensNetConfig::for_model(16, 2), 0, &Device::Cpu).unwrap();
    let lens_dir = dir.path().join("lensnet");
    lens.save(&lens_dir).unwrap();
    let full = "a long story about a fox, a dog and the river they crossed. ".repeat(10);
    let text = dir.path().join("doc.txt");
    let tree = dir.path().join("tree");
    let os = |s: &str| std::ffi::OsString::from(s);
    let nets = [
        os("--model"),
        model_dir.clone().into_os_string(),
        os("--gistnet"),
        net_dir.into_os_string(),
        os("--bytes"),
    ];
    let ingest = |extra: &[&str]| {
        let mut a = vec![os("ingest")];
        a.extend(nets.iter().cloned());
        a.extend([os("--text"), text.clone().into_os_string()]);
        a.extend([os("--tree"), tree.clone().into_os_string()]);
        a.extend(extra.iter().map(|s| os(s)));
        let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        metarep(&refs)
    };
    // An interrupted ingest: the first half of the text, then the whole text resumes it.
    std::fs::write(&text, &full[..full.len() / 2]).unwrap();
    let (code, stdout, stderr) = ingest(&["--chunk", "64"]);
    assert_eq!(code, Some(0), "{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["tokens"], full.len() / 2);
    std::fs::write(&text, &full).unwrap();
    let (code, stdout, stderr) = ingest(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["resumed_at"], full.len() / 2);
    assert_eq!(j["tokens"], full.len());
    // Another text is not this tree's continuation.
    std::fs::write(&text, "something else entirely".repeat(40)).unwrap();
    let (code, _, stderr) = ingest(&[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not the first"), "{stderr}");
    // eval over the tree, with the focus loop.
    let read = |cmd: &str, extra: &[&str]| {
        let mut a = vec![os(cmd)];
        a.extend(nets.iter().cloned());
        a.extend([os("--tree"), tree.clone().into_os_string()]);
        a.extend([os("--lensnet"), lens_dir.clone().into_os_string()]);
        a.extend(["--budget", "40", "--recent", "16", "--rule", "slot"].map(os));
        a.extend(extra.iter().map(|s| os(s)));
        let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        metarep(&refs)
    };
    let (code, stdout, stderr) = read("eval", &["--chunk", "8", "--warmup", "64"]);
    assert_eq!(code, Some(0), "{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["tokens"], full.len());
    for policy in ["cover", "truncate", "lensnet_focus"] {
        assert!(
            j[policy]["nll"].as_f64().unwrap().is_finite(),
            "{policy}: {j}"
        );
    }
    assert!(j["lensnet_focus"]["focus"]["steps"].as_u64().unwrap() > 0);
    // generate continues the tree's document through the budget.
    let (code, stdout, stderr) = read(
        "generate",
        &[
            "--prompt",
            " and then",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.is_empty());
    let summary: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(summary["document_tokens"], full.len() + 9);
    assert_eq!(summary["new_tokens"], 12);
    assert!(summary["mean_slots"].as_f64().unwrap() <= 40.0);
    assert!(summary["mean_tokens_covered"].as_f64().unwrap() > 40.0);
}

//! `metarep sae train` then `metarep sae eval` on a small `.npy` file.

use std::process::Command;

use candle_core::{DType, Device, Tensor};

fn metarep(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metarep"))
        .args(args)
        .env("METAREP_NO_PROGRESS", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn train_then_eval_a_topk_sae_from_an_npy_file() {
    let dir = tempfile::tempdir().unwrap();
    let x = metarep_sae::ground_truth::sparse_mixture(2048, 16, 32, 3, 0).unwrap();
    let acts = dir.path().join("acts.npy");
    x.write_npy(&acts).unwrap();
    let out = dir.path().join("run");
    let (ok, stdout, stderr) = metarep(&[
        "sae",
        "train",
        "--acts",
        acts.to_str().unwrap(),
        "--arch",
        "topk",
        "--k",
        "4",
        "--expansion",
        "4",
        "--steps",
        "200",
        "--batch",
        "128",
        "--lr",
        "0.01",
        "--out",
        out.to_str().unwrap(),
        "--hook",
        "blocks.0.hook_resid_post",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    for f in [
        "metrics.jsonl",
        "config.json",
        "checkpoint/state.json",
        "sae/cfg.json",
        "sae/sae_weights.safetensors",
    ] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sae/cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["architecture"], "topk");
    assert_eq!(cfg["k"], 4);
    assert_eq!(cfg["d_sae"], 64);
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.0.hook_resid_post");

    let (ok, stdout, stderr) = metarep(&[
        "sae",
        "eval",
        "--sae",
        out.join("sae").to_str().unwrap(),
        "--acts",
        acts.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["rows"], 2048);
    assert!(report["l0"].as_f64().unwrap() <= 4.0);
    assert!(
        report["explained_variance"].as_f64().unwrap() > 0.5,
        "{report}"
    );
    let _ = (Tensor::zeros(1, DType::F32, &Device::Cpu), ());
}

#[test]
fn bad_input_gets_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let missing = dir.path().join("nope.npy");
    let (ok, _, stderr) = metarep(&[
        "sae",
        "train",
        "--acts",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("nope.npy"), "{stderr}");
    let acts = dir.path().join("acts.npy");
    Tensor::zeros((8, 4), DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(&acts)
        .unwrap();
    let (ok, _, stderr) = metarep(&[
        "sae",
        "train",
        "--acts",
        acts.to_str().unwrap(),
        "--arch",
        "nope",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("unknown --arch `nope`"), "{stderr}");
    let (ok, _, stderr) = metarep(&[
        "sae",
        "train",
        "--acts",
        acts.to_str().unwrap(),
        "--set",
        "train.typo=1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("typo"), "{stderr}");
}

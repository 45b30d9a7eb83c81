//! `metarep sae train` then `metarep sae eval` on a small `.npy` file; bad settings (a batch
//! larger than the data, `--max-rows 0`, a broken config file or `--set` value) are errors
//! naming them.

use candle_core::{DType, Device, Tensor};

use crate::common;
use common::metarep;

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
    let (ok, _, stderr) = metarep(&[
        "sae",
        "train",
        "--acts",
        acts.to_str().unwrap(),
        "--skip-positions",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("--skip-positions 1 needs --acts to be an activation-store"),
        "{stderr}"
    );
}

/// An exact SAE (latents ±e_i, so ReLU(x) − ReLU(−x) = x) on the GPT-2 parity fixture's
/// `blocks.0.hook_resid_post`: CE loss recovered is 1 through the CLI too.
#[test]
fn eval_splices_the_sae_into_a_model() {
    use metarep_sae::saelens::{export, SaeLensInfo};

    let dir = tempfile::tempdir().unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/gpt2");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let d = cfg["n_embd"].as_u64().unwrap() as usize;
    let sae = metarep_sae::baselines::exact_sae(d).unwrap();
    let sae_dir = dir.path().join("sae");
    export(
        &sae,
        &sae_dir,
        &SaeLensInfo::for_hook("gpt2-fixture", "blocks.0.hook_resid_post"),
    )
    .unwrap();
    let acts = dir.path().join("acts.npy");
    Tensor::randn(0f32, 1.0, (64, d), &Device::Cpu)
        .unwrap()
        .write_npy(&acts)
        .unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(
        &tokens,
        "1, 2, 3, 4, 5, 6\n7 8 9 10 11 12\n\n13,14,15,16,17,18\n",
    )
    .unwrap();
    let args = |tok: &std::path::Path| {
        vec![
            "sae".to_string(),
            "eval".into(),
            "--sae".into(),
            sae_dir.to_str().unwrap().into(),
            "--acts".into(),
            acts.to_str().unwrap().into(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--tokens".into(),
            tok.to_str().unwrap().into(),
            "--seqs-per-batch".into(),
            "2".into(),
            "--json".into(),
        ]
    };
    let a = args(&tokens);
    let (ok, stdout, stderr) = metarep(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let splice = &report["splice"];
    assert_eq!(splice["hook"], "blocks.0.hook_resid_post");
    assert_eq!(splice["tokens"], 3 * 5);
    let recovered = splice["recovered_zero"].as_f64().unwrap();
    assert!((recovered - 1.0).abs() < 1e-3, "{splice}");

    // A ragged token file is an error naming its line.
    std::fs::write(&tokens, "1 2 3\n4 5\n").unwrap();
    let a = args(&tokens);
    let (ok, _, stderr) = metarep(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok && stderr.contains("line 2"), "{stderr}");
}

/// `train` on eight rows of width four into `dir/run` with `extra` arguments.
fn train_small(dir: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let acts = dir.join("acts.npy");
    Tensor::randn(0f32, 1.0, (8, 4), &Device::Cpu)
        .unwrap()
        .write_npy(&acts)
        .unwrap();
    let out = dir.join("run");
    let base = [
        "sae",
        "train",
        "--acts",
        acts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--k",
        "2",
        "--expansion",
        "2",
        "--steps",
        "2",
    ];
    metarep(&[&base[..], extra].concat())
}

#[test]
fn a_batch_larger_than_the_data_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = train_small(dir.path(), &["--batch", "8192"]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("8192") && stderr.contains("8 rows"),
        "{stderr}"
    );
    assert!(!dir.path().join("run/config.json").exists());
    let (ok, _, stderr) = train_small(dir.path(), &["--batch", "8"]);
    assert!(ok, "{stderr}");
}

#[test]
fn config_errors_name_the_file_or_the_set_override() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sae.toml");
    std::fs::write(&config, "[sae]\nexpansion = = 2\n").unwrap();
    let (ok, _, stderr) = train_small(dir.path(), &["--config", config.to_str().unwrap()]);
    assert!(!ok && stderr.contains("sae.toml"), "{stderr}");
    assert!(!stderr.contains("<string>"), "{stderr}");
    let (ok, _, stderr) = train_small(dir.path(), &["--set", "train.steps=abc"]);
    assert!(!ok && stderr.contains("--set train.steps=abc"), "{stderr}");
    assert!(stderr.contains("invalid type"), "{stderr}");
}

#[test]
fn eval_refuses_max_rows_0_and_stops_at_max_rows() {
    use metarep_sae::saelens::{export, SaeLensInfo};

    let dir = tempfile::tempdir().unwrap();
    let sae_dir = dir.path().join("sae");
    let sae = metarep_sae::baselines::exact_sae(4).unwrap();
    export(
        &sae,
        &sae_dir,
        &SaeLensInfo::for_hook("m", "blocks.0.hook_resid_post"),
    )
    .unwrap();
    let acts = dir.path().join("acts.npy");
    Tensor::randn(0f32, 1.0, (64, 4), &Device::Cpu)
        .unwrap()
        .write_npy(&acts)
        .unwrap();
    let eval = |rows: &str| {
        metarep(&[
            "sae",
            "eval",
            "--sae",
            sae_dir.to_str().unwrap(),
            "--acts",
            acts.to_str().unwrap(),
            "--max-rows",
            rows,
            "--json",
        ])
    };
    let (ok, _, stderr) = eval("0");
    assert!(!ok && stderr.contains("max_rows"), "{stderr}");
    let (ok, stdout, stderr) = eval("10");
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["rows"], 10);
}

//! `metarep capture` on the GPT-2 parity fixture: an interrupted run, its resumption, errors.

use std::path::Path;

use crate::common;
use common::metarep;

/// `metarep capture` of the GPT-2 parity fixture over `data` into `out` at the hooks matching
/// `hooks`, with `extra` arguments.
fn capture(data: &Path, out: &Path, hooks: &str, extra: &[&str]) -> (bool, String, String) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/gpt2");
    let args = [
        "capture",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--hooks",
        hooks,
        "--out",
        out.to_str().unwrap(),
    ];
    metarep(&[&args[..], extra].concat())
}

#[test]
fn capture_stops_resumes_and_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|d| {
            format!(
                "{{\"tokens\": [{}]}}",
                (0..10)
                    .map(|i| ((d * 13 + i * 5) % 40).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.path().join("acts");
    let all = |extra: &[&str]| {
        let settings = ["--context", "6", "--shard-tokens", "12"];
        capture(
            &data,
            &out,
            "blocks.*.hook_resid_post",
            &[&settings[..], extra].concat(),
        )
    };
    let f16 = ["--dtype", "f16"];
    let (ok, stdout, stderr) = all(&[&f16[..], &["--max-contexts", "5"]].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("incomplete"), "{stdout}");
    let (ok, stdout, stderr) = all(&f16);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("resumed at context 4") && !stdout.contains("incomplete"),
        "{stdout}"
    );
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("blocks.1.hook_resid_post/meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["dtype"], "f16");
    assert_eq!(meta["shards"].as_array().unwrap().len(), 5); // 10 contexts, 2 per shard

    let (ok, _, stderr) = capture(&data, &out, "blocks.9.*", &[]);
    assert!(!ok && stderr.contains("blocks.9"), "{stderr}");
    // Resuming with other settings is refused, naming the setting.
    // The store trains an SAE directly; its hook and model go into the exported cfg.json.
    let store = out.join("blocks.1.hook_resid_post");
    let run = dir.path().join("sae");
    let (ok, stdout, stderr) = metarep(&[
        "sae",
        "train",
        "--acts",
        store.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--k",
        "2",
        "--expansion",
        "2",
        "--steps",
        "20",
        "--batch",
        "16",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("on 60 rows"), "{stdout}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("sae/cfg.json")).unwrap()).unwrap();
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.1.hook_resid_post");
    let sae_dir = run.join("sae");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "sae",
            "eval",
            "--sae",
            sae_dir.to_str().unwrap(),
            "--acts",
            store.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        metarep(&args)
    };
    let (ok, stdout, stderr) = eval(&["--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["rows"], 60);
    // Without each context's first position: 10 contexts × 5 rows.
    let (ok, stdout, stderr) = eval(&["--skip-positions", "1", "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["rows"], 50);
    let (ok, _, stderr) = eval(&["--skip-positions", "6"]);
    assert!(!ok && stderr.contains("skip_positions 6"), "{stderr}");
    let skipped = dir.path().join("sae-skip");
    let (ok, stdout, stderr) = metarep(&[
        "sae",
        "train",
        "--acts",
        store.to_str().unwrap(),
        "--skip-positions",
        "1",
        "--out",
        skipped.to_str().unwrap(),
        "--k",
        "2",
        "--expansion",
        "2",
        "--steps",
        "5",
        "--batch",
        "16",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("on 50 rows"), "{stdout}");

    let (ok, _, stderr) = all(&["--dtype", "f32"]);
    assert!(!ok && stderr.contains("dtype = f16, not f32"), "{stderr}");
}

/// A capture that fails after creating its store (here a token id past the vocabulary, found
/// by the forward pass) leaves nothing stored, so it does not block the corrected rerun into
/// the same `--out`, although its dataset differs.
#[test]
fn a_failed_capture_does_not_block_the_corrected_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    let out = dir.path().join("acts");
    let run = || capture(&data, &out, "blocks.0.hook_resid_post", &["--context", "4"]);
    std::fs::write(&data, "{\"tokens\": [1, 2, 99, 3]}\n").unwrap();
    let (ok, _, stderr) = run();
    assert!(!ok && stderr.contains("token id 99"), "{stderr}");
    std::fs::write(&data, "{\"tokens\": [1, 2, 9, 3]}\n").unwrap();
    let (ok, stdout, stderr) = run();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("4 tokens stored"), "{stdout}");
}

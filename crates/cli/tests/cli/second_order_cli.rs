//! `metarep second-order` on the arith fixture: stage by stage, resuming, and a bad stage.

use std::path::Path;

use crate::common;
use common::metarep;

#[test]
fn second_order_runs_stage_by_stage() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("so.toml");
    std::fs::write(
        &config,
        format!(
            "problems = 100\nmax_digits = 2\nseed = 1\nframe_token = \"<|endoftext|>\"\ntop_layers = 2\ntop_neurons = 8\npca_k = 10\nomp_atoms = 4\nlexicon = \"{}\"\nbatch = 50\neffects_dtype = \"f32\"\n",
            root.join("fixtures/lexicon/math.txt").display()
        ),
    )
    .unwrap();
    let model = root.join("fixtures/arith/seed-0");
    let run = dir.path().join("run");
    let (m, r, c) = (
        model.to_str().unwrap(),
        run.to_str().unwrap(),
        config.to_str().unwrap(),
    );
    let (ok, stdout, stderr) = metarep(&[
        "second-order",
        "effects",
        "--model",
        m,
        "--run",
        r,
        "--config",
        c,
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("effects:") && !stdout.contains("pca"),
        "{stdout}"
    );
    assert!(run.join("effects/L0-00001.safetensors").is_file());
    // Resumes from the saved config.
    let (ok, stdout, stderr) = metarep(&["second-order", "--model", m, "--run", r]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("effects: done earlier") && stdout.contains("report:"),
        "{stdout}"
    );
    assert!(run.join("report.md").is_file());
    let (ok, _, stderr) = metarep(&["second-order", "all", "--model", m, "--run", r]);
    assert!(!ok && stderr.contains("unknown stage `all`"), "{stderr}");
}

//! `metarep sae dashboard` and `metarep sae validate`: errors that name the problem, and (with
//! the SmolLM2 and corpus fixtures) a page and a validation report for an SAE on real text.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use common::metarep;
use metarep_sae::saelens::{export, SaeLensInfo};
use metarep_sae::{Architecture, Sae, SaeConfig};

/// A TopK SAE of width `d_in` exported to `dir` for `hook`.
fn sae_dir(dir: &Path, d_in: usize, hook: &str) -> PathBuf {
    let cfg = SaeConfig::new(d_in, 4, Architecture::TopK { k: 8 }).unwrap();
    let sae = Sae::new(cfg, 0, DType::F32, &Device::Cpu).unwrap();
    let out = dir.join("sae");
    export(&sae, &out, &SaeLensInfo::for_hook("m", hook)).unwrap();
    out
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn a_model_without_a_tokenizer_or_a_short_text_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let gpt2 = repo().join("fixtures/parity/gpt2");
    let sae = sae_dir(tmp.path(), 64, "blocks.0.hook_resid_post");
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "some text").unwrap();
    let out = tmp.path().join("page.html");
    let args = |model: &str| {
        vec![
            "sae".to_string(),
            "dashboard".into(),
            "--sae".into(),
            sae.display().to_string(),
            "--model".into(),
            model.into(),
            "--text".into(),
            text.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let run = |a: Vec<String>| metarep(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, _, err) = run(args(gpt2.to_str().unwrap()));
    assert!(!ok && err.contains("no tokenizer"), "{err}");
    let mut validate = args(gpt2.to_str().unwrap());
    validate[1] = "validate".into();
    let (ok, _, err) = run(validate);
    assert!(!ok && err.contains("no tokenizer"), "{err}");
    let (ok, _, err) = run(args("/nonexistent/model.gguf"));
    assert!(!ok && err.contains("/nonexistent/model.gguf"), "{err}");
    assert!(!out.exists());
}

/// Runs `metarep sae COMMAND` for a random SAE at SmolLM2's layer 15 over a text file of the
/// held-out corpus's first 20 documents (in `dir`), with `extra` arguments.
fn on_smollm2(dir: &Path, command: &str, extra: &[&str]) -> (bool, String, String) {
    let gguf = repo().join("target/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let corpus =
        std::fs::read_to_string(repo().join("target/fixtures/corpus/heldout.tsv")).unwrap();
    let text: String = corpus
        .lines()
        .take(20)
        .filter_map(|l| l.splitn(3, '\t').nth(2))
        .collect::<Vec<_>>()
        .join("\n");
    let text_file = dir.join("text.txt");
    std::fs::write(&text_file, text).unwrap();
    let sae = sae_dir(dir, 576, "blocks.15.hook_resid_post");
    let mut args = vec![
        "sae",
        command,
        "--sae",
        sae.to_str().unwrap(),
        "--model",
        gguf.to_str().unwrap(),
        "--text",
        text_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    metarep(&args)
}

#[test]
#[ignore = "needs cargo xtask fixtures smollm2 and cargo xtask fixtures corpus"]
fn smollm2_dashboard_of_an_sae_over_real_text() {
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("out/page.html");
    let (ok, out, err) = on_smollm2(
        tmp.path(),
        "dashboard",
        &[
            "--contexts",
            "6",
            "--ctx-len",
            "48",
            "--top-latents",
            "5",
            "--random-latents",
            "2",
            "--out",
            page.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("7 latents"), "{out}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(html.matches("<section class=\"latent\"").count(), 7);
    assert!(html.contains("blocks.15.hook_resid_post"));
    // Real tokens of the text are shown (decoded), and the vocabulary's tokens in the logit lists.
    assert!(html.matches("<span class=\"tok").count() >= 7);
    assert_eq!(html.matches("<table class=\"logits promoted\">").count(), 7);
    assert!(
        html.contains(" the") || html.contains(" of"),
        "no common English token shown"
    );
}

#[test]
#[ignore = "needs cargo xtask fixtures smollm2 and cargo xtask fixtures corpus"]
fn smollm2_validation_report_of_an_sae_over_real_text() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.json");
    let (ok, out, err) = on_smollm2(
        tmp.path(),
        "validate",
        &[
            "--contexts",
            "8",
            "--ctx-len",
            "64",
            "--top-latents",
            "2",
            "--random-latents",
            "1",
            "--random-directions",
            "2",
            "--out",
            report.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("probe leakage") && out.contains("word_start"),
        "{out}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["positions"], 8 * 63);
    assert_eq!(r["latents"].as_array().unwrap().len(), 3);
    assert_eq!(r["random"].as_array().unwrap().len(), 2);
    assert_eq!(r["probes"].as_array().unwrap().len(), 5);
    for c in r["latents"].as_array().unwrap() {
        assert_eq!(c["sweep"].as_array().unwrap().len(), 6);
    }
}

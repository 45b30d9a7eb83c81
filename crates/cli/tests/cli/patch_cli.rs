//! `metarep patch` on the induction-2l fixture (token ids) and the arith fixture (text).

use std::path::Path;

use crate::common;
use common::metarep;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn patch_prints_layer_position_and_head_tables() {
    let dir = tempfile::tempdir().unwrap();
    // [BOS, s, s₁..s₆]: the answer is s₇; the corrupted prompt has another first copy.
    let lines: Vec<String> = (0..6u32)
        .map(|d| {
            let seg = |k: u32| -> Vec<u32> { (0..10).map(|i| 1 + (k * 7 + i * 13) % 63).collect() };
            let (s, t) = (seg(d), seg(d + 20));
            let clean: Vec<u32> = [vec![0], s.clone(), s[..6].to_vec()].concat();
            let corrupted: Vec<u32> = [vec![0], t.clone(), s[..6].to_vec()].concat();
            format!(
                r#"{{"clean": {clean:?}, "corrupted": {corrupted:?}, "answer": {}, "alternative": {}}}"#,
                s[6], t[6]
            )
        })
        .collect();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(&pairs, lines.join("\n")).unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = metarep(&[
        "patch",
        "--model",
        &fixture("induction-2l"),
        "--pairs",
        pairs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("| layer 1 |") && stdout.contains(" pos 16 |"),
        "{stdout}"
    );
    assert!(stdout.contains(" head 3 |"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(out.join("patch.md")).unwrap(),
        stdout
    );
    assert!(out.join("patch_heads.svg").is_file() && out.join("patch_resid.svg").is_file());

    // Text prompts need a tokenizer; unequal lengths are named with their line.
    let failing = |lines: &str| -> String {
        std::fs::write(&pairs, lines).unwrap();
        let (ok, _, stderr) = metarep(&[
            "patch",
            "--model",
            &fixture("induction-2l"),
            "--pairs",
            pairs.to_str().unwrap(),
        ]);
        assert!(!ok, "{lines}");
        stderr
    };
    let stderr = failing(
        "{\"clean\": \"a b\", \"corrupted\": \"a c\", \"answer\": 1, \"alternative\": 2}\n",
    );
    assert!(stderr.contains("no tokenizer.json"), "{stderr}");
    let stderr = failing(
        "{\"clean\": [0, 1, 2], \"corrupted\": [0, 1, 2], \"answer\": 1, \"alternative\": 2}\n{\"clean\": [0, 1], \"corrupted\": [0, 1], \"answer\": 1, \"alternative\": 2}\n",
    );
    assert!(stderr.contains("pairs.jsonl:2"), "{stderr}");
}

#[test]
fn patch_tokenizes_text_prompts_with_the_models_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"clean\": \"3 + 4 =\", \"corrupted\": \"5 + 4 =\", \"answer\": \"▁7\", \"alternative\": \"▁9\"}\n\
         {\"clean\": \"2 + 2 =\", \"corrupted\": \"2 + 6 =\", \"answer\": \"▁4\", \"alternative\": \"▁8\"}\n",
    )
    .unwrap();
    let model = fixture("arith/seed-0");
    let p = pairs.to_str().unwrap();
    let (ok, stdout, stderr) = metarep(&[
        "patch",
        "--model",
        &model,
        "--pairs",
        p,
        "--prepend",
        "<|endoftext|>",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(" pos 4 |") && !stdout.contains(" pos 5 |"),
        "{stdout}"
    );
    let (ok, _, stderr) = metarep(&[
        "patch",
        "--model",
        &model,
        "--pairs",
        p,
        "--prepend",
        "<bos>",
    ]);
    assert!(!ok && stderr.contains("`<bos>`"), "{stderr}");
}

//! `metarep ablate` on the induction-2l fixture: a staged table, and a bad head index named.

use std::path::Path;

use crate::common;
use common::metarep;

#[test]
fn ablate_prints_stages_and_names_bad_indices() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/induction-2l");
    // Eight sequences [BOS, s, s] of 21 tokens.
    let lines: Vec<String> = (0..8u32)
        .map(|d| {
            let seg: Vec<String> = (0..10u32)
                .map(|i| (1 + (d * 7 + i * 13) % 63).to_string())
                .collect();
            format!("0 {} {}", seg.join(" "), seg.join(" "))
        })
        .collect();
    let tokens = dir.path().join("eval.ids");
    std::fs::write(&tokens, lines.join("\n")).unwrap();
    let config = dir.path().join("ablate.toml");
    std::fs::write(
        &config,
        "cumulative = true\n[[stages]]\nname = \"L1H0\"\nkind = \"zero\"\ncomponents = [\"L1H0\"]\n[[stages]]\nname = \"L1H1\"\nkind = \"mean\"\ncomponents = [\"L1H1\"]\n",
    )
    .unwrap();
    let out = dir.path().join("table.md");
    let (m, t, c, r, o) = (
        model.to_str().unwrap(),
        tokens.to_str().unwrap(),
        config.to_str().unwrap(),
        tokens.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let (ok, stdout, stderr) = metarep(&[
        "ablate",
        "--model",
        m,
        "--config",
        c,
        "--tokens",
        t,
        "--reference",
        r,
        "--context",
        "21",
        "--out",
        o,
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("| clean |")
            && stdout.contains("| L1H0 | 1 |")
            && stdout.contains("| L1H1 | 2 |"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), stdout);

    std::fs::write(
        &config,
        "[[stages]]\nname = \"bad\"\nkind = \"zero\"\ncomponents = [\"L1H9\"]\n",
    )
    .unwrap();
    let (ok, _, stderr) = metarep(&[
        "ablate",
        "--model",
        m,
        "--config",
        c,
        "--tokens",
        t,
        "--context",
        "21",
    ]);
    assert!(
        !ok && stderr.contains("L1H9 is not in this model"),
        "{stderr}"
    );
}

//! The real-text corpus written by `cargo xtask fixtures corpus`, read back through
//! `metarep_eval::corpus`.

use std::collections::HashSet;
use std::path::PathBuf;

use metarep_eval::corpus::{head_chars, held_out, read_split, Split};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures/corpus")
}

#[test]
#[ignore = "needs cargo xtask fixtures corpus"]
fn the_corpus_has_every_source_split_one_in_ten_without_overlap() {
    let train = read_split(&corpus_dir(), Split::Train).unwrap();
    let held = read_split(&corpus_dir(), Split::HeldOut).unwrap();
    let count = |source: &str| {
        train
            .iter()
            .chain(&held)
            .filter(|d| d.source == source)
            .count()
    };
    assert_eq!(count("lee_background"), 300);
    assert_eq!(count("lee"), 50);
    assert_eq!(count("kjv"), 1189);
    assert_eq!(train.len() + held.len(), 1539);
    assert!(held.iter().all(|d| held_out(&d.source, &d.id)));
    assert!(train.iter().all(|d| !held_out(&d.source, &d.id)));
    let keys: HashSet<(&str, &str)> = train
        .iter()
        .chain(&held)
        .map(|d| (d.source.as_str(), d.id.as_str()))
        .collect();
    assert_eq!(keys.len(), 1539, "a document appears twice");
    // Every source is in the held-out split, and it is about a tenth of the documents.
    for source in ["lee_background", "lee", "kjv"] {
        assert!(held.iter().any(|d| d.source == source), "{source}");
    }
    assert!((120..190).contains(&held.len()), "{}", held.len());
    // English prose: mostly letters and spaces, long documents.
    let text: String = train.iter().map(|d| d.text.as_str()).collect();
    let letters = text
        .chars()
        .filter(|c| c.is_alphabetic() || *c == ' ')
        .count();
    assert!(letters as f64 > 0.9 * text.chars().count() as f64);
    assert!(text.len() > 3_500_000, "{} bytes", text.len());
    assert!(text.contains("In the beginning God created the heaven and the earth."));
    assert!(text.contains("bushfire"));
    let slice = head_chars(&train, 100_000);
    assert!(!slice.is_empty() && slice.len() < train.len());
}

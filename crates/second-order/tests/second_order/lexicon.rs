//! Lexicon atoms: tokenization, skipping, duplicates, centring and the math fixture.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use metarep_model::{HookedTransformer, ModelConfig, Tokenizer};
use metarep_second_order::{Error, Lexicon};

/// A whitespace word-level tokenizer with `[UNK]` (id 0) and the words listed (ids 1..).
const WORDS: [&str; 11] = [
    "plus", "minus", "two", "the", "answer", "is", "three", "times", "equals", "one", "eleven",
];

fn word_tokenizer(dir: &Path) -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert((*w).into(), (i + 1).into());
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    Tokenizer::from_file(&path).unwrap()
}

/// A random model whose vocabulary stops before the last word (`eleven`, id 11).
fn word_model(dir: &Path) -> HookedTransformer {
    HookedTransformer::random(
        ModelConfig::gpt2_like(1, 16, 2, 11, 8),
        3,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
    .with_tokenizer(word_tokenizer(dir))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn assert_unit_rows(atoms: &Tensor) {
    let norms = atoms
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (i, n) in norms.iter().enumerate() {
        assert!((n - 1.0).abs() < 1e-5, "atom {i} has squared norm {n}");
    }
}

#[test]
fn atoms_are_centred_mean_unembedding_columns() {
    let dir = tempfile::tempdir().unwrap();
    let model = word_model(dir.path());
    let lex = Lexicon::from_entries(
        &[
            "plus",
            "the answer is",
            "zebra",
            "plus",
            "  ",
            "eleven",
            "two plus",
            "minus",
        ],
        &model,
    )
    .unwrap();
    assert_eq!(
        lex.entries,
        vec!["plus", "the answer is", "two plus", "minus"]
    );
    assert_eq!(lex.skipped, vec!["zebra", "plus", "", "eleven"]);
    assert_eq!(lex.atoms.dims(), &[4, 16]);
    assert_unit_rows(&lex.atoms);

    // Tied embeddings: W_U[:, t] is row t of W_E.
    let cols = model.w_e();
    let centred = cols.broadcast_sub(&cols.mean_keepdim(0).unwrap()).unwrap();
    let expect = |ids: &[u32]| {
        let idx = Tensor::new(ids, &Device::Cpu).unwrap();
        let a = centred.index_select(&idx, 0).unwrap().mean(0).unwrap();
        let n = a.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        a.broadcast_div(&n).unwrap()
    };
    for (row, ids) in [(0, vec![1u32]), (1, vec![4, 5, 6]), (2, vec![3, 1])] {
        let diff = (lex.atoms.i(row).unwrap() - expect(&ids))
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "row {row} differs by {diff}");
    }
}

#[test]
fn lexicon_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let model = word_model(dir.path());
    let bare = HookedTransformer::random(
        ModelConfig::gpt2_like(1, 16, 2, 11, 8),
        3,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let err = Lexicon::from_entries(&["plus"], &bare).unwrap_err();
    assert!(err.to_string().contains("tokenizer"), "{err}");
    let err = Lexicon::from_entries(&["zebra", "giraffe"], &model).unwrap_err();
    assert!(err.to_string().contains("2 skipped"), "{err}");

    let missing = dir.path().join("missing.txt");
    let err = Lexicon::load(&missing, &model).unwrap_err();
    assert!(
        matches!(err, Error::Io { ref path, .. } if path == &missing),
        "{err}"
    );
    let comments = dir.path().join("comments.txt");
    std::fs::write(&comments, "# only a comment\n\n").unwrap();
    let err = Lexicon::load(&comments, &model).unwrap_err();
    assert!(err.to_string().contains("no entries"), "{err}");

    let file = dir.path().join("words.txt");
    std::fs::write(&file, "# header\nplus\n\n  minus  \nzebra\n").unwrap();
    let lex = Lexicon::load(&file, &model).unwrap();
    assert_eq!(lex.entries, vec!["plus", "minus"]);
    assert_eq!(lex.skipped, vec!["zebra"]);
}

#[test]
fn the_math_lexicon_loads_with_a_byte_level_tokenizer() {
    let root = repo_root();
    let tok = Tokenizer::from_file(&root.join("fixtures/parity/tokenizer/tokenizer.json")).unwrap();
    let vocab = tok.vocab_size();
    let model = HookedTransformer::random(
        ModelConfig::gpt2_like(1, 16, 2, vocab, 8),
        1,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
    .with_tokenizer(tok);
    let path = root.join("fixtures/lexicon/math.txt");
    let lex = Lexicon::load(&path, &model).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .count();
    assert!(lines >= 140, "{lines} entries");
    assert_eq!(lex.entries.len() + lex.skipped.len(), lines);
    assert!(lex.skipped.is_empty(), "skipped: {:?}", lex.skipped);
    for e in [
        "7",
        "plus",
        "carry the one",
        "greater than",
        "therefore",
        "%",
    ] {
        assert!(lex.entries.iter().any(|x| x == e), "missing {e}");
    }
    assert_eq!(lex.atoms.dims(), &[lex.len(), 16]);
    assert_unit_rows(&lex.atoms);
}

#[test]
fn a_single_token_lexicon_keeps_only_one_token_entries() {
    let dir = tempfile::tempdir().unwrap();
    let model = word_model(dir.path());
    let file = dir.path().join("words.txt");
    std::fs::write(
        &file,
        "# words\nplus\nthe answer is\nminus\ntwo plus\nzebra\n",
    )
    .unwrap();
    let lex = Lexicon::load_single_token(&file, &model).unwrap();
    assert_eq!(lex.entries, vec!["plus", "minus"]);
    assert_eq!(lex.skipped, vec!["the answer is", "two plus", "zebra"]);
    let all = Lexicon::load(&file, &model).unwrap();
    assert_eq!(
        all.entries,
        vec!["plus", "the answer is", "minus", "two plus"]
    );
    // A one-token entry's atom is the same either way.
    let diff =
        metarep_core::compare::max_abs_diff(&lex.atoms.i(1).unwrap(), &all.atoms.i(2).unwrap())
            .unwrap();
    assert!(diff < 1e-7, "{diff}");
}

#[test]
#[ignore = "needs cargo xtask fixtures smollm2"]
fn the_english_lexicon_has_2000_single_token_words_in_smollm2() {
    let gguf = repo_root().join("target/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model =
        HookedTransformer::from_gguf(&gguf, &metarep_model::LoadOptions::default()).unwrap();
    let lex = Lexicon::load_single_token(&repo_root().join("fixtures/lexicon/english.txt"), &model)
        .unwrap();
    eprintln!(
        "{} single-token entries kept, {} skipped (e.g. {:?})",
        lex.len(),
        lex.skipped.len(),
        &lex.skipped[..lex.skipped.len().min(8)]
    );
    assert!(lex.len() >= 2000, "{} single-token entries", lex.len());
    assert_eq!(lex.atoms.dims(), &[lex.len(), 576]);
    assert_unit_rows(&lex.atoms);
    // SmolLM2 writes numbers digit by digit, after a space token of their own: no numeral is
    // one token mid-text, so the numerals fall out and the lexicon is words.
    let tok = model.tokenizer().unwrap();
    assert_eq!(tok.encode(" 7", false).unwrap().ids.len(), 2);
    assert!(["7", "42", "100"]
        .iter()
        .all(|n| lex.skipped.iter().any(|e| e == n)));
}

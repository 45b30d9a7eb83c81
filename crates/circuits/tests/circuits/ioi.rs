//! IOI prompts from a word-level tokenizer, their logit differences in prompt order across
//! lengths, and path patching against plain head patching.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use metarep_circuits::ioi::{
    by_length, ioi_logit_diffs, ioi_prompts, patch_set, single_token_names, Order,
};
use metarep_circuits::patching::{last_logit_diffs, patch};
use metarep_circuits::path_patching::{PathPatcher, Receiver};
use metarep_core::rng::seeded;
use metarep_model::{HookedTransformer, ModelConfig, NoHooks, Tokenizer};

const WORDS: &str =
    "when and went to the store , gave a drink after lunch handed bill . Mary John Anna Paul";
const TEMPLATES: [&str; 2] = [
    "When {A} and {B} went to the store, {S} gave a drink to",
    "After {A} and {B} went to lunch. {S} handed the bill to",
];

/// A whitespace word-level tokenizer over [`WORDS`] (lower-cased words and the names), `[UNK]`
/// = 0 and `[BOS]` = 1.
fn tokenizer(dir: &Path) -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    vocab.insert("[BOS]".into(), 1.into());
    for (i, w) in WORDS.split(' ').enumerate() {
        vocab.insert(w.into(), (i + 2).into());
    }
    for w in ["When", "After"] {
        let id = vocab.len();
        vocab.insert(w.into(), id.into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    Tokenizer::from_file(&path).unwrap()
}

fn model(attn_only: bool, layers: usize) -> HookedTransformer {
    let mut cfg = ModelConfig::gpt2_like(layers, 16, 4, 30, 24);
    cfg.attn_only = attn_only;
    if attn_only {
        cfg.d_mlp = 0;
    }
    HookedTransformer::random(cfg, 5, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn prompts_fill_both_orders_and_the_corruption_swaps_the_second_subject() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let names = single_token_names(&tok, &["Mary", "John", "Zed", "Anna", "Paul", "Mary"]).unwrap();
    let kept: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        kept,
        ["Mary", "John", "Anna", "Paul"],
        "Zed is unknown, Mary repeats"
    );
    let prompts = ioi_prompts(&tok, Some(1), &TEMPLATES, &names, 5, &mut seeded(0)).unwrap();
    assert_eq!(prompts.len(), 2 * 2 * 5);
    for p in &prompts {
        assert_eq!(p.clean[0], 1);
        assert_ne!(p.io, p.s);
        let at = |ids: &[u32], id: u32| -> Vec<usize> {
            ids.iter()
                .enumerate()
                .filter(|(_, &x)| x == id)
                .map(|(i, _)| i)
                .collect()
        };
        let (io_at, s_at) = (at(&p.clean, p.io), at(&p.clean, p.s));
        assert_eq!((io_at.len(), s_at.len()), (1, 2), "{}", p.text);
        match p.order {
            Order::Abba => assert!(io_at[0] < s_at[0], "{}", p.text),
            Order::Baba => assert!(s_at[0] < io_at[0], "{}", p.text),
        }
        let differ: Vec<usize> = (0..p.clean.len())
            .filter(|&i| p.clean[i] != p.corrupted[i])
            .collect();
        assert_eq!(
            differ,
            [s_at[1]],
            "only the second subject changes: {}",
            p.text
        );
        assert_eq!(p.corrupted[s_at[1]], p.io);
    }
    assert_eq!(by_length(&prompts).len(), 2);
    assert!(
        ioi_prompts(&tok, None, &["{A} and {B} went"], &names, 1, &mut seeded(0))
            .unwrap_err()
            .to_string()
            .contains("{S}")
    );
    assert!(
        ioi_prompts(&tok, None, &TEMPLATES, &names[..1], 1, &mut seeded(0))
            .unwrap_err()
            .to_string()
            .contains("at least 2")
    );
}

#[test]
fn logit_differences_come_back_in_prompt_order_across_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let names = single_token_names(&tok, &["Mary", "John", "Anna", "Paul"]).unwrap();
    let prompts = ioi_prompts(&tok, Some(1), &TEMPLATES, &names, 3, &mut seeded(1)).unwrap();
    let m = model(false, 2);
    let diffs = ioi_logit_diffs(&m, &prompts, 4).unwrap();
    for (p, d) in prompts.iter().zip(&diffs) {
        let one = patch_set(&[p], &Device::Cpu).unwrap();
        let alone =
            last_logit_diffs(&m, &one.clean, &one.answer, &one.alternative, &mut NoHooks).unwrap();
        assert!(
            (f64::from(alone[0]) - d).abs() < 1e-4,
            "{}: {} vs {d}",
            p.text,
            alone[0]
        );
    }
}

#[test]
fn a_last_layer_heads_path_to_the_logits_is_its_whole_patch_and_receivers_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let names = single_token_names(&tok, &["Mary", "John", "Anna", "Paul"]).unwrap();
    let prompts = ioi_prompts(&tok, Some(1), &TEMPLATES[..1], &names, 4, &mut seeded(2)).unwrap();
    let rows: Vec<_> = prompts.iter().collect();
    let set = patch_set(&rows, &Device::Cpu).unwrap();
    // Attention-only: nothing after the last layer's heads but the unembedding.
    let m = model(true, 2);
    let whole = patch(&m, &set).unwrap();
    let paths = PathPatcher::new(&m, &set).unwrap();
    assert_eq!(
        paths.logit_diffs(),
        (whole.clean_logit_diff, whole.corrupted_logit_diff)
    );
    for h in 0..4 {
        let direct = paths.score((1, h), &Receiver::Logits).unwrap();
        assert!(
            (direct - whole.heads[1][h]).abs() < 1e-4,
            "L1H{h}: {direct} vs {}",
            whole.heads[1][h]
        );
    }
    // A layer-0 head reaches the logits through layer 1 as well: its direct path alone is a
    // different number from its whole patch for some head.
    let gaps: Vec<f64> = (0..4)
        .map(|h| (paths.score((0, h), &Receiver::Logits).unwrap() - whole.heads[0][h]).abs())
        .collect();
    assert!(gaps.iter().any(|&g| g > 1e-3), "{gaps:?}");
    // Through the queries of every layer-1 head, and through none.
    let q = paths
        .score(
            (0, 0),
            &Receiver::Queries {
                layer: 1,
                heads: vec![0, 1, 2, 3],
            },
        )
        .unwrap();
    assert!(q.is_finite());
    for bad in [
        Receiver::Queries {
            layer: 0,
            heads: vec![0],
        },
        Receiver::Queries {
            layer: 1,
            heads: vec![],
        },
        Receiver::Queries {
            layer: 1,
            heads: vec![4],
        },
    ] {
        assert!(paths.score((0, 0), &bad).is_err(), "{bad:?}");
    }
    assert!(paths.score((2, 0), &Receiver::Logits).is_err());
    let same = Tensor::cat(&[&set.clean], 0).unwrap();
    let flat = metarep_circuits::patching::PatchSet {
        corrupted: same,
        ..set.clone()
    };
    assert!(PathPatcher::new(&m, &flat).is_err());
}

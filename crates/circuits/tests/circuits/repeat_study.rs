//! Repeated-token draws with a model's own BOS and without special tokens, and the induction
//! study (detectors, repeat losses, cumulative zero ablation) on the induction-2l model.

use std::path::PathBuf;

use candle_core::{DType, Device};
use metarep_circuits::detectors::{repeated_tokens, token_losses, TokenDraw, BOS};
use metarep_circuits::repeat_study::{loss_by_position, repeat_study, StudyOptions};
use metarep_core::rng::seeded;
use metarep_model::interventions::{Intervention, Interventions};
use metarep_model::{HookedTransformer, LoadOptions, ModelConfig, Tokenizer};
use rand::Rng;

#[test]
fn token_draw_opens_with_bos_and_never_draws_excluded_ids() {
    let draw = TokenDraw::new(3, 10, &[0, 1, 2]).unwrap();
    assert_eq!(draw.ids, vec![4, 5, 6, 7, 8, 9]);
    let t = draw.repeated(&mut seeded(0), 20, 7).unwrap();
    assert_eq!(t.dims(), &[20, 15]);
    let mut seen = std::collections::BTreeSet::new();
    for row in t.to_vec2::<u32>().unwrap() {
        assert_eq!(row[0], 3);
        assert_eq!(row[1..8], row[8..15]);
        seen.extend(row[1..].iter().copied());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), draw.ids);
    assert!(TokenDraw::new(10, 10, &[])
        .unwrap_err()
        .to_string()
        .contains("BOS token 10"));
    let all: Vec<u32> = (0..10).collect();
    assert!(TokenDraw::new(0, 10, &all).is_err());
    assert!(draw.repeated(&mut seeded(0), 0, 7).is_err());
}

#[test]
fn token_draw_for_a_model_leaves_out_its_tokenizers_special_tokens() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/tokenizer");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let special = tok.token_to_id("<|endoftext|>").unwrap();
    let cfg = ModelConfig::gpt2_like(1, 16, 2, tok.vocab_size(), 32);
    let bare = HookedTransformer::random(cfg, 0, DType::F32, &Device::Cpu).unwrap();
    let plain = TokenDraw::for_model(&bare, 5).unwrap();
    assert_eq!(plain.ids.len(), tok.vocab_size() - 1);
    assert!(plain.ids.contains(&special) && !plain.ids.contains(&5));
    let with_tok = TokenDraw::for_model(&bare.with_tokenizer(tok.clone()), 5).unwrap();
    assert_eq!(with_tok.ids.len(), tok.vocab_size() - 2);
    assert!(!with_tok.ids.contains(&special));
}

#[test]
fn repeated_tokens_draws_what_it_always_drew() {
    // repeated_tokens goes through TokenDraw; its sequences must stay those of
    // `random_range(1..vocab)` that earlier results (fig8) were computed on.
    let t = repeated_tokens(&mut seeded(9), 2, 6, 50).unwrap();
    let mut rng = seeded(9);
    for row in t.to_vec2::<u32>().unwrap() {
        let seg: Vec<u32> = (0..6).map(|_| rng.random_range(1..50u32)).collect();
        assert_eq!(row[0], BOS);
        assert_eq!(row[1..7], seg[..]);
    }
}

#[test]
fn the_study_finds_induction_and_cumulative_ablation_raises_the_second_copy_loss() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/induction-2l");
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap();
    let vocab = model.config().d_vocab;
    let tokens = TokenDraw::new(BOS, vocab, &[])
        .unwrap()
        .repeated(&mut seeded(5), 16, 25)
        .unwrap();
    let opts = StudyOptions {
        ablate_top: 3,
        resamples: 500,
        bootstrap_seed: 1,
    };
    let study = repeat_study(&model, &tokens, &opts).unwrap();
    assert_eq!(study.ranked.len(), 2 * model.config().n_heads);
    assert!(study.ranked[0].1 > 0.4, "top score {}", study.ranked[0].1);
    assert!(study.clean.second.estimate < 0.5 * study.clean.first.estimate);
    assert_eq!(study.by_position.len(), 50);
    assert_eq!(study.ablations.len(), 3);
    for (k, step) in study.ablations.iter().enumerate() {
        let want: Vec<_> = study.ranked[..=k].iter().map(|h| h.0).collect();
        assert_eq!(step.heads, want);
    }
    // The last step equals zeroing the three heads by hand.
    let zeroed = study.ablations[2]
        .heads
        .iter()
        .map(|&c| Intervention::zero(c).unwrap())
        .collect();
    let by_hand = token_losses(&model, &tokens, &mut Interventions::new(zeroed)).unwrap();
    let curve = loss_by_position(&by_hand).unwrap();
    assert_eq!(curve, study.ablations[2].by_position);
    let last = &study.ablations[2].losses;
    assert!(
        last.second.low > study.clean.second.high,
        "ablated {last:?} vs clean {:?}",
        study.clean
    );
    let too_many = StudyOptions {
        ablate_top: 100,
        ..opts
    };
    let e = repeat_study(&model, &tokens, &too_many)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ablate_top = 100"), "{e}");
}

//! Reading and continuing documents held by a gist tree: stored gists are the ones GistNet
//! makes, every gist read counts in the tree's telemetry, and generation through a working
//! context that holds everything is the model's own greedy continuation.

use crate::common;

use candle_core::{Device, Tensor};
use metarep_gist_tree::telemetry::AccessStats;
use metarep_gist_tree::{
    FsyncPolicy, GistDType, NodeRef, Provenance, Reader, TreeConfig, Writer, WriterOptions,
};
use metarep_megacontext::generate::{generate, GenerateConfig};
use metarep_megacontext::stream::{stream_gists, Gists};
use metarep_megacontext::{
    CoverConfig, FocusConfig, GistNet, GistNetConfig, GistNetSummarizer, Policy, PositionRule,
    RandomScorer, StreamConfig,
};
use metarep_model::generate::{argmax, Sampling};
use metarep_model::HookedTransformer;

fn setup() -> (HookedTransformer, GistNet, Vec<u32>) {
    let tokens = (0..160u32).map(|i| (i * 5 + i / 7) % 48).collect();
    (common::tiny_llama(), common::tiny_gistnet(), tokens)
}

fn cover(budget: usize) -> CoverConfig {
    CoverConfig {
        block: 4,
        budget,
        recent: 8,
        max_level: 2,
    }
}

#[test]
fn a_tree_serves_gistnets_gists_and_counts_every_read() {
    let (model, net, tokens) = setup();
    let dir = tempfile::tempdir().unwrap();
    let tcfg = TreeConfig {
        block: 4,
        width: 32,
        dtype: GistDType::F32,
        segment_bytes: 1 << 16,
    };
    let opts = WriterOptions {
        fsync: FsyncPolicy::Off,
        ..WriterOptions::default()
    };
    let summarizer = GistNetSummarizer::new(net.clone(), model.clone(), 7);
    let mut w = Writer::create(dir.path(), tcfg, opts, Box::new(summarizer)).unwrap();
    w.append(&tokens, &Provenance::default()).unwrap();
    w.commit().unwrap();
    w.close().unwrap();
    let reader = Reader::open(dir.path(), true).unwrap();
    let snap = reader.snapshot().unwrap();
    let mut from_tree = Gists::from_tree(&model, &net, &snap).unwrap();
    assert_eq!(from_tree.tokens(), tokens.as_slice());
    let mut made = Gists::new(&model, &net, &tokens);
    for node in [NodeRef::new(1, 3), NodeRef::new(2, 1)] {
        let a = from_tree.get(node).unwrap();
        let b = made.get(node).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "{node:?}");
    }
    // Streaming the tree's document reads its gists; each read is counted.
    let config = StreamConfig {
        cover: cover(24),
        rule: PositionRule::SpanEnd,
        chunk: 8,
        warmup: 40,
    };
    let via_tree = stream_gists(&mut from_tree, &config, Policy::Cover).unwrap();
    let direct = stream_gists(&mut made, &config, Policy::Cover).unwrap();
    assert!((via_tree.nll - direct.nll).abs() < 1e-5);
    drop(from_tree);
    drop(snap);
    drop(reader);
    let meta = *Reader::open(dir.path(), false).unwrap().meta();
    let stats = AccessStats::load(dir.path(), &meta).unwrap();
    assert!(stats.total() >= 15, "{} reads recorded", stats.total());
    // A GistNet of another arity cannot read this tree.
    let other = GistNet::new(
        GistNetConfig {
            block: 8,
            ..*net.config()
        },
        0,
        &Device::Cpu,
    )
    .unwrap();
    let snap = Reader::open(dir.path(), false).unwrap().snapshot().unwrap();
    assert!(Gists::from_tree(&model, &other, &snap).is_err());
}

#[test]
fn generation_with_room_for_everything_is_the_models_greedy_continuation() {
    let (model, net, tokens) = setup();
    let prompt = &tokens[..40];
    let mut want = prompt.to_vec();
    for _ in 0..6 {
        let t = Tensor::from_vec(want.clone(), (1, want.len()), &Device::Cpu).unwrap();
        let logits = model.forward(t).unwrap().squeeze(0).unwrap();
        let last = logits
            .get(want.len() - 1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        want.push(argmax(&last) as u32);
    }
    for rule in [PositionRule::SpanEnd, PositionRule::Slot] {
        let mut gists = Gists::new(&model, &net, prompt);
        let config = GenerateConfig {
            cover: cover(256),
            rule,
            max_new: 6,
            sampling: Sampling::Greedy,
        };
        let g = generate(&mut gists, &config, None).unwrap();
        assert_eq!(g.tokens, want[40..], "{rule:?}");
        assert_eq!(gists.tokens(), want.as_slice());
    }
}

#[test]
fn generation_in_a_small_budget_stays_within_it_and_moves_with_focus() {
    let (model, net, tokens) = setup();
    let mut gists = Gists::new(&model, &net, &tokens);
    let config = GenerateConfig {
        cover: cover(24),
        rule: PositionRule::SpanEnd,
        max_new: 12,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 3,
        },
    };
    let mut random = RandomScorer::new(1);
    let g = generate(
        &mut gists,
        &config,
        Some((&mut random, FocusConfig::default())),
    )
    .unwrap();
    assert_eq!(g.tokens.len(), 12);
    assert!(g.tokens.iter().all(|t| *t < 48));
    assert!(g.mean_slots <= 24.0 && g.mean_span > 24.0, "{g:?}");
    assert_eq!(g.focus.unwrap().steps, 11);
    // The same seed draws the same tokens.
    let mut again = Gists::new(&model, &net, &tokens);
    let h = generate(
        &mut again,
        &config,
        Some((&mut RandomScorer::new(1), FocusConfig::default())),
    )
    .unwrap();
    assert_eq!(g.tokens, h.tokens);
    // An empty document has nothing to continue.
    let mut empty = Gists::new(&model, &net, &[]);
    assert!(generate(&mut empty, &config, None).is_err());
}

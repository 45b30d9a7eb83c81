//! Streaming a document through the working context: with a budget that holds everything it is
//! the plain token run's loss (under every policy); with a small one the cover reaches further
//! back than truncation within the same slots and the focus loop moves entries within them;
//! gists are GistNet's; bad settings are errors.

use crate::common;

use candle_core::{Device, Tensor};
use metarep_gist_tree::NodeRef;
use metarep_megacontext::stream::Gists;
use metarep_megacontext::{
    stream_nll, CoverConfig, FocusConfig, GistNet, Policy, PositionRule, RandomScorer, StreamConfig,
};
use metarep_model::HookedTransformer;

fn setup() -> (HookedTransformer, GistNet, Vec<u32>) {
    let tokens = (0..200u32).map(|i| (i * 5 + i / 7) % 48).collect();
    (common::tiny_llama(), common::tiny_gistnet(), tokens)
}

fn config(budget: usize, rule: PositionRule) -> StreamConfig {
    StreamConfig {
        cover: CoverConfig {
            block: 4,
            budget,
            recent: 8,
            max_level: 2,
        },
        rule,
        chunk: 8,
        warmup: 40,
    }
}

#[test]
fn a_budget_that_holds_everything_is_the_plain_token_run() {
    let (model, net, tokens) = setup();
    let t = Tensor::from_vec(tokens.clone(), (1, 200), &Device::Cpu).unwrap();
    let logits = model.forward(t).unwrap().squeeze(0).unwrap();
    let lse = logits.log_sum_exp(1).unwrap().to_vec1::<f32>().unwrap();
    let rows = logits.to_vec2::<f32>().unwrap();
    let want: f64 = (40..200)
        .map(|i| f64::from(lse[i - 1] - rows[i - 1][tokens[i] as usize]))
        .sum::<f64>()
        / 160.0;
    for rule in [PositionRule::SpanEnd, PositionRule::Slot] {
        for name in ["cover", "truncate", "focus"] {
            let mut random = RandomScorer::new(0);
            let policy = match name {
                "cover" => Policy::Cover,
                "truncate" => Policy::Truncate,
                _ => Policy::Focus {
                    scorer: &mut random,
                    config: FocusConfig::default(),
                },
            };
            let got = stream_nll(&model, &net, &tokens, &config(256, rule), policy).unwrap();
            assert_eq!(got.tokens, 160);
            assert!(
                (got.nll - want).abs() < 1e-4,
                "{rule:?} {name}: {} vs {want}",
                got.nll
            );
            assert_eq!(got.focus.is_some(), name == "focus");
        }
    }
}

#[test]
fn a_small_budget_covers_more_with_gists_than_truncation() {
    let (model, net, tokens) = setup();
    let cfg = config(24, PositionRule::Slot);
    let cover = stream_nll(&model, &net, &tokens, &cfg, Policy::Cover).unwrap();
    let cut = stream_nll(&model, &net, &tokens, &cfg, Policy::Truncate).unwrap();
    let mut random = RandomScorer::new(3);
    let focus = Policy::Focus {
        scorer: &mut random,
        config: FocusConfig::default(),
    };
    let moved = stream_nll(&model, &net, &tokens, &cfg, focus).unwrap();
    assert!(cover.nll.is_finite() && cut.nll.is_finite() && moved.nll.is_finite());
    assert!(cover.mean_slots <= 24.0 && cut.mean_slots <= 24.0 && moved.mean_slots <= 24.0);
    // Random scores trade expansions for collapses: the focus loop moves entries (every chunk
    // but the first, which has no query yet).
    let stats = moved.focus.unwrap();
    assert!(stats.expansions > 0 && stats.steps == 19, "{stats:?}");
    assert!(stats.reads.iter().sum::<u64>() > 0);
    assert!(
        cover.mean_span > 2.0 * cut.mean_span,
        "cover spans {} tokens, truncation {}",
        cover.mean_span,
        cut.mean_span
    );
}

#[test]
fn gists_are_gistnets_at_every_level() {
    let (model, net, tokens) = setup();
    let mut gists = Gists::new(&model, &net, &tokens);
    let ids = Tensor::from_vec(tokens[4..8].to_vec(), (1, 4), &Device::Cpu).unwrap();
    let want = net.forward(&model.token_embeddings(&ids).unwrap()).unwrap();
    let got = gists.get(NodeRef::new(1, 1)).unwrap();
    let diff = (got - want.squeeze(0).unwrap()).unwrap().abs().unwrap();
    assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
    let kids: Vec<Tensor> = (0..4)
        .map(|j| gists.get(NodeRef::new(1, j)).unwrap())
        .collect();
    let want2 = net
        .forward(&Tensor::stack(&kids, 0).unwrap().unsqueeze(0).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let got2 = gists.get(NodeRef::new(2, 0)).unwrap();
    let diff = (got2 - want2).unwrap().abs().unwrap();
    assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
    // Nodes past the document's end or of level 0 have no gist.
    assert!(gists.get(NodeRef::new(1, 50)).is_err());
    assert!(gists.get(NodeRef::new(0, 0)).is_err());
}

#[test]
fn bad_settings_are_errors() {
    let (model, net, tokens) = setup();
    let run = |cfg: StreamConfig, n: usize| {
        stream_nll(&model, &net, &tokens[..n], &cfg, Policy::Cover).map_err(|e| e.to_string())
    };
    let ok = config(24, PositionRule::Slot);
    assert!(run(StreamConfig { chunk: 0, ..ok }, 200).is_err());
    assert!(run(StreamConfig { warmup: 0, ..ok }, 200).is_err());
    assert!(run(ok, 45).is_err(), "shorter than warmup + chunk");
    let other_block = StreamConfig {
        cover: CoverConfig {
            block: 8,
            ..ok.cover
        },
        ..ok
    };
    let err = run(other_block, 200).unwrap_err();
    assert!(err.contains("block"), "{err}");
}

#[test]
fn trials_read_after_a_shared_prefix_equal_reading_each_in_full() {
    use metarep_megacontext::lens_train::move_trials;
    use metarep_megacontext::stream::{read_cover, read_cover_and_trials, Reader};
    use metarep_megacontext::WorkingContext;
    let (model, net, tokens) = setup();
    for rule in [PositionRule::SpanEnd, PositionRule::Slot] {
        let cover = config(24, rule).cover;
        let mut wc = WorkingContext::new(cover).unwrap();
        wc.push(120);
        let (_, trials) = move_trials(&wc).unwrap();
        assert!(trials.len() >= 3, "{rule:?}: {} moves", trials.len());
        let next = &tokens[120..128];
        let mut gists = Gists::new(&model, &net, &tokens);
        // The reader has read an earlier cover of the document first, as a stream's has: `wc`
        // reuses the keys and values of the start they share.
        let mut reader = Reader::new();
        let mut earlier = WorkingContext::new(cover).unwrap();
        earlier.push(112);
        reader
            .read(&mut gists, &earlier, rule, &tokens[112..120])
            .unwrap();
        let read_before = reader.stats();
        let (base, each) =
            read_cover_and_trials(&mut reader, &mut gists, &wc, &trials, (rule, next)).unwrap();
        let reused =
            reader.stats().read - read_before.read - (reader.stats().run - read_before.run);
        assert!(
            reused > 0,
            "{rule:?}: the earlier read's start was not reused"
        );
        let (want, _) = read_cover(&mut gists, &wc, rule, next).unwrap();
        assert!((base - want).abs() < 1e-5, "{rule:?}: {base} vs {want}");
        assert_eq!(each.len(), trials.len());
        let mut moved = 0;
        for (t, got) in trials.iter().zip(&each) {
            let (want, _) = read_cover(&mut gists, t, rule, next).unwrap();
            assert!((got - want).abs() < 1e-5, "{rule:?}: {got} vs {want}");
            moved += usize::from((got - base).abs() > 1e-4);
        }
        assert!(moved > 0, "{rule:?}: no move changed the loss");
    }
}

/// Streams `tokens` with a [`Reader`] under `c`'s oldest-first cover, each read checked against
/// reading the cover in full (and another reader's `read_last` against a fresh reader's);
/// returns the first reader's stats and the reads made.
fn read_stream(
    (model, net, tokens): (&HookedTransformer, &GistNet, &[u32]),
    c: StreamConfig,
) -> (metarep_megacontext::stream::ReadStats, usize) {
    use metarep_megacontext::stream::{read_cover, Reader};
    use metarep_megacontext::WorkingContext;
    let mut wc = WorkingContext::new(c.cover).unwrap();
    wc.push(c.warmup as u64);
    let mut gists = Gists::new(model, net, tokens);
    let (mut reader, mut last) = (Reader::new(), Reader::new());
    let (mut at, mut reads) = (c.warmup, 0);
    while at + c.chunk <= tokens.len() {
        wc.fit();
        let next = &tokens[at..at + c.chunk];
        let (got, q) = reader.read(&mut gists, &wc, c.rule, next).unwrap();
        let (want, q_want) = read_cover(&mut gists, &wc, c.rule, next).unwrap();
        assert!(
            (got - want).abs() < 1e-5,
            "{:?} at {at}: {got} vs {want}",
            c.rule
        );
        let gap = (q - q_want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            gap.to_scalar::<f32>().unwrap() < 1e-4,
            "{:?} at {at}",
            c.rule
        );
        // The next-token logits after the cover alone, as generation reads them, against a
        // fresh reader's (which runs every slot).
        let (got, _) = last.read_last(&mut gists, &wc, c.rule).unwrap();
        let (want, _) = Reader::new().read_last(&mut gists, &wc, c.rule).unwrap();
        let gap = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            gap.to_scalar::<f32>().unwrap() < 1e-4,
            "{:?} at {at}",
            c.rule
        );
        wc.append(c.chunk as u64);
        at += c.chunk;
        reads += 1;
    }
    let l = last.stats();
    assert!(
        l.run < l.read,
        "{:?}: read_last ran {} of {}",
        c.rule,
        l.run,
        l.read
    );
    (reader.stats(), reads)
}

#[test]
fn a_reader_reuses_the_unchanged_start_and_reads_as_in_full() {
    let (model, net, tokens) = setup();
    for rule in [PositionRule::SpanEnd, PositionRule::Slot] {
        // A budget that holds everything: each cover is the last read's, so after the first
        // read only the last slot (whose state predicts the chunk) and the chunk run.
        let c = config(1000, rule);
        let (s, reads) = read_stream((&model, &net, &tokens), c);
        let first = c.warmup + c.chunk;
        assert_eq!(s.run, first + (reads - 1) * (c.chunk + 1), "{rule:?}");
        // Covers that gist their oldest raw blocks and collapse families as the text grows:
        // still equal to full reads, reusing what comes before the first change.
        let (s, _) = read_stream((&model, &net, &tokens), config(24, rule));
        assert!(s.run < s.read, "{rule:?}: ran {} of {}", s.run, s.read);
    }
}

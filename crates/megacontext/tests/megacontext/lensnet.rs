//! LensNet: shapes and errors, save/load, and training on counterfactual utilities — on a
//! synthetic rule it must learn to rank moves far better than chance; on states measured
//! through a small model the samples are well formed; validation states choose the step kept.

use crate::common;

use candle_core::{DType, Device, Tensor};
use metarep_core::progress::ProgressBar;
use metarep_core::train::{RunControl, RunReport};
use metarep_gist_tree::NodeRef;
use metarep_megacontext::focus::{Candidate, Move};
use metarep_megacontext::lens_train::{draw_moves, lens_loss, rank_quality, LensSample};
use metarep_megacontext::lensnet::FocusInput;
use metarep_megacontext::sample_store::{load_samples, save_samples};
use metarep_megacontext::{
    collect_samples, doc_samples, train_lensnet, CoverConfig, FocusConfig, LensDataConfig, LensNet,
    LensNetConfig, LensTrainConfig, PositionRule, RandomScorer, RecencyScorer, Scorer,
    StreamConfig,
};
use rand::{Rng, SeedableRng};

fn small(d: usize) -> LensNetConfig {
    LensNetConfig {
        width: 32,
        layers: 1,
        heads: 4,
        mlp: 64,
        ..LensNetConfig::for_model(d, 2)
    }
}

fn input(n: usize, d: usize, rng: &mut impl Rng) -> FocusInput {
    let v: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let q: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    FocusInput {
        vectors: Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap(),
        levels: (0..n).map(|i| (i % 3) as u8).collect(),
        geometry: (0..n).map(|i| [(10 * (n - i)) as f32, 4.0]).collect(),
        query: Tensor::from_vec(q, d, &Device::Cpu).unwrap(),
    }
}

#[test]
fn shapes_errors_and_save_load() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let net = LensNet::new(small(16), 3, &Device::Cpu).unwrap();
    let x = input(7, 16, &mut rng);
    let y = net.forward(&x).unwrap();
    assert_eq!(y.dims(), [7, 2]);
    let dir = tempfile::tempdir().unwrap();
    net.save(dir.path()).unwrap();
    let back = LensNet::load(dir.path(), &Device::Cpu).unwrap();
    let diff = (back.forward(&x).unwrap() - &y).unwrap().abs().unwrap();
    assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let mut bad = x.clone();
    bad.levels[0] = 3;
    let err = net.forward(&bad).unwrap_err().to_string();
    assert!(err.contains("level"), "{err}");
    let mut bad = x.clone();
    bad.query = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
    let err = net.forward(&bad).unwrap_err().to_string();
    assert!(err.contains("query"), "{err}");
    let mut bad = x;
    bad.geometry.pop();
    assert!(net.forward(&bad).is_err());
    assert!(LensNet::new(
        LensNetConfig {
            heads: 5,
            ..small(16)
        },
        0,
        &Device::Cpu
    )
    .is_err());
}

/// A state whose utilities follow a rule LensNet can read: expanding entry i is worth its
/// vector's first coordinate, collapsing it costs |second coordinate| + 0.1.
fn synthetic(rng: &mut impl Rng) -> LensSample {
    let n = rng.random_range(4..12);
    let x = input(n, 16, rng);
    let rows = x.vectors.to_vec2::<f32>().unwrap();
    let mut candidates = Vec::new();
    let mut utilities = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        candidates.push(Candidate {
            entry: i,
            node: NodeRef::new(1, i as u64),
            kind: Move::Expand,
            slots: 3,
        });
        utilities.push(r[0]);
        candidates.push(Candidate {
            entry: i,
            node: NodeRef::new(1, i as u64),
            kind: Move::Collapse,
            slots: -3,
        });
        utilities.push(-(r[1].abs() + 0.1));
    }
    LensSample {
        input: x,
        candidates,
        utilities,
        unmeasured: Vec::new(),
        free: 3,
        budget: 64,
    }
}

#[test]
fn training_learns_to_rank_moves_by_utility() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let train: Vec<LensSample> = (0..256).map(|_| synthetic(&mut rng)).collect();
    let held: Vec<LensSample> = (0..64).map(|_| synthetic(&mut rng)).collect();
    let mut net = LensNet::new(LensNetConfig::for_model(16, 2), 0, &Device::Cpu).unwrap();
    let config = LensTrainConfig {
        steps: 500,
        batch: 8,
        lr: 3e-3,
        warmup: 10,
        log_every: 0,
        ..LensTrainConfig::default()
    };
    // Pairs whose utilities differ by more than 0.1 nats: a clear preference.
    let clear = 0.1;
    let before = rank_quality(&mut net, &held, clear).unwrap();
    let report = train_lensnet(&net, &train, &[], &config, Default::default()).unwrap();
    assert_eq!(report.steps, 500);
    assert!(report.final_loss < report.first_loss, "{report:?}");
    let after = rank_quality(&mut net, &held, clear).unwrap();
    let chance = rank_quality(&mut RandomScorer::new(0), &held, clear).unwrap();
    assert!(
        after.pair_accuracy > 0.85 && after.pair_accuracy > before.pair_accuracy + 0.2,
        "pair accuracy {} (before {}, random {})",
        after.pair_accuracy,
        before.pair_accuracy,
        chance.pair_accuracy
    );
    assert!(
        after.chosen_utility > 0.8 * after.best_utility,
        "chosen {} of best {} (random {})",
        after.chosen_utility,
        after.best_utility,
        chance.chosen_utility
    );
    assert!(
        chance.pair_accuracy < 0.65,
        "random ranks at {}",
        chance.pair_accuracy
    );
}

/// `s` with every utility negated: the opposite preference.
fn reversed(mut s: LensSample) -> LensSample {
    s.utilities.iter_mut().for_each(|u| *u = -*u);
    s
}

/// The value of `name` in a training report's evaluation.
fn eval_value(report: &RunReport, name: &str) -> f64 {
    let found = report.eval.iter().find(|(n, _)| n == name);
    found.unwrap_or_else(|| panic!("no {name} in {report:?}")).1
}

#[test]
fn validation_keeps_the_step_that_ranks_it_best_and_survives_a_resume() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let train: Vec<LensSample> = (0..128).map(|_| synthetic(&mut rng)).collect();
    // Validation states that prefer the opposite: the better LensNet learns the training
    // rule, the worse it ranks them, so the kept step must be an early one.
    let val: Vec<LensSample> = (0..32).map(|_| reversed(synthetic(&mut rng))).collect();
    let config = LensTrainConfig {
        steps: 120,
        lr: 1e-3,
        warmup: 20,
        log_every: 0,
        eval_every: 10,
        ..LensTrainConfig::default()
    };
    // A fresh net trained under `control`, and the run's report.
    let fit = |control: RunControl| {
        let net = LensNet::new(small(16), 0, &Device::Cpu).unwrap();
        let report = train_lensnet(&net, &train, &val, &config, control).unwrap();
        (net, report)
    };
    let whole = tempfile::tempdir().unwrap();
    let (mut net, report) = fit(RunControl {
        out: Some(whole.path()),
        ..Default::default()
    });
    let (best_step, best) = (
        eval_value(&report, "best_step"),
        eval_value(&report, "best_val_pair_accuracy"),
    );
    let last = eval_value(&report, "val_pair_accuracy");
    assert!(best_step < 120.0 && best > last + 0.1, "{report:?}");
    let kept = rank_quality(&mut net, &val, config.tolerance).unwrap();
    assert_eq!(kept.pair_accuracy, best);
    let logged = std::fs::read_to_string(whole.path().join("metrics.jsonl")).unwrap();
    assert_eq!(logged.matches("eval.val_pair_accuracy").count(), 12);
    let scores = |net: &LensNet| {
        net.forward(&val[0].input)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    // The same run stopped after 60 steps and resumed: the best (kept before the stop, on
    // disk) must come back, not the best of the steps after the resume.
    let halves = tempfile::tempdir().unwrap();
    fit(RunControl {
        out: Some(halves.path()),
        stop_at: Some(60),
        ..Default::default()
    });
    let (resumed_net, resumed) = fit(RunControl::resuming(halves.path()));
    assert_eq!(resumed.start_step, 60);
    assert_eq!(eval_value(&resumed, "best_step"), best_step);
    assert_eq!(scores(&resumed_net), scores(&net));
    // A finished run loaded from its checkpoint also ends with the kept parameters.
    let (loaded_net, loaded) = fit(RunControl::resuming(whole.path()));
    assert_eq!(loaded.start_step, 120);
    assert_eq!(eval_value(&loaded, "best_step"), best_step);
    assert_eq!(scores(&loaded_net), scores(&net));
    // Resumed without validation states, it keeps its last step's parameters instead.
    let last_net = LensNet::new(small(16), 0, &Device::Cpu).unwrap();
    train_lensnet(
        &last_net,
        &train,
        &[],
        &config,
        RunControl::resuming(whole.path()),
    )
    .unwrap();
    assert_ne!(scores(&last_net), scores(&net));
}

#[test]
fn a_sample_without_candidates_is_an_error() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let net = LensNet::new(small(16), 0, &Device::Cpu).unwrap();
    let mut s = synthetic(&mut rng);
    s.candidates.clear();
    s.utilities.clear();
    let err = lens_loss(&net, &s, &LensTrainConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("candidate"), "{err}");
}

#[test]
fn moves_left_unmeasured_still_count_in_the_budget_term() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let net = LensNet::new(small(16), 0, &Device::Cpu).unwrap();
    let config = LensTrainConfig {
        budget_weight: 10.0,
        ..LensTrainConfig::default()
    };
    let mut s = synthetic(&mut rng);
    // The measured moves alone fit: nothing is over the budget.
    s.free = 1000;
    let measured = lens_loss(&net, &s, &config).unwrap();
    // Expansions nobody measured, each taken with probability σ(score) > 0, overflow it.
    s.unmeasured = (0..s.input.levels.len())
        .map(|i| Candidate {
            entry: i,
            node: NodeRef::new(1, i as u64),
            kind: Move::Expand,
            slots: 10_000,
        })
        .collect();
    let with_unmeasured = lens_loss(&net, &s, &config).unwrap();
    let (a, b) = (
        measured.to_scalar::<f32>().unwrap(),
        with_unmeasured.to_scalar::<f32>().unwrap(),
    );
    assert!(
        b > a + 1.0,
        "loss {a} without the unmeasured moves, {b} with them"
    );
}

#[test]
fn a_draw_of_moves_keeps_their_order_and_loses_none() {
    let moves: Vec<Candidate> = (0..10)
        .map(|i| Candidate {
            entry: i,
            node: NodeRef::new(1, i as u64),
            kind: Move::Expand,
            slots: 3,
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for at_most in [0, 10, 11] {
        let (drawn, rest) = draw_moves(moves.clone(), at_most, &mut rng);
        assert_eq!((drawn, rest.len()), (moves.clone(), 0), "at most {at_most}");
    }
    let (drawn, rest) = draw_moves(moves.clone(), 4, &mut rng);
    assert_eq!((drawn.len(), rest.len()), (4, 6));
    let mut all: Vec<usize> = drawn.iter().chain(&rest).map(|c| c.entry).collect();
    assert!(drawn.windows(2).all(|w| w[0].entry < w[1].entry));
    assert!(rest.windows(2).all(|w| w[0].entry < w[1].entry));
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
}

/// States every 2 chunks of 8 tokens through a 24-slot budget.
fn data_config() -> LensDataConfig {
    LensDataConfig {
        stream: StreamConfig {
            cover: CoverConfig {
                block: 4,
                budget: 24,
                recent: 8,
                max_level: 2,
            },
            rule: PositionRule::SpanEnd,
            chunk: 8,
            warmup: 40,
        },
        horizon: 8,
        every: 2,
        trials: 0,
        focus: FocusConfig::default(),
        seed: 0,
    }
}

fn doc() -> Vec<u32> {
    (0..300u32).map(|i| (i * 7 + i / 5) % 48).collect()
}

#[test]
fn measured_states_are_well_formed() {
    let (model, net) = (common::tiny_llama(), common::tiny_gistnet());
    let (doc, config) = (doc(), data_config());
    let samples = collect_samples(&model, &net, &[doc.clone(), doc], &config, 20).unwrap();
    assert_eq!(samples.len(), 20);
    for s in &samples {
        assert_eq!(s.candidates.len(), s.utilities.len());
        assert!(!s.candidates.is_empty());
        assert!(s.free >= 0 && s.budget == 24);
        assert!(s.utilities.iter().all(|u| u.is_finite()));
        assert_eq!(s.input.levels.len(), s.input.geometry.len());
        for c in &s.candidates {
            assert!(c.entry < s.input.levels.len());
            assert_eq!(c.kind == Move::Expand, c.slots > 0);
        }
    }
    // Expansions bring raw text back: with GistNet's mean gists on a random model they move
    // the loss; across the states some utility is non-zero.
    assert!(samples
        .iter()
        .flat_map(|s| &s.utilities)
        .any(|u| u.abs() > 1e-6));
}

#[test]
fn a_state_measures_a_draw_of_its_moves_exactly_as_it_measures_them_all() {
    let (model, net) = (common::tiny_llama(), common::tiny_gistnet());
    let (doc, every) = (doc(), data_config());
    let drawn = LensDataConfig {
        trials: 2,
        ..data_config()
    };
    let bar = ProgressBar::hidden();
    let all = doc_samples(&model, &net, (0, &doc), &every, 12, &bar).unwrap();
    let some = doc_samples(&model, &net, (0, &doc), &drawn, 12, &bar).unwrap();
    assert_eq!(all.len(), some.len());
    let mut partial = 0;
    for (a, s) in all.iter().zip(&some) {
        assert!(a.unmeasured.is_empty());
        assert_eq!(s.candidates.len(), a.candidates.len().min(2));
        let mut union = s.candidates.clone();
        union.extend(s.unmeasured.iter().copied());
        union.sort_by_key(|c| (c.entry, c.kind == Move::Collapse));
        assert_eq!(union, a.candidates, "the same state, its moves split");
        // Each drawn move's utility is the one measuring every move gives it.
        for (c, u) in s.candidates.iter().zip(&s.utilities) {
            let i = a.candidates.iter().position(|x| x == c).unwrap();
            assert_eq!(*u, a.utilities[i], "{c:?}");
        }
        partial += usize::from(!s.unmeasured.is_empty());
    }
    assert!(partial > 0, "no state had more than 2 moves");
    // The unmeasured moves are saved with the state.
    let dir = tempfile::tempdir().unwrap();
    save_samples(dir.path(), &some, "k").unwrap();
    let back = load_samples(dir.path(), "k", &Device::Cpu)
        .unwrap()
        .unwrap();
    for (b, s) in back.iter().zip(&some) {
        assert_eq!(
            (&b.candidates, &b.unmeasured),
            (&s.candidates, &s.unmeasured)
        );
    }
}

#[test]
fn the_recency_rule_expands_the_newest_and_collapses_the_oldest() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut x = input(3, 16, &mut rng);
    x.geometry = vec![[100.0, 32.0], [10.0, 32.0], [1000.0, 32.0]];
    let s = RecencyScorer { scale: 96.0 }.score(&x).unwrap();
    // Expansions: newest first, every one above doing nothing.
    assert!(
        s[1][0] > s[0][0] && s[0][0] > s[2][0] && s[2][0] > 0.0,
        "{s:?}"
    );
    // Collapses: oldest first, every one below doing nothing.
    assert!(
        s[2][1] > s[0][1] && s[0][1] > s[1][1] && s[2][1] < 0.0,
        "{s:?}"
    );
    for scale in [0.0, -1.0, f32::NAN] {
        let err = RecencyScorer { scale }.score(&x).unwrap_err().to_string();
        assert!(err.contains("recency scale"), "{err}");
    }
}

#[test]
fn states_collect_document_by_document_and_load_back_exactly_under_their_key() {
    let (model, net) = (common::tiny_llama(), common::tiny_gistnet());
    let (doc, config) = (doc(), data_config());
    let short: Vec<u32> = doc[..40].to_vec();
    let docs = [short.clone(), doc.clone(), doc.clone()];
    let all = collect_samples(&model, &net, &docs, &config, 40).unwrap();
    let bar = ProgressBar::hidden();
    let none = doc_samples(&model, &net, (0, &short), &config, 40, &bar).unwrap();
    assert!(none.is_empty(), "too short for a chunk after the warmup");
    let first = doc_samples(&model, &net, (1, &doc), &config, 40, &bar).unwrap();
    let rest = 40 - first.len();
    let second = doc_samples(&model, &net, (2, &doc), &config, rest, &bar).unwrap();
    assert_eq!(first.len() + second.len(), all.len());
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("doc1");
    assert!(load_samples(&at, "k", &Device::Cpu).unwrap().is_none());
    save_samples(&at, &first, "k").unwrap();
    assert!(load_samples(&at, "other", &Device::Cpu).unwrap().is_none());
    let back = load_samples(&at, "k", &Device::Cpu).unwrap().unwrap();
    for (got, want) in back.iter().zip(&all) {
        assert_eq!(got.candidates, want.candidates);
        assert_eq!(got.utilities, want.utilities);
        assert_eq!((got.free, got.budget), (want.free, want.budget));
        assert_eq!(got.input.levels, want.input.levels);
        assert_eq!(got.input.geometry, want.input.geometry);
        for (a, b) in [
            (&got.input.vectors, &want.input.vectors),
            (&got.input.query, &want.input.query),
        ] {
            let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
            assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        }
    }
    assert_eq!(back.len(), first.len());
    // A damaged save is an error, not states.
    let tensors = at.join("tensors.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&tensors, bytes).unwrap();
    assert!(load_samples(&at, "k", &Device::Cpu).is_err());
}

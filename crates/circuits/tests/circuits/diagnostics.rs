//! Head detectors, token losses and staged ablations on a small random model and on the
//! checked-in induction-2l model.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use metarep_circuits::ablation::{run_ablations, AblationConfig, AblationKind, Stage};
use metarep_circuits::detectors::{head_scores, repeat_losses, repeated_tokens, token_losses};
use metarep_circuits::ranking::ranked_heads;
use metarep_core::rng::seeded;
use metarep_model::predictions::EvalSet;
use metarep_model::train::{cross_entropy, LmBatch};
use metarep_model::{Component, HookedTransformer, Input, LoadOptions, ModelConfig, NoHooks};

fn small() -> HookedTransformer {
    let mut cfg = ModelConfig::gpt2_like(2, 16, 2, 12, 16);
    cfg.d_mlp = 8;
    HookedTransformer::random(cfg, 3, DType::F32, &Device::Cpu).unwrap()
}

fn stage(kind: AblationKind, components: &[&str]) -> Stage {
    Stage {
        name: components.join(" "),
        kind,
        components: components.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

#[test]
fn repeated_tokens_repeat_and_scores_are_attention_fractions() {
    let t = repeated_tokens(&mut seeded(0), 3, 5, 12).unwrap();
    assert_eq!(t.dims(), &[3, 11]);
    for row in t.to_vec2::<u32>().unwrap() {
        assert_eq!(row[0], 0);
        assert_eq!(row[1..6], row[6..11]);
        assert!(row[1..].iter().all(|&x| (1..12).contains(&x)));
    }
    assert!(repeated_tokens(&mut seeded(0), 3, 5, 1).is_err());

    let model = small();
    let s = head_scores(&model, &t).unwrap();
    for m in [
        &s.induction,
        &s.previous_token,
        &s.duplicate_token,
        &s.prefix_matching,
    ] {
        assert_eq!((m.len(), m[0].len()), (2, 2));
        assert!(m.iter().flatten().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)));
    }
    let ranked = ranked_heads(&s.induction);
    assert_eq!(ranked.len(), 4);
    assert!(ranked.windows(2).all(|w| w[0].1 >= w[1].1));
    assert!(head_scores(&model, &t.narrow(1, 0, 10).unwrap()).is_err());
}

#[test]
fn token_losses_average_to_the_training_loss() {
    let model = small();
    let t = repeated_tokens(&mut seeded(1), 4, 6, 12).unwrap();
    let per = token_losses(&model, &t, &mut NoHooks).unwrap();
    let mean = per.iter().flatten().sum::<f64>() / (per.len() * per[0].len()) as f64;
    let batch = LmBatch::next_token(&t).unwrap();
    let logits = model
        .run_with_hooks(Input::new(batch.tokens.clone()), &mut NoHooks)
        .unwrap();
    let ce = cross_entropy(&logits, &batch.targets, None)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!((mean - ce).abs() < 1e-5, "{mean} vs {ce}");
    let (first, second) = repeat_losses(&per[0]).unwrap();
    assert!(first.is_finite() && second.is_finite());
    assert!(repeat_losses(&per[0][..3]).is_err()); // 3 predictions is not 2·len
}

#[test]
fn staged_ablations_report_deltas_and_bad_indices_are_named() {
    let model = small();
    let t = repeated_tokens(&mut seeded(2), 4, 6, 12).unwrap();
    let eval = EvalSet {
        tokens: t.clone(),
        mask: None,
        alternative: Some(Tensor::zeros((4, 12), DType::U32, &Device::Cpu).unwrap()),
    };
    let reference = repeated_tokens(&mut seeded(3), 4, 6, 12).unwrap();
    for kind in [
        AblationKind::Zero,
        AblationKind::Mean,
        AblationKind::Resample,
    ] {
        let config = AblationConfig {
            cumulative: true,
            stages: vec![stage(kind, &["L0H1"]), stage(kind, &["L1H0", "L1N3"])],
        };
        let r = run_ablations(&model, &config, &eval, Some(&reference)).unwrap();
        assert_eq!(r.stages.len(), 2);
        assert_eq!((r.stages[0].components, r.stages[1].components), (1, 3));
        for s in &r.stages {
            assert!((s.ablated.loss - r.clean.loss - s.delta.loss).abs() < 1e-12);
            assert!(s.delta.loss != 0.0, "{kind:?}: ablation changed nothing");
            assert!(s.ablated.logit_diff.is_finite());
        }
    }
    // An empty ablation changes nothing.
    let none = AblationConfig {
        cumulative: false,
        stages: vec![stage(AblationKind::Zero, &[])],
    };
    let r = run_ablations(&model, &none, &eval, None).unwrap();
    assert_eq!(r.stages[0].delta.loss, 0.0);

    let bad = |stage: Stage| {
        let c = AblationConfig {
            cumulative: false,
            stages: vec![stage],
        };
        run_ablations(&model, &c, &eval, Some(&reference))
            .unwrap_err()
            .to_string()
    };
    let e = bad(stage(AblationKind::Zero, &["L0H2"]));
    assert!(
        e.contains("stage `L0H2`") && e.contains("L0H2 is not in this model"),
        "{e}"
    );
    let e = bad(stage(AblationKind::Zero, &["L2H0"]));
    assert!(e.contains("L2H0 is not in this model"), "{e}");
    let e = bad(stage(AblationKind::Mean, &["L0N8"]));
    assert!(e.contains("L0N8 is not in this model"), "{e}");
    let e = bad(stage(AblationKind::Zero, &["0_mlp_out"]));
    assert!(e.contains("0_mlp_out cannot be ablated"), "{e}");
    let c = AblationConfig {
        cumulative: false,
        stages: vec![stage(AblationKind::Mean, &["L0H0"])],
    };
    let e = run_ablations(&model, &c, &eval, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("reference"), "{e}");
}

/// Stages rerun from the first block they ablate in; each must give the metrics of the whole
/// pass with the same interventions.
#[test]
fn ablations_resumed_mid_pass_give_the_whole_pass_metrics() {
    use metarep_model::interventions::{mean_activation, Intervention, Interventions};
    use metarep_model::predictions::metrics;
    use metarep_model::HookPoint;
    let model = small();
    let eval = EvalSet {
        tokens: repeated_tokens(&mut seeded(6), 4, 6, 12).unwrap(),
        mask: None,
        alternative: None,
    };
    let reference = repeated_tokens(&mut seeded(7), 4, 6, 12).unwrap();
    let (_, cache) = model
        .run_with_cache(
            reference.narrow(1, 0, 12).unwrap(),
            vec![HookPoint::MlpPost(0), HookPoint::MlpPost(1)],
        )
        .unwrap();
    let mean_of =
        |l: usize| mean_activation(cache.get(HookPoint::MlpPost(l)).unwrap(), true).unwrap();
    let neurons: Vec<Component> = (0..2)
        .flat_map(|layer| (0..8).map(move |neuron| Component::Neuron { layer, neuron }))
        .collect();
    let whole =
        |list: Vec<Intervention>| metrics(&model, &eval, &mut Interventions::new(list)).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;

    let alone = AblationConfig::each_alone(&neurons, AblationKind::Mean);
    let r = run_ablations(&model, &alone, &eval, Some(&reference)).unwrap();
    for (c, s) in neurons.iter().zip(&r.stages) {
        let Component::Neuron { layer, neuron } = *c else {
            unreachable!()
        };
        let want = whole(vec![Intervention::mean_neurons(
            layer,
            &[neuron],
            mean_of(layer),
        )]);
        assert!(
            close(s.ablated.loss, want.loss),
            "{c}: {:?} vs {want:?}",
            s.ablated
        );
        assert!(close(s.ablated.entropy, want.entropy), "{c}");
        assert_eq!(s.ablated.accuracy, want.accuracy, "{c}");
    }

    // Cumulative: the late stage first, then an early one; both runs cover every component.
    let staged = AblationConfig {
        cumulative: true,
        stages: vec![
            stage(AblationKind::Zero, &["L1N3"]),
            stage(AblationKind::Zero, &["L0N5"]),
        ],
    };
    let r = run_ablations(&model, &staged, &eval, None).unwrap();
    let first = whole(vec![Intervention::zero_neurons(1, &[3])]);
    let both = whole(vec![
        Intervention::zero_neurons(1, &[3]),
        Intervention::zero_neurons(0, &[5]),
    ]);
    assert!(
        close(r.stages[0].ablated.loss, first.loss),
        "{:?} vs {first:?}",
        r.stages[0]
    );
    assert!(
        close(r.stages[1].ablated.loss, both.loss),
        "{:?} vs {both:?}",
        r.stages[1]
    );
    assert!(both.loss != first.loss);
}

#[test]
fn the_induction_fixture_has_a_layer_one_induction_head_that_matters() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/induction-2l");
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap();
    let t = repeated_tokens(&mut seeded(5), 16, 25, model.config().d_vocab).unwrap();
    let s = head_scores(&model, &t).unwrap();
    let (top, score) = ranked_heads(&s.induction)[0];
    assert_eq!(top.layer(), Some(1), "top induction head {top} ({score})");
    assert!(score > 0.4, "{score}");
    let per = token_losses(&model, &t, &mut NoHooks).unwrap();
    let (first, second): (Vec<f64>, Vec<f64>) =
        per.iter().map(|r| repeat_losses(r).unwrap()).unzip();
    let (f, s2) = (
        first.iter().sum::<f64>() / 16.0,
        second.iter().sum::<f64>() / 16.0,
    );
    assert!(s2 < 0.5 * f, "second repeat {s2} vs first {f}");
}

#[test]
fn scale_sweep_is_clean_at_one_and_zero_ablation_at_zero() {
    use metarep_circuits::ablation::scale_sweep;
    use metarep_model::predictions::metrics;
    let model = small();
    let t = repeated_tokens(&mut seeded(4), 4, 6, 12).unwrap();
    let eval = EvalSet {
        tokens: t,
        mask: None,
        alternative: None,
    };
    let parts: Vec<Component> = ["L1H0", "L0N2"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let sweep = scale_sweep(&model, &eval, &parts, &[0.0, 1.0, 2.5]).unwrap();
    let clean = metrics(&model, &eval, &mut NoHooks).unwrap();
    assert!((sweep[1].loss - clean.loss).abs() < 1e-9);
    let zero = run_ablations(
        &model,
        &AblationConfig {
            cumulative: false,
            stages: vec![stage(AblationKind::Zero, &["L1H0", "L0N2"])],
        },
        &eval,
        None,
    )
    .unwrap();
    assert!((sweep[0].loss - zero.stages[0].ablated.loss).abs() < 1e-9);
    assert!(sweep[2].loss != clean.loss);
    let far = Component::Head { layer: 3, head: 0 };
    assert!(scale_sweep(&model, &eval, &[far], &[1.0]).is_err());
}

#[test]
fn patching_positions_where_the_prompts_agree_restores_nothing_and_heads_restore_induction() {
    use metarep_circuits::patching::{induction_pairs, patch, PatchSet};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/induction-2l");
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap();
    // Deep enough into the second copy for the fixture's induction to be confident.
    let (len, j, b) = (25usize, 16usize, 16usize);
    let pairs = induction_pairs(&mut seeded(8), b, len, 64, j).unwrap();
    let n = 1 + len + j;
    for p in &pairs {
        assert_eq!((p.clean.len(), p.corrupted.len()), (n, n));
        assert_eq!(p.clean[len + 1..], p.corrupted[len + 1..]);
        assert_eq!(p.answer, p.clean[j + 1]);
    }
    assert!(induction_pairs(&mut seeded(8), b, len, 64, len).is_err());
    let set = PatchSet::from_pairs(&pairs, &Device::Cpu).unwrap();
    let r = patch(&model, &set).unwrap();
    assert!(r.clean_logit_diff > r.corrupted_logit_diff + 1.0, "{r:?}");
    // Layer 0's input at a position depends on that token alone: where the prompts hold the
    // same token, patching it changes nothing.
    for pos in std::iter::once(0).chain(len + 1..n) {
        assert!(
            r.resid[0][pos].abs() < 1e-6,
            "pos {pos}: {}",
            r.resid[0][pos]
        );
    }
    // The answer comes through a layer-1 head.
    let best = ranked_heads(&r.heads)[0];
    assert_eq!(best.0.layer(), Some(1), "{best:?}");
    assert!(best.1 > 0.2, "{best:?}");
    let same = PatchSet {
        corrupted: set.clean.clone(),
        ..set
    };
    assert!(patch(&model, &same)
        .unwrap_err()
        .to_string()
        .contains("nothing to patch"));
}

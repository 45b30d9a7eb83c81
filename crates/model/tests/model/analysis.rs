//! The hooks API (read, replace, stop early, hook_result on demand), the activation cache's
//! decompositions, interventions and exact direct logit attribution, on the parity fixtures.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{case_input, load_case};
use metarep_model::dla::{direct_logit_attribution, dla_filter, LogitTarget};
use metarep_model::hooks::{CacheHooks, HookSet};
use metarep_model::interventions::{mean_activation, Intervention, Interventions};
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input, NoHooks, RunTo};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    metarep_core::compare::max_abs_diff(a, b).unwrap()
}

fn fixture(case: &str) -> (HookedTransformer, Input) {
    let (model, refs) = load_case(case);
    // Decoder fixtures without padding: every position is real.
    let input = Input::new(refs["input_ids"].clone());
    (model, input)
}

#[test]
fn no_op_and_read_only_hooks_leave_the_output_unchanged() {
    let (model, input) = fixture("gpt2");
    let plain = model.forward(input.clone()).unwrap();
    let mut seen = 0usize;
    // A read-only hook at every point except hook_result (which, when asked for, computes the
    // attention output as a sum over heads: equal up to rounding, not bit for bit).
    let mut hooks = HookSet::new().add_where(
        |p| !matches!(p, HookPoint::HeadResult(_)),
        |_, _| {
            seen += 1;
            Ok(None)
        },
    );
    let read = model.run_with_hooks(input.clone(), &mut hooks).unwrap();
    drop(hooks);
    assert_eq!(max_diff(&plain, &read), 0.0);
    let n = metarep_model::hooks::available_hooks(model.config()).len();
    assert_eq!(seen, n - model.config().n_layers);
    let (cached, cache) = model.run_with_cache(input, HookFilter::All).unwrap();
    assert_eq!(max_diff(&plain, &cached), 0.0);
    assert_eq!(cache.len(), n - model.config().n_layers);
    assert!(!cache.contains(HookPoint::HeadResult(0)));
}

#[test]
fn hook_result_is_computed_only_when_asked_and_sums_to_attn_out() {
    let (model, input) = fixture("neox_parallel");
    let (_, cache) = model
        .run_with_cache(input, "blocks.1.attn.hook_result")
        .unwrap();
    assert_eq!(cache.len(), 1);
    let (m, input) = fixture("neox_parallel");
    let (_, c) = m
        .run_with_cache(
            input,
            HookFilter::Points(vec![HookPoint::HeadResult(1), HookPoint::AttnOut(1)]),
        )
        .unwrap();
    let summed = c
        .get(HookPoint::HeadResult(1))
        .unwrap()
        .sum(2)
        .unwrap()
        .broadcast_add(&m.b_o(1).unwrap())
        .unwrap();
    assert!(max_diff(&summed, c.get(HookPoint::AttnOut(1)).unwrap()) < 1e-5);
}

#[test]
fn replacing_an_activation_changes_downstream_only() {
    let (model, input) = fixture("gpt2");
    let (clean, cache) = model
        .run_with_cache(input.clone(), HookFilter::All)
        .unwrap();
    // Zero the residual stream entering block 1: the cache downstream must reflect it.
    let mut both = (
        HookSet::new().add(HookPoint::ResidPre(1), |_, x| Ok(Some(x.zeros_like()?))),
        CacheHooks::new(HookFilter::All.resolve(model.config()).unwrap()),
    );
    let hooked = model.run(&input, &mut both, RunTo::Logits).unwrap();
    let after = &both.1.acts;
    assert!(max_diff(&hooked, &clean) > 1e-3);
    assert_eq!(
        max_diff(
            &after[&HookPoint::ResidPre(1)],
            &Tensor::zeros((2, 7, 16), DType::F32, &Device::Cpu).unwrap()
        ),
        0.0
    );
    assert_eq!(
        max_diff(
            &after[&HookPoint::ResidPost(0)],
            cache.get(HookPoint::ResidPost(0)).unwrap()
        ),
        0.0
    );
}

#[test]
fn stop_at_layer_returns_the_residual_entering_that_layer() {
    let (model, input) = fixture("llama_gqa");
    let (_, cache) = model
        .run_with_cache(input.clone(), HookFilter::All)
        .unwrap();
    for n in 0..=2 {
        let out = model.run(&input, &mut NoHooks, RunTo::Layer(n)).unwrap();
        let expected = if n < 2 {
            cache.get(HookPoint::ResidPre(n)).unwrap()
        } else {
            cache.get(HookPoint::ResidPost(1)).unwrap()
        };
        assert_eq!(max_diff(&out, expected), 0.0, "stop_at_layer {n}");
    }
    // Cache stopped early: nothing past the stop point is recorded.
    let (_, early) = model
        .run_with_cache_to(&input, HookFilter::All, RunTo::Layer(1))
        .unwrap();
    assert!(early.contains(HookPoint::ResidPost(0)) && !early.contains(HookPoint::ResidPre(1)));
}

#[test]
fn frozen_norm_scales_and_patterns_reproduce_the_run() {
    // Linearising every norm at its recorded scale and holding attention patterns at their
    // recorded values gives back the same logits (what path analyses rely on).
    let (model, input) = fixture("neox_sequential");
    let (clean, cache) = model
        .run_with_cache(input.clone(), HookFilter::All)
        .unwrap();
    let frozen = |p: HookPoint| {
        matches!(
            p,
            HookPoint::Ln1Scale(_)
                | HookPoint::Ln2Scale(_)
                | HookPoint::LnFinalScale
                | HookPoint::Pattern(_)
        )
    };
    let cache_ref = &cache;
    let mut hooks =
        HookSet::new().add_where(frozen, move |p, _| Ok(Some(cache_ref.get(p)?.clone())));
    let out = model.run_with_hooks(input.clone(), &mut hooks).unwrap();
    assert!(max_diff(&out, &clean) < 1e-5);
    // A replaced scale is the one the norm divides by.
    let mut both = (
        HookSet::new().add(HookPoint::LnFinalScale, |_, s| Ok(Some((s * 2.0)?))),
        CacheHooks::new(HookFilter::All.resolve(model.config()).unwrap()),
    );
    model.run(&input, &mut both, RunTo::Logits).unwrap();
    let acts = &both.1.acts;
    let x = &acts[&HookPoint::ResidPost(1)];
    let ln = model.ln_final().unwrap();
    let want = x
        .broadcast_sub(&x.mean_keepdim(candle_core::D::Minus1).unwrap())
        .unwrap()
        .broadcast_div(&acts[&HookPoint::LnFinalScale])
        .unwrap()
        .broadcast_mul(&ln.w)
        .unwrap()
        .broadcast_add(ln.b.as_ref().unwrap())
        .unwrap();
    assert!(max_diff(&acts[&HookPoint::LnFinalNormalized], &want) < 1e-5);
    let doubled = (cache.get(HookPoint::LnFinalScale).unwrap() * 2.0).unwrap();
    assert!(max_diff(&acts[&HookPoint::LnFinalScale], &doubled) < 1e-6);
}

#[test]
fn decompositions_sum_to_the_residual_stream() {
    for case in ["gpt2", "neox_parallel", "llama_gqa"] {
        let (model, input) = fixture(case);
        let (_, cache) = model.run_with_cache(input, HookFilter::All).unwrap();
        let n = model.config().n_layers;
        let full = cache.decompose_resid(None, true, false).unwrap();
        assert_eq!(full.labels[0], "embed");
        assert!(full.labels.contains(&"1_mlp_out".to_string()));
        assert!(
            max_diff(
                &full.sum().unwrap(),
                cache.get(HookPoint::ResidPost(n - 1)).unwrap()
            ) < 1e-5,
            "{case}"
        );
        let part = cache.decompose_resid(Some(1), true, false).unwrap();
        assert!(
            max_diff(
                &part.sum().unwrap(),
                cache.get(HookPoint::ResidPre(1)).unwrap()
            ) < 1e-5,
            "{case}"
        );
        // Heads of a layer plus b_O give the layer's attention output.
        let heads = cache.stack_head_results(None, false).unwrap();
        let h = model.config().n_heads;
        assert_eq!(heads.labels[h + 1], "L1H1");
        let layer1 = heads.tensor.narrow(0, h, h).unwrap().sum(0).unwrap();
        let attn = layer1.broadcast_add(&model.b_o(1).unwrap()).unwrap();
        assert!(
            max_diff(&attn, cache.get(HookPoint::AttnOut(1)).unwrap()) < 1e-5,
            "{case}"
        );
        // accumulated_resid: resid_pre of each layer, then the final stream.
        // (parallel blocks have no resid_mid.)
        let incl_mid = !model.config().parallel_residual;
        let acc = cache.accumulated_resid(None, incl_mid, false).unwrap();
        assert_eq!(acc.labels.last().unwrap(), "final_post");
        assert_eq!(acc.labels.len(), if incl_mid { 2 * n + 1 } else { n + 1 });
        assert_eq!(
            max_diff(
                &acc.tensor.get(1).unwrap(),
                cache
                    .get(if incl_mid {
                        HookPoint::ResidMid(0)
                    } else {
                        HookPoint::ResidPre(1)
                    })
                    .unwrap()
            ),
            0.0
        );
        // apply_ln_to_stack on the final stream, times w plus b, is ln_final's output.
        let final_stream = cache
            .get(HookPoint::ResidPost(n - 1))
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let normed = cache
            .apply_ln_to_stack(&final_stream, None)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let ln = model.ln_final().unwrap();
        let mut y = normed.broadcast_mul(&ln.w).unwrap();
        if let Some(b) = &ln.b {
            y = y.broadcast_add(b).unwrap();
        }
        let reference = match model.config().norm {
            metarep_model::NormKind::LayerNorm => {
                cache.get(HookPoint::LnFinalNormalized).unwrap().clone()
            }
            metarep_model::NormKind::RmsNorm => cache
                .get(HookPoint::LnFinalNormalized)
                .unwrap()
                .broadcast_mul(&ln.w)
                .unwrap(),
        };
        assert!(max_diff(&y, &reference) < 1e-5, "{case}");
    }
}

#[test]
fn direct_logit_attribution_sums_to_the_logits() {
    for case in ["gpt2", "neox_parallel", "llama_gqa", "qwen2"] {
        let (model, input) = fixture(case);
        let cfg = model.config().clone();
        let (logits, cache) = model
            .run_with_cache(input.clone(), dla_filter(&cfg, true))
            .unwrap();
        // Per head, every logit.
        let all = direct_logit_attribution(&cache, &LogitTarget::AllLogits, true).unwrap();
        let n_comp = 1
            + usize::from(cfg.learned_positions)
            + cfg.n_layers * (cfg.n_heads + usize::from(cfg.out_bias) + 1)
            + 1;
        assert_eq!(all.labels.len(), n_comp, "{case}: {:?}", all.labels);
        let d = max_diff(&all.total().unwrap(), &logits);
        assert!(d <= 1e-4, "{case}: DLA sum differs from the logits by {d}");
        // Per layer, on the next token.
        let (_, cache2) = model
            .run_with_cache(input.clone(), dla_filter(&cfg, false))
            .unwrap();
        let ids = input.tokens.to_dtype(DType::U32).unwrap();
        let next = Tensor::cat(
            &[ids.narrow(1, 1, 6).unwrap(), ids.narrow(1, 0, 1).unwrap()],
            1,
        )
        .unwrap();
        let per_layer =
            direct_logit_attribution(&cache2, &LogitTarget::Tokens(next.clone()), false).unwrap();
        let picked = logits
            .gather(&next.unsqueeze(2).unwrap(), 2)
            .unwrap()
            .squeeze(2)
            .unwrap();
        assert!(
            max_diff(&per_layer.total().unwrap(), &picked) <= 1e-4,
            "{case}"
        );
        // A logit difference direction.
        let mut dir = vec![0f32; cfg.d_vocab];
        dir[3] = 1.0;
        dir[7] = -1.0;
        let dir = Tensor::new(dir.as_slice(), &Device::Cpu).unwrap();
        let diff = direct_logit_attribution(&cache, &LogitTarget::Direction(dir), true).unwrap();
        let expected = (logits.narrow(2, 3, 1).unwrap() - logits.narrow(2, 7, 1).unwrap())
            .unwrap()
            .squeeze(2)
            .unwrap();
        assert!(
            max_diff(&diff.total().unwrap(), &expected) <= 1e-4,
            "{case}"
        );
        // Attribution of one head equals its projected output on that token.
        assert_eq!(diff.get("L1H0".parse().unwrap()).unwrap().dims(), &[2, 7]);
    }
}

#[test]
fn dla_refuses_bert_and_gemma_and_needs_its_hooks() {
    for case in ["bert", "gemma3"] {
        let (model, refs) = load_case(case);
        let (_, cache) = model
            .run_with_cache(case_input(&refs), HookFilter::All)
            .unwrap();
        let err = direct_logit_attribution(&cache, &LogitTarget::AllLogits, false).unwrap_err();
        assert!(
            err.to_string().contains("sums the sublayer outputs"),
            "{err}"
        );
    }
    let (model, input) = fixture("gpt2");
    let (_, cache) = model
        .run_with_cache(input, "blocks.*.hook_resid_post")
        .unwrap();
    let err = direct_logit_attribution(&cache, &LogitTarget::AllLogits, true).unwrap_err();
    assert!(err.to_string().contains("hook_embed"), "{err}");
}

/// Runs `ivs` and records the hooked activations after the interventions.
fn run_recorded(
    model: &HookedTransformer,
    input: &Input,
    ivs: Vec<Intervention>,
) -> (Tensor, metarep_model::ActivationCache) {
    let mut hooks = (
        Interventions::new(ivs),
        CacheHooks::new(HookFilter::All.resolve(model.config()).unwrap()),
    );
    let out = model.run(input, &mut hooks, RunTo::Logits).unwrap();
    (
        out,
        metarep_model::ActivationCache::new(model.clone(), hooks.1.acts),
    )
}

#[test]
fn head_and_neuron_ablations_touch_only_their_channels() {
    let (model, input) = fixture("gpt2");
    let (clean, cache) = model
        .run_with_cache(input.clone(), HookFilter::All)
        .unwrap();
    let z0 = cache.get(HookPoint::Z(0)).unwrap();
    // Zero ablation of heads 1 and 3 of layer 0.
    let (out, c) = run_recorded(&model, &input, vec![Intervention::zero_heads(0, &[1, 3])]);
    let z = c.get(HookPoint::Z(0)).unwrap();
    for h in 0..4 {
        let zh = z.narrow(2, h, 1).unwrap();
        let orig = z0.narrow(2, h, 1).unwrap();
        if h == 1 || h == 3 {
            assert_eq!(metarep_core::compare::max_abs(&zh).unwrap(), 0.0);
        } else {
            assert_eq!(max_diff(&zh, &orig), 0.0);
        }
    }
    assert!(max_diff(&out, &clean) > 1e-4);
    // The same through a hand-written hook.
    let mut manual = HookSet::new().add(HookPoint::Z(0), |_, z| {
        let mask = Tensor::new(&[1f32, 0., 1., 0.], &Device::Cpu)?.reshape((1, 1, 4, 1))?;
        Ok(Some(z.broadcast_mul(&mask)?))
    });
    assert!(
        max_diff(
            &model.run_with_hooks(input.clone(), &mut manual).unwrap(),
            &out
        ) < 1e-6
    );
    // Mean ablation puts the mean of the head over batch and positions.
    let mean = mean_activation(z0, true).unwrap();
    let (_, c) = run_recorded(
        &model,
        &input,
        vec![Intervention::mean_heads(0, &[2], mean.clone())],
    );
    let got = c.get(HookPoint::Z(0)).unwrap().narrow(2, 2, 1).unwrap();
    let want = mean
        .narrow(0, 2, 1)
        .unwrap()
        .broadcast_as(got.dims())
        .unwrap();
    assert!(max_diff(&got, &want) < 1e-6);
    // Resample ablation: batch rows swapped.
    let swapped = Tensor::cat(
        &[z0.narrow(0, 1, 1).unwrap(), z0.narrow(0, 0, 1).unwrap()],
        0,
    )
    .unwrap();
    let (_, c) = run_recorded(
        &model,
        &input,
        vec![Intervention::resample_heads(0, &[0], swapped.clone())],
    );
    let got = c.get(HookPoint::Z(0)).unwrap().narrow(2, 0, 1).unwrap();
    assert_eq!(max_diff(&got, &swapped.narrow(2, 0, 1).unwrap()), 0.0);
    // Neurons: zero, scale by 1 (identity) and by 0 (= zero ablation).
    let (zeroed, c) = run_recorded(&model, &input, vec![Intervention::zero_neurons(1, &[0, 5])]);
    let post = c.get(HookPoint::MlpPost(1)).unwrap();
    assert_eq!(
        metarep_core::compare::max_abs(&post.narrow(2, 5, 1).unwrap()).unwrap(),
        0.0
    );
    let orig = cache.get(HookPoint::MlpPost(1)).unwrap();
    assert_eq!(
        max_diff(
            &post.narrow(2, 1, 4).unwrap(),
            &orig.narrow(2, 1, 4).unwrap()
        ),
        0.0
    );
    let (same, _) = run_recorded(
        &model,
        &input,
        vec![Intervention::scale_neurons(1, &[0, 5], 1.0)],
    );
    assert_eq!(max_diff(&same, &clean), 0.0);
    let (scaled0, _) = run_recorded(
        &model,
        &input,
        vec![Intervention::scale_neurons(1, &[0, 5], 0.0)],
    );
    assert!(max_diff(&scaled0, &zeroed) < 1e-6);
    let (amp, c) = run_recorded(
        &model,
        &input,
        vec![Intervention::scale_heads(1, &[2], 3.0)],
    );
    assert!(max_diff(&amp, &clean) > 1e-4);
    let z1 = cache.get(HookPoint::Z(1)).unwrap().narrow(2, 2, 1).unwrap();
    assert!(
        max_diff(
            &c.get(HookPoint::Z(1)).unwrap().narrow(2, 2, 1).unwrap(),
            &(z1 * 3.0).unwrap()
        ) < 1e-6
    );
    // Mean-ablating neurons with the per-position mean.
    let pmean = mean_activation(orig, false).unwrap();
    assert_eq!(pmean.dims(), &[7, 24]);
    let (_, c) = run_recorded(
        &model,
        &input,
        vec![Intervention::mean_neurons(1, &[3], pmean.clone())],
    );
    let got = c
        .get(HookPoint::MlpPost(1))
        .unwrap()
        .narrow(2, 3, 1)
        .unwrap();
    let want = pmean
        .narrow(1, 3, 1)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .broadcast_as(got.dims())
        .unwrap();
    assert!(max_diff(&got, &want) < 1e-6);
    let _ = run_recorded(
        &model,
        &input,
        vec![Intervention::resample_neurons(1, &[3], orig.clone())],
    );
}

#[test]
fn steering_and_patching_act_at_chosen_positions() {
    let (model, input) = fixture("llama_gqa");
    let (_, clean) = model
        .run_with_cache(input.clone(), HookFilter::All)
        .unwrap();
    let v = Tensor::arange(0f32, 16., &Device::Cpu).unwrap();
    let steer = Intervention::steer(HookPoint::ResidPost(0), v.clone(), 0.5).at_positions(&[2, 4]);
    let (_, c) = run_recorded(&model, &input, vec![steer]);
    let delta = (c.get(HookPoint::ResidPost(0)).unwrap()
        - clean.get(HookPoint::ResidPost(0)).unwrap())
    .unwrap();
    let expected_row = (v * 0.5).unwrap();
    for p in 0..7 {
        let row = delta.narrow(1, p, 1).unwrap();
        let want = if p == 2 || p == 4 {
            expected_row.broadcast_as((2, 1, 16)).unwrap()
        } else {
            row.zeros_like().unwrap()
        };
        assert!(max_diff(&row, &want) < 1e-5, "position {p}");
    }
    // Patch a corrupted run's z at position 3, head 1 into the clean run.
    let corrupted_ids = input.tokens.ones_like().unwrap();
    let (_, corrupted) = model
        .run_with_cache(Input::new(corrupted_ids), HookFilter::All)
        .unwrap();
    let source = corrupted.get(HookPoint::Z(1)).unwrap().clone();
    let patch = Intervention::patch(HookPoint::Z(1), source.clone())
        .at_positions(&[3])
        .at_channels(&[1]);
    let (_, c) = run_recorded(&model, &input, vec![patch]);
    let z = c.get(HookPoint::Z(1)).unwrap();
    let zc = clean.get(HookPoint::Z(1)).unwrap();
    assert_eq!(
        max_diff(
            &z.narrow(1, 3, 1).unwrap().narrow(2, 1, 1).unwrap(),
            &source.narrow(1, 3, 1).unwrap().narrow(2, 1, 1).unwrap()
        ),
        0.0
    );
    assert_eq!(
        max_diff(&z.narrow(1, 4, 3).unwrap(), &zc.narrow(1, 4, 3).unwrap()),
        0.0
    );
    assert_eq!(
        max_diff(&z.narrow(2, 0, 1).unwrap(), &zc.narrow(2, 0, 1).unwrap()),
        0.0
    );
    // Patching attention patterns of one head at one query position.
    let pat = corrupted.get(HookPoint::Pattern(1)).unwrap().clone();
    let ivs = vec![Intervention::patch(HookPoint::Pattern(1), pat.clone())
        .at_positions(&[5])
        .at_channels(&[2])];
    let (_, c) = run_recorded(&model, &input, ivs);
    let got = c
        .get(HookPoint::Pattern(1))
        .unwrap()
        .narrow(1, 2, 1)
        .unwrap()
        .narrow(2, 5, 1)
        .unwrap();
    assert_eq!(
        max_diff(&got, &pat.narrow(1, 2, 1).unwrap().narrow(2, 5, 1).unwrap()),
        0.0
    );
    // Bad indices name themselves.
    let mut bad = Interventions::new(vec![Intervention::zero_heads(0, &[4])]);
    let err = model
        .run_with_hooks(input.clone(), &mut bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("head 4") && err.contains("blocks.0.attn.hook_z"),
        "{err}"
    );
    let bad = Interventions::new(vec![Intervention::zero_neurons(0, &[1])]);
    assert!(bad.validate(model.config()).is_ok());
    let bad = Interventions::new(vec![Intervention::zero_heads(5, &[0])]);
    assert!(bad
        .validate(model.config())
        .unwrap_err()
        .to_string()
        .contains("layer 5"));
    let wrong = Intervention::steer(
        HookPoint::ResidPost(0),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        1.0,
    );
    let err = model
        .run_with_hooks(input, &mut Interventions::new(vec![wrong]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("broadcastable"), "{err}");
}

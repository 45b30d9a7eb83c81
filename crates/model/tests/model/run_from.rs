//! `run_from` (TransformerLens's `start_at_layer`): from a run's residual stream at block `l`, the
//! rest of the pass gives that run's logits and hidden states, with and without interventions at
//! or after `l`, for every decoder family; bad ranges and shapes are errors.

use candle_core::{Device, Tensor};
use metarep_core::compare::max_abs_diff;
use metarep_model::interventions::{Intervention, Interventions};
use metarep_model::{HookPoint, NoHooks, RunTo};

use crate::common;

#[test]
fn the_rest_of_a_pass_from_its_residual_stream_is_the_pass() {
    for (name, model) in common::decoder_families() {
        let n = model.config().n_layers;
        let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 7 % 40) as u32).collect();
        let tokens = Tensor::from_vec(ids, (2, 9), &Device::Cpu).unwrap();
        let points: Vec<HookPoint> = (0..n).map(HookPoint::ResidPre).collect();
        let (logits, cache) = model.run_with_cache(tokens.clone(), points).unwrap();
        let zero = || Interventions::new(vec![Intervention::zero_heads(n - 1, &[1])]);
        let ablated = model.run_with_hooks(tokens.clone(), &mut zero()).unwrap();
        for l in 0..n {
            let resid = cache.get(HookPoint::ResidPre(l)).unwrap();
            let from = model
                .run_from(resid, l, &mut NoHooks, RunTo::Logits)
                .unwrap();
            assert!(
                max_abs_diff(&from, &logits).unwrap() < 1e-5,
                "{name}, from {l}"
            );
            let hooked = model
                .run_from(resid, l, &mut zero(), RunTo::Logits)
                .unwrap();
            assert!(
                max_abs_diff(&hooked, &ablated).unwrap() < 1e-5,
                "{name}, from {l}, ablated"
            );
            let next = model
                .run_from(resid, l, &mut NoHooks, RunTo::Layer(l + 1))
                .unwrap();
            if l + 1 < n {
                let want = cache.get(HookPoint::ResidPre(l + 1)).unwrap();
                assert!(
                    max_abs_diff(&next, want).unwrap() < 1e-5,
                    "{name}, block {l}"
                );
            }
        }
        let resid = cache.get(HookPoint::ResidPre(1)).unwrap();
        for (start, to) in [
            (2, RunTo::Layer(1)),
            (0, RunTo::Layer(n + 1)),
            (n + 1, RunTo::Logits),
        ] {
            assert!(
                model.run_from(resid, start, &mut NoHooks, to).is_err(),
                "{name}: {start}, {to:?}"
            );
        }
        let narrow = resid.narrow(2, 0, 4).unwrap();
        let err = model
            .run_from(&narrow, 1, &mut NoHooks, RunTo::Logits)
            .unwrap_err();
        assert!(
            err.to_string().contains("run_from residual stream"),
            "{name}: {err}"
        );
    }
}

#[test]
fn metrics_from_a_residual_stream_are_the_metrics_of_the_pass() {
    use metarep_model::predictions::{metrics, metrics_from, EvalSet};
    for (name, model) in common::decoder_families() {
        let n = model.config().n_layers;
        let ids: Vec<u32> = (0..3 * 8).map(|i| (i * 5 % 37) as u32).collect();
        let eval = EvalSet {
            tokens: Tensor::from_vec(ids, (3, 8), &Device::Cpu).unwrap(),
            mask: None,
            alternative: None,
        };
        let input = eval.tokens.narrow(1, 0, 7).unwrap();
        let points: Vec<HookPoint> = (0..n).map(HookPoint::ResidPre).collect();
        let (_, cache) = model.run_with_cache(input, points).unwrap();
        let zero = || Interventions::new(vec![Intervention::zero_neurons(n - 1, &[0, 2])]);
        let clean = metrics(&model, &eval, &mut NoHooks).unwrap();
        let ablated = metrics(&model, &eval, &mut zero()).unwrap();
        assert!(
            ablated.loss != clean.loss,
            "{name}: the ablation changed nothing"
        );
        for l in 0..n {
            let resid = cache.get(HookPoint::ResidPre(l)).unwrap();
            let from = metrics_from(&model, &eval, resid, l, &mut NoHooks).unwrap();
            let hooked = metrics_from(&model, &eval, resid, l, &mut zero()).unwrap();
            for (got, want) in [(from, clean), (hooked, ablated)] {
                assert!(
                    (got.loss - want.loss).abs() < 1e-5
                        && (got.accuracy - want.accuracy).abs() < 1e-9
                        && (got.entropy - want.entropy).abs() < 1e-5,
                    "{name}, from {l}: {got:?} vs {want:?}"
                );
            }
        }
        let resid = cache.get(HookPoint::ResidPre(0)).unwrap();
        let short = resid.narrow(1, 0, 6).unwrap();
        let err = metrics_from(&model, &eval, &short, 0, &mut NoHooks).unwrap_err();
        assert!(
            err.to_string().contains("3 × 6 positions") && err.to_string().contains("3 × 7"),
            "{name}: {err}"
        );
    }
}

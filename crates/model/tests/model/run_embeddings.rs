//! `run_embeddings`: the forward pass from input embeddings at explicit positions. Token
//! embeddings at `0..pos` give the token run; positions with gaps give the full run with the
//! gaps masked out; rotary models depend on position differences only; gradients reach the
//! inputs causally; bad positions and shapes are errors.

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use metarep_core::compare::max_abs_diff;
use metarep_model::{Input, NoHooks, RunTo};

use crate::common;

fn tokens(b: usize, p: usize) -> Tensor {
    let ids: Vec<u32> = (0..b * p).map(|i| (i * 7 % 40) as u32).collect();
    Tensor::from_vec(ids, (b, p), &Device::Cpu).unwrap()
}

#[test]
fn token_embeddings_at_their_positions_give_the_token_run() {
    for (name, model) in common::decoder_families() {
        let t = tokens(2, 9);
        let want = model.forward(t.clone()).unwrap();
        let e = model.token_embeddings(&t).unwrap();
        let positions: Vec<usize> = (0..9).collect();
        let got = model
            .run_embeddings(&e, &positions, &mut NoHooks, RunTo::Logits)
            .unwrap();
        assert!(max_abs_diff(&got, &want).unwrap() < 1e-5, "{name}");
    }
}

#[test]
fn positions_with_gaps_equal_the_full_run_with_the_gaps_masked() {
    let keep = [0usize, 1, 2, 5, 6, 9, 10];
    for (name, model) in common::decoder_families() {
        let t = tokens(2, 11);
        let mask: Vec<u32> = (0..2 * 11)
            .map(|i| u32::from(keep.contains(&(i % 11))))
            .collect();
        let mask = Tensor::from_vec(mask, (2, 11), &Device::Cpu).unwrap();
        let full = model
            .run_with_hooks(
                Input::new(t.clone()).with_attention_mask(mask),
                &mut NoHooks,
            )
            .unwrap();
        let idx = Tensor::new(keep.map(|k| k as u32).as_slice(), &Device::Cpu).unwrap();
        let want = full.index_select(&idx, 1).unwrap();
        let e = model
            .token_embeddings(&t.index_select(&idx, 1).unwrap())
            .unwrap();
        let got = model
            .run_embeddings(&e, &keep, &mut NoHooks, RunTo::Logits)
            .unwrap();
        assert!(max_abs_diff(&got, &want).unwrap() < 1e-5, "{name}");
    }
}

#[test]
fn rotary_models_see_position_differences_only() {
    for (name, model) in common::decoder_families() {
        let t = tokens(1, 8);
        let e = model.token_embeddings(&t).unwrap();
        let run = |start: usize| {
            let positions: Vec<usize> = (start..start + 8).collect();
            model
                .run_embeddings(&e, &positions, &mut NoHooks, RunTo::Logits)
                .unwrap()
        };
        let shift = max_abs_diff(&run(0), &run(20)).unwrap();
        if model.config().learned_positions {
            assert!(shift > 1e-3, "{name}: learned positions ignored ({shift})");
        } else {
            assert!(
                shift < 1e-4,
                "{name}: rotary shift changed the logits by {shift}"
            );
        }
    }
}

#[test]
fn gradients_reach_the_inputs_at_or_before_the_loss_position() {
    for (name, model) in common::decoder_families() {
        let e = model.token_embeddings(&tokens(1, 6)).unwrap();
        let v = Var::from_tensor(&e).unwrap();
        let positions = [0usize, 3, 4, 8, 9, 12];
        let logits = model
            .run_embeddings(v.as_tensor(), &positions, &mut NoHooks, RunTo::Logits)
            .unwrap();
        let loss = logits.i((0, 2)).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(&v).expect("no gradient for the input embeddings");
        let per_pos: Vec<f32> = g
            .sqr()
            .unwrap()
            .sum((0, 2))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (i, n) in per_pos.iter().enumerate() {
            if i <= 2 {
                assert!(*n > 0.0, "{name}: no gradient at input {i}");
            } else {
                assert_eq!(*n, 0.0, "{name}: gradient at later input {i}");
            }
        }
    }
}

#[test]
fn bad_positions_and_shapes_are_errors() {
    for (name, model) in common::decoder_families() {
        let e = model.token_embeddings(&tokens(1, 4)).unwrap();
        let run = |e: &Tensor, positions: &[usize]| {
            model
                .run_embeddings(e, positions, &mut NoHooks, RunTo::Logits)
                .map(|_| ())
                .map_err(|err| err.to_string())
        };
        let err = run(&e, &[0, 2, 2, 3]).unwrap_err();
        assert!(err.contains("strictly increasing"), "{name}: {err}");
        let err = run(&e, &[0, 1, 2]).unwrap_err();
        assert!(err.contains("positions"), "{name}: {err}");
        let narrow = e.narrow(2, 0, 8).unwrap();
        assert!(run(&narrow, &[0, 1, 2, 3]).is_err(), "{name}: d_model");
        let empty = Tensor::zeros((1, 0, 32), DType::F32, &Device::Cpu).unwrap();
        assert!(run(&empty, &[]).is_err(), "{name}: empty");
        if model.config().learned_positions {
            let err = run(&e, &[0, 1, 2, 64]).unwrap_err();
            assert!(err.contains("64"), "{name}: past n_ctx: {err}");
        }
        let bad_ids = Tensor::new(&[[0u32, 40]], &Device::Cpu).unwrap();
        assert!(model.token_embeddings(&bad_ids).is_err(), "{name}: id 40");
    }
}

#[test]
fn inputs_after_a_cached_prefix_equal_the_run_over_both() {
    use metarep_model::KvCache;
    for (name, model) in common::decoder_families() {
        let t = tokens(2, 10);
        let all = model.token_embeddings(&t).unwrap();
        let positions = [0usize, 1, 2, 3, 5, 6, 9];
        let idx = Tensor::new(&[0u32, 1, 2, 3, 5, 6, 9], &Device::Cpu).unwrap();
        let want = model
            .run_embeddings(
                &all.index_select(&idx, 1).unwrap(),
                &positions,
                &mut NoHooks,
                RunTo::Logits,
            )
            .unwrap();
        let mut cache = KvCache::new(&model);
        model
            .run_cached_to(
                &Input::new(t.narrow(1, 0, 4).unwrap()),
                &mut cache,
                &mut NoHooks,
                RunTo::Hidden,
            )
            .unwrap();
        assert_eq!(cache.len(), 4);
        let rest = all.index_select(&idx.narrow(0, 4, 3).unwrap(), 1).unwrap();
        for _ in 0..2 {
            let got = model
                .run_embeddings_after(&rest, &[5, 6, 9], &cache, &mut NoHooks, RunTo::Logits)
                .unwrap();
            let tail = want.narrow(1, 4, 3).unwrap();
            assert!(max_abs_diff(&got, &tail).unwrap() < 1e-5, "{name}");
            assert_eq!(cache.len(), 4, "{name}: the prefix grew");
        }
        let err = model
            .run_embeddings_after(&rest, &[3, 6, 9], &cache, &mut NoHooks, RunTo::Logits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cached prefix"), "{name}: {err}");
        let one = rest.narrow(0, 0, 1).unwrap();
        assert!(model
            .run_embeddings_after(&one, &[5, 6, 9], &cache, &mut NoHooks, RunTo::Logits)
            .is_err());
        let mut c = KvCache::new(&model);
        let layer = model.run_cached_to(&Input::new(t), &mut c, &mut NoHooks, RunTo::Layer(1));
        assert!(layer.is_err(), "{name}: a cached pass to layer 1");
    }
}

#[test]
fn embeddings_run_into_a_cache_and_any_prefix_of_it_continues_exactly() {
    use metarep_model::KvCache;
    for (name, model) in common::decoder_families() {
        let t = tokens(2, 10);
        let idx = Tensor::new(&[0u32, 1, 2, 3, 5, 6, 9], &Device::Cpu).unwrap();
        let sel = model
            .token_embeddings(&t)
            .unwrap()
            .index_select(&idx, 1)
            .unwrap();
        let positions = [0usize, 1, 2, 3, 5, 6, 9];
        let want = model
            .run_embeddings(&sel, &positions, &mut NoHooks, RunTo::Logits)
            .unwrap();
        let mut cache = KvCache::new(&model);
        let head = model
            .run_embeddings_cached(
                &sel.narrow(1, 0, 5).unwrap(),
                &positions[..5],
                &mut cache,
                &mut NoHooks,
                RunTo::Logits,
            )
            .unwrap();
        assert_eq!(cache.len(), 5, "{name}");
        assert!(max_abs_diff(&head, &want.narrow(1, 0, 5).unwrap()).unwrap() < 1e-5);
        for keep in [0, 3, 5] {
            let prefix = cache.truncated(keep).unwrap();
            assert_eq!(prefix.len(), keep);
            let rest = sel.narrow(1, keep, 7 - keep).unwrap();
            let got = model
                .run_embeddings_after(
                    &rest,
                    &positions[keep..],
                    &prefix,
                    &mut NoHooks,
                    RunTo::Logits,
                )
                .unwrap();
            let tail = want.narrow(1, keep, 7 - keep).unwrap();
            assert!(
                max_abs_diff(&got, &tail).unwrap() < 1e-5,
                "{name}: after {keep}"
            );
        }
        assert_eq!(cache.len(), 5, "{name}: truncating changed the cache");
        let err = cache.truncated(6).unwrap_err().to_string();
        assert!(err.contains("cannot keep 6"), "{name}: {err}");
        let layer = model.run_embeddings_cached(
            &sel.narrow(1, 5, 2).unwrap(),
            &positions[5..],
            &mut cache,
            &mut NoHooks,
            RunTo::Layer(1),
        );
        assert!(layer.is_err(), "{name}: a cached pass to layer 1");
        assert_eq!(cache.len(), 5, "{name}: a refused pass grew the cache");
    }
}

//! Generation with a key/value cache equals recomputing the whole sequence at every step, for
//! learned positions (GPT-2) and rotary positions with grouped-query attention and a sliding
//! window (Llama family), and Gemma 3's interleaved sliding and global layers; hooks see each
//! new position; sampling is seeded; stop tokens stop; rotary models run past `n_ctx` unless
//! strict.

use candle_core::Device;
use metarep_core::compare::max_abs_diff;
use metarep_model::generate::{argmax, sample, GenerateOptions, Sampling};
use metarep_model::hooks::{HookPoint, HookSet};
use metarep_model::{Input, KvCache, NoHooks};

use crate::common;

#[test]
fn cached_steps_equal_the_full_forward_pass() {
    for (name, model) in common::decoder_families() {
        let ids: Vec<u32> = vec![3, 17, 5, 9, 22, 1, 30, 8, 14, 2];
        let full = model
            .forward(Input::from_ids(std::slice::from_ref(&ids), &Device::Cpu).unwrap())
            .unwrap();
        let mut cache = KvCache::new(&model);
        // The prompt in one piece, then one token at a time, then two at once.
        let mut parts = vec![model
            .run_cached(
                &Input::from_ids(&[ids[..4].to_vec()], &Device::Cpu).unwrap(),
                &mut cache,
                &mut NoHooks,
            )
            .unwrap()];
        for &t in &ids[4..8] {
            let input = Input::from_ids(&[vec![t]], &Device::Cpu).unwrap();
            parts.push(model.run_cached(&input, &mut cache, &mut NoHooks).unwrap());
        }
        let input = Input::from_ids(&[ids[8..].to_vec()], &Device::Cpu).unwrap();
        parts.push(model.run_cached(&input, &mut cache, &mut NoHooks).unwrap());
        assert_eq!(cache.len(), ids.len());
        let stepped = candle_core::Tensor::cat(&parts, 1).unwrap();
        let d = max_abs_diff(&full, &stepped).unwrap();
        assert!(d < 1e-5, "{name}: cached logits differ by {d}");
    }
}

#[test]
fn greedy_generation_is_the_argmax_of_the_recomputed_sequence_and_hooks_see_each_position() {
    for (name, model) in common::decoder_families() {
        let prompt = vec![4u32, 11, 7];
        let mut seen = Vec::new();
        let mut hooks = HookSet::new().add(HookPoint::ResidPost(1), |_, x| {
            seen.push(x.dim(1).unwrap());
            Ok(None)
        });
        let opts = GenerateOptions {
            max_new_tokens: 6,
            ..GenerateOptions::default()
        };
        let mut streamed = Vec::new();
        let new = model
            .generate(&prompt, &opts, &mut hooks, |t| {
                streamed.push(t);
                Ok(())
            })
            .unwrap();
        drop(hooks);
        assert_eq!(new, streamed);
        assert_eq!(seen, vec![3, 1, 1, 1, 1, 1], "{name}");
        let mut seq = prompt.clone();
        for &t in &new {
            let logits = model
                .forward(Input::from_ids(&[seq.clone()], &Device::Cpu).unwrap())
                .unwrap();
            let row = logits
                .get(0)
                .unwrap()
                .get(seq.len() - 1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(argmax(&row) as u32, t, "{name}");
            seq.push(t);
        }
        // A stop token ends generation (and is kept).
        let stop = GenerateOptions {
            stop_tokens: vec![new[2]],
            ..opts.clone()
        };
        let cut = model
            .generate(&prompt, &stop, &mut NoHooks, |_| Ok(()))
            .unwrap();
        assert_eq!(cut.last(), Some(&new[2]));
        assert!(cut.len() <= 3);
    }
}

#[test]
fn sampling_is_seeded_and_restricted_by_top_k_and_top_p() {
    let (_, model) = common::decoder_families().remove(1);
    let opts = |seed| GenerateOptions {
        max_new_tokens: 8,
        sampling: Sampling::Sample {
            temperature: 1.5,
            top_k: Some(5),
            top_p: Some(0.9),
            seed,
        },
        stop_tokens: vec![],
    };
    let a = model
        .generate(&[1, 2], &opts(7), &mut NoHooks, |_| Ok(()))
        .unwrap();
    let b = model
        .generate(&[1, 2], &opts(7), &mut NoHooks, |_| Ok(()))
        .unwrap();
    let c = model
        .generate(&[1, 2], &opts(8), &mut NoHooks, |_| Ok(()))
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // top_k 1 is greedy; top_p keeps the smallest set reaching p.
    let logits = [0.0f32, 3.0, 1.0, 2.9];
    for u in [0.0, 0.5, 0.999] {
        assert_eq!(sample(&logits, 1.0, Some(1), None, u), 1);
    }
    let picks: Vec<usize> = (0..100)
        .map(|i| sample(&logits, 1.0, None, Some(0.5), i as f64 / 100.0))
        .collect();
    assert!(picks.iter().all(|&p| p == 1 || p == 3), "{picks:?}");
    assert!(picks.contains(&1) && picks.contains(&3));
    for bad in [
        Sampling::Sample {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        },
        Sampling::Sample {
            temperature: 1.0,
            top_k: Some(0),
            top_p: None,
            seed: 0,
        },
        Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: Some(1.5),
            seed: 0,
        },
    ] {
        let o = GenerateOptions {
            sampling: bad,
            ..GenerateOptions::default()
        };
        assert!(model.generate(&[1], &o, &mut NoHooks, |_| Ok(())).is_err());
    }
    assert!(model
        .generate(&[], &GenerateOptions::default(), &mut NoHooks, |_| Ok(()))
        .is_err());
    // Learned positions: generation past n_ctx is an error naming the limit.
    let (_, gpt2) = common::decoder_families().remove(0);
    let long = GenerateOptions {
        max_new_tokens: 80,
        ..GenerateOptions::default()
    };
    let e = gpt2
        .generate(&[1, 2, 3], &long, &mut NoHooks, |_| Ok(()))
        .unwrap_err();
    assert!(e.to_string().contains("n_ctx = 64"), "{e}");
}

/// Rotary models run past `n_ctx` (with a warning on stderr); a strict model refuses, naming
/// the length and the limit, in the plain forward pass and in cached generation alike.
#[test]
fn rotary_models_run_past_n_ctx_unless_strict() {
    let (_, llama) = common::decoder_families().remove(1);
    assert_eq!(llama.config().n_ctx, 64);
    assert!(llama.config().check_positions(64).is_ok());
    let e = llama.config().check_positions(65).unwrap_err().to_string();
    assert!(
        e.contains("65 positions") && e.contains("n_ctx = 64"),
        "{e}"
    );
    let ids: Vec<u32> = (0..70).map(|i| i % 40).collect();
    let input = Input::from_ids(&[ids], &Device::Cpu).unwrap();
    assert_eq!(llama.forward(input.clone()).unwrap().dims(), &[1, 70, 40]);
    let strict = llama.clone().with_strict_positions(true);
    let e = strict.forward(input).unwrap_err().to_string();
    assert!(
        e.contains("70 positions") && e.contains("n_ctx = 64"),
        "{e}"
    );
    let long = GenerateOptions {
        max_new_tokens: 80,
        ..GenerateOptions::default()
    };
    let new = llama.generate(&[1, 2, 3], &long, &mut NoHooks, |_| Ok(()));
    assert_eq!(new.unwrap().len(), 80);
    let e = strict
        .generate(&[1, 2, 3], &long, &mut NoHooks, |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("65 positions") && e.contains("n_ctx = 64"),
        "{e}"
    );
}

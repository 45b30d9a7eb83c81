//! A hook on `hook_attn_scores`: reading the scores (a cache) leaves the pass bit for bit the
//! plain forward's, for every decoder family, with and without padding; the scores it sees are
//! the scaled, masked scores (hidden keys `-inf`); scores it replaces are normalised as given
//! (TransformerLens's semantics: the replacement's own mask, if any, is what counts).

use candle_core::{Device, Tensor};
use metarep_model::{HookPoint, Hooks, Input, NoHooks};

use crate::common;

/// Replaces layer 0's attention scores by zeros and keeps every pattern.
struct FlattenScores {
    patterns: Vec<Tensor>,
}

impl Hooks for FlattenScores {
    fn wants(&self, point: HookPoint) -> bool {
        matches!(point, HookPoint::AttnScores(0) | HookPoint::Pattern(_))
    }

    fn apply(&mut self, point: HookPoint, act: Tensor) -> metarep_model::Result<Tensor> {
        match point {
            HookPoint::AttnScores(_) => Ok(act.zeros_like()?),
            _ => {
                self.patterns.push(act.clone());
                Ok(act)
            }
        }
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Panics at the first entry where `a` and `b` differ in any bit.
fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (values(a), values(b));
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{what}: entry {i} is {} against {}", a[i], b[i]);
    }
}

#[test]
fn reading_the_scores_leaves_the_pass_unchanged_and_replacing_them_sets_the_pattern() {
    let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 7 % 40) as u32).collect();
    let tokens = Tensor::from_vec(ids, (2, 9), &Device::Cpu).unwrap();
    let mut pad = vec![1f32; 18];
    pad[9..12].fill(0.0); // the second row is left-padded by three
    let pad = Tensor::from_vec(pad, (2, 9), &Device::Cpu).unwrap();
    for (name, model) in common::decoder_families() {
        let n = model.config().n_layers;
        for padded in [false, true] {
            let input = match padded {
                false => Input::new(tokens.clone()),
                true => Input::new(tokens.clone()).with_attention_mask(pad.clone()),
            };
            let plain = model.run_with_hooks(input.clone(), &mut NoHooks).unwrap();
            let patterns: Vec<HookPoint> = (0..n).map(HookPoint::Pattern).collect();
            let (_, alone) = model.run_with_cache(input.clone(), patterns).unwrap();
            let scores: Vec<HookPoint> = (0..n)
                .flat_map(|l| [HookPoint::AttnScores(l), HookPoint::Pattern(l)])
                .collect();
            let (logits, cache) = model.run_with_cache(input.clone(), scores).unwrap();
            let case = format!("{name}, padded {padded}");
            assert_same(&logits, &plain, &format!("{case}: logits"));
            for l in 0..n {
                let p = cache.get(HookPoint::Pattern(l)).unwrap();
                let want = alone.get(HookPoint::Pattern(l)).unwrap();
                assert_same(p, want, &format!("{case}: pattern {l}"));
                // Hidden keys are -inf in the scores and 0 in the pattern; visible ones finite.
                let s = values(cache.get(HookPoint::AttnScores(l)).unwrap());
                for (i, (s, p)) in s.iter().zip(values(p)).enumerate() {
                    let hidden = *s == f32::NEG_INFINITY;
                    assert!(
                        hidden || s.is_finite(),
                        "{case}: score {i} of layer {l}: {s}"
                    );
                    assert!(
                        !hidden || p == 0.0,
                        "{case}: hidden key {i} of layer {l}: {p}"
                    );
                }
            }
            // Zeros for the scores make every key of layer 0 equally weighted, the hidden
            // ones included; later layers keep their masks.
            let mut flat = FlattenScores {
                patterns: Vec::new(),
            };
            model.run_with_hooks(input, &mut flat).unwrap();
            let keys = 9;
            for p in values(&flat.patterns[0]) {
                assert!((p - 1.0 / keys as f32).abs() < 1e-6, "{case}: {p}");
            }
            let later = values(&flat.patterns[1]);
            assert!(later.contains(&0.0), "{case}: layer 1 lost its mask");
        }
    }
}

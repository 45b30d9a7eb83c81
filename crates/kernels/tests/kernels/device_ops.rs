//! The GPU forward ops' candle-op forms (what every non-CUDA tensor gets, and what the CUDA
//! kernels are compared with in tests/gpu.rs) against a softmax written out by hand.

use candle_core::{DType, Device, Tensor};
use metarep_kernels::device_ops::{
    add_bias_rows, causal_bias, masked_scores, masked_softmax, swap_axes12,
};

/// Softmax of `row` over the entries where `visible` holds; zeros when none is.
fn reference(row: &[f32], visible: impl Fn(usize) -> bool) -> Vec<f32> {
    let max = (0..row.len())
        .filter(|&c| visible(c))
        .map(|c| row[c])
        .fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = (0..row.len())
        .map(|c| {
            if visible(c) {
                (row[c] - max).exp()
            } else {
                0.0
            }
        })
        .collect();
    let sum: f32 = e.iter().sum();
    e.iter()
        .map(|v| if sum > 0.0 { v / sum } else { 0.0 })
        .collect()
}

#[test]
fn masked_softmax_hides_padding_and_future_keys() {
    let (b, h, q, keys) = (2, 2, 3, 5);
    let scores = Tensor::randn(0f32, 2.0, (b, h, q, keys), &Device::Cpu).unwrap();
    let mut pad = vec![0f32; b * keys];
    pad[..3].fill(f32::NEG_INFINITY); // batch 0 hides keys 0..3
    let pad = Tensor::from_vec(pad, (b, 1, 1, keys), &Device::Cpu).unwrap();
    let shift = keys - q; // two cached keys before the queries
    let out = masked_softmax(&scores, Some(&pad), Some(shift), 1.0).unwrap();
    let (s, o) = (
        scores.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    for bi in 0..b {
        for hi in 0..h {
            for qi in 0..q {
                let r = ((bi * h + hi) * q + qi) * keys;
                let want = reference(&s[r..r + keys], |c| c <= qi + shift && (bi > 0 || c >= 3));
                for (c, (x, y)) in o[r..r + keys].iter().zip(&want).enumerate() {
                    assert!((x - y).abs() < 1e-6, "[{bi},{hi},{qi},{c}]: {x} vs {y}");
                }
            }
        }
    }
    // Batch 0, query 0 sees keys ≤ 2, all hidden: a row of zeros, not NaN.
    assert!(o[..keys].iter().all(|&p| p == 0.0));
}

#[test]
fn masked_softmax_and_scores_reject_a_bias_of_the_wrong_shape_or_dtype() {
    let scores = Tensor::zeros((1, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    for bias in [
        Tensor::zeros((1, 1, 3, 5), DType::F32, &Device::Cpu).unwrap(),
        Tensor::zeros((2, 1, 3, 4), DType::F32, &Device::Cpu).unwrap(),
        Tensor::zeros((1, 1, 3, 4), DType::F16, &Device::Cpu).unwrap(),
    ] {
        let err = masked_softmax(&scores, Some(&bias), None, 1.0).unwrap_err();
        assert!(err.to_string().contains("bias must be f32"), "{err}");
        let err = masked_scores(&scores, Some(&bias), None, 1.0).unwrap_err();
        assert!(err.to_string().contains("masked_scores"), "{err}");
        assert!(err.to_string().contains("bias must be f32"), "{err}");
    }
    let flat = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(masked_softmax(&flat, None, Some(0), 1.0).is_err());
    assert!(masked_scores(&flat, None, Some(0), 1.0).is_err());
}

#[test]
fn causal_bias_hides_keys_past_the_query() {
    let m = causal_bias(2, 4, 1, DType::F32, &Device::Cpu).unwrap();
    let inf = f32::NEG_INFINITY;
    assert_eq!(
        m.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [0.0, 0.0, inf, inf, 0.0, 0.0, 0.0, inf]
    );
}

#[test]
fn add_bias_rows_adds_to_every_row_and_checks_the_bias() {
    let y = Tensor::randn(0f32, 1.0, (4, 3), &Device::Cpu).unwrap();
    let bias = Tensor::new(&[1f32, -2.0, 0.5], &Device::Cpu).unwrap();
    let got = add_bias_rows(y.clone(), &bias).unwrap();
    let want = y.broadcast_add(&bias).unwrap();
    assert_eq!(
        got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let short = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let err = add_bias_rows(y, &short).unwrap_err();
    assert!(err.to_string().contains("bias must be"), "{err}");
}

#[test]
fn masked_softmax_scales_the_scores_first() {
    let scores = Tensor::randn(0f32, 3.0, (1, 1, 2, 6), &Device::Cpu).unwrap();
    let got = masked_softmax(&scores, None, None, 0.25).unwrap();
    let s = scores.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let o = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for r in 0..2 {
        let scaled: Vec<f32> = s[r * 6..(r + 1) * 6].iter().map(|v| v * 0.25).collect();
        let want = reference(&scaled, |_| true);
        for (x, y) in o[r * 6..(r + 1) * 6].iter().zip(&want) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }
}

#[test]
fn swap_axes12_swaps_heads_and_positions() {
    let x = Tensor::arange(0f32, 48.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 4, 2))
        .unwrap();
    let got = swap_axes12(&x).unwrap();
    assert_eq!(got.dims(), &[2, 4, 3, 2]);
    let want = x.transpose(1, 2).unwrap().contiguous().unwrap();
    assert_eq!(
        got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert!(swap_axes12(&x.flatten_all().unwrap()).is_err());
}

#[test]
fn the_fused_cpu_softmax_and_masked_scores_match_the_candle_ops_under_every_mask() {
    let (b, h, q, keys) = (2, 3, 5, 37);
    let dev = Device::Cpu;
    let scores = (Tensor::randn(0f32, 1.0, (b, h, q, keys), &dev).unwrap() * 20.0).unwrap();
    // A tracked copy takes the differentiable candle ops: the reference for the fused kernel.
    let tracked = candle_core::Var::from_tensor(&scores).unwrap();
    let hide = |shape: (usize, usize, usize, usize), every: usize| {
        let n = shape.0 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n)
            .map(|i| {
                if i % every == 0 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let mut all_hidden = vec![0f32; keys];
    all_hidden[..keys - q + 1].fill(f32::NEG_INFINITY); // query 0 then sees no key
    let biases = [
        None,
        Some(hide((1, 1, 1, keys), 3)),
        Some(hide((b, 1, 1, keys), 4)),
        Some(hide((1, 1, q, keys), 5)),
        Some(hide((b, 1, q, keys), 7)),
        Some(Tensor::from_vec(all_hidden, (1, 1, 1, keys), &dev).unwrap()),
    ];
    for bias in &biases {
        for causal in [None, Some(keys - q), Some(0)] {
            let fused = masked_softmax(&scores, bias.as_ref(), causal, 0.125).unwrap();
            let ops = masked_softmax(tracked.as_tensor(), bias.as_ref(), causal, 0.125).unwrap();
            let (f, o) = (
                fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                ops.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (i, (x, y)) in f.iter().zip(&o).enumerate() {
                assert!(
                    (x - y).abs() < 1e-6,
                    "bias {:?}, causal {causal:?}, entry {i}: fused {x} vs ops {y}",
                    bias.as_ref().map(|m| m.dims().to_vec())
                );
            }
            // The masked scores: the same values as the ops (hidden keys -inf on both), and
            // normalised by the kernel with the causal rule alone they give the fused softmax
            // bit for bit.
            let masked = masked_scores(&scores, bias.as_ref(), causal, 0.125).unwrap();
            let masked_ops =
                masked_scores(tracked.as_tensor(), bias.as_ref(), causal, 0.125).unwrap();
            let (m, mo) = (
                masked.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                masked_ops.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(masked.dims(), scores.dims());
            for (i, (x, y)) in m.iter().zip(&mo).enumerate() {
                let same = (x.is_infinite() && x == y) || (x - y).abs() < 1e-5;
                assert!(
                    same,
                    "masked scores, causal {causal:?}, entry {i}: {x} vs {y}"
                );
            }
            let renormed = masked_softmax(&masked, None, causal, 1.0).unwrap();
            let r = renormed.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(r, f, "softmax of the masked scores, causal {causal:?}");
        }
    }
}

//! Attention kinds of the generic forward pass: linear (the LAT), softmax and exponential heads
//! against patterns computed by hand.

use candle_core::{DType, Device, Tensor};
use metarep_lat_cg::lat::{AttentionHead, AttentionKind};

/// A head on 2 channels, 4 tokens, with `W_Q = W_K = I`, `W_V = W_O = I` and the given mask.
fn head(mask: &[f64]) -> AttentionHead {
    head_in(mask, DType::F64)
}

fn head_in(mask: &[f64], dtype: DType) -> AttentionHead {
    let dev = Device::Cpu;
    let eye = Tensor::eye(2, dtype, &dev).unwrap();
    let mask = Tensor::from_vec(mask.to_vec(), (4, 4), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    AttentionHead::new(eye.clone(), eye.clone(), eye.clone(), eye, mask, 2, 4).unwrap()
}

const X: [f64; 8] = [0.5, -1.0, 2.0, 0.25, -0.75, 1.5, 1.0, 1.0];
/// Row 0 reads tokens 0..2, row 1 reads 1..4, row 2 reads nothing, row 3 reads 3.
const MASK: [f64; 16] = [
    1., 1., 1., 0., //
    0., 1., 1., 1., //
    0., 0., 0., 0., //
    0., 0., 0., 1.,
];

fn tokens(dtype: DType) -> Tensor {
    Tensor::from_vec(X.to_vec(), (1, 4, 2), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn score(i: usize, j: usize) -> f64 {
    X[2 * i] * X[2 * j] + X[2 * i + 1] * X[2 * j + 1]
}

fn pattern(h: &AttentionHead, dtype: DType) -> Vec<Vec<f64>> {
    h.pattern(&tokens(dtype))
        .unwrap()
        .get(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn softmax_pattern_is_the_masked_row_softmax_and_empty_rows_are_zero() {
    let scale = 0.7;
    let h = head(&MASK)
        .with_kind(AttentionKind::Softmax { scale })
        .unwrap();
    let p = pattern(&h, DType::F64);
    for i in 0..4 {
        let z: f64 = (0..4)
            .filter(|&j| MASK[4 * i + j] != 0.0)
            .map(|j| (scale * score(i, j)).exp())
            .sum();
        for j in 0..4 {
            let want = if MASK[4 * i + j] != 0.0 {
                (scale * score(i, j)).exp() / z
            } else {
                0.0
            };
            assert!(
                (p[i][j] - want).abs() < 1e-15,
                "({i},{j}): {} vs {want}",
                p[i][j]
            );
        }
    }
    assert_eq!(p[2], vec![0.0; 4]);
    // The output is the pattern times the values (W_V = W_O = I).
    let out = h
        .forward(&tokens(DType::F64))
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let want0: f64 = (0..4).map(|j| p[0][j] * X[2 * j]).sum();
    assert!((out[0][0] - want0).abs() < 1e-15);
}

#[test]
fn exponential_pattern_is_unnormalised_and_linear_is_masked_scores() {
    let h = head(&MASK)
        .with_kind(AttentionKind::Exponential { scale: 2.0 })
        .unwrap();
    let p = pattern(&h, DType::F64);
    let lin = pattern(&head(&MASK), DType::F64);
    for i in 0..4 {
        for j in 0..4 {
            let on = MASK[4 * i + j] != 0.0;
            let e = if on { (2.0 * score(i, j)).exp() } else { 0.0 };
            assert!((p[i][j] - e).abs() <= 1e-15 * e.max(1.0));
            assert_eq!(lin[i][j], if on { score(i, j) } else { 0.0 });
        }
    }
}

#[test]
fn large_logits_stay_finite_in_f32_and_bad_scales_are_rejected() {
    // Scores up to ~6 at scale 100 overflow exp in f32 without the max subtraction.
    let h = head_in(&MASK, DType::F32)
        .with_kind(AttentionKind::Softmax { scale: 100.0 })
        .unwrap();
    let p = pattern(&h, DType::F32);
    assert!(p.iter().flatten().all(|v| v.is_finite()));
    for (i, row) in p.iter().enumerate() {
        let sum: f64 = row.iter().sum();
        let want = if i == 2 { 0.0 } else { 1.0 };
        assert!((sum - want).abs() < 1e-6, "row {i} sums to {sum}");
    }
    assert!(head(&MASK)
        .with_kind(AttentionKind::Softmax { scale: f64::NAN })
        .unwrap_err()
        .to_string()
        .contains("scale"));
}

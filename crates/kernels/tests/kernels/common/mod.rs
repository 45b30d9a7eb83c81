//! Helpers shared by the kernel tests.

// Each test crate that includes this module uses only some of its helpers.
#![allow(dead_code)]

use candle_core::{DType, Device, Shape, Tensor, Var};
use metarep_kernels::{AdamStep, SaeParams};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Uniform(−1, 1) entries of the given shape and dtype.
pub fn randn(rng: &mut ChaCha8Rng, shape: impl Into<Shape>, dtype: DType) -> Tensor {
    let shape = shape.into();
    let v: Vec<f64> = (0..shape.elem_count())
        .map(|_| rng.random::<f64>() * 2.0 - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Random parameters `[w_enc, b_enc, w_dec, b_dec]` of an SAE with `n` latents over `d`
/// dimensions.
pub fn sae_params(rng: &mut ChaCha8Rng, n: usize, d: usize, dtype: DType) -> [Var; 4] {
    [
        randn(rng, (n, d), dtype),
        randn(rng, n, dtype),
        randn(rng, (n, d), dtype),
        randn(rng, d, dtype),
    ]
    .map(|t| Var::from_tensor(&t).unwrap())
}

/// The parameters `[w_enc, b_enc, w_dec, b_dec]` as a step reads them.
pub fn sae_view(p: &[Var; 4]) -> SaeParams<'_> {
    let [w_enc, b_enc, w_dec, b_dec] = p.each_ref().map(|v| v.as_tensor());
    SaeParams {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
    }
}

/// For each column of `codes` `[rows, n]`, the rows where it is positive.
pub fn fire_counts(codes: &Tensor) -> Vec<u64> {
    codes
        .gt(0.0)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .sum(0)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .into_iter()
        .map(u64::from)
        .collect()
}

/// Asserts that each gradient has the reference's shape and is within `tol` of it.
pub fn assert_grads_close(got: &[Tensor], want: &[Tensor], tol: f64, case: &str) {
    assert_eq!(got.len(), want.len(), "{case}");
    for (i, (got, want)) in got.iter().zip(want).enumerate() {
        assert_eq!(got.dims(), want.dims(), "gradient {i}, {case}");
        assert!(max_diff(got, want) < tol, "gradient {i}, {case}");
    }
}

/// `run` inside a one-thread rayon pool.
pub fn on_one_thread<R: Send>(run: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run)
}

/// Largest absolute entry-wise difference.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let flat = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let (a, b) = (
        flat(a).to_vec1::<f64>().unwrap(),
        flat(b).to_vec1::<f64>().unwrap(),
    );
    a.iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max)
}

/// The AdamW step the tests use: lr 0.01, β (0.9, 0.999), ε 1e-8, weight decay 0.1, step `t`.
pub fn adam_step(t: usize) -> AdamStep {
    AdamStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        t,
    }
}

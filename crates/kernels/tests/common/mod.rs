//! Helpers shared by the kernel tests.

use candle_core::{DType, Device, Shape, Tensor};
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

/// `run` inside a one-thread rayon pool.
pub fn on_one_thread<R: Send>(run: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run)
}

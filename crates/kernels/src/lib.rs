//! metarep-kernels: the hot ops of metarep as candle custom ops, CPU kernels threaded with rayon.
//!
//! The centrepiece is sparse latent algebra for sparse autoencoders: when only `k` of `n`
//! latents are active per row (TopK SAEs), the decoder forward, the gradient for the values and
//! both weight gradients need only the `k` active rows of the weights. [`sparse_decode`] and
//! [`gather_dot`] are differentiable candle ops whose backward passes are each other and
//! [`scatter_outer`], so `loss.backward()` never builds a dense `[batch, n]` gradient. Per-row
//! selection ([`topk_per_row`], [`select_above`], [`batch_topk`]) turns a dense pre-activation
//! into such a sparse code. For dense (ReLU-family) encoders, [`linear_encode`] is
//! `act(x·wᵀ + b)` with a backward that skips the input gradient an SAE does not need.
//! [`adamw_update`] is a fused in-place AdamW step and [`normalize_rows_`] keeps decoder rows
//! at unit norm. [`ReluSaeStep`] is a ReLU SAE's whole training step (reconstruction + L1)
//! and [`TopkSaeStep`] a TopK or BatchTopK SAE's (reconstruction + auxiliary-K), written out by
//! hand into buffers reused across steps. [`profile`] counts the time spent in dense products.
//! [`forward`] holds the fused forward-pass kernels of the hooked transformers (activations and
//! gated activations, softmax, bias-fused linear, norms) and [`rotary`] their
//! rotary embedding; [`device_ops`] the GPU ones (masked attention softmax, bias added to a
//! product).
//!
//! Tensors on other devices take the same calls. With the `cuda` feature, f32 tensors on a
//! CUDA device run CUDA kernels for the sparse ops and their gradients, the per-row top-k,
//! AdamW and row normalisation (compiled from `src/cuda/kernels.cu` by the build script);
//! everything else hands them to its twin in [`portable`], the same op composed of candle ops,
//! so every SAE path runs on a GPU.
//!
//! Shapes are `[batch, slots]` for indices (u32) and values, `[n, d]` for weights whose rows are
//! latent directions, `[batch, d]` for dense inputs and outputs; f32 and f64. An index equal to
//! [`INACTIVE`] marks an empty slot. Bad shapes, dtypes, devices and out-of-range indices are
//! errors naming the op and the argument.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use metarep_kernels::{gather_dot, sparse_decode, topk_per_row};
//!
//! let dev = Device::Cpu;
//! let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (64, 8), &dev)?)?; // 64 latents in R^8
//! let x = Tensor::randn(0f32, 1.0, (4, 8), &dev)?;                      // a batch of 4
//! let pre = x.matmul(&w.as_tensor().t()?)?;                               // [4, 64]
//! let sel = topk_per_row(&pre, 3, None)?;                                 // 3 latents per row
//! let codes = gather_dot(&sel.indices, &x, w.as_tensor())?.relu()?;      // [4, 3]
//! let recon = sparse_decode(&sel.indices, &codes, w.as_tensor())?;       // [4, 8]
//! let loss = (recon - &x)?.sqr()?.sum_all()?;
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(w.as_tensor()).unwrap().dims(), &[64, 8]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod adam;
mod cpu;
mod cuda;
pub mod dense;
pub mod device_ops;
pub mod error;
pub mod forward;
mod matmul;
pub mod portable;
pub mod profile;
pub mod relu_sae;
pub mod rotary;
pub mod rows;
pub mod sae_step;
pub mod select;
pub mod sparse;
pub mod topk_sae;

pub use adam::{adamw_update, AdamStep};
pub use cpu::{Real, INACTIVE};
pub use dense::{column_sums, count_positive, linear_encode};
pub use error::{Error, Result};
pub use relu_sae::{ReluSaeLoss, ReluSaeOutput, ReluSaeStep};
pub use rows::normalize_rows_;
pub use sae_step::SaeParams;
pub use select::{batch_topk, select_above, topk_of_product, topk_per_row, Selection};
pub use sparse::{gather_dot, gather_vector, scatter_outer, sparse_decode, to_dense};
pub use topk_sae::{TopkRule, TopkSaeLoss, TopkSaeOutput, TopkSaeStep};

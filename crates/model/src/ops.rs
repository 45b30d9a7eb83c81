//! Small tensor operations the forward pass is built from: linear layers, activations, softmax.

use candle_core::{DType, Tensor, D};

use crate::config::Activation;
use crate::error::Result;

/// `x W (+ b)` for `x: [n, in]`, `W: [in, out]`, `b: [out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(w)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Applies an activation function elementwise.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluNew => x.gelu()?,
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
    })
}

/// Softmax over the last dimension; rows that are entirely `-inf` give zeros (TransformerLens
/// semantics for fully masked rows) rather than NaN.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    // A fully masked row has max = -inf; subtracting 0 instead keeps exp(-inf) = 0.
    let max = max.clamp(f32::MIN, f32::MAX)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    let s = s.clamp(f32::MIN_POSITIVE, f32::MAX)?;
    Ok(e.broadcast_div(&s)?)
}

/// Half-precision tensors are upcast to f32 for reductions (norms, softmax); returns the
/// tensor to compute with.
pub fn upcast(x: &Tensor) -> Result<Tensor> {
    Ok(match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    })
}

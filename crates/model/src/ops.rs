//! Tensor operations the forward pass is built from: linear layers, activations, softmax, norms.
//!
//! Each dispatches by tensor: f32/f16/bf16 tensors on the CPU that carry no gradient go through
//! the fused kernels of [`metarep_kernels::forward`] (one parallel pass each); untracked tensors
//! on a GPU go through candle-nn's fused ops and candle's unary kernels, which have CUDA
//! kernels (softmax, layer and RMS norm, tanh-GELU; rotary embeddings in the model), and
//! metarep-kernels' own (`device_ops`: masked attention softmax, bias epilogue); tensors that take part in autograd
//! (training) and f64 tensors go through the equivalent composition of candle ops, which the
//! tests compare with the kernels.

use candle_core::{DType, Tensor, D};
use metarep_kernels::forward::{self, Act, GELU_A};

use crate::config::Activation;
use crate::error::Result;

/// `x W (+ b)` for `x: [n, in]`, `W: [in, out]`, `b: [out]`. On the CPU in f32 without
/// gradients the bias is fused into the matmul (the output starts as the bias rows and the
/// product is accumulated onto it), saving a pass over the output.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if let (Some(b), true) = (b, use_device_op(x) && x.rank() == 2) {
        return linear_device(x, w, b);
    }
    if let Some(b) = b {
        let f32_untracked = |t: &Tensor| use_f32_kernel(t);
        if f32_untracked(x)
            && f32_untracked(w)
            && f32_untracked(b)
            && x.rank() == 2
            && w.rank() == 2
        {
            return Ok(forward::linear_bias(x, w, b)?);
        }
    }
    let y = matmul(x, w)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// [`linear`] with a bias on a GPU: the product, then the bias added in place by one kernel
/// ([`metarep_kernels::device_ops::add_bias_rows`]; candle's broadcast add does index
/// arithmetic per element and took longer than the product on an H200).
fn linear_device(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(metarep_kernels::device_ops::add_bias_rows(
        matmul(x, w)?,
        b,
    )?)
}

/// `a.matmul(b)` (`[..., m, k]` by `[..., k, n]`), its time counted by
/// [`metarep_kernels::profile`]. Batched f32 products on the CPU without gradients (attention
/// scores and mixing) go through [`forward::batched_matmul`], one batch element per thread. When
/// `a` carries a gradient and `b` does not (frozen weights under a trained adapter), the backward
/// pass computes `a`'s gradient only (a custom op, `frozen_matmul.rs`).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let batched = |t: &Tensor| t.dtype() == DType::F32 && use_kernel(t) && t.rank() >= 3;
    if batched(a) && batched(b) && a.rank() == b.rank() {
        return Ok(forward::batched_matmul(a, b)?);
    }
    let (dims, n) = (a.dims(), b.dims().last().copied().unwrap_or(1));
    let flop = 2 * dims.iter().product::<usize>() * n;
    metarep_kernels::profile::count(flop as u64, || {
        if a.track_op() && !b.track_op() {
            crate::frozen_matmul::matmul_frozen_rhs(a, b)
        } else {
            Ok(a.matmul(b)?)
        }
    })
}

/// Whether the fused kernels apply: CPU, not f64, no gradient to track.
fn use_kernel(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() != DType::F64 && !x.track_op()
}

/// Whether the fused device ops apply: not on the CPU, no gradient to track.
pub fn use_device_op(x: &Tensor) -> bool {
    !x.device().is_cpu() && !x.track_op()
}

/// Applies an activation function elementwise.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    if act == Activation::GeluNew && use_device_op(x) {
        return Ok(x.gelu()?); // candle's tanh-GELU kernel: one pass instead of eight
    }
    if act != Activation::Relu && use_kernel(x) {
        return Ok(forward::activation(x, kernel_act(act))?);
    }
    activation_composite(x, act)
}

/// `act(gate) · x`, the product of a gated MLP: one kernel for f32 CPU tensors without a
/// gradient, [`activation`] and a product otherwise (the same values).
pub fn gated_activation(gate: &Tensor, x: &Tensor, act: Activation) -> Result<Tensor> {
    if use_f32_kernel(gate) && use_f32_kernel(x) {
        return Ok(forward::gated_activation(gate, x, kernel_act(act))?);
    }
    Ok((activation(gate, act)? * x)?)
}

/// The kernels' name for `act`.
fn kernel_act(act: Activation) -> Act {
    match act {
        Activation::Gelu => Act::Gelu,
        Activation::GeluNew => Act::GeluTanh,
        Activation::Silu => Act::Silu,
        Activation::Relu => Act::Relu,
    }
}

/// The activations as compositions of differentiable candle ops (autograd, f64).
pub fn activation_composite(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluNew => {
            // x σ(2z) = x / (1 + exp(−2z)), z = c (x + a x³). 2z is clamped to ±40 (σ is
            // within 5e-18 of 0 or 1 there): unclamped, exp(−2z) overflows for x ≲ −10 and the
            // backward pass turns 0 · ∞ into NaN.
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let two_z =
                (x.sqr()?.affine(2.0 * c * GELU_A as f64, 2.0 * c)? * x)?.clamp(-40.0, 40.0)?;
            (x / (two_z.neg()?.exp()? + 1.0)?)?
        }
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
    })
}

/// Softmax over the last dimension; rows that are entirely `-inf` give zeros (TransformerLens
/// semantics for fully masked rows) rather than NaN.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if use_kernel(x) {
        return Ok(forward::softmax_last_dim(x)?);
    }
    if use_device_op(x) {
        return softmax_device(x, true);
    }
    softmax_composite(x)
}

/// Softmax over the last dimension in f32, returned in `x`'s dtype: half-precision inputs are
/// upcast first, except on a GPU, where the fused kernel reads them and accumulates in f32.
/// `empty_rows`: some row may be entirely `-inf` (it must come out as zeros; the GPU kernel
/// needs an extra pass for that, the CPU kernel and the composite handle it anyway).
pub fn softmax_f32(x: &Tensor, empty_rows: bool) -> Result<Tensor> {
    if use_device_op(x) {
        return softmax_device(x, empty_rows);
    }
    Ok(softmax_last_dim(&upcast(x)?)?.to_dtype(x.dtype())?)
}

/// candle-nn's fused softmax; with `empty_rows`, rows that are entirely `-inf` are set to
/// zeros (TransformerLens's semantics; the fused kernel gives NaN there).
fn softmax_device(x: &Tensor, empty_rows: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    let p = candle_nn::ops::softmax_last_dim(&x)?;
    if !empty_rows {
        return Ok(p);
    }
    let empty = x.max_keepdim(D::Minus1)?.eq(f64::NEG_INFINITY)?;
    Ok(empty
        .broadcast_as(p.shape())?
        .where_cond(&p.zeros_like()?, &p)?)
}

/// `log softmax` over the last dimension, in f32 (inputs of other dtypes are converted):
/// `x − max − log Σ exp(x − max)`.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(candle_core::DType::F32)?;
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// One row per prompt: `t[r, positions[r], ...]` of `t: [batch, n, ...]` → `[batch, ...]` (e.g.
/// each prompt's read-out position of a right-padded batch); an error names a bad position.
pub fn rows_at(t: &Tensor, positions: &[usize]) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    if dims.len() < 2 || positions.len() != dims[0] {
        return Err(crate::Error::Invalid(format!(
            "rows_at: {} positions for a tensor of shape {dims:?}",
            positions.len()
        )));
    }
    let (b, n) = (dims[0], dims[1]);
    if let Some(p) = positions.iter().find(|&&p| p >= n) {
        return Err(crate::Error::Invalid(format!(
            "rows_at: position {p} is outside {n} positions"
        )));
    }
    let rest: usize = dims[2..].iter().product();
    let idx: Vec<u32> = positions
        .iter()
        .enumerate()
        .map(|(r, &q)| (r * n + q) as u32)
        .collect();
    let idx = Tensor::from_vec(idx, b, t.device())?;
    let mut out = vec![b];
    out.extend_from_slice(&dims[2..]);
    Ok(t.contiguous()?
        .reshape((b * n, rest))?
        .index_select(&idx, 0)?
        .reshape(out)?)
}

/// [`softmax_last_dim`] as differentiable candle ops.
pub fn softmax_composite(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    // A fully masked row has max = -inf; subtracting a finite number keeps exp(-inf) = 0.
    let max = max.clamp(f32::MIN, f32::MAX)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    let s = s.clamp(f32::MIN_POSITIVE, f32::MAX)?;
    Ok(e.broadcast_div(&s)?)
}

/// Whether the f32-only CPU kernels apply (norms, rotary embedding, gated activation): f32 on
/// the CPU, no gradient.
pub fn use_f32_kernel(x: &Tensor) -> bool {
    use_kernel(x) && x.dtype() == DType::F32
}

pub use metarep_kernels::forward::{norm_apply, norm_stats};

/// Half-precision tensors are upcast to f32 for reductions (norms, softmax); returns the
/// tensor to compute with.
pub fn upcast(x: &Tensor) -> Result<Tensor> {
    Ok(match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        metarep_core::compare::max_abs_diff(a, b).unwrap()
    }

    #[test]
    fn kernels_match_the_composite_ops() {
        let x = (Tensor::randn(0f32, 2.0, (3, 50_000), &Device::Cpu).unwrap() * 1.0).unwrap();
        for act in [
            Activation::Gelu,
            Activation::GeluNew,
            Activation::Silu,
            Activation::Relu,
        ] {
            let fast = activation(&x, act).unwrap();
            let exact = match act {
                Activation::Gelu => x.gelu_erf().unwrap(),
                Activation::GeluNew => x.gelu().unwrap(),
                _ => activation_composite(&x, act).unwrap(),
            };
            assert!(
                max_diff(&fast, &exact) < 2e-6,
                "{act:?}: {}",
                max_diff(&fast, &exact)
            );
            // The composite path (autograd) agrees too.
            let comp = activation_composite(&x, act).unwrap();
            assert!(max_diff(&comp, &exact) < 2e-6, "{act:?}");
        }
        let mut s = Tensor::randn(0f32, 3.0, (7, 33), &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        s[2] = vec![f32::NEG_INFINITY; 33];
        s[3][5] = f32::NEG_INFINITY;
        let s = Tensor::new(s, &Device::Cpu).unwrap();
        let fast = softmax_last_dim(&s).unwrap();
        assert!(max_diff(&fast, &softmax_composite(&s).unwrap()) < 1e-6);
        assert_eq!(
            metarep_core::compare::max_abs(&fast.get(2).unwrap()).unwrap(),
            0.0
        );
        let half = activation(&x.to_dtype(DType::BF16).unwrap(), Activation::GeluNew).unwrap();
        assert_eq!(half.dtype(), DType::BF16);
    }

    #[test]
    fn fused_bias_linear_matches_matmul_plus_bias() {
        let x = Tensor::randn(0f32, 1.0, (37, 64), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (64, 50), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 50, &Device::Cpu).unwrap();
        let want = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
        assert!(max_diff(&linear(&x, &w, Some(&b)).unwrap(), &want) < 1e-4);
        // A transposed (strided) weight view.
        let wt = w.t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(max_diff(&linear(&x, &wt, Some(&b)).unwrap(), &want) < 1e-4);
        // A narrowed weight view (a column block of a wider matrix).
        let wide = Tensor::cat(&[&w, &w], 1).unwrap();
        let block = wide.narrow(1, 50, 50).unwrap();
        assert!(max_diff(&linear(&x, &block, Some(&b)).unwrap(), &want) < 1e-4);
    }

    #[test]
    fn batched_matmul_matches_candle_for_every_layout() {
        let dev = &Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 3, 17, 8), dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 17, 8), dev).unwrap();
        // Attention scores: a transposed right operand, read in place.
        let kt = k.t().unwrap();
        let want = q.matmul(&kt.contiguous().unwrap()).unwrap();
        assert!(max_diff(&matmul(&q, &kt).unwrap(), &want) < 1e-5);
        // A non-collapsible batch layout (heads and batch swapped) is copied first.
        let qs = q.transpose(0, 1).unwrap();
        let want = qs
            .contiguous()
            .unwrap()
            .matmul(&kt.transpose(0, 1).unwrap().contiguous().unwrap())
            .unwrap();
        let got = matmul(&qs, &kt.transpose(0, 1).unwrap()).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        // A narrowed operand (start offset ≠ 0) and rank 3.
        let wide = Tensor::randn(0f32, 1.0, (4, 17, 20), dev).unwrap();
        let v = wide.narrow(2, 5, 8).unwrap();
        let p = Tensor::randn(0f32, 1.0, (4, 6, 17), dev).unwrap();
        let want = p.matmul(&v.contiguous().unwrap()).unwrap();
        assert!(max_diff(&matmul(&p, &v).unwrap(), &want) < 1e-5);
        // Shapes that do not multiply are errors, not panics.
        assert!(matmul(&p, &q).is_err());
    }

    #[test]
    fn fused_norm_matches_the_composite_ops() {
        let x = Tensor::randn(1f32, 2.0, (2, 5, 48), &Device::Cpu).unwrap();
        let w = Tensor::randn(1f32, 0.1, 48, &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.1, 48, &Device::Cpu).unwrap();
        let stats = norm_stats(&x, true, 1e-5).unwrap();
        assert_eq!(stats.dims(), &[2, 5, 2]);
        let y = norm_apply(&x, &stats, Some(&Tensor::stack(&[&w, &b], 0).unwrap())).unwrap();
        let xc = x
            .broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap())
            .unwrap();
        let scale = (xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
            .unwrap()
            .sqrt()
            .unwrap();
        let want = xc
            .broadcast_div(&scale)
            .unwrap()
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_diff(&y, &want) < 1e-5);
        assert!(max_diff(&stats.narrow(2, 1, 1).unwrap(), &scale) < 1e-5);
        let rms = norm_stats(&x, false, 1e-6).unwrap();
        let y = norm_apply(&x, &rms, None).unwrap();
        let scale = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-6)
            .unwrap()
            .sqrt()
            .unwrap();
        assert!(max_diff(&y, &x.broadcast_div(&scale).unwrap()) < 1e-5);
    }

    #[test]
    fn tracked_tensors_take_the_differentiable_path() {
        let v =
            Var::from_tensor(&Tensor::new(&[-1.0f32, 0.5, 2.0], &Device::Cpu).unwrap()).unwrap();
        let y = activation(v.as_tensor(), Activation::GeluNew)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = y.backward().unwrap();
        let grad = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // d/dx gelu_tanh at 0.5 ≈ 0.8422 (finite difference of the closed form).
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        let f = |x: f32| 0.5 * x * (1.0 + (c * (x + GELU_A * x * x * x)).tanh());
        let fd = (f(0.5 + 1e-3) - f(0.5 - 1e-3)) / 2e-3;
        assert!((grad[1] - fd).abs() < 1e-3, "{grad:?} vs {fd}");
    }

    #[test]
    fn rows_at_picks_one_position_per_prompt() {
        let t = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let r = rows_at(&t, &[2, 0]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(r, [[8.0, 9.0, 10.0, 11.0], [12.0, 13.0, 14.0, 15.0]]);
        assert!(rows_at(&t, &[3, 0])
            .unwrap_err()
            .to_string()
            .contains("position 3"));
        assert!(rows_at(&t, &[0]).is_err());
    }

    #[test]
    fn gelu_new_gradients_stay_finite_for_large_inputs() {
        let v =
            Var::from_tensor(&Tensor::new(&[-60.0f32, -12.0, 12.0, 60.0], &Device::Cpu).unwrap())
                .unwrap();
        let y = activation(v.as_tensor(), Activation::GeluNew).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let grad = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let y = y.to_vec1::<f32>().unwrap();
        for (i, want) in [(0, 0.0f32), (1, 0.0), (2, 1.0), (3, 1.0)] {
            assert!((grad[i] - want).abs() < 1e-6, "{grad:?}");
            assert!(
                (y[i] - want * [-60.0f32, -12.0, 12.0, 60.0][i]).abs() < 1e-6,
                "{y:?}"
            );
        }
    }
}

//! Tensor operations the forward pass is built from: linear layers, activations, softmax.
//!
//! Activations and the softmax have fused CPU kernels (one parallel pass, candle custom ops)
//! used for f32/f16/bf16 tensors that carry no gradient; tensors that take part in autograd
//! (training) and f64 tensors go through the equivalent composition of candle ops, which the
//! tests compare with the kernels. Candle's own `tanh`/`erf` are scalar and single-threaded
//! and cost more than the matmuls around them in a GPT-2 MLP; the kernels use `exp`-based forms:
//! `gelu_tanh(x) = x σ(2z)` with `z = √(2/π)(x + 0.044715 x³)` (identical to the tanh form), and
//! `gelu(x) = x Φ(x)` with erf from Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

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

/// Whether the fused kernels apply: CPU, not f64, no gradient to track.
fn use_kernel(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() != DType::F64 && !x.track_op()
}

/// Applies an activation function elementwise.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    if act != Activation::Relu && use_kernel(x) {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&Elementwise(act))?);
    }
    activation_composite(x, act)
}

/// The activations as compositions of differentiable candle ops (autograd, f64).
pub fn activation_composite(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluNew => {
            // x σ(2z) = x / (1 + exp(−2z)), z = c (x + a x³).
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let two_z = (x.sqr()?.affine(2.0 * c * GELU_A as f64, 2.0 * c)? * x)?;
            (x / (two_z.neg()?.exp()? + 1.0)?)?
        }
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
    })
}

/// The cubic coefficient of the tanh-approximated GELU.
const GELU_A: f32 = 0.044715;

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// Abramowitz & Stegun 7.1.26: erf for `x ≥ 0`, |error| ≤ 1.5e-7.
#[inline(always)]
fn erf_nonneg(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    1.0 - poly * (-x * x).exp()
}

#[inline(always)]
fn act_f32(act: Activation, x: f32) -> f32 {
    match act {
        Activation::GeluNew => {
            let two_z = 2.0 * SQRT_2_OVER_PI * (x + GELU_A * x * x * x);
            x / (1.0 + (-two_z).exp())
        }
        Activation::Gelu => {
            let u = x * std::f32::consts::FRAC_1_SQRT_2;
            let e = erf_nonneg(u.abs());
            0.5 * x * (1.0 + if u < 0.0 { -e } else { e })
        }
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Relu => x.max(0.0),
    }
}

/// Elements per parallel work item.
const CHUNK: usize = 1 << 14;

/// Maps `f` over a contiguous f32 view in parallel chunks.
fn par_map(src: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            for (o, &x) in d.iter_mut().zip(s) {
                *o = f(x);
            }
        });
    dst
}

/// The contiguous slice a layout covers.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("metarep kernel: input must be contiguous"),
    }
}

/// Applies `f` to an f32/f16/bf16 CPU storage (halves through f32).
fn map_storage(
    storage: &CpuStorage,
    layout: &Layout,
    f: impl Fn(&[f32]) -> Vec<f32>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let shape = layout.shape().clone();
    let out = match storage {
        CpuStorage::F32(v) => CpuStorage::F32(f(contiguous(v, layout)?)),
        CpuStorage::F16(v) => {
            let x: Vec<f32> = contiguous(v, layout)?.iter().map(|h| h.to_f32()).collect();
            CpuStorage::F16(f(&x).into_iter().map(half::f16::from_f32).collect())
        }
        CpuStorage::BF16(v) => {
            let x: Vec<f32> = contiguous(v, layout)?.iter().map(|h| h.to_f32()).collect();
            CpuStorage::BF16(f(&x).into_iter().map(half::bf16::from_f32).collect())
        }
        _ => candle_core::bail!("metarep kernel: only f32, f16 and bf16 are supported"),
    };
    Ok((out, shape))
}

/// Fused elementwise activation kernel.
struct Elementwise(Activation);

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        "metarep-activation"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let act = self.0;
        map_storage(storage, layout, |x| par_map(x, |v| act_f32(act, v)))
    }
}

/// Softmax over the last dimension; rows that are entirely `-inf` give zeros (TransformerLens
/// semantics for fully masked rows) rather than NaN.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if use_kernel(x) {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)?);
    }
    softmax_composite(x)
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

/// Fused row softmax kernel.
struct SoftmaxLastDim;

fn softmax_rows(src: &[f32], n: usize) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    let rows_per_task = (CHUNK / n.max(1)).max(1);
    dst.par_chunks_mut(rows_per_task * n)
        .zip(src.par_chunks(rows_per_task * n))
        .for_each(|(d, s)| {
            for (dr, sr) in d.chunks_mut(n).zip(s.chunks(n)) {
                let max = sr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if max == f32::NEG_INFINITY {
                    dr.fill(0.0);
                    continue;
                }
                let mut sum = 0f32;
                for (o, &v) in dr.iter_mut().zip(sr) {
                    *o = (v - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                for o in dr.iter_mut() {
                    *o *= inv;
                }
            }
        });
    dst
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "metarep-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = layout.shape().dims().last().copied().unwrap_or(1);
        map_storage(storage, layout, |x| softmax_rows(x, n))
    }
}

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

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
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
            fast.get(2)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let half = activation(&x.to_dtype(DType::BF16).unwrap(), Activation::GeluNew).unwrap();
        assert_eq!(half.dtype(), DType::BF16);
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
        let f = |x: f32| 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_A * x * x * x)).tanh());
        let fd = (f(0.5 + 1e-3) - f(0.5 - 1e-3)) / 2e-3;
        assert!((grad[1] - fd).abs() < 1e-3, "{grad:?} vs {fd}");
    }
}

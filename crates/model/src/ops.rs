//! Tensor operations the forward pass is built from: linear layers, activations, softmax.
//!
//! Activations and the softmax have fused CPU kernels (one parallel pass, candle custom ops)
//! used for f32/f16/bf16 tensors that carry no gradient; tensors that take part in autograd
//! (training) and f64 tensors go through the equivalent composition of candle ops, which the
//! tests compare with the kernels. Candle's own `tanh`/`erf` are scalar and single-threaded
//! and cost more than the matmuls around them in a GPT-2 MLP; the kernels use `exp`-based forms:
//! `gelu_tanh(x) = x σ(2z)` with `z = √(2/π)(x + 0.044715 x³)` (identical to the tanh form), and
//! `gelu(x) = x Φ(x)` with erf from Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::config::Activation;
use crate::error::Result;

/// `x W (+ b)` for `x: [n, in]`, `W: [in, out]`, `b: [out]`. On the CPU in f32 without
/// gradients the bias is fused into the matmul (the output starts as the bias rows and the
/// product is accumulated onto it), saving a pass over the output.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if let Some(b) = b {
        let f32_untracked = |t: &Tensor| use_norm_kernel(t);
        if f32_untracked(x)
            && f32_untracked(w)
            && f32_untracked(b)
            && x.rank() == 2
            && w.rank() == 2
        {
            return Ok(x
                .contiguous()?
                .apply_op3_no_bwd(w, &b.contiguous()?, &LinearBias)?);
        }
    }
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

/// The cubic coefficient of the tanh-approximated GELU.
const GELU_A: f32 = 0.044715;

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// `e^x` for f32 without libm: `x = n ln2 + r`, `e^r` by a degree-6 Taylor polynomial on
/// `|r| ≤ ln2/2`, `2^n` through the exponent bits; branch-free so that loops over it vectorise.
/// Relative error ≤ 3e-7 on `[-87, 88]`; 0 below (so masked `-inf` scores give exactly 0),
/// `e^88` above.
#[inline(always)]
pub fn fast_exp(x_in: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x_in.clamp(-87.0, 88.0);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x_in < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// Abramowitz & Stegun 7.1.26: erf for `x ≥ 0`, |error| ≤ 1.5e-7.
#[inline(always)]
fn erf_nonneg(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    1.0 - poly * fast_exp(-x * x)
}

#[inline(always)]
fn act_f32(act: Activation, x: f32) -> f32 {
    match act {
        Activation::GeluNew => {
            let two_z = 2.0 * SQRT_2_OVER_PI * (x + GELU_A * x * x * x);
            x / (1.0 + fast_exp(-two_z))
        }
        Activation::Gelu => {
            let u = x * std::f32::consts::FRAC_1_SQRT_2;
            let e = erf_nonneg(u.abs());
            0.5 * x * (1.0 + if u < 0.0 { -e } else { e })
        }
        Activation::Silu => x / (1.0 + fast_exp(-x)),
        Activation::Relu => x.max(0.0),
    }
}

/// Elements per parallel work item.
const CHUNK: usize = 1 << 14;

/// Maps `f` over a contiguous f32 view in parallel chunks.
fn par_map(src: &[f32], f: impl Fn(f32) -> f32 + Sync + Copy) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| map_chunk(d, s, f));
    dst
}

/// `d[i] = f(s[i])`, compiled for AVX-512 / AVX2 when the CPU has them (the crate is built for
/// baseline x86-64, so the wide versions are selected at run time).
fn map_chunk(d: &mut [f32], s: &[f32], f: impl Fn(f32) -> f32 + Copy) {
    #[inline(always)]
    fn body(d: &mut [f32], s: &[f32], f: impl Fn(f32) -> f32) {
        for (o, &x) in d.iter_mut().zip(s) {
            *o = f(x);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn wide512(d: &mut [f32], s: &[f32], f: impl Fn(f32) -> f32) {
            body(d, s, f)
        }
        #[target_feature(enable = "avx2,fma")]
        fn wide256(d: &mut [f32], s: &[f32], f: impl Fn(f32) -> f32) {
            body(d, s, f)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { wide512(d, s, f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { wide256(d, s, f) };
        }
    }
    body(d, s, f)
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
                    *o = fast_exp(v - max);
                }
                for &o in dr.iter() {
                    sum += o;
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

/// `x W + b` with the bias as the matmul's initial output (f32, CPU, `x` contiguous `[m, k]`,
/// `W` any-strided `[k, n]`, `b` contiguous `[n]`).
struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "metarep-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) = (s1, s2, s3) else {
            candle_core::bail!("metarep linear kernel: f32 only");
        };
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        let x = contiguous(x, l1)?;
        let b = contiguous(b, l3)?;
        if k != k2 || b.len() != n {
            candle_core::bail!(
                "metarep linear kernel: [{m}, {k}] x [{k2}, {n}] + [{}]",
                b.len()
            );
        }
        let (rs, cs) = (l2.stride()[0], l2.stride()[1]);
        let off = l2.start_offset();
        // The last element the strided weight view touches must lie inside its storage.
        if k == 0 || n == 0 || off + (k - 1) * rs + (n - 1) * cs >= w.len() {
            candle_core::bail!("metarep linear kernel: weight layout out of bounds");
        }
        let mut dst = Vec::with_capacity(m * n);
        for _ in 0..m {
            dst.extend_from_slice(b);
        }
        let threads = candle_core::utils::get_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: dst is m·n elements with row stride n; x is a contiguous m·k slice; every
        // weight element read, off + i·rs + j·cs for i < k, j < n, was bounds-checked above.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr().add(off),
                cs as isize,
                rs as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok((CpuStorage::F32(dst), Shape::from((m, n))))
    }
}

/// Whether the fused norm kernels apply (f32 on the CPU, no gradient).
pub fn use_norm_kernel(x: &Tensor) -> bool {
    use_kernel(x) && x.dtype() == DType::F32
}

/// Per-row statistics of `x: [..., d]` for a norm: `[..., 2]` holding the mean (0 unless
/// `center`) and the scale `sqrt(mean((x − mean)²) + eps)`, in one parallel pass (f32, CPU).
pub fn norm_stats(x: &Tensor, center: bool, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op1_no_bwd(&NormStats { center, eps })?)
}

/// `(x − mean) / scale` for `stats` from [`norm_stats`] (possibly with a replaced scale), then
/// `⊙ w + b` when `wb` (`[2, d]`: `w` and `b` stacked) is given; one parallel pass.
pub fn norm_apply(x: &Tensor, stats: &Tensor, wb: Option<&Tensor>) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let wb = match wb {
        Some(t) => t.contiguous()?,
        None => Tensor::new(&[1f32, 0.0], x.device())?
            .reshape((2, 1))?
            .broadcast_as((2, d))?
            .contiguous()?,
    };
    Ok(x.contiguous()?
        .apply_op3_no_bwd(&stats.contiguous()?, &wb, &NormApply)?)
}

struct NormStats {
    center: bool,
    eps: f64,
}

impl CustomOp1 for NormStats {
    fn name(&self) -> &'static str {
        "metarep-norm-stats"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("metarep norm kernel: f32 only");
        };
        let x = contiguous(v, layout)?;
        let dims = layout.shape().dims();
        let d = dims.last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; 2 * (x.len() / d)];
        let (center, eps) = (self.center, self.eps as f32);
        let rows_per_task = (CHUNK / d).max(1);
        out.par_chunks_mut(2 * rows_per_task)
            .zip(x.par_chunks(d * rows_per_task))
            .for_each(|(o, xs)| {
                for (o, row) in o.chunks_mut(2).zip(xs.chunks(d)) {
                    let mean = if center {
                        row.iter().sum::<f32>() / d as f32
                    } else {
                        0.0
                    };
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                    o[0] = mean;
                    o[1] = (var + eps).sqrt();
                }
            });
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = 2;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

struct NormApply;

impl CustomOp3 for NormApply {
    fn name(&self) -> &'static str {
        "metarep-norm-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(st), CpuStorage::F32(wb)) = (s1, s2, s3) else {
            candle_core::bail!("metarep norm kernel: f32 only");
        };
        let (x, st, wb) = (contiguous(x, l1)?, contiguous(st, l2)?, contiguous(wb, l3)?);
        let d = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        if st.len() * d != 2 * x.len() || wb.len() != 2 * d {
            candle_core::bail!("metarep norm kernel: stats or weights do not match the input");
        }
        let (w, b) = wb.split_at(d);
        let mut out = vec![0f32; x.len()];
        let rows_per_task = (CHUNK / d).max(1);
        out.par_chunks_mut(d * rows_per_task)
            .zip(x.par_chunks(d * rows_per_task))
            .zip(st.par_chunks(2 * rows_per_task))
            .for_each(|((o, xs), st)| {
                for ((o, row), s) in o.chunks_mut(d).zip(xs.chunks(d)).zip(st.chunks(2)) {
                    let (mean, inv) = (s[0], 1.0 / s[1]);
                    for (((o, &v), &w), &b) in o.iter_mut().zip(row).zip(w).zip(b) {
                        *o = (v - mean) * inv * w + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((fast_exp(x) as f64) - (x as f64).exp()).abs() / (x as f64).exp();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "{worst}");
        assert_eq!(fast_exp(-1000.0), 0.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
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
        let f = |x: f32| 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_A * x * x * x)).tanh());
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

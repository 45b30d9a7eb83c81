//! Fused CPU kernels of the forward pass (candle custom ops without a backward pass, for
//! tensors that carry no gradient): elementwise activations, gated activations `act(g) · x`
//! (the SwiGLU / GeGLU MLP), row softmax, `x W + b` with the
//! bias as the matmul's initial output, and norms as two passes (per-row statistics, then the
//! normalisation with weight and bias). `metarep-model`'s ops dispatch to these on the CPU and
//! to differentiable candle compositions elsewhere.
//!
//! Candle's own `tanh`/`erf` are scalar and single-threaded and cost more than the matmuls
//! around them in a GPT-2 MLP; the activations use `exp`-based forms:
//! `gelu_tanh(x) = x σ(2z)` with `z = √(2/π)(x + 0.044715 x³)` (identical to the tanh form), and
//! `gelu(x) = x Φ(x)` with erf from Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7).
//!
//! Shapes: any rank for activations and softmax (softmax over the last axis); `x: [m, k]`,
//! `W: [k, n]`, `b: [n]` for [`linear_bias`]; `x: [..., d]` for the norms. Activations and
//! softmax take f32, f16 and bf16 (halves through f32); the gated activation, linear and norm
//! kernels f32.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu::cpu_slice;
use crate::error::Result;
use crate::matmul::{gemm_into, gemm_serial, View};
use crate::profile;

/// An activation function with a fused kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `x Φ(x)` (erf form).
    Gelu,
    /// `x σ(2z)`, `z = √(2/π)(x + 0.044715 x³)` (the tanh form).
    GeluTanh,
    /// `x σ(x)`.
    Silu,
    /// `max(x, 0)`.
    Relu,
}

/// The cubic coefficient of the tanh-approximated GELU.
pub const GELU_A: f32 = 0.044715;

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// `e^x` for f32 without libm: `x = n ln2 + r` (`n` the integer nearest `x/ln2`), `e^r` by a
/// degree-6 Taylor polynomial on `|r| ≤ ln2/2`, `2^n` through the exponent bits; branch-free
/// so that loops over it vectorise.
/// Relative error ≤ 3e-7 on `[-87, 88]`; 0 below (so masked `-inf` scores give exactly 0),
/// `e^88` above.
#[inline(always)]
pub fn fast_exp(x_in: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer (ties to even) in the
    // default rounding mode without a call to libm's `roundf`, which would stop the loops
    // around this function from vectorising.
    const ROUNDER: f32 = 12_582_912.0;
    let x = x_in.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUNDER) - ROUNDER;
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

/// `x σ(2z)`, `z = √(2/π)(x + 0.044715 x³)`.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    let two_z = 2.0 * SQRT_2_OVER_PI * (x + GELU_A * x * x * x);
    x / (1.0 + fast_exp(-two_z))
}

/// `x Φ(x)`.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    let e = erf_nonneg(u.abs());
    0.5 * x * (1.0 + if u < 0.0 { -e } else { e })
}

/// `x σ(x)`.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + fast_exp(-x))
}

/// `max(x, 0)`.
#[inline(always)]
fn relu(x: f32) -> f32 {
    x.max(0.0)
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
    widest(|| body(d, s, f))
}

/// Applies `f` to an f32/f16/bf16 CPU storage (halves through f32).
fn map_storage(
    storage: &CpuStorage,
    layout: &Layout,
    f: impl Fn(&[f32]) -> Vec<f32>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let shape = layout.shape().clone();
    let out = match storage {
        CpuStorage::F32(_) => CpuStorage::F32(f(cpu_slice::<f32>(storage, layout)?)),
        CpuStorage::F16(_) => {
            let x: Vec<f32> = cpu_slice::<half::f16>(storage, layout)?
                .iter()
                .map(|h| h.to_f32())
                .collect();
            CpuStorage::F16(f(&x).into_iter().map(half::f16::from_f32).collect())
        }
        CpuStorage::BF16(_) => {
            let x: Vec<f32> = cpu_slice::<half::bf16>(storage, layout)?
                .iter()
                .map(|h| h.to_f32())
                .collect();
            CpuStorage::BF16(f(&x).into_iter().map(half::bf16::from_f32).collect())
        }
        _ => candle_core::bail!("metarep kernel: only f32, f16 and bf16 are supported"),
    };
    Ok((out, shape))
}

/// `act(x)` elementwise in one parallel pass (CPU, f32/f16/bf16, no gradient).
pub fn activation(x: &Tensor, act: Act) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&Elementwise(act))?)
}

/// Fused elementwise activation kernel.
struct Elementwise(Act);

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        "metarep-activation"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // One `par_map` per function item, so that each is inlined into the SIMD loops.
        map_storage(storage, layout, |x| match self.0 {
            Act::GeluTanh => par_map(x, gelu_tanh),
            Act::Gelu => par_map(x, gelu_erf),
            Act::Silu => par_map(x, silu),
            Act::Relu => par_map(x, relu),
        })
    }
}

/// `act(gate) · x` elementwise in one parallel pass, for `gate` and `x` of one shape (CPU, f32, no
/// gradient): the product of a gated MLP, with the same values as the activation followed by
/// the product.
pub fn gated_activation(gate: &Tensor, x: &Tensor, act: Act) -> Result<Tensor> {
    if gate.dims() != x.dims() {
        return Err(crate::error::Error::shape(
            "gated_activation",
            format!(
                "gate {:?} and x {:?} must have one shape",
                gate.dims(),
                x.dims()
            ),
        ));
    }
    Ok(gate
        .contiguous()?
        .apply_op2_no_bwd(&x.contiguous()?, &Gated(act))?)
}

/// Fused gated activation kernel.
struct Gated(Act);

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "metarep-gated-activation"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, x) = (cpu_slice::<f32>(gs, gl)?, cpu_slice::<f32>(xs, xl)?);
        let out = match self.0 {
            Act::GeluTanh => par_map2(g, x, gelu_tanh),
            Act::Gelu => par_map2(g, x, gelu_erf),
            Act::Silu => par_map2(g, x, silu),
            Act::Relu => par_map2(g, x, relu),
        };
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `f(g[i]) · x[i]` over contiguous f32 views in parallel chunks, compiled for the widest SIMD
/// the CPU has.
fn par_map2(g: &[f32], x: &[f32], f: impl Fn(f32) -> f32 + Sync + Copy) -> Vec<f32> {
    #[inline(always)]
    fn body(d: &mut [f32], g: &[f32], x: &[f32], f: impl Fn(f32) -> f32) {
        for ((o, &g), &x) in d.iter_mut().zip(g).zip(x) {
            *o = f(g) * x;
        }
    }
    let mut dst = vec![0f32; g.len()];
    dst.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(d, (g, x))| widest(|| body(d, g, x, f)));
    dst
}

/// Softmax over the last axis in one parallel pass (CPU, f32/f16/bf16, no gradient); rows that
/// are entirely `-inf` give zeros rather than NaN.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)?)
}

/// Fused row softmax kernel.
struct SoftmaxLastDim;

fn softmax_rows(src: &[f32], n: usize) -> Vec<f32> {
    let mask = RowMask {
        bias: None,
        causal: None,
        scale: 1.0,
    };
    masked_rows(src, (1, src.len() / n.max(1), n), mask, RowOut::Softmax)
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

/// The mask of a [`masked_rows`] call: an additive bias and the causal rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowMask<'a> {
    /// The bias (0 or `-inf`, contiguous `[batch or 1, 1, q or 1, keys]`) with its batch and
    /// query strides in elements (0 where it is broadcast).
    pub bias: Option<(&'a [f32], usize, usize)>,
    /// With `Some(shift)`, query `i` sees keys `≤ i + shift` only (the others are not read).
    pub causal: Option<usize>,
    /// What the scores are multiplied by before the bias is added.
    pub scale: f32,
}

/// What [`masked_rows`] writes for each row of scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowOut {
    /// The softmax of `scale · scores + bias`: hidden keys 0, rows that see no key all 0.
    Softmax,
    /// `scale · scores + bias` itself, hidden keys `-inf` (the masked attention scores).
    Scores,
}

/// Row by row over the keys of contiguous f32 scores `[batch, heads, q, keys]` given as
/// `(heads, q, keys)`, under `mask`: the softmax of `scale · scores + bias` or those masked
/// scores (`out`); one pass per row, in parallel, reading only the keys a row sees (CPU, no
/// gradient).
pub(crate) fn masked_rows(
    src: &[f32],
    (heads, q, keys): (usize, usize, usize),
    mask: RowMask<'_>,
    out: RowOut,
) -> Vec<f32> {
    // Zeros come as fresh pages; the hidden keys of masked scores are filled row by row.
    let mut dst = vec![0f32; src.len()];
    if keys == 0 {
        return dst;
    }
    let rows_per_task = (CHUNK / keys).max(1);
    dst.par_chunks_mut(rows_per_task * keys)
        .zip(src.par_chunks(rows_per_task * keys))
        .enumerate()
        .for_each(|(task, (d, s))| {
            let first = task * rows_per_task;
            for (i, (dr, sr)) in d.chunks_mut(keys).zip(s.chunks(keys)).enumerate() {
                let row = first + i;
                let (qi, bi) = (row % q, row / (q * heads));
                let visible = mask.causal.map_or(keys, |shift| (qi + shift + 1).min(keys));
                let bias = mask
                    .bias
                    .map(|(b, bs, qs)| &b[bi * bs + qi * qs..][..visible]);
                let (dr, hidden) = dr.split_at_mut(visible);
                let sr = &sr[..visible];
                match out {
                    RowOut::Softmax => widest(|| softmax_row(dr, sr, bias, mask.scale)),
                    RowOut::Scores => {
                        widest(|| scaled_row(dr, sr, bias, mask.scale));
                        hidden.fill(f32::NEG_INFINITY);
                    }
                }
            }
        });
    dst
}

/// `out = scale · s + bias`.
#[inline(always)]
fn scaled_row(out: &mut [f32], s: &[f32], bias: Option<&[f32]>, scale: f32) {
    match bias {
        Some(b) => {
            for ((o, &x), &m) in out.iter_mut().zip(s).zip(b) {
                *o = x * scale + m;
            }
        }
        None => {
            for (o, &x) in out.iter_mut().zip(s) {
                *o = x * scale;
            }
        }
    }
}

/// `out = softmax(scale · s + bias)` (all zeros when every entry is `-inf`). Maxima and sums
/// run over 16 lanes so that the loops vectorise.
#[inline(always)]
fn softmax_row(out: &mut [f32], s: &[f32], bias: Option<&[f32]>, scale: f32) {
    const LANES: usize = 16;
    let larger = |m: f32, v: f32| if v > m { v } else { m };
    scaled_row(out, s, bias, scale);
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = out.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = larger(*l, v);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| larger(m, v));
    if max == f32::NEG_INFINITY {
        out.fill(0.0);
        return;
    }
    let mut sums = [0f32; LANES];
    let mut chunks = out.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, v) in sums.iter_mut().zip(c) {
            *v = fast_exp(*v - max);
            *a += *v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = fast_exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in out.iter_mut() {
        *v *= inv;
    }
}

/// Runs `f` compiled for AVX-512 or for AVX2 + FMA when the CPU has them (the crate is built
/// for baseline x86-64; `f`'s body is inlined into the wide copy and vectorised there).
#[inline(always)]
pub(crate) fn widest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn wide512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn wide256<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { wide512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { wide256(f) };
        }
    }
    f()
}

/// `x W + b` for `x: [m, k]`, `W: [k, n]` (any strides), `b: [n]` with the output starting as
/// the bias rows and the product accumulated onto it (CPU, f32, no gradient).
pub fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3_no_bwd(w, &b.contiguous()?, &LinearBias)?)
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
        let CpuStorage::F32(w) = s2 else {
            candle_core::bail!("metarep linear kernel: f32 only");
        };
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        let x = cpu_slice::<f32>(s1, l1)?;
        let b = cpu_slice::<f32>(s3, l3)?;
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
        gemm_into(
            &mut dst,
            View::row_major(x, m, k),
            View::strided(&w[off..], (k, n), (rs, cs)),
            true,
        );
        Ok((CpuStorage::F32(dst), Shape::from((m, n))))
    }
}

/// `a · b` over batches (f32, CPU): `a: [..., m, k]`, `b: [..., k, n]` with the same leading
/// dims, any strides within each matrix (a transposed view is read in place). The batch's
/// products are small (attention: `[heads, pos, d_head]`), so they run in parallel, one thread
/// each, instead of one after the other with every thread on each as candle's matmul does.
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = (batchable(a)?, batchable(b)?);
    Ok(a.apply_op2_no_bwd(&b, &BatchedMatmul)?)
}

/// `t` itself when its leading dims collapse to one batch stride (any strides in the last two
/// dims), else a contiguous copy.
fn batchable(t: &Tensor) -> Result<Tensor> {
    let (dims, strides) = (t.dims(), t.stride());
    let r = dims.len();
    let collapses = r >= 3
        && (0..r - 3).all(|i| dims[i + 1] <= 1 || strides[i] == strides[i + 1] * dims[i + 1]);
    Ok(if collapses {
        t.clone()
    } else {
        t.contiguous()?
    })
}

struct BatchedMatmul;

/// One operand of [`batched_matmul`] as a batch of strided matrices.
struct Matrices {
    /// Matrices in the batch.
    batch: usize,
    /// `(rows, columns)` of each.
    shape: (usize, usize),
    /// `(row, column)` strides within each.
    strides: (usize, usize),
    /// Storage offset of each matrix's first element.
    starts: Vec<usize>,
}

impl Matrices {
    fn of(l: &Layout) -> candle_core::Result<Self> {
        let (dims, strides) = (l.dims(), l.stride());
        let r = dims.len();
        if r < 3 {
            candle_core::bail!("batched_matmul: operands need rank ≥ 3, got {dims:?}");
        }
        let batch: usize = dims[..r - 2].iter().product();
        let step = strides[r - 3];
        Ok(Self {
            batch,
            shape: (dims[r - 2], dims[r - 1]),
            strides: (strides[r - 2], strides[r - 1]),
            starts: (0..batch).map(|i| l.start_offset() + i * step).collect(),
        })
    }

    /// The largest storage index any matrix reaches (0 for an empty operand).
    fn reach(&self) -> usize {
        let ((r, c), (rs, cs)) = (self.shape, self.strides);
        self.starts
            .last()
            .map_or(0, |&s| s + (r.max(1) - 1) * rs + (c.max(1) - 1) * cs)
    }
}

impl candle_core::CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "metarep-batched-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("batched_matmul: f32 only");
        };
        let (ma, mb) = (Matrices::of(l1)?, Matrices::of(l2)?);
        let ((m, k), (k2, n)) = (ma.shape, mb.shape);
        let (da, db) = (l1.dims(), l2.dims());
        if k != k2 || da[..da.len() - 2] != db[..db.len() - 2] {
            candle_core::bail!("batched_matmul: shapes {da:?} and {db:?} do not multiply");
        }
        // Every element each view reaches must lie inside its storage.
        if ma.batch > 0 && m * k * n > 0 && (ma.reach() >= a.len() || mb.reach() >= b.len()) {
            candle_core::bail!("batched_matmul: operand layout out of bounds");
        }
        let mut dst = vec![0f32; ma.batch * m * n];
        if m * n > 0 {
            profile::timed((ma.batch * m, n, k), || {
                dst.par_chunks_mut(m * n).enumerate().for_each(|(i, out)| {
                    gemm_serial(
                        out,
                        View::strided(&a[ma.starts[i]..], (m, k), ma.strides),
                        View::strided(&b[mb.starts[i]..], (k, n), mb.strides),
                    )
                })
            });
        }
        let mut shape = da[..da.len() - 2].to_vec();
        shape.extend([m, n]);
        Ok((CpuStorage::F32(dst), Shape::from(shape)))
    }
}

/// Per-row statistics of `x: [..., d]` for a norm: `[..., 2]` holding the mean (0 unless
/// `center`) and the scale `sqrt(mean((x − mean)²) + eps)`, in one parallel pass (f32, CPU).
pub fn norm_stats(x: &Tensor, center: bool, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op1_no_bwd(&NormStats { center, eps })?)
}

/// `(x − mean) / scale` for `stats` from [`norm_stats`] (possibly with a replaced scale), then
/// `⊙ w + b` when `wb` (`[2, d]`: `w` and `b` stacked) is given; one parallel pass (f32, CPU).
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
        if !matches!(storage, CpuStorage::F32(_)) {
            candle_core::bail!("metarep norm kernel: f32 only");
        }
        let x = cpu_slice::<f32>(storage, layout)?;
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
        let (x, st, wb) = (
            cpu_slice::<f32>(s1, l1)?,
            cpu_slice::<f32>(s2, l2)?,
            cpu_slice::<f32>(s3, l3)?,
        );
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn row_softmax_matches_the_definition_on_every_row_length() {
        for n in [1usize, 15, 16, 17, 100] {
            let rows = 3;
            let mut src: Vec<f32> = (0..rows * n)
                .map(|i| ((i * 37 % 23) as f32) - 11.0)
                .collect();
            src[n / 2] = f32::NEG_INFINITY; // row 0: one hidden entry
            src[2 * n..].fill(f32::NEG_INFINITY); // row 2: nothing visible
            let got = softmax_rows(&src, n);
            for (r, row) in src.chunks(n).enumerate() {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (c, &want) in e.iter().enumerate() {
                    let want = if max == f32::NEG_INFINITY {
                        0.0
                    } else {
                        want / sum
                    };
                    let g = got[r * n + c] as f64;
                    assert!(
                        (g - want).abs() < 1e-6,
                        "n {n}, row {r}, col {c}: {g} vs {want}"
                    );
                }
            }
        }
    }
}

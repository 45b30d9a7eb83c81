//! The dense encoder of ReLU-family SAEs as one candle op: `f = act(x·wᵀ + b)` with `x`
//! `[batch, d]`, `w` `[n, d]` (rows are latents), `b` `[n]` and `act` ReLU or the identity.
//!
//! Why an op of its own: candle's generic matmul backward always forms the gradient of both
//! factors, but an SAE's input needs none — that is a whole `batch × n × d` matmul per step
//! saved. The forward is one gemm plus one fused pass (bias, ReLU); the backward masks the
//! incoming gradient by `f > 0` and sums it over rows in one fused pass, then forms
//! `∂w = gᵀ·x` and, only when `x` is tracked, `∂x = g·w`.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu::{check_cpu, check_float, cpu_slice, dims2, same_dtype, Real};
use crate::error::{Error, Result};
use crate::matmul::{counted_matmul, gemm_into, View};

/// `act(x·wᵀ + bias)` `[batch, n]`, differentiable in all three (gradients only for tracked
/// arguments). `x`: `[batch, d]`, `w`: `[n, d]`, `bias`: `[n]`; f32 or f64, CPU.
pub fn linear_encode(x: &Tensor, w: &Tensor, bias: &Tensor, relu: bool) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return crate::portable::linear_encode(x, w, bias, relu);
    }
    const OP: &str = "linear_encode";
    for t in [x, w, bias] {
        check_cpu(OP, t)?;
    }
    let dtype = check_float(OP, "input", x)?;
    same_dtype(OP, dtype, &[("weight", w), ("bias", bias)])?;
    let (_, d) = dims2(OP, "input", x)?;
    let (n, dw) = dims2(OP, "weight", w)?;
    if dw != d {
        return Err(Error::shape(
            OP,
            format!("input has {d} columns, weight rows have {dw}"),
        ));
    }
    if bias.dims() != [n] {
        return Err(Error::shape(
            OP,
            format!("bias has shape {:?}, expected [{n}]", bias.dims()),
        ));
    }
    Ok(x.contiguous()?
        .apply_op3(&w.contiguous()?, &bias.contiguous()?, Encode { relu })?)
}

struct Encode {
    relu: bool,
}

/// Rows per work item of the element-wise passes.
const ROWS: usize = 16;

impl Encode {
    fn forward<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        bias: &[T],
        (b, d, n): (usize, usize, usize),
    ) -> Vec<T> {
        let mut out = vec![T::zero(); b * n];
        gemm_into(
            &mut out,
            View::row_major(x, b, d),
            View::transposed(w, n, d),
            false,
        );
        let relu = self.relu;
        out.par_chunks_mut(ROWS * n).for_each(|rows| {
            for row in rows.chunks_mut(n) {
                for (v, &bi) in row.iter_mut().zip(bias) {
                    let s = *v + bi;
                    *v = if relu && s < T::zero() { T::zero() } else { s };
                }
            }
        });
        out
    }

    /// The pre-activation gradient (`g` masked by `f > 0` under ReLU) and its column sums (the
    /// bias gradient).
    fn mask_and_sum<T: Real>(&self, g: &[T], f: &[T], n: usize) -> (Vec<T>, Vec<T>) {
        let mut gp = g.to_vec();
        let sum = mask_and_sum(&mut gp, f, None, self.relu, n);
        (gp, sum)
    }
}

/// Over `grad` and the codes `f` (both `[batch, n]`): `g ← g + add` (per column, when given),
/// then `g ← 0` where `f ≤ 0` (when `relu`); returns each column's sum. Partial sums over fixed
/// row blocks are added in block order, so the result does not depend on the thread count.
pub(crate) fn mask_and_sum<T: Real>(
    grad: &mut [T],
    f: &[T],
    add: Option<&[T]>,
    relu: bool,
    n: usize,
) -> Vec<T> {
    if n == 0 {
        return Vec::new();
    }
    let partial: Vec<Vec<T>> = grad
        .par_chunks_mut(ROWS * n)
        .zip(f.par_chunks(ROWS * n))
        .map(|(gc, fc)| {
            let mut acc = vec![T::zero(); n];
            for (grow, frow) in gc.chunks_mut(n).zip(fc.chunks(n)) {
                for (j, ((gv, &fv), a)) in grow.iter_mut().zip(frow).zip(acc.iter_mut()).enumerate()
                {
                    if relu && fv <= T::zero() {
                        *gv = T::zero();
                    } else if let Some(add) = add {
                        *gv += add[j];
                    }
                    *a += *gv;
                }
            }
            acc
        })
        .collect();
    let mut sum = vec![T::zero(); n];
    for p in partial {
        sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
    }
    sum
}

impl CustomOp3 for Encode {
    fn name(&self) -> &'static str {
        "linear_encode"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, d) = lx.shape().dims2()?;
        let (n, _) = lw.shape().dims2()?;
        let out = match sx {
            CpuStorage::F32(_) => f32::to_cpu_storage_owned(self.forward::<f32>(
                cpu_slice(sx, lx)?,
                cpu_slice(sw, lw)?,
                cpu_slice(sb, lb)?,
                (b, d, n),
            )),
            CpuStorage::F64(_) => f64::to_cpu_storage_owned(self.forward::<f64>(
                cpu_slice(sx, lx)?,
                cpu_slice(sw, lw)?,
                cpu_slice(sb, lb)?,
                (b, d, n),
            )),
            _ => candle_core::bail!("linear_encode: expected f32 or f64"),
        };
        Ok((out, Shape::from((b, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (b, n) = res.dims2()?;
        let (gs, gl) = grad.storage_and_layout();
        let (fs, fl) = res.storage_and_layout();
        let (Storage::Cpu(gs), Storage::Cpu(fs)) = (&*gs, &*fs) else {
            candle_core::bail!("linear_encode: backward expects CPU tensors");
        };
        let (gp, gb) = match gs {
            CpuStorage::F32(_) => {
                let (gp, gb) = self.mask_and_sum::<f32>(cpu_slice(gs, gl)?, cpu_slice(fs, fl)?, n);
                (
                    Tensor::from_vec(gp, (b, n), res.device())?,
                    Tensor::from_vec(gb, n, res.device())?,
                )
            }
            CpuStorage::F64(_) => {
                let (gp, gb) = self.mask_and_sum::<f64>(cpu_slice(gs, gl)?, cpu_slice(fs, fl)?, n);
                (
                    Tensor::from_vec(gp, (b, n), res.device())?,
                    Tensor::from_vec(gb, n, res.device())?,
                )
            }
            _ => candle_core::bail!("linear_encode: expected f32 or f64"),
        };
        let gw = if w.track_op() {
            Some(counted_matmul(&gp.t()?, x)?)
        } else {
            None
        };
        let gx = if x.track_op() {
            Some(counted_matmul(&gp, w)?)
        } else {
            None
        };
        Ok((gx, gw, bias.track_op().then_some(gb)))
    }
}

/// `[n]`: the sums over rows of `x` `[batch, n]` (differentiable: the gradient is the upstream
/// gradient repeated on every row). A parallel contiguous reduction — candle's `sum(0)` walks
/// the columns with a stride.
pub fn column_sums(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return crate::portable::column_sums(x);
    }
    const OP: &str = "column_sums";
    check_cpu(OP, x)?;
    check_float(OP, "input", x)?;
    dims2(OP, "input", x)?;
    Ok(x.contiguous()?.apply_op1(ColumnSums)?)
}

/// For every column of `x` `[batch, n]`, the number of rows where it is > 0.
pub fn count_positive(x: &Tensor) -> Result<Vec<u64>> {
    if !x.device().is_cpu() {
        return crate::portable::count_positive(x);
    }
    const OP: &str = "count_positive";
    check_cpu(OP, x)?;
    check_float(OP, "input", x)?;
    let (_, n) = dims2(OP, "input", x)?;
    let x = x.contiguous()?;
    let (s, l) = x.storage_and_layout();
    let Storage::Cpu(s) = &*s else {
        return Err(Error::shape(OP, "expected CPU storage"));
    };
    Ok(match s {
        CpuStorage::F32(_) => {
            reduce_rows::<f32, u64>(cpu_slice(s, l)?, n, |a, v| *a += (v > 0.0) as u64)
        }
        _ => reduce_rows::<f64, u64>(cpu_slice(s, l)?, n, |a, v| *a += (v > 0.0) as u64),
    })
}

/// Column-wise fold of a row-major `[rows, n]` slice: per-chunk partial results, combined in
/// chunk order (independent of the thread count).
fn reduce_rows<T: Real, A: Copy + Default + Send + std::ops::AddAssign>(
    x: &[T],
    n: usize,
    f: impl Fn(&mut A, T) + Sync,
) -> Vec<A> {
    let mut out = vec![A::default(); n];
    if n == 0 {
        return out;
    }
    let parts: Vec<Vec<A>> = x
        .par_chunks(ROWS * n)
        .map(|c| {
            let mut acc = vec![A::default(); n];
            for row in c.chunks(n) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    f(a, v);
                }
            }
            acc
        })
        .collect();
    for p in parts {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
    out
}

struct ColumnSums;

impl candle_core::CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column_sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, n) = l.shape().dims2()?;
        let out = match s {
            CpuStorage::F32(_) => {
                f32::to_cpu_storage_owned(reduce_rows::<f32, f32>(cpu_slice(s, l)?, n, |a, v| {
                    *a += v
                }))
            }
            CpuStorage::F64(_) => {
                f64::to_cpu_storage_owned(reduce_rows::<f64, f64>(cpu_slice(s, l)?, n, |a, v| {
                    *a += v
                }))
            }
            _ => candle_core::bail!("column_sums: expected f32 or f64"),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.unsqueeze(0)?.broadcast_as(arg.shape())?))
    }
}

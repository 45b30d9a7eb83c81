//! Shared CPU plumbing: argument checks, contiguous slice access, dtype dispatch and the inner
//! loops (`dot`, `axpy`) every kernel uses.

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, WithDType};
use num_traits::Float;

use crate::error::{Error, Result};

/// Index value that marks an empty slot: every kernel skips it (no contribution, zero output,
/// no gradient).
pub const INACTIVE: u32 = u32::MAX;

/// A float element type the kernels run on (`f32` or `f64`).
pub trait Real: WithDType + Float {}
impl Real for f32 {}
impl Real for f64 {}

/// Errors unless `t` lives on the CPU.
pub(crate) fn check_cpu(op: &'static str, t: &Tensor) -> Result<()> {
    if t.device().is_cpu() {
        Ok(())
    } else {
        Err(Error::Device {
            op,
            device: format!("{:?}", t.device().location()),
        })
    }
}

/// Errors unless `t` lives on the CPU or is one of the CUDA tensors [`crate::cuda`] takes.
pub(crate) fn check_device(op: &'static str, t: &Tensor) -> Result<()> {
    if crate::cuda::native(t) || (t.device().is_cuda() && t.dtype() == DType::U32) {
        return Ok(());
    }
    check_cpu(op, t)
}

/// Checks that `t` has rank 2 and returns its dims.
pub(crate) fn dims2(op: &'static str, name: &str, t: &Tensor) -> Result<(usize, usize)> {
    match t.dims() {
        &[a, b] => Ok((a, b)),
        d => Err(Error::shape(
            op,
            format!("{name} must have rank 2, got shape {d:?}"),
        )),
    }
}

/// Checks that `t` is f32 or f64.
pub(crate) fn check_float(op: &'static str, name: &str, t: &Tensor) -> Result<DType> {
    match t.dtype() {
        d @ (DType::F32 | DType::F64) => Ok(d),
        d => Err(Error::shape(
            op,
            format!("{name} must be f32 or f64, got {d:?}"),
        )),
    }
}

/// Checks that every tensor in `ts` has dtype `dtype`.
pub(crate) fn same_dtype(op: &'static str, dtype: DType, ts: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in ts {
        if t.dtype() != dtype {
            return Err(Error::shape(
                op,
                format!("{name} has dtype {:?}, expected {dtype:?}", t.dtype()),
            ));
        }
    }
    Ok(())
}

/// Checks `indices` ([rows, slots] u32, CPU or CUDA) and that each entry is `< n` or
/// [`INACTIVE`]; returns (rows, slots). On CUDA the largest active index is checked there, and
/// only a failing batch is copied to the CPU to name the entry.
pub(crate) fn check_indices(
    op: &'static str,
    indices: &Tensor,
    n: usize,
) -> Result<(usize, usize)> {
    check_device(op, indices)?;
    let (rows, slots) = dims2(op, "indices", indices)?;
    if indices.dtype() != DType::U32 {
        return Err(Error::shape(
            op,
            format!("indices must be u32, got {:?}", indices.dtype()),
        ));
    }
    if rows.saturating_mul(slots) > u32::MAX as usize {
        return Err(Error::shape(
            op,
            format!("{rows} × {slots} slots exceed the 2^32 a batch may hold"),
        ));
    }
    if !indices.device().is_cpu() {
        if rows * slots == 0 {
            return Ok((rows, slots));
        }
        let active = indices.ne(INACTIVE)?;
        let max = active
            .where_cond(indices, &indices.zeros_like()?)?
            .flatten_all()?
            .max(0)?
            .to_scalar::<u32>()?;
        if (max as usize) < n {
            return Ok((rows, slots));
        }
        return check_indices(op, &indices.to_device(&candle_core::Device::Cpu)?, n);
    }
    let indices = indices.contiguous()?;
    let (storage, layout) = indices.storage_and_layout();
    let data = slice::<u32>(&storage, layout)?;
    if let Some(p) = data.iter().position(|&i| i != INACTIVE && i as usize >= n) {
        return Err(Error::Index {
            op,
            index: data[p],
            row: p / slots.max(1),
            slot: p % slots.max(1),
            rows: n,
        });
    }
    Ok((rows, slots))
}

/// The contiguous CPU slice of `storage` described by `layout`.
pub(crate) fn slice<'a, T: WithDType>(storage: &'a Storage, layout: &Layout) -> Result<&'a [T]> {
    match storage {
        Storage::Cpu(cpu) => Ok(cpu_slice(cpu, layout)?),
        _ => Err(Error::shape("slice", "expected CPU storage")),
    }
}

/// The contiguous slice of a CPU storage described by `layout` (candle error if strided).
pub(crate) fn cpu_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("metarep-kernels: argument must be contiguous"),
    }
}

/// Independent partial sums in [`dot`]: enough to hide the add latency at 8-wide SIMD.
const LANES: usize = 32;

/// `Σ a[i]·b[i]` with [`LANES`] independent accumulators combined in a fixed tree (a fixed
/// summation order, so results do not depend on the thread count or the SIMD width).
#[inline(always)]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    let mut s = acc[0];
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

/// `y += alpha·x`.
#[inline(always)]
pub(crate) fn axpy<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * *xi;
    }
}

/// Runs `f` inside a function compiled for AVX2 when the CPU has it, so that the `#[inline(always)]`
/// loops it calls are vectorised 8-wide; same operations in the same order either way.
#[inline(always)]
pub(crate) fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { run(f) };
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum_for_every_remainder_length() {
        for n in 0..20 {
            let a: Vec<f64> = (0..n).map(|i| i as f64 * 0.5 - 2.0).collect();
            let b: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-12, "n = {n}");
        }
    }
}

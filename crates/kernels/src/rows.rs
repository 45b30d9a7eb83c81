//! In-place row operations on weight matrices.

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

use crate::cpu::{check_device, check_float, dims2, dot, Real};
use crate::error::Result;

/// Scales every row of `w` (`[n, d]`, contiguous) to unit L2 norm in place; all-zero rows
/// are left as they are.
pub fn normalize_rows_(w: &Tensor) -> Result<()> {
    if !w.device().is_cpu() && !crate::cuda::native(w) {
        return crate::portable::normalize_rows_(w);
    }
    const OP: &str = "normalize_rows_";
    check_device(OP, w)?;
    check_float(OP, "weight", w)?;
    let (_, d) = dims2(OP, "weight", w)?;
    w.inplace_op1(&NormalizeRows { d })?;
    Ok(())
}

struct NormalizeRows {
    d: usize,
}

impl NormalizeRows {
    fn run<T: Real>(&self, w: &mut [T]) {
        if self.d == 0 {
            return;
        }
        w.par_chunks_mut(self.d).for_each(|row| {
            let norm = dot(row, row).sqrt();
            if norm > T::zero() {
                row.iter_mut().for_each(|x| *x /= norm);
            }
        });
    }
}

impl InplaceOp1 for NormalizeRows {
    fn name(&self) -> &'static str {
        "normalize_rows_"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let (a, b) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("normalize_rows_: weight must be contiguous".into())
        })?;
        match s {
            CpuStorage::F32(v) => self.run::<f32>(&mut v[a..b]),
            CpuStorage::F64(v) => self.run::<f64>(&mut v[a..b]),
            _ => candle_core::bail!("normalize_rows_: expected f32 or f64"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut candle_core::CudaStorage, l: &Layout) -> candle_core::Result<()> {
        crate::cuda::normalize_rows(s, l)
    }
}

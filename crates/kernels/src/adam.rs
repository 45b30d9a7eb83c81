//! A fused, in-place AdamW update: one pass over the first moment, one over the second and one
//! over the parameter, with no temporaries. Same arithmetic as `metarep_core::optim::AdamW::step`
//! (`m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p(1 − lr·wd) − lr·(m/c₁)/(√(v/c₂) + ε)`
//! with `c = 1 − βᵗ`), so a trainer can keep that optimiser's state and checkpoint format and
//! swap only the update.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;

use crate::cpu::{check_device, check_float, cpu_slice, same_dtype, Real};
use crate::error::{Error, Result};

/// AdamW hyper-parameters of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// `β₁`.
    pub beta1: f64,
    /// `β₂`.
    pub beta2: f64,
    /// `ε`.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Step number after this update (1 for the first), for the bias corrections.
    pub t: usize,
}

/// Updates `param`, `m` and `v` in place from `grad` (all the same shape and dtype, contiguous,
/// CPU; `param` is usually a `Var`'s tensor).
pub fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    step: &AdamStep,
) -> Result<()> {
    if !param.device().is_cpu() && !crate::cuda::native(param) {
        return crate::portable::adamw_update(param, grad, m, v, step);
    }
    const OP: &str = "adamw_update";
    for (name, t) in [("param", param), ("grad", grad), ("m", m), ("v", v)] {
        check_device(OP, t)?;
        if t.dims() != param.dims() {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} has shape {:?}, param has {:?}",
                    t.dims(),
                    param.dims()
                ),
            ));
        }
        if !t.is_contiguous() {
            return Err(Error::shape(OP, format!("{name} must be contiguous")));
        }
    }
    let dtype = check_float(OP, "param", param)?;
    same_dtype(OP, dtype, &[("grad", grad), ("m", m), ("v", v)])?;
    if step.t == 0 {
        return Err(Error::shape(OP, "step t must be ≥ 1"));
    }
    m.inplace_op2(
        grad,
        &Moment {
            beta: step.beta1,
            square: false,
        },
    )?;
    v.inplace_op2(
        grad,
        &Moment {
            beta: step.beta2,
            square: true,
        },
    )?;
    param.inplace_op3(m, v, &Update(*step))?;
    Ok(())
}

/// Chunk length of the parallel loops (large enough to amortise scheduling).
const CHUNK: usize = 1 << 14;

fn zip_mut<T: Real>(dst: &mut [T], a: &[T], f: impl Fn(&mut T, T) + Sync) {
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .for_each(|(d, a)| d.iter_mut().zip(a).for_each(|(d, &a)| f(d, a)));
}

/// The contiguous part of a destination vector described by `l`.
fn dst_range<'a, T>(v: &'a mut [T], l: &Layout) -> candle_core::Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => candle_core::bail!("adamw_update: destination must be contiguous"),
    }
}

/// `m ← βm + (1−β)g` (or `g²` for the second moment).
struct Moment {
    beta: f64,
    square: bool,
}

impl Moment {
    fn run<T: Real>(&self, m: &mut [T], g: &[T]) {
        let b = T::from_f64(self.beta);
        let c = T::from_f64(1.0 - self.beta);
        if self.square {
            zip_mut(m, g, |m, g| *m = *m * b + g * g * c);
        } else {
            zip_mut(m, g, |m, g| *m = *m * b + g * c);
        }
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw_moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        match dst {
            CpuStorage::F32(m) => self.run::<f32>(dst_range(m, dl)?, cpu_slice(g, gl)?),
            CpuStorage::F64(m) => self.run::<f64>(dst_range(m, dl)?, cpu_slice(g, gl)?),
            _ => candle_core::bail!("adamw_update: expected f32 or f64"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        crate::cuda::adam_moment(dst, dl, (g, gl), self.beta, self.square)
    }
}

/// `p ← p(1 − lr·wd) − lr·(m/c₁)/(√(v/c₂) + ε)`.
struct Update(AdamStep);

impl Update {
    /// `[c1, c2, decay, lr, eps]`: the bias corrections `1 − βᵗ`, the weight decay factor
    /// `1 − lr·λ`, the learning rate and ε.
    fn coefficients(&self) -> [f64; 5] {
        let s = &self.0;
        [
            1.0 - s.beta1.powi(s.t as i32),
            1.0 - s.beta2.powi(s.t as i32),
            1.0 - s.lr * s.weight_decay,
            s.lr,
            s.eps,
        ]
    }

    fn run<T: Real>(&self, p: &mut [T], m: &[T], v: &[T]) {
        let [c1, c2, decay, lr, eps] = self.coefficients().map(T::from_f64);
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    let update = (m / c1) / ((v / c2).sqrt() + eps);
                    *p = *p * decay - update * lr;
                }
            });
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw_update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        match dst {
            CpuStorage::F32(p) => {
                self.run::<f32>(dst_range(p, dl)?, cpu_slice(m, ml)?, cpu_slice(v, vl)?)
            }
            CpuStorage::F64(p) => {
                self.run::<f64>(dst_range(p, dl)?, cpu_slice(m, ml)?, cpu_slice(v, vl)?)
            }
            _ => candle_core::bail!("adamw_update: expected f32 or f64"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        m: &candle_core::CudaStorage,
        ml: &Layout,
        v: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        crate::cuda::adam_update(dst, dl, (m, ml), (v, vl), self.coefficients())
    }
}

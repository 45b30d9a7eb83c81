//! JumpReLU's straight-through pieces (Rajamanoharan et al. 2024): `jump_relu(z, θ) = z·H(z−θ)`
//! and `step(z, θ) = H(z−θ)`, whose gradients with respect to θ use the pseudo-derivative
//! `∂H(z−θ)/∂θ ≈ −(1/ε)·K((z−θ)/ε)` with the rectangle kernel `K(u) = 1[|u| ≤ ½]` of width
//! `ε` (the bandwidth). The gradient of `jump_relu` in `z` is exact (`H(z−θ)`); `step` passes
//! none to `z`. `z`: `[batch, n]`, `θ`: `[n]`, f32 or f64, CPU.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// `z · H(z − θ)` with the straight-through gradient for `θ`.
pub fn jump_relu(z: &Tensor, theta: &Tensor, bandwidth: f64) -> Result<Tensor> {
    check(z, theta)?;
    Ok(z.contiguous()?.apply_op2(
        &theta.contiguous()?,
        Jump {
            bandwidth,
            gate_only: false,
        },
    )?)
}

/// `H(z − θ)` (the L0 count's summand) with the straight-through gradient for `θ`.
pub fn step(z: &Tensor, theta: &Tensor, bandwidth: f64) -> Result<Tensor> {
    check(z, theta)?;
    Ok(z.contiguous()?.apply_op2(
        &theta.contiguous()?,
        Jump {
            bandwidth,
            gate_only: true,
        },
    )?)
}

fn check(z: &Tensor, theta: &Tensor) -> Result<()> {
    let (_, n) = z.dims2()?;
    if theta.dims() != [n] || theta.dtype() != z.dtype() {
        return Err(Error::shape(
            "jump threshold",
            format!("[{n}] {:?}", z.dtype()),
            format!("{:?} {:?}", theta.dims(), theta.dtype()),
        ));
    }
    Ok(())
}

struct Jump {
    bandwidth: f64,
    /// `true`: `H(z−θ)`; `false`: `z·H(z−θ)`.
    gate_only: bool,
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("jump_relu: arguments must be contiguous"),
    }
}

impl Jump {
    fn fwd<T: WithDType + PartialOrd>(&self, z: &[T], th: &[T]) -> Vec<T> {
        let n = th.len().max(1);
        z.iter()
            .enumerate()
            .map(|(p, &v)| {
                let on = v > th[p % n];
                match (on, self.gate_only) {
                    (false, _) => T::zero(),
                    (true, true) => T::one(),
                    (true, false) => v,
                }
            })
            .collect()
    }

    /// (grad z, grad θ) for upstream gradient `g`; θ's is summed over rows in row order.
    fn bwd<T: metarep_kernels::Real>(&self, z: &[T], th: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
        let n = th.len();
        let eps = T::from_f64(self.bandwidth);
        let half = T::from_f64(0.5);
        let gz: Vec<T> = if self.gate_only {
            vec![T::zero(); z.len()]
        } else {
            z.iter()
                .zip(g)
                .enumerate()
                .map(|(p, (&v, &gi))| if v > th[p % n] { gi } else { T::zero() })
                .collect()
        };
        // Per-chunk partial sums, then added in chunk order (thread-count independent).
        const ROWS: usize = 64;
        let parts: Vec<Vec<T>> = z
            .par_chunks(ROWS * n)
            .zip(g.par_chunks(ROWS * n))
            .map(|(zc, gc)| {
                let mut acc = vec![T::zero(); n];
                for (p, (&v, &gi)) in zc.iter().zip(gc).enumerate() {
                    let i = p % n;
                    let u = (v - th[i]) / eps;
                    if u.abs() <= half {
                        let scale = if self.gate_only { T::one() } else { th[i] };
                        acc[i] -= gi * scale / eps;
                    }
                }
                acc
            })
            .collect();
        let mut gt = vec![T::zero(); n];
        for part in parts {
            for (a, b) in gt.iter_mut().zip(part) {
                *a += b;
            }
        }
        (gz, gt)
    }
}

impl CustomOp2 for Jump {
    fn name(&self) -> &'static str {
        "jump_relu"
    }

    fn cpu_fwd(
        &self,
        sz: &CpuStorage,
        lz: &Layout,
        st: &CpuStorage,
        lt: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match sz {
            CpuStorage::F32(_) => CpuStorage::F32(self.fwd(slice::<f32>(sz, lz)?, slice(st, lt)?)),
            CpuStorage::F64(_) => CpuStorage::F64(self.fwd(slice::<f64>(sz, lz)?, slice(st, lt)?)),
            _ => candle_core::bail!("jump_relu: expected f32 or f64"),
        };
        Ok((out, lz.shape().clone()))
    }

    fn bwd(
        &self,
        z: &Tensor,
        theta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let shape = z.shape().clone();
        let (zv, tv, gv) = (
            z.flatten_all()?,
            theta.clone(),
            grad.contiguous()?.flatten_all()?,
        );
        let (gz, gt) = match z.dtype() {
            candle_core::DType::F32 => {
                let (a, b) = self.bwd(
                    &zv.to_vec1::<f32>()?,
                    &tv.to_vec1::<f32>()?,
                    &gv.to_vec1::<f32>()?,
                );
                (
                    Tensor::from_vec(a, &shape, z.device())?,
                    Tensor::from_vec(b, theta.dims(), z.device())?,
                )
            }
            _ => {
                let (a, b) = self.bwd(
                    &zv.to_vec1::<f64>()?,
                    &tv.to_vec1::<f64>()?,
                    &gv.to_vec1::<f64>()?,
                );
                (
                    Tensor::from_vec(a, &shape, z.device())?,
                    Tensor::from_vec(b, theta.dims(), z.device())?,
                )
            }
        };
        Ok((
            (!self.gate_only && z.track_op()).then_some(gz),
            theta.track_op().then_some(gt),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn values_and_straight_through_gradients() {
        let z = Var::from_tensor(
            &Tensor::new(&[[0.5f64, 1.0, 2.0], [1.05, 0.0, 3.0]], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let th =
            Var::from_tensor(&Tensor::new(&[1.0f64, 0.5, 2.5], &Device::Cpu).unwrap()).unwrap();
        let f = jump_relu(z.as_tensor(), th.as_tensor(), 0.2).unwrap();
        assert_eq!(
            f.to_vec2::<f64>().unwrap(),
            vec![vec![0.0, 1.0, 0.0], vec![1.05, 0.0, 3.0]]
        );
        let g = f.sum_all().unwrap().backward().unwrap();
        // dz = H(z − θ); dθ_i = Σ −θ_i/ε over rows with |z − θ| ≤ ε/2 (only z = 1.05 vs θ = 1).
        assert_eq!(
            g.get(z.as_tensor()).unwrap().to_vec2::<f64>().unwrap(),
            vec![vec![0.0, 1.0, 0.0], vec![1.0, 0.0, 1.0]]
        );
        let gt = g.get(th.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        assert!(
            (gt[0] + 5.0).abs() < 1e-12 && gt[1] == 0.0 && gt[2] == 0.0,
            "{gt:?}"
        );
        let l0 = step(z.as_tensor(), th.as_tensor(), 0.2).unwrap();
        assert_eq!(l0.sum_all().unwrap().to_scalar::<f64>().unwrap(), 3.0);
        let g = l0.sum_all().unwrap().backward().unwrap();
        assert!(g.get(z.as_tensor()).is_none());
        assert!((g.get(th.as_tensor()).unwrap().to_vec1::<f64>().unwrap()[0] + 5.0).abs() < 1e-12);
        assert!(jump_relu(
            z.as_tensor(),
            &Tensor::zeros(2, candle_core::DType::F64, &Device::Cpu).unwrap(),
            0.1
        )
        .is_err());
    }
}

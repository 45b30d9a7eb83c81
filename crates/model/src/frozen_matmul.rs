//! `a · w` where only `a` takes part in autograd: the product of activations that carry a
//! gradient with frozen weights (a pretrained model under a trained adapter, e.g. GistNet
//! training through SmolLM2).
//!
//! candle's matmul backward computes the gradient of both operands, so every frozen weight
//! matrix would get a weight-sized gradient (a product as costly as the forward one, plus a
//! zero-filled buffer and an add) that nothing reads. Here the product is computed without a
//! graph and re-attached to `a` by a custom op whose backward gives `a` its gradient
//! `grad · wᵀ` and `w` none.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::error::Result;

/// `a.matmul(w)` (`[..., m, k]` by `[..., k, n]`, equal batch dimensions as for candle's matmul)
/// for a tracked `a` and an untracked `w`: the same values, and in the backward pass only `a`'s
/// gradient.
pub fn matmul_frozen_rhs(a: &Tensor, w: &Tensor) -> Result<Tensor> {
    let product = a.detach().matmul(w)?.contiguous()?;
    Ok(product.apply_op2(a, AttachToLhs { w: w.clone() })?)
}

/// The op: the forward pass returns its first operand (the product computed without a graph);
/// the backward pass maps the product's gradient to its second operand, the product's lhs.
struct AttachToLhs {
    w: Tensor,
}

/// A copy of a whole contiguous storage (the product is fresh, so it spans its storage).
fn copy_whole<S: BackendStorage>(s: &S, l: &Layout) -> candle_core::Result<(S, Shape)> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("matmul_frozen_rhs: the product must be a fresh contiguous tensor");
    }
    Ok((s.try_clone(l)?, l.shape().clone()))
}

impl CustomOp2 for AttachToLhs {
    fn name(&self) -> &'static str {
        "metarep-matmul-frozen-rhs"
    }

    fn cpu_fwd(
        &self,
        product: &CpuStorage,
        l: &Layout,
        _lhs: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        copy_whole(product, l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        product: &candle_core::CudaStorage,
        l: &Layout,
        _lhs: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        copy_whole(product, l)
    }

    fn bwd(
        &self,
        _product: &Tensor,
        _lhs: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((None, Some(grad.matmul(&self.w.t()?)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The values and `a`'s gradient equal the plain matmul's, for a 2-D and a batched `a`.
    #[test]
    fn same_values_and_lhs_gradient_as_matmul() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, w_shape) in [(vec![4, 5], vec![5, 3]), (vec![2, 4, 5], vec![2, 5, 3])] {
            let w = Tensor::randn(0f32, 1.0, w_shape, &dev)?;
            let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape.clone(), &dev)?)?;
            let probe = Tensor::randn(0f32, 1.0, a.dims()[..a.rank() - 1].to_vec(), &dev)?;
            let weigh = |y: &Tensor| -> Result<Tensor> {
                Ok(y.sum(candle_core::D::Minus1)?.mul(&probe)?.sum_all()?)
            };
            let plain = a.as_tensor().matmul(&w)?;
            let frozen = matmul_frozen_rhs(a.as_tensor(), &w)?;
            let gap = (&plain - &frozen)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(gap, 0.0, "values differ for a of shape {shape:?}");
            let g_plain = weigh(&plain)?.backward()?;
            let g_frozen = weigh(&frozen)?.backward()?;
            let (gp, gf) = (
                g_plain.get(a.as_tensor()).expect("plain gradient"),
                g_frozen.get(a.as_tensor()).expect("frozen gradient"),
            );
            let gap = (gp - gf)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                gap < 1e-6,
                "gradients differ by {gap} for a of shape {shape:?}"
            );
            assert!(
                g_frozen.get(&w).is_none(),
                "the frozen weight got a gradient"
            );
        }
        Ok(())
    }
}

//! Forward-pass ops for models on a GPU: the attention softmax with its scale and mask applied
//! inside the kernel ([`masked_softmax`], so no `[batch, heads, q, keys]` mask is ever built or
//! added), a bias added to the rows of a product ([`add_bias_rows`]) and the swap of the head
//! and position axes ([`swap_axes12`]; candle's strided copy computes a 4-d index per element).
//! With the `cuda` feature, CUDA tensors in f32, f16 or bf16 without a gradient to track run one
//! kernel each; [`masked_softmax`] also has one for f32 CPU tensors without a gradient (which
//! reads only the keys a causal query sees), as do the masked scores it normalises
//! ([`masked_scores`], what a hook on the attention scores sees); everything else gets the same
//! values from candle ops (differentiable).
//!
//! Shapes: scores `[batch, heads, q, keys]`; a mask bias `[batch or 1, 1, q or 1, keys]` in f32
//! holding 0 (visible) or `-inf` (hidden); a product `[..., n]` and its bias `[n]`.

use candle_core::{CustomOp1, DType, Device, InplaceOp2, Layout, Shape, Tensor, D};

use crate::cpu::cpu_slice;
use crate::error::{Error, Result};
use crate::forward::{masked_rows, RowMask, RowOut};

/// `[1, 1, q, keys]` in `dtype`: 0 where `key ≤ query + shift`, `-inf` elsewhere (the causal
/// rule for `q` queries after `shift` cached keys).
pub fn causal_bias(
    q: usize,
    keys: usize,
    shift: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let query = Tensor::arange(0f32, q as f32, device)?.reshape((q, 1))?;
    let key = Tensor::arange(0f32, keys as f32, device)?.reshape((1, keys))?;
    let visible = key.broadcast_le(&(query + shift as f64)?)?;
    let zeros = Tensor::zeros((q, keys), DType::F32, device)?;
    let hidden = Tensor::full(f32::NEG_INFINITY, (q, keys), device)?;
    Ok(visible
        .where_cond(&zeros, &hidden)?
        .reshape((1, 1, q, keys))?
        .to_dtype(dtype)?)
}

/// Softmax over the keys of `scale · scores` (`[batch, heads, q, keys]`) after adding `bias`
/// (f32 `[batch or 1, 1, q or 1, keys]`) and, with `causal = Some(shift)`, hiding keys past
/// `query + shift`; accumulated in f32, returned in the scores' dtype. Rows with no visible key
/// give zeros. One kernel on CUDA and, for f32, on the CPU (no gradient to track).
pub fn masked_softmax(
    scores: &Tensor,
    bias: Option<&Tensor>,
    causal: Option<usize>,
    scale: f64,
) -> Result<Tensor> {
    check_mask("masked_softmax", scores, bias)?;
    if use_cuda_kernel(scores) || cpu_kernel(scores, bias) {
        let op = MaskedRows::new(bias, causal, scale, RowOut::Softmax)?;
        return Ok(scores.contiguous()?.apply_op1_no_bwd(&op)?);
    }
    let x = scaled_masked(scores, bias, causal, scale)?;
    let max = x.max_keepdim(D::Minus1)?;
    let max = max
        .eq(f64::NEG_INFINITY)?
        .where_cond(&max.zeros_like()?, &max)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    let sum = sum.eq(0f64)?.where_cond(&sum.ones_like()?, &sum)?;
    Ok(e.broadcast_div(&sum)?.to_dtype(scores.dtype())?)
}

/// The masked attention scores `scale · scores + bias` (`[batch, heads, q, keys]`, bias and
/// `causal` as for [`masked_softmax`]), with every hidden key `-inf`: what
/// [`masked_softmax`] normalises, so `masked_softmax(&masked_scores(s, bias, causal, scale)?,
/// None, causal, 1.0)` equals `masked_softmax(s, bias, causal, scale)` exactly on the CPU. One
/// pass for f32 CPU tensors without a gradient (the keys past the causal rule are not read);
/// candle ops otherwise. Returned in the scores' dtype.
pub fn masked_scores(
    scores: &Tensor,
    bias: Option<&Tensor>,
    causal: Option<usize>,
    scale: f64,
) -> Result<Tensor> {
    check_mask("masked_scores", scores, bias)?;
    if cpu_kernel(scores, bias) {
        let op = MaskedRows::new(bias, causal, scale, RowOut::Scores)?;
        return Ok(scores.contiguous()?.apply_op1_no_bwd(&op)?);
    }
    Ok(scaled_masked(scores, bias, causal, scale)?.to_dtype(scores.dtype())?)
}

/// Whether the CPU row kernel takes `scores` under `bias`: f32 on the CPU, no gradient to track.
fn cpu_kernel(scores: &Tensor, bias: Option<&Tensor>) -> bool {
    scores.device().is_cpu()
        && scores.dtype() == DType::F32
        && !scores.track_op()
        && !bias.is_some_and(|m| m.track_op())
}

/// `scale · scores + bias` with the causal rule's hidden keys `-inf`, in f32, as candle ops.
fn scaled_masked(
    scores: &Tensor,
    bias: Option<&Tensor>,
    causal: Option<usize>,
    scale: f64,
) -> Result<Tensor> {
    let (_, _, q, keys) = scores.dims4()?;
    let mut x = scores.to_dtype(DType::F32)?;
    if scale != 1.0 {
        x = (x * scale)?;
    }
    if let Some(m) = bias {
        x = x.broadcast_add(&m.to_device(x.device())?)?;
    }
    if let Some(shift) = causal {
        x = x.broadcast_add(&causal_bias(q, keys, shift, DType::F32, x.device())?)?;
    }
    Ok(x)
}

/// Errors unless `scores` is `[batch, heads, q, keys]` and `bias`, if any, an f32
/// `[batch or 1, 1, q or 1, keys]`.
fn check_mask(op: &'static str, scores: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    let (b, _, q, keys) = scores.dims4().map_err(|_| {
        Error::shape(
            op,
            format!(
                "scores must be [batch, heads, q, keys], got {:?}",
                scores.dims()
            ),
        )
    })?;
    if let Some(m) = bias {
        let ok = match m.dims() {
            &[mb, 1, mq, mk] => (mb == 1 || mb == b) && (mq == 1 || mq == q) && mk == keys,
            _ => false,
        };
        if !ok || m.dtype() != DType::F32 {
            return Err(Error::shape(
                op,
                format!(
                    "bias must be f32 [{b} or 1, 1, {q} or 1, {keys}], got {:?} {:?}",
                    m.dtype(),
                    m.dims()
                ),
            ));
        }
    }
    Ok(())
}

/// `y + bias` over the rows of `y` (`[..., n]`, bias `[n]`, same dtype). On CUDA (f32, f16,
/// bf16, no gradient) the bias is added **in place** into `y`'s storage, which is returned:
/// pass a tensor nothing else reads, such as a fresh product.
pub fn add_bias_rows(y: Tensor, bias: &Tensor) -> Result<Tensor> {
    const OP: &str = "add_bias_rows";
    let n = y.dims().last().copied().unwrap_or(0);
    if bias.dims() != [n] || bias.dtype() != y.dtype() {
        return Err(Error::shape(
            OP,
            format!(
                "bias must be {:?} [{n}], got {:?} {:?}",
                y.dtype(),
                bias.dtype(),
                bias.dims()
            ),
        ));
    }
    if use_cuda_kernel(&y) && y.is_contiguous() && !bias.track_op() {
        y.inplace_op2(&bias.contiguous()?, &AddBiasRows)?;
        return Ok(y);
    }
    Ok(y.broadcast_add(bias)?)
}

/// `x` (`[a, b, c, d]`) with axes 1 and 2 swapped, contiguous: `[a, c, b, d]`. On CUDA (f32,
/// f16, bf16, no gradient, rows of `d` a multiple of 16 bytes) one copy in 16-byte units.
pub fn swap_axes12(x: &Tensor) -> Result<Tensor> {
    let (_, _, _, d) = x.dims4().map_err(|_| {
        Error::shape(
            "swap_axes12",
            format!("expected rank 4, got {:?}", x.dims()),
        )
    })?;
    if use_cuda_kernel(x) && (d * x.dtype().size_in_bytes()).is_multiple_of(16) {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&SwapAxes12)?);
    }
    Ok(x.transpose(1, 2)?.contiguous()?)
}

/// `impl CustomOp1 for $op` whose CPU path is an error (the op is applied to CUDA tensors
/// only) and whose CUDA path is `$f(self, storage, layout)`.
macro_rules! cuda_only_op1 {
    ($op:ty, $name:literal, $f:expr) => {
        impl CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
                candle_core::bail!("{}: the CUDA kernel was handed a CPU tensor", $name)
            }

            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                s: &candle_core::CudaStorage,
                l: &Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
                let f: fn(
                    &Self,
                    &candle_core::CudaStorage,
                    &Layout,
                ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> = $f;
                f(self, s, l)
            }
        }
    };
}

/// Whether the CUDA forward kernels take `t`.
fn use_cuda_kernel(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && !t.track_op()
        && matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// The fused kernels of [`masked_softmax`] (on the CPU for f32, on CUDA for f32, f16 and bf16)
/// and of [`masked_scores`] (on the CPU for f32).
struct MaskedRows {
    bias: Option<Tensor>,
    causal: Option<usize>,
    scale: f64,
    out: RowOut,
}

impl MaskedRows {
    /// The op writing `out`, with `bias` made contiguous.
    fn new(bias: Option<&Tensor>, causal: Option<usize>, scale: f64, out: RowOut) -> Result<Self> {
        Ok(MaskedRows {
            bias: bias.map(|m| m.contiguous()).transpose()?,
            causal,
            scale,
            out,
        })
    }
}

/// The batch and query strides (in elements, 0 where broadcast) of a contiguous mask bias
/// `[batch or 1, 1, q or 1, keys]`.
fn bias_strides(ml: &Layout) -> candle_core::Result<(usize, usize)> {
    let (mb, _, mq, keys) = ml.shape().dims4()?;
    Ok((
        if mb == 1 { 0 } else { mq * keys },
        if mq == 1 { 0 } else { keys },
    ))
}

impl CustomOp1 for MaskedRows {
    fn name(&self) -> &'static str {
        match self.out {
            RowOut::Softmax => "masked_softmax",
            RowOut::Scores => "masked_scores",
        }
    }

    /// The fused CPU kernel ([`crate::forward::masked_rows`]) on f32 scores.
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        let (_, heads, q, keys) = l.shape().dims4()?;
        let scores = cpu_slice::<f32>(s, l)?;
        let guard = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &guard {
            Some((storage, ml)) => {
                let candle_core::Storage::Cpu(ms) = &**storage else {
                    candle_core::bail!("masked_softmax: the bias is not on the CPU")
                };
                let (bstride, qstride) = bias_strides(ml)?;
                Some((cpu_slice::<f32>(ms, ml)?, bstride, qstride))
            }
            None => None,
        };
        let mask = RowMask {
            bias,
            causal: self.causal,
            scale: self.scale as f32,
        };
        let out = masked_rows(scores, (heads, q, keys), mask, self.out);
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        if self.out != RowOut::Softmax {
            candle_core::bail!("masked_scores has no CUDA kernel");
        }
        let (_, heads, _, _) = l.shape().dims4()?;
        let causal = match self.causal {
            Some(shift) => i32::try_from(shift)
                .map_err(|_| candle_core::Error::Msg(format!("masked_softmax: shift {shift}")))?,
            None => -1,
        };
        let rule = crate::cuda::SoftmaxRule {
            causal,
            scale: self.scale as f32,
        };
        let Some(bias) = &self.bias else {
            return crate::cuda::masked_softmax((s, l), None, heads, rule);
        };
        let (guard, ml) = bias.storage_and_layout();
        let candle_core::Storage::Cuda(ms) = &*guard else {
            candle_core::bail!("masked_softmax: the bias is not on the scores' GPU")
        };
        let (bstride, qstride) = bias_strides(ml)?;
        crate::cuda::masked_softmax((s, l), Some(((ms, ml), bstride, qstride)), heads, rule)
    }
}

/// The CUDA kernel of [`add_bias_rows`].
struct AddBiasRows;

impl InplaceOp2 for AddBiasRows {
    fn name(&self) -> &'static str {
        "add_bias_rows"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("add_bias_rows: the CUDA kernel was handed a CPU tensor")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        y: &mut candle_core::CudaStorage,
        yl: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<()> {
        crate::cuda::add_bias_rows(y, yl, (b, bl))
    }
}

/// The CUDA kernel of [`swap_axes12`].
struct SwapAxes12;

cuda_only_op1!(SwapAxes12, "swap_axes12", |_op, s, l| {
    crate::cuda::swap_axes12((s, l))
});

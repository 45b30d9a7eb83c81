//! CUDA kernels (feature `cuda`): `cuda/kernels.cu`, compiled to PTX by the build script and
//! loaded once per device. f32 tensors on a CUDA device take these: the sparse latent ops and
//! their gradients, the per-row top-k, AdamW and row normalisation here; the forward-pass
//! kernels of [`crate::device_ops`] (masked softmax, bias epilogue, head-axis swap) also take
//! f16 and bf16. Other dtypes and devices use the candle-op twins in [`crate::portable`].
//!
//! Differences from the CPU kernels: `scatter_outer` adds with atomics, so its sums are
//! taken in a varying order (results differ from run to run in the last bits, as with
//! PyTorch's `index_add_` on a GPU); top-k needs `k ≤ 4 096` (larger `k` goes to the twin).

use candle_core::{DType, Tensor};

/// Whether the kernels of this module take `t`: the `cuda` feature is on, `t` is on a CUDA
/// device and is f32.
pub(crate) fn native(t: &Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && t.dtype() == DType::F32
}

#[cfg(feature = "cuda")]
pub(crate) use launch::*;

#[cfg(feature = "cuda")]
mod launch {
    use std::sync::Arc;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaStream, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{DType, Layout, Result, Shape, Storage, Tensor};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/metarep_kernels.ptx"));

    /// Threads per block of the row kernels.
    const THREADS: u32 = 256;

    /// Largest `k` of [`top_k`]: its candidates (8 bytes each, rounded up to a power of
    /// two) fill 32 KiB of shared memory.
    pub(crate) const TOPK_MAX: usize = 4096;

    /// A storage and its layout, as candle hands them to custom ops.
    pub(crate) type Arg<'a> = (&'a CudaStorage, &'a Layout);

    /// The kernel `name` of this crate's PTX module (loaded on first use) and `dev`'s stream.
    fn func(dev: &CudaDevice, name: &str) -> Result<(CudaFunction, Arc<CudaStream>)> {
        let f = dev.get_or_load_custom_func(name, "metarep_kernels", PTX)?;
        Ok((f.into_cuda_function(), dev.cuda_stream()))
    }

    /// The contiguous data of `arg` as a typed view.
    fn view<'a, T: CudaDType>(arg: Arg<'a>) -> Result<CudaView<'a, T>> {
        let (a, b) = arg.1.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("metarep-kernels: argument must be contiguous".into())
        })?;
        Ok(arg.0.as_cuda_slice::<T>()?.slice(a..b))
    }

    /// The two dims of a rank-2 layout.
    fn dims2(l: &Layout) -> Result<(usize, usize)> {
        match l.dims() {
            &[a, b] => Ok((a, b)),
            d => candle_core::bail!("metarep-kernels: expected rank 2, got {d:?}"),
        }
    }

    /// `v` as a kernel's `int` argument; an error names `what` when it does not fit.
    fn i32_of(v: usize, what: &str) -> Result<i32> {
        i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("metarep-kernels: {what} {v} > 2^31")))
    }

    /// One block of `threads` per row for `n` rows, with `shared` bytes of dynamic shared memory.
    fn rows(n: usize, threads: u32, shared: u32) -> Result<LaunchConfig> {
        Ok(LaunchConfig {
            grid_dim: (
                u32::try_from(n).map_err(|_| {
                    candle_core::Error::Msg(format!("metarep-kernels: {n} rows exceed 2^32"))
                })?,
                1,
                1,
            ),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: shared,
        })
    }

    /// A grid-stride launch over `len` elements.
    fn elementwise(len: usize) -> LaunchConfig {
        let blocks = len.div_ceil(THREADS as usize).clamp(1, 65_536) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Threads for a block that walks `d` columns: a multiple of 32 up to [`THREADS`].
    fn threads_for(d: usize) -> u32 {
        (d.div_ceil(32) * 32).clamp(32, THREADS as usize) as u32
    }

    /// Runs the sparse kernel `name(idx, a, c, k, d, out)` with one block of `threads` per
    /// batch row of `idx` (`[b, k]`), `d` the width of `a` and `c`'s rows, into a zeroed f32
    /// output of `shape`.
    fn sparse_kernel(
        name: &str,
        (idx, a, c): (Arg, Arg, Arg),
        d: usize,
        threads: u32,
        shape: Shape,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, k) = dims2(idx.1)?;
        let dev = &c.0.device;
        let out = dev.alloc_zeros::<f32>(shape.elem_count())?;
        if b > 0 && d > 0 && k > 0 {
            let (f, stream) = func(dev, name)?;
            let (iv, av, cv) = (view::<u32>(idx)?, view::<f32>(a)?, view::<f32>(c)?);
            let (k32, d32) = (i32_of(k, "slots")?, i32_of(d, "width")?);
            let mut l = stream.launch_builder(&f);
            l.arg(&iv).arg(&av).arg(&cv).arg(&k32).arg(&d32).arg(&out);
            unsafe { l.launch(rows(b, threads, 0)?) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
    }

    /// `[b, d]`: `Σ_j val[r,j] · weight[idx[r,j]]` (see [`crate::sparse_decode`]).
    pub(crate) fn sparse_decode(idx: Arg, val: Arg, weight: Arg) -> Result<(CudaStorage, Shape)> {
        let ((b, _), (_, d)) = (dims2(idx.1)?, dims2(weight.1)?);
        let shape = Shape::from((b, d));
        sparse_kernel(
            "sparse_decode",
            (idx, val, weight),
            d,
            threads_for(d),
            shape,
        )
    }

    /// `[b, k]`: `⟨input[r], weight[idx[r,j]]⟩` (see [`crate::gather_dot`]).
    pub(crate) fn gather_dot(idx: Arg, input: Arg, weight: Arg) -> Result<(CudaStorage, Shape)> {
        let (shape, (_, d)) = (idx.1.shape().clone(), dims2(weight.1)?);
        sparse_kernel("gather_dot", (idx, input, weight), d, THREADS, shape)
    }

    /// `[n, d]`: `out[i] = Σ_{idx[r,j] = i} val[r,j] · input[r]` (see [`crate::scatter_outer`]).
    pub(crate) fn scatter_outer(
        idx: Arg,
        val: Arg,
        input: Arg,
        n: usize,
    ) -> Result<(CudaStorage, Shape)> {
        let (_, d) = dims2(input.1)?;
        let shape = Shape::from((n, d));
        sparse_kernel("scatter_outer", (idx, val, input), d, threads_for(d), shape)
    }

    /// `[b, k]`: `v[idx[r,j]]`, 0 at inactive slots (see [`crate::gather_vector`]).
    pub(crate) fn gather_vector(idx: Arg, v: Arg) -> Result<(CudaStorage, Shape)> {
        let shape = idx.1.shape().clone();
        let dev = &v.0.device;
        let len = shape.elem_count();
        let out = dev.alloc_zeros::<f32>(len)?;
        if len > 0 {
            let (f, stream) = func(dev, "gather_vector")?;
            let (iv, vv) = (view::<u32>(idx)?, view::<f32>(v)?);
            let mut l = stream.launch_builder(&f);
            l.arg(&iv).arg(&vv).arg(&len).arg(&out);
            unsafe { l.launch(elementwise(len)) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
    }

    /// `m = β·m + (1−β)·g` (or `g²` with `square`), in place.
    pub(crate) fn adam_moment(
        m: &mut CudaStorage,
        ml: &Layout,
        g: Arg,
        beta: f64,
        square: bool,
    ) -> Result<()> {
        let (a, b) = ml.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("adamw_update: moment must be contiguous".into())
        })?;
        let dev = m.device.clone();
        let gv = view::<f32>(g)?;
        let mut mv = m.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let len = b - a;
        if len == 0 {
            return Ok(());
        }
        let (f, stream) = func(&dev, "adam_moment")?;
        let (beta32, rest, sq) = (beta as f32, (1.0 - beta) as f32, square as i32);
        let mut l = stream.launch_builder(&f);
        l.arg(&mut mv)
            .arg(&gv)
            .arg(&len)
            .arg(&beta32)
            .arg(&rest)
            .arg(&sq);
        unsafe { l.launch(elementwise(len)) }.w()?;
        Ok(())
    }

    /// `p = p·decay − lr · (m / c1) / (√(v / c2) + eps)`, in place; `coef` is
    /// `[c1, c2, decay, lr, eps]`.
    pub(crate) fn adam_update(
        p: &mut CudaStorage,
        pl: &Layout,
        m: Arg,
        v: Arg,
        coef: [f64; 5],
    ) -> Result<()> {
        let (a, b) = pl.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("adamw_update: param must be contiguous".into())
        })?;
        let dev = p.device.clone();
        let (mv, vv) = (view::<f32>(m)?, view::<f32>(v)?);
        let mut pv = p.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let len = b - a;
        if len == 0 {
            return Ok(());
        }
        let (f, stream) = func(&dev, "adam_update")?;
        let c = coef.map(|c| c as f32);
        let mut l = stream.launch_builder(&f);
        l.arg(&mut pv).arg(&mv).arg(&vv).arg(&len);
        for x in &c {
            l.arg(x);
        }
        unsafe { l.launch(elementwise(len)) }.w()?;
        Ok(())
    }

    /// Scales the rows of `w` (`[n, d]`) to unit norm in place (zero rows stay).
    pub(crate) fn normalize_rows(w: &mut CudaStorage, wl: &Layout) -> Result<()> {
        let (n, d) = dims2(wl)?;
        let (a, b) = wl.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("normalize_rows_: weight must be contiguous".into())
        })?;
        if n == 0 || d == 0 {
            return Ok(());
        }
        let dev = w.device.clone();
        let mut wv = w.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let (f, stream) = func(&dev, "normalize_rows")?;
        let d32 = i32_of(d, "width")?;
        let mut l = stream.launch_builder(&f);
        l.arg(&mut wv).arg(&d32);
        unsafe { l.launch(rows(n, threads_for(d), 0)?) }.w()?;
        Ok(())
    }

    /// The `k` largest entries of each row of `x` (`[b, n]`, f32, CUDA) plus `offset` (`[n]`,
    /// checked by the caller), best first, ties to the lower column: (`u32` columns, values),
    /// each `[b, k]`; `None` when `k` is 0 or exceeds [`TOPK_MAX`]. `-inf` entries come out as
    /// they are; a row holding a NaN is an error of `op` naming it.
    pub(crate) fn top_k(
        op: &'static str,
        x: &Tensor,
        k: usize,
        offset: Option<&Tensor>,
    ) -> crate::Result<Option<(Tensor, Tensor)>> {
        let (b, n) = x.dims2()?;
        if k > TOPK_MAX || k == 0 || k > n {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let offset = offset.map(|o| o.contiguous()).transpose()?;
        let (xs, xl) = x.storage_and_layout();
        let Storage::Cuda(xs) = &*xs else {
            return Ok(None);
        };
        let dev = xs.device.clone();
        let off_guard = offset.as_ref().map(|o| o.storage_and_layout());
        let empty = dev.alloc_zeros::<f32>(1)?;
        let ov = match &off_guard {
            Some((s, l)) => match &**s {
                Storage::Cuda(s) => view::<f32>((s, l))?,
                _ => return Ok(None),
            },
            None => empty.slice(0..0),
        };
        let idx = dev.alloc_zeros::<u32>(b * k)?;
        let val = dev.alloc_zeros::<f32>(b * k)?;
        let nan = dev.alloc_zeros::<u32>(b)?;
        if b > 0 {
            let kp = k.next_power_of_two();
            let (f, stream) = func(&dev, "topk_rows")?;
            let xv = view::<f32>((xs, xl))?;
            let has_offset = offset.is_some() as i32;
            let (n32, k32, kp32) = (i32_of(n, "row length")?, k as i32, kp as i32);
            let mut l = stream.launch_builder(&f);
            l.arg(&xv)
                .arg(&ov)
                .arg(&has_offset)
                .arg(&n32)
                .arg(&k32)
                .arg(&kp32);
            l.arg(&idx).arg(&val).arg(&nan);
            unsafe { l.launch(rows(b, THREADS, (kp * 8) as u32)?) }.w()?;
            let flags = dev.clone_dtoh(&nan)?;
            if let Some(r) = flags.iter().position(|&f| f != 0) {
                return Err(crate::Error::shape(
                    op,
                    format!("input row {r} contains NaN"),
                ));
            }
        }
        let tensor = |s: CudaStorage| {
            Tensor::from_storage(Storage::Cuda(s), (b, k), BackpropOp::none(), false)
        };
        Ok(Some((
            tensor(CudaStorage::wrap_cuda_slice(idx, dev.clone())),
            tensor(CudaStorage::wrap_cuda_slice(val, dev)),
        )))
    }

    /// The kernel-name suffix of a dtype the forward kernels take.
    fn suffix(dtype: DType) -> Result<&'static str> {
        match dtype {
            DType::F32 => Ok("f32"),
            DType::F16 => Ok("f16"),
            DType::BF16 => Ok("bf16"),
            d => candle_core::bail!("metarep-kernels: no CUDA forward kernel for {d:?}"),
        }
    }

    /// A mask for [`masked_softmax`]: the f32 bias and its batch and query strides (0 to
    /// broadcast).
    pub(crate) type MaskArg<'a> = (Arg<'a>, usize, usize);

    /// How [`masked_softmax`] treats the scores: the causal shift (`< 0`: none) and the factor
    /// the scores are multiplied by first.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct SoftmaxRule {
        pub causal: i32,
        pub scale: f32,
    }

    /// Softmax over the last axis of `x` (`[b, heads, q, keys]`, f32/f16/bf16) scaled, with
    /// `mask` added and, with `causal ≥ 0`, keys past `query + causal` hidden; empty rows give
    /// zeros.
    pub(crate) fn masked_softmax(
        x: Arg,
        mask: Option<MaskArg>,
        heads: usize,
        rule: SoftmaxRule,
    ) -> Result<(CudaStorage, Shape)> {
        match x.0.dtype() {
            DType::F32 => softmax_t::<f32>(x, mask, heads, rule),
            DType::F16 => softmax_t::<half::f16>(x, mask, heads, rule),
            DType::BF16 => softmax_t::<half::bf16>(x, mask, heads, rule),
            d => candle_core::bail!("masked_softmax: no CUDA kernel for {d:?}"),
        }
    }

    fn softmax_t<T: CudaDType + DeviceRepr>(
        x: Arg,
        mask: Option<MaskArg>,
        heads: usize,
        rule: SoftmaxRule,
    ) -> Result<(CudaStorage, Shape)> {
        let shape = x.1.shape().clone();
        let (q, keys) = match shape.dims() {
            &[_, _, q, keys] => (q, keys),
            d => candle_core::bail!("masked_softmax: scores must have rank 4, got {d:?}"),
        };
        let dev = x.0.device.clone();
        let len = shape.elem_count();
        let out = unsafe { dev.alloc::<T>(len)? };
        if len == 0 {
            return Ok((CudaStorage::wrap_cuda_slice(out, dev), shape));
        }
        let xv = view::<T>(x)?;
        let empty = dev.alloc_zeros::<f32>(1)?;
        let (mv, bstride, qstride) = match mask {
            Some((m, b, q)) => (view::<f32>(m)?, b, q),
            None => (empty.slice(0..0), 0, 0),
        };
        let has_mask = mask.is_some() as i32;
        let (f, stream) = func(&dev, &format!("masked_softmax_{}", suffix(x.0.dtype())?))?;
        let (q32, k32, h32) = (
            i32_of(q, "queries")?,
            i32_of(keys, "keys")?,
            i32_of(heads, "heads")?,
        );
        let threads = threads_for(keys).min(128);
        let mut l = stream.launch_builder(&f);
        l.arg(&xv)
            .arg(&out)
            .arg(&mv)
            .arg(&has_mask)
            .arg(&bstride)
            .arg(&qstride);
        l.arg(&q32)
            .arg(&k32)
            .arg(&rule.causal)
            .arg(&h32)
            .arg(&rule.scale);
        unsafe { l.launch(rows(len / keys, threads, 0)?) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }

    /// `y[r] += bias` for every row of `y` (`[..., n]`, contiguous), in place.
    pub(crate) fn add_bias_rows(y: &mut CudaStorage, yl: &Layout, bias: Arg) -> Result<()> {
        let n = yl.dims().last().copied().unwrap_or(1);
        let (a, b) = yl.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("add_bias_rows: the product must be contiguous".into())
        })?;
        if b == a || n == 0 {
            return Ok(());
        }
        match y.dtype() {
            DType::F32 => bias_t::<f32>(y, a..b, n, bias),
            DType::F16 => bias_t::<half::f16>(y, a..b, n, bias),
            DType::BF16 => bias_t::<half::bf16>(y, a..b, n, bias),
            d => candle_core::bail!("add_bias_rows: no CUDA kernel for {d:?}"),
        }
    }

    fn bias_t<T: CudaDType + DeviceRepr>(
        y: &mut CudaStorage,
        range: std::ops::Range<usize>,
        n: usize,
        bias: Arg,
    ) -> Result<()> {
        let name = format!("add_bias_rows_{}", suffix(y.dtype())?);
        let dev = y.device.clone();
        let (f, stream) = func(&dev, &name)?;
        let (len, n32) = (range.len(), i32_of(n, "width")?);
        let rows_n = len / n;
        let bv = view::<T>(bias)?;
        let mut yv = y.as_cuda_slice_mut::<T>()?.slice_mut(range);
        let mut l = stream.launch_builder(&f);
        l.arg(&mut yv).arg(&bv).arg(&rows_n).arg(&n32);
        unsafe { l.launch(rows(rows_n.min(65_536), threads_for(n), 0)?) }.w()?;
        Ok(())
    }

    /// `[a, c, b, d]` from `x` (`[a, b, c, d]`, contiguous, `d` times the element size a
    /// multiple of 16 bytes): axes 1 and 2 swapped.
    pub(crate) fn swap_axes12(x: Arg) -> Result<(CudaStorage, Shape)> {
        match x.0.dtype() {
            DType::F32 => swap_t::<f32>(x),
            DType::F16 => swap_t::<half::f16>(x),
            DType::BF16 => swap_t::<half::bf16>(x),
            d => candle_core::bail!("swap_axes12: no CUDA kernel for {d:?}"),
        }
    }

    fn swap_t<T: CudaDType + DeviceRepr>(x: Arg) -> Result<(CudaStorage, Shape)> {
        let (a, b, c, d) = x.1.shape().dims4()?;
        let bytes = d * std::mem::size_of::<T>();
        if !bytes.is_multiple_of(16) {
            candle_core::bail!("swap_axes12: rows of {bytes} bytes are not in 16-byte units");
        }
        let dev = x.0.device.clone();
        let len = a * b * c * d;
        let out = unsafe { dev.alloc::<T>(len)? };
        if len > 0 {
            let (f, stream) = func(&dev, "swap_axes12")?;
            let xv = view::<T>(x)?;
            let units = bytes / 16;
            let mut l = stream.launch_builder(&f);
            l.arg(&xv).arg(&out).arg(&a).arg(&b).arg(&c).arg(&units);
            unsafe { l.launch(elementwise(a * b * c * units)) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((a, c, b, d)),
        ))
    }
}

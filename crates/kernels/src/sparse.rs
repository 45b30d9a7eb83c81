//! Sparse latent ops: a batch of latent codes given as the (indices, values) of its active
//! latents, `[batch, slots]` each, against a weight whose rows are the latents' directions,
//! `[n, d]`. Work and memory scale with `batch · slots · d`, never with `n`.
//!
//! - [`sparse_decode`]: `out[b] = Σ_j values[b,j] · weight[indices[b,j]]` → `[batch, d]`.
//!   Differentiable in `values` (→ [`gather_dot`] of the output gradient) and `weight`
//!   (→ [`scatter_outer`]).
//! - [`gather_dot`]: `out[b,j] = ⟨input[b], weight[indices[b,j]]⟩` → `[batch, slots]`.
//!   Differentiable in `input` (→ [`sparse_decode`] of the output gradient) and `weight`
//!   (→ [`scatter_outer`]).
//! - [`scatter_outer`]: `out[i] = Σ_{(b,j): indices[b,j] = i} values[b,j] · input[b]` →
//!   `[n, d]`, zero rows for latents that no slot names (a weight gradient).
//! - [`to_dense`]: the dense `[batch, n]` form `A` itself, differentiable in `values`
//!   (gather of the output gradient at the active slots).
//! - [`gather_vector`]: `out[b,j] = v[indices[b,j]]` → `[batch, slots]` (a per-latent bias at
//!   the active slots), differentiable in `v` (scatter-add of the output gradient).
//!
//! Equivalently, with `A` the dense `[batch, n]` matrix that sums `values[b,j]` into
//! `A[b, indices[b,j]]`: `sparse_decode = A·W`, `gather_dot` reads `(X·Wᵀ)` at the active
//! entries, `scatter_outer = Aᵀ·X`. Repeated indices in a row therefore add up, exactly as in
//! that dense form. Slots holding [`INACTIVE`] are skipped. Rows are spread over
//! threads with rayon; each output element is summed in a fixed order, so results do not depend
//! on the number of threads.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::{
    axpy, check_device, check_float, check_indices, cpu_slice, dims2, dot, same_dtype, with_simd,
    Real, INACTIVE,
};
use crate::error::{Error, Result};

/// `[batch, d]`: `Σ_j values[b,j] · weight[indices[b,j]]` (differentiable in values and weight).
///
/// `indices`: `[batch, slots]` u32 (each `< n` or `INACTIVE`); `values`: `[batch, slots]`;
/// `weight`: `[n, d]`; f32 or f64, CPU.
pub fn sparse_decode(indices: &Tensor, values: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !weight.device().is_cpu() && !crate::cuda::native(weight) {
        return crate::portable::sparse_decode(indices, values, weight);
    }
    const OP: &str = "sparse_decode";
    let (n, _) = check_weight(OP, weight)?;
    let (b, k) = check_indices(OP, indices, n)?;
    let dtype = check_float(OP, "values", values)?;
    same_dtype(OP, dtype, &[("weight", weight)])?;
    check_same_shape(OP, "values", values, (b, k))?;
    Ok(indices.contiguous()?.apply_op3(
        &values.contiguous()?,
        &weight.contiguous()?,
        SparseDecode,
    )?)
}

/// `[batch, slots]`: `⟨input[b], weight[indices[b,j]]⟩`, 0 at `INACTIVE` slots (differentiable in
/// input and weight).
///
/// `indices`: `[batch, slots]` u32; `input`: `[batch, d]`; `weight`: `[n, d]`; f32 or f64, CPU.
pub fn gather_dot(indices: &Tensor, input: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !weight.device().is_cpu() && !crate::cuda::native(weight) {
        return crate::portable::gather_dot(indices, input, weight);
    }
    const OP: &str = "gather_dot";
    let (n, d) = check_weight(OP, weight)?;
    let (b, _) = check_indices(OP, indices, n)?;
    let dtype = check_float(OP, "input", input)?;
    same_dtype(OP, dtype, &[("weight", weight)])?;
    check_same_shape(OP, "input", input, (b, d))?;
    Ok(indices
        .contiguous()?
        .apply_op3(&input.contiguous()?, &weight.contiguous()?, GatherDot)?)
}

/// `[rows, d]`: `out[i] = Σ_{(b,j): indices[b,j] = i} values[b,j] · input[b]` (not
/// differentiable: it is the weight gradient of the two ops above).
///
/// `indices`, `values`: `[batch, slots]`; `input`: `[batch, d]`; f32 or f64, CPU.
pub fn scatter_outer(
    indices: &Tensor,
    values: &Tensor,
    input: &Tensor,
    rows: usize,
) -> Result<Tensor> {
    if !input.device().is_cpu() && !crate::cuda::native(input) {
        return crate::portable::scatter_outer(indices, values, input, rows);
    }
    const OP: &str = "scatter_outer";
    let (b, k) = check_indices(OP, indices, rows)?;
    let dtype = check_float(OP, "values", values)?;
    same_dtype(OP, dtype, &[("input", input)])?;
    check_same_shape(OP, "values", values, (b, k))?;
    let (bi, _) = dims2(OP, "input", input)?;
    if bi != b {
        return Err(Error::shape(
            OP,
            format!("input has {bi} rows, indices have {b}"),
        ));
    }
    Ok(indices.contiguous()?.apply_op3_no_bwd(
        &values.contiguous()?,
        &input.contiguous()?,
        &ScatterOuter { rows },
    )?)
}

/// `[batch, slots]`: `v[indices[b,j]]`, 0 at `INACTIVE` slots (differentiable in `v`).
///
/// `indices`: `[batch, slots]` u32; `v`: `[n]`, f32 or f64, CPU.
pub fn gather_vector(indices: &Tensor, v: &Tensor) -> Result<Tensor> {
    if !v.device().is_cpu() && !crate::cuda::native(v) {
        return crate::portable::gather_vector(indices, v);
    }
    const OP: &str = "gather_vector";
    check_device(OP, v)?;
    check_float(OP, "vector", v)?;
    let n = match v.dims() {
        &[n] => n,
        d => {
            return Err(Error::shape(
                OP,
                format!("vector must have rank 1, got shape {d:?}"),
            ))
        }
    };
    check_indices(OP, indices, n)?;
    Ok(indices
        .contiguous()?
        .apply_op2(&v.contiguous()?, GatherVector)?)
}

/// `[batch, n]`: the dense codes, `values[b,j]` summed into column `indices[b,j]`
/// (differentiable in `values`).
///
/// `indices`, `values`: `[batch, slots]`; f32 or f64, CPU.
pub fn to_dense(indices: &Tensor, values: &Tensor, n: usize) -> Result<Tensor> {
    if !values.device().is_cpu() {
        return crate::portable::to_dense(indices, values, n);
    }
    const OP: &str = "to_dense";
    let (b, k) = check_indices(OP, indices, n)?;
    check_float(OP, "values", values)?;
    check_same_shape(OP, "values", values, (b, k))?;
    Ok(indices
        .contiguous()?
        .apply_op2(&values.contiguous()?, ToDense { n })?)
}

fn check_weight(op: &'static str, weight: &Tensor) -> Result<(usize, usize)> {
    check_device(op, weight)?;
    check_float(op, "weight", weight)?;
    dims2(op, "weight", weight)
}

fn check_same_shape(
    op: &'static str,
    name: &str,
    t: &Tensor,
    expected: (usize, usize),
) -> Result<()> {
    check_device(op, t)?;
    if t.dims() != [expected.0, expected.1] {
        return Err(Error::shape(
            op,
            format!(
                "{name} has shape {:?}, expected [{}, {}]",
                t.dims(),
                expected.0,
                expected.1
            ),
        ));
    }
    Ok(())
}

/// The `cuda_fwd` of a [`CustomOp3`]: `$f(self, a, b, c)` of its three (storage, layout)
/// arguments (feature `cuda`).
macro_rules! cuda_fwd3 {
    ($f:expr) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            s1: &candle_core::CudaStorage,
            l1: &Layout,
            s2: &candle_core::CudaStorage,
            l2: &Layout,
            s3: &candle_core::CudaStorage,
            l3: &Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            ($f)(self, (s1, l1), (s2, l2), (s3, l3))
        }
    };
}

/// Runs `$body` with `$T` bound to the element type of storage `$s` (f32 or f64).
macro_rules! float_dispatch {
    ($s:expr, $name:expr, |$T:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $T = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $T = f64;
                $body
            }
            _ => candle_core::bail!("{}: values must be f32 or f64", $name),
        }
    };
}

fn dims_of(l: &Layout) -> candle_core::Result<(usize, usize)> {
    match l.dims() {
        &[a, b] => Ok((a, b)),
        d => candle_core::bail!("metarep-kernels: expected rank 2, got {d:?}"),
    }
}

/// Fails (instead of panicking) on an index the wrappers' validation would have rejected.
fn row_of<T: Real>(w: &[T], i: u32, d: usize) -> Option<&[T]> {
    if i == INACTIVE {
        return None;
    }
    w.get(i as usize * d..(i as usize + 1) * d)
}

/// Batch rows per tile of [`decode_kernel`]: a tile's output rows (`TILE · d` values) stay in
/// cache while the weight rows it names stream past once, in ascending order.
const TILE: usize = 512;

/// Latents per parallel work item of the latent-major kernels.
const GROUP: usize = 64;

/// The valid slots of rows `rows` as `(latent << 32) | flat slot`, sorted: each weight row is
/// then fetched once per tile, in memory order.
fn tile_order(idx: &[u32], k: usize, rows: std::ops::Range<usize>) -> Vec<u64> {
    let mut order: Vec<u64> = (rows.start * k..rows.end * k)
        .filter(|&p| idx[p] != INACTIVE)
        .map(|p| ((idx[p] as u64) << 32) | p as u64)
        .collect();
    order.sort_unstable();
    order
}

/// `out[b] = Σ_j vals[b,j]·w[idx[b,j]]`, by tiles of rows, weight rows in ascending order.
fn decode_kernel<T: Real>(
    idx: &[u32],
    vals: &[T],
    w: &[T],
    b: usize,
    k: usize,
    d: usize,
) -> Vec<T> {
    let mut out = vec![T::zero(); b * d];
    decode_into(&mut out, idx, vals, w, k, d);
    out
}

/// [`decode_kernel`] adding into `out` `[batch, d]`.
pub(crate) fn decode_into<T: Real>(
    out: &mut [T],
    idx: &[u32],
    vals: &[T],
    w: &[T],
    k: usize,
    d: usize,
) {
    let b = out.len() / d.max(1);
    if d == 0 || k == 0 {
        return;
    }
    out.par_chunks_mut(TILE * d)
        .enumerate()
        .for_each(|(t, tile)| {
            let r0 = t * TILE;
            let order = tile_order(idx, k, r0..(r0 + TILE).min(b));
            with_simd(|| {
                for key in order {
                    let p = (key & 0xffff_ffff) as usize;
                    if let Some(row) = row_of(w, (key >> 32) as u32, d) {
                        let r = p / k - r0;
                        axpy(vals[p], row, &mut tile[r * d..(r + 1) * d]);
                    }
                }
            })
        });
}

/// The slots of a batch grouped by latent (a stable counting sort): latent `i` owns
/// `slots[start[i]..start[i + 1]]`, in slot order.
pub(crate) struct ByLatent {
    start: Vec<usize>,
    slots: Vec<usize>,
}

/// One work item of [`ByLatent::run`]: the latents `first..`, their output rows (if any) and
/// their per-slot outputs in latent-major order (if any).
struct Group<'a, T> {
    first: usize,
    rows: Option<&'a mut [T]>,
    per_slot: Option<&'a mut [T]>,
}

impl ByLatent {
    /// Groups the slots of `idx` (`INACTIVE` and indices ≥ `n` are left out).
    pub(crate) fn new(idx: &[u32], n: usize) -> Self {
        let mut start = vec![0usize; n + 1];
        for &i in idx.iter().filter(|&&i| (i as usize) < n) {
            start[i as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut slots = vec![0usize; start[n]];
        for (p, &i) in idx.iter().enumerate() {
            if (i as usize) < n {
                slots[fill[i as usize]] = p;
                fill[i as usize] += 1;
            }
        }
        Self { start, slots }
    }

    fn n(&self) -> usize {
        self.start.len() - 1
    }

    /// The flat slots of latent `i`, in slot order.
    pub(crate) fn slots_of(&self, i: usize) -> &[usize] {
        &self.slots[self.start[i]..self.start[i + 1]]
    }

    /// Calls `f(latent, its slots, its output row, its per-slot outputs)` for every latent, in
    /// parallel over groups of latents; `rows` is `[n, d]`, `per_slot` has one entry per valid
    /// slot (latent-major order; see [`ByLatent::unpermute`]).
    fn run<T: Real>(
        &self,
        d: usize,
        mut rows: Option<&mut [T]>,
        mut per_slot: Option<&mut [T]>,
        f: impl Fn(usize, &[usize], Option<&mut [T]>, Option<&mut [T]>) + Sync,
    ) {
        let n = self.n();
        let mut groups = Vec::with_capacity(n.div_ceil(GROUP));
        for first in (0..n).step_by(GROUP) {
            let last = (first + GROUP).min(n);
            let mut g = Group {
                first,
                rows: None,
                per_slot: None,
            };
            if let Some(r) = rows.take() {
                let (head, tail) = r.split_at_mut((last - first) * d);
                g.rows = Some(head);
                rows = Some(tail);
            }
            if let Some(s) = per_slot.take() {
                let (head, tail) = s.split_at_mut(self.start[last] - self.start[first]);
                g.per_slot = Some(head);
                per_slot = Some(tail);
            }
            groups.push(g);
        }
        groups.into_par_iter().for_each(|g| {
            with_simd(|| {
                let (mut rows, mut per_slot) = (g.rows, g.per_slot);
                for i in g.first..(g.first + GROUP).min(n) {
                    let slots = self.slots_of(i);
                    let mut row = None;
                    if let Some(r) = rows.take() {
                        let (head, tail) = r.split_at_mut(d);
                        row = Some(head);
                        rows = Some(tail);
                    }
                    let mut ps = None;
                    if let Some(s) = per_slot.take() {
                        let (head, tail) = s.split_at_mut(slots.len());
                        ps = Some(head);
                        per_slot = Some(tail);
                    }
                    f(i, slots, row, ps);
                }
            })
        });
    }

    /// Scatters per-slot outputs from latent-major order back to `[batch, slots]` order.
    fn unpermute<T: Real>(&self, per_slot: &[T], len: usize) -> Vec<T> {
        let mut out = vec![T::zero(); len];
        for (v, &p) in per_slot.iter().zip(&self.slots) {
            out[p] = *v;
        }
        out
    }
}

/// `out[b,j] = ⟨a[b], w[idx[b,j]]⟩`, latent-major: each weight row is read once.
fn gather_dot_kernel<T: Real>(
    idx: &[u32],
    a: &[T],
    w: &[T],
    k: usize,
    n: usize,
    d: usize,
) -> Vec<T> {
    let by = ByLatent::new(idx, n);
    let mut per_slot = vec![T::zero(); by.slots.len()];
    by.run(d, None, Some(&mut per_slot), |i, slots, _, out| {
        if let Some(out) = out {
            let wi = &w[i * d..(i + 1) * d];
            for (o, &p) in out.iter_mut().zip(slots) {
                let r = p / k;
                *o = dot(&a[r * d..(r + 1) * d], wi);
            }
        }
    });
    by.unpermute(&per_slot, idx.len())
}

/// `out[i] = Σ_{(b,j): idx[b,j] = i} vals[b,j]·a[b]`, `[n, d]`.
fn scatter_outer_kernel<T: Real>(
    idx: &[u32],
    vals: &[T],
    a: &[T],
    k: usize,
    n: usize,
    d: usize,
) -> Vec<T> {
    let mut out = vec![T::zero(); n * d];
    let by = ByLatent::new(idx, n);
    by.run(d, Some(&mut out), None, |_, slots, row, _| {
        if let Some(row) = row {
            for &p in slots {
                let r = p / k;
                axpy(vals[p], &a[r * d..(r + 1) * d], row);
            }
        }
    });
    out
}

/// Both gradients of [`sparse_decode`] in one latent-major pass (the gradient row `g[b]` is
/// read once for both): `grad_values[b,j] = ⟨g[b], w[i]⟩` and `grad_w[i] = Σ values[b,j]·g[b]`.
fn decode_backward_kernel<T: Real>(
    idx: &[u32],
    vals: &[T],
    w: &[T],
    g: &[T],
    (k, n, d): (usize, usize, usize),
    (need_values, need_weight): (bool, bool),
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    let by = ByLatent::new(idx, n);
    let mut gv = need_values.then(|| vec![T::zero(); by.slots.len()]);
    let mut gw = need_weight.then(|| vec![T::zero(); n * d]);
    by.run(
        d,
        gw.as_deref_mut(),
        gv.as_deref_mut(),
        |i, slots, mut row, mut out| {
            let wi = &w[i * d..(i + 1) * d];
            for (q, &p) in slots.iter().enumerate() {
                let r = p / k;
                let gr = &g[r * d..(r + 1) * d];
                if let Some(out) = out.as_deref_mut() {
                    out[q] = dot(gr, wi);
                }
                if let Some(row) = row.as_deref_mut() {
                    axpy(vals[p], gr, row);
                }
            }
        },
    );
    (gv.map(|gv| by.unpermute(&gv, idx.len())), gw)
}

struct SparseDecode;

impl CustomOp3 for SparseDecode {
    fn name(&self) -> &'static str {
        "sparse_decode"
    }

    fn cpu_fwd(
        &self,
        si: &CpuStorage,
        li: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, k) = dims_of(li)?;
        let (_, d) = dims_of(lw)?;
        let idx = cpu_slice::<u32>(si, li)?;
        let out = float_dispatch!(sv, self.name(), |T| {
            let out = decode_kernel::<T>(idx, cpu_slice(sv, lv)?, cpu_slice(sw, lw)?, b, k, d);
            <T as candle_core::WithDType>::to_cpu_storage_owned(out)
        });
        Ok((out, Shape::from((b, d))))
    }

    cuda_fwd3!(|_: &Self, a, b, c| crate::cuda::sparse_decode(a, b, c));

    fn bwd(
        &self,
        indices: &Tensor,
        values: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need = (values.track_op(), weight.track_op());
        if !need.0 && !need.1 {
            return Ok((None, None, None));
        }
        let grad = grad.contiguous()?;
        let (b, k) = indices.dims2()?;
        let (n, d) = weight.dims2()?;
        if !grad.device().is_cpu() {
            // The two gradients as the ops they are (the CPU fuses them into one pass).
            let gv = match need.0 {
                true => Some(indices.apply_op3_no_bwd(&grad, weight, &GatherDot)?),
                false => None,
            };
            let gw = match need.1 {
                true => Some(indices.apply_op3_no_bwd(values, &grad, &ScatterOuter { rows: n })?),
                false => None,
            };
            return Ok((None, gv, gw));
        }
        let (is, il) = indices.storage_and_layout();
        let (vs, vl) = values.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(is), Storage::Cpu(vs), Storage::Cpu(ws), Storage::Cpu(gs)) =
            (&*is, &*vs, &*ws, &*gs)
        else {
            candle_core::bail!("sparse_decode: backward expects CPU tensors");
        };
        let idx = cpu_slice::<u32>(is, il)?;
        let dev = values.device();
        float_dispatch!(vs, self.name(), |T| {
            let (gv, gw) = decode_backward_kernel::<T>(
                idx,
                cpu_slice(vs, vl)?,
                cpu_slice(ws, wl)?,
                cpu_slice(gs, gl)?,
                (k, n, d),
                need,
            );
            let gv = gv.map(|v| Tensor::from_vec(v, (b, k), dev)).transpose()?;
            let gw = gw.map(|v| Tensor::from_vec(v, (n, d), dev)).transpose()?;
            Ok((None, gv, gw))
        })
    }
}

struct GatherDot;

impl CustomOp3 for GatherDot {
    fn name(&self) -> &'static str {
        "gather_dot"
    }

    fn cpu_fwd(
        &self,
        si: &CpuStorage,
        li: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, k) = dims_of(li)?;
        let (n, d) = dims_of(lw)?;
        let idx = cpu_slice::<u32>(si, li)?;
        let out = float_dispatch!(sa, self.name(), |T| {
            let out = gather_dot_kernel::<T>(idx, cpu_slice(sa, la)?, cpu_slice(sw, lw)?, k, n, d);
            <T as candle_core::WithDType>::to_cpu_storage_owned(out)
        });
        Ok((out, Shape::from((b, k))))
    }

    cuda_fwd3!(|_: &Self, a, b, c| crate::cuda::gather_dot(a, b, c));

    fn bwd(
        &self,
        indices: &Tensor,
        input: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let ga = if input.track_op() {
            Some(indices.apply_op3_no_bwd(&grad, weight, &SparseDecode)?)
        } else {
            None
        };
        let gw = if weight.track_op() {
            let rows = weight.dim(0)?;
            Some(indices.apply_op3_no_bwd(&grad, input, &ScatterOuter { rows })?)
        } else {
            None
        };
        Ok((None, ga, gw))
    }
}

struct ScatterOuter {
    rows: usize,
}

impl CustomOp3 for ScatterOuter {
    fn name(&self) -> &'static str {
        "scatter_outer"
    }

    fn cpu_fwd(
        &self,
        si: &CpuStorage,
        li: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
        sa: &CpuStorage,
        la: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, k) = dims_of(li)?;
        let (_, d) = dims_of(la)?;
        let idx = cpu_slice::<u32>(si, li)?;
        let n = self.rows;
        let out = float_dispatch!(sv, self.name(), |T| {
            let out =
                scatter_outer_kernel::<T>(idx, cpu_slice(sv, lv)?, cpu_slice(sa, la)?, k, n, d);
            <T as candle_core::WithDType>::to_cpu_storage_owned(out)
        });
        Ok((out, Shape::from((n, d))))
    }

    cuda_fwd3!(|op: &Self, a, b, c| crate::cuda::scatter_outer(a, b, c, op.rows));
}

struct GatherVector;

impl CustomOp2 for GatherVector {
    fn name(&self) -> &'static str {
        "gather_vector"
    }

    fn cpu_fwd(
        &self,
        si: &CpuStorage,
        li: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let idx = cpu_slice::<u32>(si, li)?;
        let out = float_dispatch!(sv, self.name(), |T| {
            let v = cpu_slice::<T>(sv, lv)?;
            let out: Vec<T> = idx
                .iter()
                .map(|&i| {
                    v.get(i as usize)
                        .copied()
                        .unwrap_or(<T as num_traits::Zero>::zero())
                })
                .collect();
            <T as candle_core::WithDType>::to_cpu_storage_owned(out)
        });
        Ok((out, li.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        si: &candle_core::CudaStorage,
        li: &Layout,
        sv: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::gather_vector((si, li), (sv, lv))
    }

    fn bwd(
        &self,
        indices: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !v.track_op() {
            return Ok((None, None));
        }
        let grad = grad.contiguous()?;
        let n = v.dim(0)?;
        if !grad.device().is_cpu() {
            // The scatter-add of the gradient is a scatter_outer against a column of ones.
            let ones = Tensor::ones((grad.dim(0)?, 1), grad.dtype(), grad.device())?;
            let g = indices.apply_op3_no_bwd(&grad, &ones, &ScatterOuter { rows: n })?;
            return Ok((None, Some(g.reshape(n)?)));
        }
        let (is, il) = indices.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(is), Storage::Cpu(gs)) = (&*is, &*gs) else {
            candle_core::bail!("gather_vector: backward expects CPU tensors");
        };
        let idx = cpu_slice::<u32>(is, il)?;
        float_dispatch!(gs, self.name(), |T| {
            let g = cpu_slice::<T>(gs, gl)?;
            let mut out = vec![<T as num_traits::Zero>::zero(); n];
            for (&i, &gi) in idx.iter().zip(g) {
                if let Some(o) = out.get_mut(i as usize) {
                    *o += gi;
                }
            }
            Ok((None, Some(Tensor::from_vec(out, n, v.device())?)))
        })
    }
}

struct ToDense {
    n: usize,
}

impl CustomOp2 for ToDense {
    fn name(&self) -> &'static str {
        "to_dense"
    }

    fn cpu_fwd(
        &self,
        si: &CpuStorage,
        li: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, k) = dims_of(li)?;
        let idx = cpu_slice::<u32>(si, li)?;
        let n = self.n;
        let out = float_dispatch!(sv, self.name(), |T| {
            let v = cpu_slice::<T>(sv, lv)?;
            let mut out = vec![<T as num_traits::Zero>::zero(); b * n];
            for (p, (&i, &x)) in idx.iter().zip(v).enumerate() {
                if (i as usize) < n {
                    out[(p / k) * n + i as usize] += x;
                }
            }
            <T as candle_core::WithDType>::to_cpu_storage_owned(out)
        });
        Ok((out, Shape::from((b, n))))
    }

    fn bwd(
        &self,
        indices: &Tensor,
        values: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !values.track_op() {
            return Ok((None, None));
        }
        let grad = grad.contiguous()?;
        let (_, k) = indices.dims2()?;
        let n = self.n;
        let (is, il) = indices.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(is), Storage::Cpu(gs)) = (&*is, &*gs) else {
            candle_core::bail!("to_dense: backward expects CPU tensors");
        };
        let idx = cpu_slice::<u32>(is, il)?;
        float_dispatch!(gs, self.name(), |T| {
            let g = cpu_slice::<T>(gs, gl)?;
            let out: Vec<T> = idx
                .iter()
                .enumerate()
                .map(|(p, &i)| {
                    if (i as usize) < n {
                        g[(p / k) * n + i as usize]
                    } else {
                        <T as num_traits::Zero>::zero()
                    }
                })
                .collect();
            Ok((
                None,
                Some(Tensor::from_vec(out, values.dims(), values.device())?),
            ))
        })
    }
}

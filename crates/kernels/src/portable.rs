//! Every kernel of this crate as a composition of candle ops, for tensors on devices other
//! than the CPU: each public kernel calls its twin here when its data tensor (input, weight or
//! values) is neither on the CPU nor one the CUDA kernels take (f32 with the `cuda` feature),
//! so no path of an SAE or a model errors on a GPU. The top-k here hands f32 CUDA rows to the
//! CUDA kernel too. The functions take any device, so the tests compare them with the CPU
//! kernels on the CPU.
//!
//! These are dense fallbacks, not tuned GPU kernels: the sparse ops go through the dense
//! `[batch, n]` codes or product and a matmul (as a plain PyTorch SAE does), the top-k sorts
//! rows in [`SORT_CHUNK`]-column pieces (candle's sort holds one row in shared memory) and then
//! the `k` best candidates of every piece, and gradients come from candle's autograd through
//! `gather`, `scatter` and `matmul` (never `index_add`, whose GPU kernel loops over every index
//! in one thread per output column).
//!
//! Differences from the CPU kernels: ties are broken by candle's sort, not by lower column;
//! [`batch_topk`] keeps every entry tied at the threshold, so it may select a few more than
//! `total` entries when values repeat exactly.

use candle_core::{DType, Tensor};

use crate::adam::AdamStep;
use crate::cpu::INACTIVE;
use crate::error::{Error, Result};
use crate::select::Selection;

/// Columns per piece of the chunked top-k (candle's sort keeps a padded row of `u32`
/// indices in 48 KiB of shared memory, so at most 8 192 columns per call; on an H200 pieces of
/// 4 096 and of 1 024 both sort a 4 096 × 24 576 product in about 13 ms).
pub const SORT_CHUNK: usize = 4096;

/// [`crate::topk_per_row`]: the `k` largest entries of each row of `x + offset`, best first;
/// `-inf` entries are never selected (their slots hold [`INACTIVE`] and 0).
pub fn topk_per_row(x: &Tensor, k: usize, offset: Option<&Tensor>) -> Result<Selection> {
    const OP: &str = "topk_per_row";
    let (b, n) = x.dims2()?;
    if k > n {
        return Err(Error::shape(
            OP,
            format!("k = {k} exceeds the row length {n}"),
        ));
    }
    #[cfg(feature = "cuda")]
    if crate::cuda::native(x) {
        check_offset(OP, x, offset)?;
        if let Some((idx, val)) = crate::cuda::top_k(OP, x, k, offset)? {
            return mark_inactive(idx, val);
        }
    }
    let v = with_offset(OP, x, offset)?;
    check_no_nan(OP, &v)?;
    if k == 0 || b == 0 {
        return empty_selection(x, b, k);
    }
    let (idx, val) = top_k(&v, k)?;
    mark_inactive(idx, val)
}

/// [`crate::topk_of_product`]: the dense product `x · wᵀ` (`[batch, n]`) and a
/// [`topk_per_row`] of it for each request `(k, offset)`.
pub fn topk_of_product(
    x: &Tensor,
    w: &Tensor,
    requests: &[(usize, Option<&Tensor>)],
) -> Result<Vec<Selection>> {
    let product = x.matmul(&w.t()?)?;
    requests
        .iter()
        .map(|&(k, offset)| topk_per_row(&product, k, offset))
        .collect()
}

/// [`crate::select_above`]: every entry of `x + offset` strictly above `threshold[column]`,
/// in column order; `slots` is the largest count over rows.
pub fn select_above(x: &Tensor, offset: Option<&Tensor>, threshold: &Tensor) -> Result<Selection> {
    const OP: &str = "select_above";
    let v = with_offset(OP, x, offset)?;
    check_no_nan(OP, &v)?;
    let keep = v.broadcast_gt(&threshold.to_dtype(v.dtype())?)?;
    in_column_order(&v, &keep)
}

/// [`crate::batch_topk`]: the `total` largest positive entries of `x + offset` over the
/// whole batch, and the smallest selected value (0 when none is). The threshold is found by
/// bisection on the bit patterns of positive `f64`s (monotone in the value), one counting pass
/// per step; entries tied at it are all kept.
pub fn batch_topk(x: &Tensor, total: usize, offset: Option<&Tensor>) -> Result<(Selection, f64)> {
    const OP: &str = "batch_topk";
    let v = with_offset(OP, x, offset)?;
    check_no_nan(OP, &v)?;
    let count_at_least = |t: f64| -> Result<usize> {
        Ok(v.ge(t)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()? as usize)
    };
    let positive = v
        .gt(0f64)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()? as usize;
    let keep = if total == 0 {
        v.gt(f64::INFINITY)?
    } else if positive <= total {
        v.gt(0f64)?
    } else {
        // The largest t with count(v ≥ t) ≥ total: the total-th largest value.
        let (mut lo, mut hi) = (1u64, f64::INFINITY.to_bits());
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if count_at_least(f64::from_bits(mid))? >= total {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        v.ge(f64::from_bits(lo))?
    };
    let sel = in_column_order(&v, &keep)?;
    let min = if sel.values.elem_count() == 0 {
        0.0
    } else {
        let active = sel.values.gt(0f64)?;
        let big = Tensor::full(f64::INFINITY, sel.values.shape(), x.device())?;
        let m = active
            .where_cond(&sel.values.to_dtype(DType::F64)?, &big)?
            .min_all()?
            .to_scalar::<f64>()?;
        if m.is_finite() {
            m
        } else {
            0.0
        }
    };
    Ok((sel, min))
}

/// [`crate::sparse_decode`]: `Σ_j values[b,j] · weight[indices[b,j]]` → `[batch, d]`, as the
/// dense codes times the weight (differentiable in values and weight).
pub fn sparse_decode(indices: &Tensor, values: &Tensor, weight: &Tensor) -> Result<Tensor> {
    Ok(dense_codes(indices, values, weight.dim(0)?)?.matmul(weight)?)
}

/// [`crate::gather_dot`]: `⟨input[b], weight[indices[b,j]]⟩` → `[batch, slots]`, 0 at
/// [`INACTIVE`] slots, read off the dense product `input · weightᵀ` (differentiable in input
/// and weight).
pub fn gather_dot(indices: &Tensor, input: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (safe, mask) = safe_indices(indices, weight.dim(0)?, input.dtype())?;
    let product = input.matmul(&weight.t()?)?;
    Ok((product.gather(&safe, 1)? * mask)?)
}

/// [`crate::scatter_outer`]: `out[i] = Σ_{(b,j): indices[b,j] = i} values[b,j] · input[b]`
/// → `[rows, d]`, as the transposed dense codes times the input.
pub fn scatter_outer(
    indices: &Tensor,
    values: &Tensor,
    input: &Tensor,
    rows: usize,
) -> Result<Tensor> {
    let codes = dense_codes(indices, &values.detach(), rows)?;
    Ok(codes.t()?.matmul(&input.detach())?)
}

/// [`crate::gather_vector`]: `v[indices[b,j]]` → `[batch, slots]`, 0 at [`INACTIVE`] slots
/// (differentiable in `v`).
pub fn gather_vector(indices: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, _) = indices.dims2()?;
    let n = v.dim(0)?;
    let (safe, mask) = safe_indices(indices, n, v.dtype())?;
    let rows = v.unsqueeze(0)?.broadcast_as((b, n))?.contiguous()?;
    Ok((rows.gather(&safe, 1)? * mask)?)
}

/// [`crate::to_dense`]: the `[batch, n]` codes, `values[b,j]` summed into column
/// `indices[b,j]` (differentiable in values).
pub fn to_dense(indices: &Tensor, values: &Tensor, n: usize) -> Result<Tensor> {
    dense_codes(indices, values, n)
}

/// [`crate::linear_encode`]: `act(x·wᵀ + bias)` `[batch, n]`, ReLU or the identity.
pub fn linear_encode(x: &Tensor, w: &Tensor, bias: &Tensor, relu: bool) -> Result<Tensor> {
    let pre = x.matmul(&w.t()?)?.broadcast_add(bias)?;
    Ok(if relu { pre.relu()? } else { pre })
}

/// [`crate::column_sums`]: the sums over rows of `x` `[batch, n]` → `[n]`.
pub fn column_sums(x: &Tensor) -> Result<Tensor> {
    x.dims2()?;
    Ok(x.sum(0)?)
}

/// [`crate::count_positive`]: for every column of `x` `[batch, n]`, the rows where it is > 0.
pub fn count_positive(x: &Tensor) -> Result<Vec<u64>> {
    x.dims2()?;
    let counts = x.gt(0f64)?.to_dtype(DType::F64)?.sum(0)?.to_vec1::<f64>()?;
    Ok(counts.into_iter().map(|c| c as u64).collect())
}

/// [`crate::normalize_rows_`]: scales every row of `w` `[n, d]` to unit L2 norm in place
/// (all-zero rows are left as they are).
pub fn normalize_rows_(w: &Tensor) -> Result<()> {
    w.dims2()?;
    let norms = w.sqr()?.sum_keepdim(1)?.sqrt()?;
    let safe = norms.eq(0f64)?.where_cond(&norms.ones_like()?, &norms)?;
    write_in_place(w, &w.broadcast_div(&safe)?)
}

/// [`crate::adamw_update`]: one AdamW step, `param`, `m` and `v` updated in place.
pub fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    step: &AdamStep,
) -> Result<()> {
    let t = step.t as i32;
    let (c1, c2) = (1.0 - step.beta1.powi(t), 1.0 - step.beta2.powi(t));
    let m_new = ((m * step.beta1)? + (grad * (1.0 - step.beta1))?)?;
    let v_new = ((v * step.beta2)? + (grad.sqr()? * (1.0 - step.beta2))?)?;
    let denom = ((&v_new / c2)?.sqrt()? + step.eps)?;
    let update = ((&m_new / c1)? / denom)?;
    let p_new = ((param * (1.0 - step.lr * step.weight_decay))? - (update * step.lr)?)?;
    write_in_place(m, &m_new)?;
    write_in_place(v, &v_new)?;
    write_in_place(param, &p_new)
}

/// Overwrites the storage of `dst` (contiguous) with `src` of the same shape.
fn write_in_place(dst: &Tensor, src: &Tensor) -> Result<()> {
    if dst.rank() == 0 {
        return write_in_place(&dst.reshape(1)?, &src.reshape(1)?);
    }
    Ok(dst.slice_set(&src.detach(), 0, 0)?)
}

/// `x + offset` (offset `[n]` broadcast over rows), with shape and dtype checks.
fn with_offset(op: &'static str, x: &Tensor, offset: Option<&Tensor>) -> Result<Tensor> {
    check_offset(op, x, offset)?;
    Ok(match offset {
        None => x.clone(),
        Some(o) => x.broadcast_add(o)?,
    })
}

/// Errors unless `offset` is `[n]` in the dtype of `x` (`[b, n]`).
fn check_offset(op: &'static str, x: &Tensor, offset: Option<&Tensor>) -> Result<()> {
    let (_, n) = x.dims2()?;
    match offset {
        None => Ok(()),
        Some(o) if o.dims() == [n] && o.dtype() == x.dtype() => Ok(()),
        Some(o) => Err(Error::shape(
            op,
            format!(
                "offset has shape {:?} and dtype {:?}, expected [{n}] and {:?}",
                o.dims(),
                o.dtype(),
                x.dtype()
            ),
        )),
    }
}

/// Errors naming the first row of `v` that holds a NaN.
fn check_no_nan(op: &'static str, v: &Tensor) -> Result<()> {
    let nan_rows = v.ne(v)?.to_dtype(DType::F32)?.sum(1)?.to_vec1::<f32>()?;
    match nan_rows.iter().position(|&c| c > 0.0) {
        Some(r) => Err(Error::shape(op, format!("input row {r} contains NaN"))),
        None => Ok(()),
    }
}

/// A selection with `slots` inactive slots per row.
fn empty_selection(x: &Tensor, b: usize, slots: usize) -> Result<Selection> {
    Ok(Selection {
        indices: Tensor::full(INACTIVE, (b, slots), x.device())?,
        values: Tensor::zeros((b, slots), x.dtype(), x.device())?,
    })
}

/// The `k` largest entries of each row of `v` `[b, n]` (`1 ≤ k ≤ n`), best first, as
/// (`u32` columns, values): rows are sorted in [`SORT_CHUNK`]-column pieces, the best `k` of
/// each piece become candidates, and the candidates are sorted once more.
fn top_k(v: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if crate::cuda::native(v) {
        if let Some(found) = crate::cuda::top_k("top-k", v, k, None)? {
            return Ok(found);
        }
    }
    let (b, n) = v.dims2()?;
    let v = v.contiguous()?;
    if n <= SORT_CHUNK {
        let idx = v.arg_sort_last_dim(false)?.narrow(1, 0, k)?.contiguous()?;
        let val = v.gather(&idx, 1)?;
        return Ok((idx, val));
    }
    let pieces = n.div_ceil(SORT_CHUNK);
    let padded = if pieces * SORT_CHUNK > n {
        let fill = Tensor::full(f32::NEG_INFINITY, (b, pieces * SORT_CHUNK - n), v.device())?
            .to_dtype(v.dtype())?;
        Tensor::cat(&[&v, &fill], 1)?
    } else {
        v.clone()
    };
    let kk = k.min(SORT_CHUNK);
    let local = padded
        .reshape((b, pieces, SORT_CHUNK))?
        .arg_sort_last_dim(false)?
        .narrow(2, 0, kk)?; // [b, pieces, kk]
    let starts = Tensor::arange_step(
        0u32,
        (pieces * SORT_CHUNK) as u32,
        SORT_CHUNK as u32,
        v.device(),
    )?
    .reshape((1, pieces, 1))?;
    let cand_idx = local
        .broadcast_add(&starts)?
        .reshape((b, pieces * kk))?
        .contiguous()?;
    let cand_val = padded.gather(&cand_idx, 1)?;
    let order = cand_val
        .arg_sort_last_dim(false)?
        .narrow(1, 0, k)?
        .contiguous()?;
    let idx = cand_idx.gather(&order, 1)?;
    let val = cand_val.gather(&order, 1)?;
    Ok((idx, val))
}

/// Turns the slots of `-inf` values into [`INACTIVE`] with value 0.
fn mark_inactive(idx: Tensor, val: Tensor) -> Result<Selection> {
    let dead = val.eq(f64::NEG_INFINITY)?;
    let indices = dead.where_cond(&Tensor::full(INACTIVE, idx.shape(), idx.device())?, &idx)?;
    let values = dead.where_cond(&val.zeros_like()?, &val)?;
    Ok(Selection { indices, values })
}

/// The entries of `v` `[b, n]` where `keep` (u8 `[b, n]`) is set, in column order, padded to
/// the largest count over rows: the columns are ranked by `-column` among the kept ones.
fn in_column_order(v: &Tensor, keep: &Tensor) -> Result<Selection> {
    let (b, n) = v.dims2()?;
    let counts = keep.to_dtype(DType::F32)?.sum(1)?.to_vec1::<f32>()?;
    let slots = counts.iter().fold(0f32, |m, &c| m.max(c)) as usize;
    if slots == 0 || b == 0 {
        return empty_selection(v, b, slots);
    }
    let cols = Tensor::arange(0f32, n as f32, v.device())?
        .neg()?
        .reshape((1, n))?
        .broadcast_as((b, n))?;
    let minus_inf = Tensor::full(f32::NEG_INFINITY, (b, n), v.device())?;
    let rank = keep.where_cond(&cols, &minus_inf)?;
    let (idx, score) = top_k(&rank, slots)?;
    let dead = score.eq(f64::NEG_INFINITY)?;
    let inactive = Tensor::full(INACTIVE, idx.shape(), idx.device())?;
    let val = v.gather(&idx, 1)?;
    Ok(Selection {
        indices: dead.where_cond(&inactive, &idx)?,
        values: dead.where_cond(&val.zeros_like()?, &val)?,
    })
}

/// The dense `[b, n]` codes of `(indices, values)`, differentiable in `values`. The value is a
/// `scatter_add` (repeated columns add up); the gradient rides on `scatter(v) − scatter(v)`
/// (exactly zero), whose backward is a `gather` of the output gradient at the slots. candle's
/// own `scatter_add` backward fails its shape check, and `index_add` (the backward of
/// `index_select`) runs one GPU thread per output column over every index. Inactive slots
/// write to an extra column `n`, cut off at the end.
fn dense_codes(indices: &Tensor, values: &Tensor, n: usize) -> Result<Tensor> {
    let (b, k) = indices.dims2()?;
    safe_indices(indices, n, values.dtype())?;
    let dev = values.device();
    let active = indices.ne(INACTIVE)?;
    let parked = active.where_cond(indices, &Tensor::full(n as u32, (b, k), dev)?)?;
    let zeros = Tensor::zeros((b, n + 1), values.dtype(), dev)?;
    let mut codes = zeros.scatter_add(&parked, &values.detach(), 1)?;
    if values.track_op() {
        let set = zeros.scatter(&parked, values, 1)?;
        codes = (codes + (&set - set.detach())?)?;
    }
    Ok(codes.narrow(1, 0, n)?.contiguous()?)
}

/// `indices` with [`INACTIVE`] slots replaced by 0, and the `[b, k]` mask (1 active, 0
/// inactive) in `dtype`; an error names an index `≥ n`.
fn safe_indices(indices: &Tensor, n: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    if indices.dtype() != DType::U32 {
        return Err(Error::shape(
            "sparse op",
            format!("indices must be u32, got {:?}", indices.dtype()),
        ));
    }
    let active = indices.ne(INACTIVE)?;
    let safe = active.where_cond(indices, &indices.zeros_like()?)?;
    let (b, k) = indices.dims2()?;
    if b * k > 0 {
        let max = safe.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max as usize >= n {
            return Err(Error::shape(
                "sparse op",
                format!("index {max} is outside the {n} rows of the weight"),
            ));
        }
    }
    Ok((safe, active.to_dtype(dtype)?))
}

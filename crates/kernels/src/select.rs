//! Choosing the active latents of each row of a dense pre-activation `[batch, n]`, with an
//! optional per-column offset `[n]` added on the fly (an encoder bias, or `-inf` to exclude
//! columns), as a [`Selection`]: `[batch, slots]` u32 indices and the matching values.
//!
//! - [`topk_per_row`]: the `k` largest entries of each row (ties: lower column first), sorted
//!   by value, largest first.
//! - [`select_above`]: every entry above a per-column threshold, in column order.
//! - [`batch_topk`]: the `total` largest *positive* entries of the whole batch (BatchTopK).
//! - [`topk_of_product`]: [`topk_per_row`] of `x · wᵀ`, tile by tile, never holding the
//!   whole product.
//!
//! Entries equal to `-inf` are never selected; rows with fewer entries than slots are padded
//! with [`INACTIVE`] and value 0. A NaN in the input is an error naming its row.
//! The per-row work is spread over threads with rayon.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::cpu::{check_cpu, check_float, dims2, same_dtype, slice, with_simd, Real, INACTIVE};
use crate::error::{Error, Result};
use crate::matmul::{gemm_into, View};

/// Active latents of a batch: `indices` `[batch, slots]` u32 (`INACTIVE` pads) and `values`
/// `[batch, slots]` (0 at pads).
#[derive(Debug, Clone)]
pub struct Selection {
    /// Column of each selected entry, `[batch, slots]` u32.
    pub indices: Tensor,
    /// Value (input + offset) of each selected entry, `[batch, slots]`.
    pub values: Tensor,
}

/// The `k` largest entries of each row of `x + offset` (`k ≤ n`).
pub fn topk_per_row(x: &Tensor, k: usize, offset: Option<&Tensor>) -> Result<Selection> {
    if !x.device().is_cpu() {
        return crate::portable::topk_per_row(x, k, offset);
    }
    const OP: &str = "topk_per_row";
    let (_, n) = check_input(OP, x, offset)?;
    if k > n {
        return Err(Error::shape(
            OP,
            format!("k = {k} exceeds the row length {n}"),
        ));
    }
    match x.dtype() {
        DType::F32 => pad(
            per_row::<f32>(OP, x, offset, |r, o| top_k(r, o, k))?,
            Some(k),
            x.device(),
        ),
        _ => pad(
            per_row::<f64>(OP, x, offset, |r, o| top_k(r, o, k))?,
            Some(k),
            x.device(),
        ),
    }
}

/// Top-k selections of the rows of the product `x · wᵀ` (`x`: `[batch, d]`, `w`: `[n, d]`), one
/// per request `(k, offset)`, computed [`PRODUCT_TILE`] rows at a time so that the dense
/// `[batch, n]` product is never materialised whole (a TopK encoder's selection step).
pub fn topk_of_product(
    x: &Tensor,
    w: &Tensor,
    requests: &[(usize, Option<&Tensor>)],
) -> Result<Vec<Selection>> {
    if !x.device().is_cpu() {
        return crate::portable::topk_of_product(x, w, requests);
    }
    const OP: &str = "topk_of_product";
    check_cpu(OP, x)?;
    check_cpu(OP, w)?;
    let dtype = check_float(OP, "input", x)?;
    same_dtype(OP, dtype, &[("weight", w)])?;
    let (_, d) = dims2(OP, "input", x)?;
    let (_, dw) = dims2(OP, "weight", w)?;
    if d != dw {
        return Err(Error::shape(
            OP,
            format!("input has {d} columns, weight rows have {dw}"),
        ));
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let ks: Vec<usize> = requests.iter().map(|&(k, _)| k).collect();
    let n = w.dim(0)?;
    if let Some(k) = ks.iter().find(|&&k| k > n) {
        return Err(Error::shape(
            OP,
            format!("k = {k} exceeds the row length {n}"),
        ));
    }
    let offsets = requests
        .iter()
        .map(|&(_, o)| o.map(|o| o.contiguous()).transpose())
        .collect::<candle_core::Result<Vec<_>>>()?;
    for o in offsets.iter().flatten() {
        check_vector(OP, "offset", o, &x, n)?;
    }
    match dtype {
        DType::F32 => product_topk::<f32>(&x, &w, &ks, &offsets),
        _ => product_topk::<f64>(&x, &w, &ks, &offsets),
    }
}

/// [`topk_of_product`] on contiguous arguments.
fn product_topk<T: Real>(
    x: &Tensor,
    w: &Tensor,
    ks: &[usize],
    offsets: &[Option<Tensor>],
) -> Result<Vec<Selection>> {
    let (b, d) = x.dims2()?;
    let n = w.dim(0)?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (xd, wd) = (slice::<T>(&xs, xl)?, slice::<T>(&ws, wl)?);
    let guards: Vec<_> = offsets
        .iter()
        .map(|o| o.as_ref().map(|o| o.storage_and_layout()))
        .collect();
    let offs = guards
        .iter()
        .map(|g| g.as_ref().map(|(s, l)| slice::<T>(s, l)).transpose())
        .collect::<Result<Vec<_>>>()?;
    product_rows(xd, wd, (b, d, n), ks, &offs)?
        .into_iter()
        .zip(ks)
        .map(|(r, &k)| pad(r, Some(k), x.device()))
        .collect()
}

/// The rows of [`topk_of_product`] from slices (`x` `[b, d]`, `w` `[n, d]`, each `k ≤ n`):
/// each tile's product goes into one buffer reused for every tile, and each request's
/// selection runs on it.
pub(crate) fn product_rows<T: Real>(
    xd: &[T],
    wd: &[T],
    (b, d, n): (usize, usize, usize),
    ks: &[usize],
    offs: &[Option<&[T]>],
) -> Result<Vec<Vec<Row<T>>>> {
    let mut rows: Vec<Vec<Row<T>>> = vec![Vec::with_capacity(b); ks.len()];
    let mut tile = vec![T::zero(); PRODUCT_TILE.min(b) * n];
    for r0 in (0..b).step_by(PRODUCT_TILE) {
        let len = PRODUCT_TILE.min(b - r0);
        let t = &mut tile[..len * n];
        gemm_into(
            t,
            View::row_major(&xd[r0 * d..(r0 + len) * d], len, d),
            View::transposed(wd, n, d),
            false,
        );
        for ((out, &k), off) in rows.iter_mut().zip(ks).zip(offs) {
            if n == 0 {
                out.extend((0..len).map(|_| Vec::new()));
                continue;
            }
            let sel: Vec<Option<Row<T>>> = t
                .par_chunks(n)
                .map(|r| with_simd(|| top_k(r, *off, k)))
                .collect();
            for (i, r) in sel.into_iter().enumerate() {
                let r = r.ok_or_else(|| {
                    Error::shape(
                        "topk_of_product",
                        format!("product row {} contains NaN", r0 + i),
                    )
                })?;
                out.push(r);
            }
        }
    }
    Ok(rows)
}

/// Rows per tile of [`topk_of_product`].
pub const PRODUCT_TILE: usize = 512;

/// Every entry of `x + offset` strictly above `threshold[column]` (`threshold`: `[n]`), in
/// column order; `slots` is the largest count over rows.
pub fn select_above(x: &Tensor, offset: Option<&Tensor>, threshold: &Tensor) -> Result<Selection> {
    if !x.device().is_cpu() {
        return crate::portable::select_above(x, offset, threshold);
    }
    const OP: &str = "select_above";
    let (_, n) = check_input(OP, x, offset)?;
    check_vector(OP, "threshold", threshold, x, n)?;
    match x.dtype() {
        DType::F32 => select_above_t::<f32>(x, offset, threshold),
        _ => select_above_t::<f64>(x, offset, threshold),
    }
}

fn select_above_t<T: Real>(
    x: &Tensor,
    offset: Option<&Tensor>,
    threshold: &Tensor,
) -> Result<Selection> {
    let thr = threshold.contiguous()?;
    let (ts, tl) = thr.storage_and_layout();
    let t = slice::<T>(&ts, tl)?;
    pad(
        per_row::<T>("select_above", x, offset, |r, o| above(r, o, Some(t)))?,
        None,
        x.device(),
    )
}

/// The `total` largest positive entries of `x + offset` over the whole batch (ties: earlier row,
/// then lower column first), and the smallest selected value (0 when none is selected).
pub fn batch_topk(x: &Tensor, total: usize, offset: Option<&Tensor>) -> Result<(Selection, f64)> {
    if !x.device().is_cpu() {
        return crate::portable::batch_topk(x, total, offset);
    }
    const OP: &str = "batch_topk";
    check_input(OP, x, offset)?;
    match x.dtype() {
        DType::F32 => batch_topk_t::<f32>(x, total, offset),
        _ => batch_topk_t::<f64>(x, total, offset),
    }
}

fn batch_topk_t<T: Real>(
    x: &Tensor,
    total: usize,
    offset: Option<&Tensor>,
) -> Result<(Selection, f64)> {
    let mut rows = per_row::<T>("batch_topk", x, offset, |r, o| above(r, o, None))?;
    let threshold = keep_batch_top(&mut rows, total);
    let t = threshold.map_or(0.0, |t| candle_core::WithDType::to_f64(t));
    Ok((pad(rows, None, x.device())?, t))
}

/// Keeps the `total` largest entries of `rows` (all positive entries of their rows; ties: earlier
/// row, then lower column first); returns the smallest kept value (`None` when none is kept).
pub(crate) fn keep_batch_top<T: Real>(rows: &mut [Row<T>], total: usize) -> Option<T> {
    let mut all: Vec<T> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&(_, v)| v))
        .collect();
    let mut threshold = all.iter().fold(None, |m: Option<T>, &v| {
        Some(m.map_or(v, |m| num_traits::Float::min(m, v)))
    });
    if all.len() > total {
        if total == 0 {
            rows.iter_mut().for_each(Vec::clear);
            threshold = None;
        } else {
            // The total-th largest value; ties at it are kept in (row, column) order.
            let (_, t, _) = all.select_nth_unstable_by(total - 1, |a, b| {
                b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal)
            });
            let t = *t;
            let mut ties = total - all.iter().filter(|&&v| v > t).count();
            for r in rows.iter_mut() {
                r.retain(|&(_, v)| {
                    if v > t {
                        true
                    } else if v == t && ties > 0 {
                        ties -= 1;
                        true
                    } else {
                        false
                    }
                });
            }
            threshold = Some(t);
        }
    }
    threshold
}

fn check_input(op: &'static str, x: &Tensor, offset: Option<&Tensor>) -> Result<(usize, usize)> {
    check_cpu(op, x)?;
    check_float(op, "input", x)?;
    let (b, n) = dims2(op, "input", x)?;
    if let Some(o) = offset {
        check_vector(op, "offset", o, x, n)?;
    }
    Ok((b, n))
}

fn check_vector(op: &'static str, name: &str, v: &Tensor, x: &Tensor, n: usize) -> Result<()> {
    check_cpu(op, v)?;
    same_dtype(op, x.dtype(), &[(name, v)])?;
    if v.dims() != [n] {
        return Err(Error::shape(
            op,
            format!("{name} has shape {:?}, expected [{n}]", v.dims()),
        ));
    }
    Ok(())
}

/// Entries per block of [`top_k`]'s sweeps: a block whose maximum is below the bound is skipped.
const CHUNK: usize = 32;

/// Selected (column, value) pairs of one row.
pub(crate) type Row<T> = Vec<(u32, T)>;

/// Applies `rule` to every row of `x` (with the offset slice) in parallel; `rule` returns `None`
/// when the row holds a NaN.
fn per_row<T: Real>(
    op: &'static str,
    x: &Tensor,
    offset: Option<&Tensor>,
    rule: impl Fn(&[T], Option<&[T]>) -> Option<Row<T>> + Sync,
) -> Result<Vec<Row<T>>> {
    let x = x.contiguous()?;
    let offset = offset.map(|o| o.contiguous()).transpose()?;
    let n = x.dim(1)?;
    let (xs, xl) = x.storage_and_layout();
    let data = slice::<T>(&xs, xl)?;
    let guard = offset.as_ref().map(|o| o.storage_and_layout());
    let off = guard.as_ref().map(|(s, l)| slice::<T>(s, l)).transpose()?;
    if n == 0 {
        return Ok(vec![Vec::new(); x.dim(0)?]);
    }
    select_rows(op, data, n, off, rule)
}

/// [`per_row`] on the `n`-entry rows of a slice (`n > 0`).
pub(crate) fn select_rows<T: Real>(
    op: &'static str,
    data: &[T],
    n: usize,
    off: Option<&[T]>,
    rule: impl Fn(&[T], Option<&[T]>) -> Option<Row<T>> + Sync,
) -> Result<Vec<Row<T>>> {
    let rows: Vec<Option<Row<T>>> = data
        .par_chunks(n)
        .map(|r| with_simd(|| rule(r, off)))
        .collect();
    rows.into_iter()
        .enumerate()
        .map(|(b, r)| r.ok_or_else(|| Error::shape(op, format!("input row {b} contains NaN"))))
        .collect()
}

/// The `k` best entries of one row (larger value first, then lower column), best first; `-inf`
/// entries are never taken, so a row with fewer finite entries gives fewer. Two sweeps: the
/// first checks for NaN and takes each block's maximum; each maximum is an entry, so the `k`-th
/// largest of them, `t`, is at most the `k`-th best value, and only entries `≥ t` (in blocks
/// whose maximum reaches `t`) can be among the best. The second sweep gathers those, typically a
/// little more than `k`, and they are ordered. With fewer than `k` blocks every finite entry is
/// gathered.
pub(crate) fn top_k<T: Real>(row: &[T], off: Option<&[T]>, k: usize) -> Option<Row<T>> {
    let value = |i: usize, v: T| off.map_or(v, |o| v + o[i]);
    let mut maxima = Vec::with_capacity(row.len().div_ceil(CHUNK));
    for (c, chunk) in row.chunks(CHUNK).enumerate() {
        // Offset, NaN check and block maximum in one vectorisable sweep.
        let (mut nan, mut max) = (false, T::neg_infinity());
        for (l, &v) in chunk.iter().enumerate() {
            let v = value(c * CHUNK + l, v);
            nan |= v.is_nan();
            max = if v > max { v } else { max };
        }
        if nan {
            return None;
        }
        maxima.push(max);
    }
    if k == 0 {
        return Some(Vec::new());
    }
    let t = if k <= maxima.len() {
        let mut m = maxima.clone();
        let (_, kth, _) = m.select_nth_unstable_by(k - 1, |a, b| b.partial_cmp(a).unwrap());
        *kth
    } else {
        T::neg_infinity()
    };
    let mut out: Row<T> = Vec::with_capacity(2 * k);
    for (c, chunk) in row.chunks(CHUNK).enumerate() {
        if maxima[c] < t || maxima[c] == T::neg_infinity() {
            continue;
        }
        for (l, &v) in chunk.iter().enumerate() {
            let v = value(c * CHUNK + l, v);
            if v >= t && v != T::neg_infinity() {
                out.push(((c * CHUNK + l) as u32, v));
            }
        }
    }
    // Larger value first, then lower column; no entry is NaN here.
    let order = |a: &(u32, T), b: &(u32, T)| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0));
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, order);
        out.truncate(k);
    }
    out.sort_unstable_by(order);
    Some(out)
}

/// Entries of one row above `threshold[i]` (0 when `None`), in column order.
pub(crate) fn above<T: Real>(
    row: &[T],
    off: Option<&[T]>,
    threshold: Option<&[T]>,
) -> Option<Row<T>> {
    let mut out = Vec::new();
    for (i, &v) in row.iter().enumerate() {
        let v = off.map_or(v, |o| v + o[i]);
        if v.is_nan() {
            return None;
        }
        if v > threshold.map_or(T::zero(), |t| t[i]) {
            out.push((i as u32, v));
        }
    }
    Some(out)
}

/// Pads rows to `slots` (default: the longest row) with `INACTIVE` / 0 into a [`Selection`].
fn pad<T: Real>(rows: Vec<Row<T>>, slots: Option<usize>, device: &Device) -> Result<Selection> {
    let b = rows.len();
    let w = slots.unwrap_or_else(|| rows.iter().map(Vec::len).max().unwrap_or(0));
    let (idx, val) = flatten(&rows, w);
    Ok(Selection {
        indices: Tensor::from_vec(idx, (b, w), device)?,
        values: Tensor::from_vec(val, (b, w), device)?,
    })
}

/// Rows padded to `w` slots with `INACTIVE` / 0, as flat `[rows, w]` indices and values.
pub(crate) fn flatten<T: Real>(rows: &[Row<T>], w: usize) -> (Vec<u32>, Vec<T>) {
    let mut idx = vec![INACTIVE; rows.len() * w];
    let mut val = vec![T::zero(); rows.len() * w];
    for (r, row) in rows.iter().enumerate() {
        for (j, &(i, v)) in row.iter().enumerate() {
            idx[r * w + j] = i;
            val[r * w + j] = v;
        }
    }
    (idx, val)
}

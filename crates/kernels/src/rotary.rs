//! Rotary position embeddings in one pass (CPU, f32, no gradient): each head's first `2·half`
//! dimensions rotate in pairs `(i, i + half)` by the angle of its position and pair,
//! `(x₁ cos − x₂ sin, x₂ cos + x₁ sin)`, the rest of the head is copied (partial rotary). The
//! same products and sums, in the same order, as the composition of candle ops it replaces
//! (`narrow`, four `broadcast_mul`s, a difference, a sum and a `cat`), so the values are equal.
//!
//! Shapes: `x: [batch, pos, heads, d_head]`; tables `cos`, `sin`: `pos × half` values
//! (`[1, pos, 1, half]` as the model builds them, or any shape of that many), `2·half ≤ d_head`.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::cpu_slice;
use crate::error::{Error, Result};
use crate::forward::widest;

/// `x` rotated by the tables `cos`, `sin` (see the module docs).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    const OP: &str = "rope";
    let (_, p, _, dh) = x.dims4().map_err(|_| {
        Error::shape(
            OP,
            format!("x must be [batch, pos, heads, d_head], got {:?}", x.dims()),
        )
    })?;
    let half = cos.dims().last().copied().unwrap_or(0);
    if cos.dims() != sin.dims() || cos.elem_count() != p * half || 2 * half > dh {
        return Err(Error::shape(
            OP,
            format!(
                "tables must hold pos × half values with 2·half ≤ d_head ({p} positions, d_head {dh}), got cos {:?}, sin {:?}",
                cos.dims(),
                sin.dims()
            ),
        ));
    }
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    Ok(x.contiguous()?
        .apply_op3_no_bwd(&cos, &sin, &Rope { half })?)
}

/// The kernel of [`rope`].
struct Rope {
    half: usize,
}

/// Head rows per parallel work item.
const ROWS: usize = 256;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "metarep-rope"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, p, heads, dh) = xl.shape().dims4()?;
        let (x, cos, sin) = (
            cpu_slice::<f32>(xs, xl)?,
            cpu_slice::<f32>(cs, cl)?,
            cpu_slice::<f32>(ss, sl)?,
        );
        let half = self.half;
        let mut out = vec![0f32; x.len()];
        if dh > 0 {
            out.par_chunks_mut(ROWS * dh)
                .zip(x.par_chunks(ROWS * dh))
                .enumerate()
                .for_each(|(task, (o, x))| {
                    for (i, (or, xr)) in o.chunks_mut(dh).zip(x.chunks(dh)).enumerate() {
                        let t = (task * ROWS + i) / heads % p;
                        let at = t * half..(t + 1) * half;
                        widest(|| rotate(or, xr, &cos[at.clone()], &sin[at]));
                    }
                });
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

/// One head's row: pairs `(i, i + half)` rotated for `i < half = c.len()`, the rest copied.
#[inline(always)]
fn rotate(out: &mut [f32], x: &[f32], c: &[f32], s: &[f32]) {
    let half = c.len();
    let (x1, rest) = x.split_at(half);
    let (x2, tail) = rest.split_at(half);
    let (o1, rest) = out.split_at_mut(half);
    let (o2, out_tail) = rest.split_at_mut(half);
    for i in 0..half {
        o1[i] = x1[i] * c[i] - x2[i] * s[i];
        o2[i] = x2[i] * c[i] + x1[i] * s[i];
    }
    out_tail.copy_from_slice(tail);
}

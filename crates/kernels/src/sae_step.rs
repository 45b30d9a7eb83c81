//! What the hand-written SAE training steps ([`crate::ReluSaeStep`], [`crate::TopkSaeStep`])
//! share: the parameters they read, their argument checks, the gradient tensors and scratch
//! they keep across steps, the reconstruction-error pass and in-place writes into gradients.

use std::any::Any;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp1, Layout, Storage, Tensor, WithDType};

use crate::cpu::{check_cpu, check_float, dims2, same_dtype, slice, Real};
use crate::error::{Error, Result};

/// The parameters of an SAE: `w_enc`, `w_dec` `[n, d]`, `b_enc` `[n]`, `b_dec` `[d]`.
#[derive(Debug, Clone, Copy)]
pub struct SaeParams<'a> {
    /// Encoder weight `[n, d]` (rows are latents).
    pub w_enc: &'a Tensor,
    /// Encoder bias `[n]`.
    pub b_enc: &'a Tensor,
    /// Decoder weight `[n, d]` (rows are latent directions).
    pub w_dec: &'a Tensor,
    /// Decoder bias `[d]`.
    pub b_dec: &'a Tensor,
}

impl<'a> SaeParams<'a> {
    /// Read locks on the storage of `x` and the parameters, in the order `x, w_enc, b_enc,
    /// w_dec, b_dec` (held while a step reads them through [`slices`]).
    pub(crate) fn lock(
        &self,
        x: &'a Tensor,
    ) -> [(impl Deref<Target = Storage> + 'a, &'a Layout); 5] {
        [x, self.w_enc, self.b_enc, self.w_dec, self.b_dec].map(|t| t.storage_and_layout())
    }
}

/// The contiguous elements (dtype `T`) of tensors locked by [`SaeParams::lock`], in its order.
pub(crate) fn slices<'g, T: WithDType, G: Deref<Target = Storage>>(
    locks: &'g [(G, &Layout); 5],
) -> Result<[&'g [T]; 5]> {
    let mut out: [&[T]; 5] = [&[]; 5];
    for (o, (s, l)) in out.iter_mut().zip(locks) {
        *o = slice::<T>(s, l)?;
    }
    Ok(out)
}

/// The buffers a step keeps across runs: typed scratch and the four parameter gradients
/// (`w_enc`, `b_enc`, `w_dec`, `b_dec`), overwritten in place by each run.
#[derive(Default)]
pub(crate) struct StepBuffers {
    /// Scratch of the last run's dtype (see [`typed_scratch`]).
    pub scratch: Option<Box<dyn Any + Send + Sync>>,
    /// Gradients in parameter order.
    pub grads: Vec<Tensor>,
}

impl std::fmt::Debug for StepBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepBuffers")
            .field("grads", &self.grads.len())
            .finish_non_exhaustive()
    }
}

impl StepBuffers {
    /// Makes the gradients `[n, d]`, `[n]`, `[n, d]`, `[d]` of `x`'s dtype and device (kept
    /// when they already are).
    pub fn fit_grads(&mut self, x: &Tensor, n: usize, d: usize) -> Result<()> {
        let shapes: [&[usize]; 4] = [&[n, d], &[n], &[n, d], &[d]];
        let fits = self.grads.len() == 4
            && self
                .grads
                .iter()
                .zip(shapes)
                .all(|(g, s)| g.dims() == s && g.dtype() == x.dtype());
        if !fits {
            self.grads = shapes
                .iter()
                .map(|s| Tensor::zeros(*s, x.dtype(), x.device()))
                .collect::<candle_core::Result<_>>()?;
        }
        Ok(())
    }
}

/// The scratch of type `S` in `slot` (a fresh default one when the slot is empty or holds
/// another type, e.g. after a change of dtype).
pub(crate) fn typed_scratch<S: Default + Send + Sync + 'static>(
    slot: &mut Option<Box<dyn Any + Send + Sync>>,
) -> &mut S {
    if !matches!(slot, Some(s) if s.is::<S>()) {
        *slot = Some(Box::new(S::default()));
    }
    slot.as_mut()
        .and_then(|s| s.downcast_mut::<S>())
        .expect("scratch of this type was just created")
}

/// Checks the arguments of a step named `op` (CPU, contiguous, one float dtype, shapes
/// agreeing, a non-empty batch); returns `(batch, n, d)`.
pub(crate) fn check_step(
    op: &'static str,
    x: &Tensor,
    p: &SaeParams,
) -> Result<(usize, usize, usize)> {
    let all = [
        ("input", x),
        ("w_enc", p.w_enc),
        ("b_enc", p.b_enc),
        ("w_dec", p.w_dec),
        ("b_dec", p.b_dec),
    ];
    for (name, t) in all {
        check_cpu(op, t)?;
        if !t.is_contiguous() {
            return Err(Error::shape(op, format!("{name} must be contiguous")));
        }
    }
    let dtype = check_float(op, "input", x)?;
    same_dtype(op, dtype, &all[1..])?;
    let (b, d) = dims2(op, "input", x)?;
    let (n, de) = dims2(op, "w_enc", p.w_enc)?;
    if b == 0 {
        return Err(Error::shape(op, "the batch has no rows"));
    }
    let expect = [
        ("w_enc", p.w_enc, vec![n, d]),
        ("w_dec", p.w_dec, vec![n, d]),
        ("b_enc", p.b_enc, vec![n]),
        ("b_dec", p.b_dec, vec![d]),
    ];
    for (name, t, shape) in expect {
        if t.dims() != shape.as_slice() {
            return Err(Error::shape(
                op,
                format!(
                    "{name} has shape {:?}, expected {shape:?} (input [{b}, {d}], w_enc [{n}, {de}])",
                    t.dims()
                ),
            ));
        }
    }
    Ok((b, n, d))
}

/// `x̃ = x − b_dec` (with the pre-encoder bias) or `x`, into `out` `[batch, d]`.
pub(crate) fn encoder_input<T: Real>(out: &mut Vec<T>, x: &[T], b_dec: &[T], pre_bias: bool) {
    out.clear();
    out.extend_from_slice(x);
    if pre_bias {
        for row in out.chunks_mut(b_dec.len()) {
            row.iter_mut().zip(b_dec).for_each(|(v, &bd)| *v -= bd);
        }
    }
}

/// `r ← r + b_dec`, `∂r ← 2c(r − x)/B`; returns `Σ‖r − x‖²/B` and `Σ_rows ∂r`.
pub(crate) fn recon_and_grad<T: Real>(
    recon: &mut [T],
    grad: &mut [T],
    x: &[T],
    b_dec: &[T],
    c: T,
) -> (f64, Vec<T>) {
    let d = b_dec.len();
    let rows = recon.len() / d;
    let scale = (c + c) / T::from_f64(rows as f64);
    let mut sq = 0.0f64;
    let mut col = vec![T::zero(); d];
    for ((r, g), xr) in recon.chunks_mut(d).zip(grad.chunks_mut(d)).zip(x.chunks(d)) {
        let mut row_sq = T::zero();
        for ((((rv, gv), &xv), &bd), s) in r
            .iter_mut()
            .zip(g.iter_mut())
            .zip(xr)
            .zip(b_dec)
            .zip(col.iter_mut())
        {
            *rv += bd;
            let e = *rv - xv;
            row_sq += e * e;
            *gv = scale * e;
            *s += *gv;
        }
        sq += WithDType::to_f64(row_sq);
    }
    (sq / rows as f64, col)
}

/// Runs `f` on the contiguous elements of `t` (dtype `T`, CPU) in place; `op` names the step
/// in errors.
pub(crate) fn write_into<T: Real>(
    op: &'static str,
    t: &Tensor,
    f: impl FnOnce(&mut [T]) + Send,
) -> Result<()> {
    t.inplace_op1(&Write {
        op,
        f: Mutex::new(Some(f)),
        dtype: PhantomData::<fn(&mut [T])>,
    })?;
    Ok(())
}

/// The in-place op behind [`write_into`].
struct Write<T, F> {
    op: &'static str,
    f: Mutex<Option<F>>,
    dtype: PhantomData<fn(&mut [T])>,
}

impl<T: Real, F: FnOnce(&mut [T]) + Send> InplaceOp1 for Write<T, F> {
    fn name(&self) -> &'static str {
        self.op
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let op = self.op;
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: gradient not contiguous")))?;
        let data: &mut dyn Any = match s {
            CpuStorage::F32(v) => v,
            CpuStorage::F64(v) => v,
            _ => candle_core::bail!("{op}: expected f32 or f64"),
        };
        let Some(v) = data.downcast_mut::<Vec<T>>() else {
            candle_core::bail!("{op}: gradient has another dtype");
        };
        let f = self.f.lock().ok().and_then(|mut f| f.take());
        if let Some(f) = f {
            f(&mut v[a..b]);
        }
        Ok(())
    }
}

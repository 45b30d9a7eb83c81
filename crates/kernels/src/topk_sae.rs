//! The whole training step of a TopK or BatchTopK SAE — reconstruction plus the optional
//! auxiliary-K loss of dead latents — written out by hand into buffers kept across steps.
//!
//! With `x` `[batch, d]`, `W_enc`, `W_dec` `[n, d]`, `b_enc` `[n]`, `b_dec` `[d]`, `B = batch`:
//!
//! ```text
//! x̃ = x − b_dec (pre-encoder bias) or x             z = x̃·W_encᵀ + b_enc
//! I = each row's k largest z (TopK), or the batch's k·B largest positive z (BatchTopK)
//! f = ReLU(z_I)      r = Σ_I f·W_dec,i + b_dec
//! J = each row's k_a largest z among dead latents    g = ReLU(z_J)    ê = Σ_J g·W_dec,i
//! loss = c·Σ‖r − x‖²/B + a·s·Σ‖ê − (x − r)‖²/B       s = min(n_dead/k_aux, 1), k_a = min(k_aux, n_dead)
//! ∂r = 2c(r − x)/B       ∂ê = 2as(ê − x + r)/B       (r is held fixed in the auxiliary term)
//! for each latent i, over its slots (row b, code f) in I and (row b, code g) in J:
//!   ∂W_dec,i = Σ f·∂r_b + Σ g·∂ê_b       ∂z = ⟨∂r_b (or ∂ê_b), W_dec,i⟩·[code > 0]
//!   ∂W_enc,i = Σ ∂z·x̃_b                  ∂b_enc,i = Σ ∂z
//! ∂b_dec = Σ_rows ∂r (− W_encᵀ·∂b_enc with the pre-encoder bias)
//! ```
//!
//! The per-row selection reads the encoder product tile by tile, as [`crate::topk_of_product`]
//! does (BatchTopK needs the whole product, kept in a buffer reused across steps, as
//! [`crate::batch_topk`] selects on it), and keeps the selected values, so the codes cost no
//! second product. The backward is one
//! latent-major pass that writes each latent's two weight-gradient rows once, into gradient
//! tensors kept by [`TopkSaeStep`]: no zeroed `[n, d]` buffers per step and no sums of separate
//! gradients, which is what the same step through candle's autograd spends its time on.

use candle_core::{DType, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu::{axpy, dot, with_simd, Real};
use crate::error::{Error, Result};
use crate::matmul::{gemm_into, View};
use crate::sae_step::{
    check_step, encoder_input, recon_and_grad, slices, typed_scratch, write_into, SaeParams,
    StepBuffers,
};
use crate::select::{above, flatten, keep_batch_top, product_rows, select_rows, top_k, Row};
use crate::sparse::{decode_into, ByLatent};

/// Which latents a step keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkRule {
    /// Each row's `k` largest pre-activations (TopK).
    PerRow,
    /// The batch's `k·batch` largest positive pre-activations (BatchTopK).
    Batch,
}

/// Loss settings of one [`TopkSaeStep::run`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopkSaeLoss {
    /// Latents kept per row (`k ≤ n`), on average over the batch with [`TopkRule::Batch`].
    pub k: usize,
    /// How they are chosen.
    pub rule: TopkRule,
    /// Coefficient `c` of the reconstruction term.
    pub reconstruction: f64,
    /// The auxiliary-K term `(k_aux, a)`: dead latents per row and the term's coefficient.
    pub aux_k: Option<(usize, f64)>,
    /// Subtract `b_dec` from the input before the encoder.
    pub pre_encoder_bias: bool,
}

/// What one step computed.
#[derive(Debug, Clone)]
pub struct TopkSaeOutput {
    /// The selected latents `I`, `[batch, slots]` u32: `k` slots per row (TopK) or the most any
    /// row got (BatchTopK), [`crate::INACTIVE`] where a row has fewer.
    pub indices: Tensor,
    /// Their codes `f`, `[batch, slots]` (0 at padding).
    pub codes: Tensor,
    /// Reconstruction `r` `[batch, d]`.
    pub recon: Tensor,
    /// `Σ‖r − x‖²/B` (before its coefficient).
    pub reconstruction: f64,
    /// `s·Σ‖ê − (x − r)‖²/B` (before its coefficient); `None` without the auxiliary term or
    /// without dead latents.
    pub aux_k: Option<f64>,
    /// For each latent, the rows where it fired (`f > 0`).
    pub fired: Vec<u64>,
    /// BatchTopK: the smallest selected pre-activation (`None` when none was selected, and for
    /// TopK).
    pub batch_min: Option<f64>,
}

/// Buffers of the fused TopK SAE step, reused from one [`TopkSaeStep::run`] to the next: the
/// encoder input and the two `[batch, d]` error gradients, and the four parameter gradients
/// (tensors, read by the optimiser through [`TopkSaeStep::grads`]).
#[derive(Debug, Default)]
pub struct TopkSaeStep {
    buffers: StepBuffers,
}

/// The `[batch, d]` scratch of one dtype.
struct Scratch<T> {
    /// Encoder input `x̃`.
    input: Vec<T>,
    /// `∂r`.
    grad_recon: Vec<T>,
    /// `ê`, then `∂ê`.
    grad_aux: Vec<T>,
    /// BatchTopK: the encoder product `x̃·W_encᵀ` `[batch, n]`.
    product: Vec<T>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self {
            input: Vec::new(),
            grad_recon: Vec::new(),
            grad_aux: Vec::new(),
            product: Vec::new(),
        }
    }
}

/// Latents per parallel work item of the backward pass.
const GROUP: usize = 64;

/// Elements per parallel work item of the element-wise pass (the partial sums are added in
/// order, so the loss does not depend on the thread count).
const PASS: usize = 1 << 16;

const OP: &str = "topk_sae_step";

/// One request's selection: flat `[batch, slots]` indices and codes, and `slots`.
struct Picked<T> {
    idx: Vec<u32>,
    codes: Vec<T>,
    slots: usize,
}

impl<T: Real> Picked<T> {
    /// The selected rows padded to `slots`, the values through the ReLU.
    fn new(rows: &[Row<T>], slots: usize) -> Self {
        let (idx, mut codes) = flatten(rows, slots);
        for v in &mut codes {
            if *v <= T::zero() {
                *v = T::zero();
            }
        }
        Self { idx, codes, slots }
    }
}

impl TopkSaeStep {
    /// A step with no buffers yet (the first run sizes them).
    pub fn new() -> Self {
        Self::default()
    }

    /// Gradients of the last run's loss: `w_enc`, `b_enc`, `w_dec`, `b_dec` (empty before the
    /// first run). The next run overwrites them in place.
    pub fn grads(&self) -> &[Tensor] {
        &self.buffers.grads
    }

    /// One forward and backward pass on `x` `[batch, d]` (f32 or f64, CPU, all arguments the
    /// same dtype); `dead` `[n]` marks the dead latents the auxiliary term draws on (ignored
    /// without it). The gradients land in [`TopkSaeStep::grads`].
    pub fn run(
        &mut self,
        x: &Tensor,
        p: &SaeParams,
        loss: &TopkSaeLoss,
        dead: &[bool],
    ) -> Result<TopkSaeOutput> {
        let dims @ (_, n, d) = check_step(OP, x, p)?;
        if n == 0 {
            return Err(Error::shape(OP, "the SAE has no latents"));
        }
        if loss.k > n {
            return Err(Error::shape(
                OP,
                format!("k = {} exceeds the {n} latents", loss.k),
            ));
        }
        if loss.aux_k.is_some() && dead.len() != n {
            return Err(Error::shape(
                OP,
                format!(
                    "the dead-latent mask has {} entries, expected {n}",
                    dead.len()
                ),
            ));
        }
        self.buffers.fit_grads(x, n, d)?;
        match x.dtype() {
            DType::F32 => self.run_typed::<f32>(x, p, loss, dead, dims),
            _ => self.run_typed::<f64>(x, p, loss, dead, dims),
        }
    }

    fn run_typed<T: Real>(
        &mut self,
        x: &Tensor,
        p: &SaeParams,
        loss: &TopkSaeLoss,
        dead: &[bool],
        (b, n, d): (usize, usize, usize),
    ) -> Result<TopkSaeOutput> {
        let locks = p.lock(x);
        let [xs, w_enc, b_enc, w_dec, b_dec] = slices::<T, _>(&locks)?;
        let scratch = typed_scratch::<Scratch<T>>(&mut self.buffers.scratch);
        encoder_input(&mut scratch.input, xs, b_dec, loss.pre_encoder_bias);
        let xt = &scratch.input;

        // Selection: each row's top k of z (or the batch's top k·B), and with dead latents each
        // row's top k_a among them.
        let n_dead = dead.iter().filter(|&&v| v).count();
        let aux = loss.aux_k.filter(|&(k_aux, _)| k_aux > 0 && n_dead > 0);
        let dead_offset: Option<Vec<T>> = aux.map(|_| {
            b_enc
                .iter()
                .zip(dead)
                .map(|(&v, &off)| if off { v } else { T::neg_infinity() })
                .collect()
        });
        let k_a = aux.map_or(0, |(k_aux, _)| k_aux.min(n_dead));
        let (main, aux_picked, batch_min) = match loss.rule {
            TopkRule::PerRow => {
                let mut ks = vec![loss.k];
                let mut offsets = vec![Some(b_enc)];
                if let Some(o) = &dead_offset {
                    ks.push(k_a);
                    offsets.push(Some(o.as_slice()));
                }
                let rows = product_rows(xt, w_enc, (b, d, n), &ks, &offsets)?;
                let main = Picked::new(&rows[0], loss.k);
                (main, rows.get(1).map(|r| Picked::new(r, k_a)), None)
            }
            TopkRule::Batch => {
                let product = &mut scratch.product;
                product.resize(b * n, T::zero());
                gemm_into(
                    product,
                    View::row_major(xt, b, d),
                    View::transposed(w_enc, n, d),
                    false,
                );
                let mut rows = select_rows(OP, product, n, Some(b_enc), |r, o| above(r, o, None))?;
                let min = keep_batch_top(&mut rows, loss.k * b);
                let slots = rows.iter().map(Vec::len).max().unwrap_or(0);
                let aux = match &dead_offset {
                    Some(o) => {
                        let rows = select_rows(OP, product, n, Some(o), |r, o| top_k(r, o, k_a))?;
                        Some(Picked::new(&rows, k_a))
                    }
                    None => None,
                };
                let min = min.map(|t| WithDType::to_f64(t));
                (Picked::new(&rows, slots), aux, min)
            }
        };

        // Forward: r and ∂r, then ê and ∂ê.
        let c = T::from_f64(loss.reconstruction);
        let mut recon = vec![T::zero(); b * d];
        decode_into(&mut recon, &main.idx, &main.codes, w_dec, main.slots, d);
        scratch.grad_recon.resize(b * d, T::zero());
        let (rec, mut grad_b_dec) =
            recon_and_grad(&mut recon, &mut scratch.grad_recon, xs, b_dec, c);
        let aux_value = match (&aux_picked, aux) {
            (Some(a), Some((k_aux, coeff))) => {
                let s = (n_dead as f64 / k_aux as f64).min(1.0);
                scratch.grad_aux.clear();
                scratch.grad_aux.resize(b * d, T::zero());
                decode_into(&mut scratch.grad_aux, &a.idx, &a.codes, w_dec, a.slots, d);
                let a_s = T::from_f64(coeff * s);
                let sq = residual_grad(&mut scratch.grad_aux, xs, &recon, a_s, b);
                Some(s * sq)
            }
            _ => None,
        };

        // Backward: one latent-major pass over both selections.
        let by_main = ByLatent::new(&main.idx, n);
        let by_aux = aux_picked.as_ref().map(|a| ByLatent::new(&a.idx, n));
        let (grad_recon, grad_aux) = (&scratch.grad_recon, &scratch.grad_aux);
        let mut grad_b_enc = vec![T::zero(); n];
        let mut fired = vec![0u64; n];
        let latent = |i: usize, ge: &mut [T], gd: &mut [T]| -> (T, u64) {
            ge.fill(T::zero());
            gd.fill(T::zero());
            let wi = &w_dec[i * d..(i + 1) * d];
            // Adds one selection's slots of latent i; returns (Σ ∂z, slots that fired).
            let mut add = |pick: &Picked<T>, by: &ByLatent, grad: &[T]| {
                let (mut sum, mut count) = (T::zero(), 0);
                for &slot in by.slots_of(i) {
                    let code = pick.codes[slot];
                    if code > T::zero() {
                        let r = slot / pick.slots;
                        let g = &grad[r * d..(r + 1) * d];
                        let dz = dot(g, wi);
                        axpy(code, g, gd);
                        axpy(dz, &xt[r * d..(r + 1) * d], ge);
                        sum += dz;
                        count += 1;
                    }
                }
                (sum, count)
            };
            let (mut sum, fired) = add(&main, &by_main, grad_recon);
            if let (Some(a), Some(by)) = (&aux_picked, &by_aux) {
                sum += add(a, by, grad_aux).0;
            }
            (sum, fired)
        };
        let grads = &self.buffers.grads;
        let mut inner = Ok(());
        write_into::<T>(OP, &grads[0], |g_enc| {
            inner = write_into::<T>(OP, &grads[2], |g_dec| {
                g_enc
                    .par_chunks_mut(GROUP * d)
                    .zip(g_dec.par_chunks_mut(GROUP * d))
                    .zip(grad_b_enc.par_chunks_mut(GROUP))
                    .zip(fired.par_chunks_mut(GROUP))
                    .enumerate()
                    .for_each(|(group, (((ge, gd), gb), fc))| {
                        with_simd(|| {
                            let items = ge.chunks_mut(d).zip(gd.chunks_mut(d));
                            for (l, ((ge, gd), (gb, fc))) in
                                items.zip(gb.iter_mut().zip(fc)).enumerate()
                            {
                                (*gb, *fc) = latent(group * GROUP + l, ge, gd);
                            }
                        })
                    });
            });
        })?;
        inner?;
        write_into::<T>(OP, &grads[1], |g| g.copy_from_slice(&grad_b_enc))?;
        if loss.pre_encoder_bias {
            // ∂b_dec −= ∂b_enc·W_enc, one latent row at a time.
            for (&gb, row) in grad_b_enc.iter().zip(w_enc.chunks(d)) {
                axpy(-gb, row, &mut grad_b_dec);
            }
        }
        write_into::<T>(OP, &grads[3], |g| g.copy_from_slice(&grad_b_dec))?;
        drop(locks);
        Ok(TopkSaeOutput {
            indices: Tensor::from_vec(main.idx, (b, main.slots), x.device())?,
            codes: Tensor::from_vec(main.codes, (b, main.slots), x.device())?,
            recon: Tensor::from_vec(recon, (b, d), x.device())?,
            reconstruction: rec,
            aux_k: aux_value,
            fired,
            batch_min,
        })
    }
}

/// `ê ← 2a(ê − x + r)/B` in place (`e_hat`, `x`, `r` `[batch, d]`, `B` = `batch`); returns
/// `Σ‖ê − x + r‖²/B`.
fn residual_grad<T: Real>(e_hat: &mut [T], x: &[T], r: &[T], a: T, batch: usize) -> f64 {
    let scale = (a + a) / T::from_f64(batch as f64);
    let sq: f64 = e_hat
        .par_chunks_mut(PASS)
        .zip(x.par_chunks(PASS).zip(r.par_chunks(PASS)))
        .map(|(e, (x, r))| {
            let mut part = T::zero();
            for ((ev, &xv), &rv) in e.iter_mut().zip(x).zip(r) {
                let err = *ev - xv + rv;
                part += err * err;
                *ev = scale * err;
            }
            WithDType::to_f64(part)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .sum();
    sq / batch as f64
}

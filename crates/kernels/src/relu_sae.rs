//! The whole forward and backward pass of a ReLU SAE trained on reconstruction + L1, written out
//! by hand into buffers that live across steps.
//!
//! With `x` `[batch, d]`, `W_enc`, `W_dec` `[n, d]`, `b_enc` `[n]`, `b_dec` `[d]`, `B = batch`:
//!
//! ```text
//! x̃ = x − b_dec (pre-encoder bias) or x      f = ReLU(x̃·W_encᵀ + b_enc)      r = f·W_dec + b_dec
//! loss = c·Σ‖r − x‖²/B + λ·Σ_i s_i·Σ_rows f_i/B      s_i = ‖d_i‖ (norms folded) or 1
//! ∂r = 2c(r − x)/B     ∂W_dec = fᵀ·∂r (+ λ·S_i·d_i/(B‖d_i‖) folded)     ∂f = ∂r·W_decᵀ
//! ∂z = (∂f + λs/B) ⊙ [f > 0]     ∂b_enc = Σ_rows ∂z     ∂W_enc = ∂zᵀ·x̃
//! ∂b_dec = Σ_rows ∂r (− ∂b_enc·W_enc with the pre-encoder bias)
//! ```
//!
//! Four gemms and three fused element-wise passes. Through candle's autograd the same step
//! allocates a fresh `[batch, n]` buffer for each intermediate gradient and adds them in
//! separate passes; here the code gradient `∂f` and the parameter gradients are written into
//! buffers kept by [`ReluSaeStep`], so a step in steady state allocates only what it returns (the
//! codes and the reconstruction).

use candle_core::{DType, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu::{axpy, dot, Real};
use crate::dense::mask_and_sum;
use crate::error::Result;
use crate::matmul::{gemm_into, View};
use crate::sae_step::{
    check_step, encoder_input, recon_and_grad, slices, typed_scratch, write_into, SaeParams,
    StepBuffers,
};

/// Loss settings of one [`ReluSaeStep::run`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReluSaeLoss {
    /// Coefficient `c` of the reconstruction term.
    pub reconstruction: f64,
    /// Coefficient `λ` of the L1 term (any warm-up ramp already applied).
    pub l1: f64,
    /// Weigh each latent's L1 by its decoder row's norm.
    pub fold_norms: bool,
    /// Subtract `b_dec` from the input before the encoder.
    pub pre_encoder_bias: bool,
}

/// What one step computed.
#[derive(Debug, Clone)]
pub struct ReluSaeOutput {
    /// Codes `f` `[batch, n]`.
    pub codes: Tensor,
    /// Reconstruction `r` `[batch, d]`.
    pub recon: Tensor,
    /// `Σ‖r − x‖²/B` (before its coefficient).
    pub reconstruction: f64,
    /// `Σ_i s_i·Σ_rows f_i/B` (before its coefficient).
    pub l1: f64,
    /// For each latent, the rows where it fired (`f > 0`).
    pub fired: Vec<u64>,
}

/// Buffers of the fused ReLU SAE step, reused from one [`ReluSaeStep::run`] to the next: the
/// code gradient `[batch, n]`, two `[batch, d]` scratch matrices and the four parameter
/// gradients (tensors, read by the optimiser through [`ReluSaeStep::grads`]).
#[derive(Debug, Default)]
pub struct ReluSaeStep {
    buffers: StepBuffers,
}

/// The `[batch, ·]` scratch of one dtype.
struct Scratch<T> {
    /// Encoder input `x̃` `[batch, d]`.
    input: Vec<T>,
    /// `∂r` `[batch, d]`.
    grad_recon: Vec<T>,
    /// `∂f`, then `∂z`, `[batch, n]`.
    grad_codes: Vec<T>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Self {
            input: Vec::new(),
            grad_recon: Vec::new(),
            grad_codes: Vec::new(),
        }
    }
}

/// Rows per work item of the element-wise passes over `[batch, n]`.
const ROWS: usize = 256;

const OP: &str = "relu_sae_step";

impl ReluSaeStep {
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
    /// same dtype); the gradients land in [`ReluSaeStep::grads`].
    pub fn run(&mut self, x: &Tensor, p: &SaeParams, loss: &ReluSaeLoss) -> Result<ReluSaeOutput> {
        let dims @ (_, n, d) = check_step(OP, x, p)?;
        self.buffers.fit_grads(x, n, d)?;
        match x.dtype() {
            DType::F32 => self.run_typed::<f32>(x, p, loss, dims),
            _ => self.run_typed::<f64>(x, p, loss, dims),
        }
    }

    fn run_typed<T: Real>(
        &mut self,
        x: &Tensor,
        p: &SaeParams,
        loss: &ReluSaeLoss,
        (b, n, d): (usize, usize, usize),
    ) -> Result<ReluSaeOutput> {
        let locks = p.lock(x);
        let [xs, w_enc, b_enc, w_dec, b_dec] = slices::<T, _>(&locks)?;
        let (c, lambda) = (T::from_f64(loss.reconstruction), T::from_f64(loss.l1));
        let inv_b = T::one() / T::from_f64(b as f64);
        // Each latent's L1 weight s_i: its decoder row's norm when folded, else 1.
        let norms: Option<Vec<T>> = loss.fold_norms.then(|| {
            w_dec
                .par_chunks(d)
                .map(|row| dot(row, row).sqrt())
                .collect()
        });
        let weight = |i: usize| norms.as_ref().map_or(T::one(), |v| v[i]);
        // The L1 gradient of each code, before the ReLU mask.
        let l1_grad: Vec<T> = (0..n).map(|i| lambda * weight(i) * inv_b).collect();

        let scratch = typed_scratch::<Scratch<T>>(&mut self.buffers.scratch);
        scratch.grad_recon.resize(b * d, T::zero());
        scratch.grad_codes.resize(b * n, T::zero());
        // Forward: x̃, f = ReLU(x̃·W_encᵀ + b_enc) with column sums and fire counts, r.
        encoder_input(&mut scratch.input, xs, b_dec, loss.pre_encoder_bias);
        let mut codes = vec![T::zero(); b * n];
        gemm_into(
            &mut codes,
            View::row_major(&scratch.input, b, d),
            View::transposed(w_enc, n, d),
            false,
        );
        let (sums, fired) = bias_relu(&mut codes, b_enc, n);
        let mut recon = vec![T::zero(); b * d];
        gemm_into(
            &mut recon,
            View::row_major(&codes, b, n),
            View::row_major(w_dec, n, d),
            false,
        );
        let (rec, grad_b_dec) = recon_and_grad(&mut recon, &mut scratch.grad_recon, xs, b_dec, c);
        let l1 = sums
            .iter()
            .enumerate()
            .map(|(i, &s)| WithDType::to_f64(s) * WithDType::to_f64(weight(i)))
            .sum::<f64>()
            / b as f64;

        // Backward.
        let grad_recon = &scratch.grad_recon;
        write_into::<T>(OP, &self.buffers.grads[2], |g| {
            gemm_into(
                g,
                View::transposed(&codes, b, n),
                View::row_major(grad_recon, b, d),
                false,
            );
            if let (Some(norms), true) = (&norms, loss.l1 != 0.0) {
                g.par_chunks_mut(d)
                    .zip(w_dec.par_chunks(d))
                    .zip(sums.par_iter().zip(norms))
                    .for_each(|((gi, di), (&s, &nm))| {
                        if nm > T::zero() {
                            axpy(lambda * s * inv_b / nm, di, gi);
                        }
                    });
            }
        })?;
        let grad_codes = &mut scratch.grad_codes;
        gemm_into(
            grad_codes,
            View::row_major(grad_recon, b, d),
            View::transposed(w_dec, n, d),
            false,
        );
        let grad_b_enc = mask_and_sum(grad_codes, &codes, Some(&l1_grad), true, n);
        write_into::<T>(OP, &self.buffers.grads[1], |g| {
            g.copy_from_slice(&grad_b_enc)
        })?;
        write_into::<T>(OP, &self.buffers.grads[0], |g| {
            gemm_into(
                g,
                View::transposed(grad_codes, b, n),
                View::row_major(&scratch.input, b, d),
                false,
            )
        })?;
        write_into::<T>(OP, &self.buffers.grads[3], |g| {
            g.copy_from_slice(&grad_b_dec);
            if loss.pre_encoder_bias {
                // ∂b_dec −= ∂b_enc·W_enc, one latent row at a time.
                for (&gb, row) in grad_b_enc.iter().zip(w_enc.chunks(d)) {
                    axpy(-gb, row, g);
                }
            }
        })?;
        drop(locks);
        Ok(ReluSaeOutput {
            codes: Tensor::from_vec(codes, (b, n), x.device())?,
            recon: Tensor::from_vec(recon, (b, d), x.device())?,
            reconstruction: rec,
            l1,
            fired,
        })
    }
}

/// `f ← ReLU(f + bias)` over `codes` `[batch, n]`; returns each column's sum and count of
/// positive entries (partial sums over fixed row blocks, added in order: the result does not
/// depend on the thread count).
fn bias_relu<T: Real>(codes: &mut [T], bias: &[T], n: usize) -> (Vec<T>, Vec<u64>) {
    let parts: Vec<(Vec<T>, Vec<u64>)> = codes
        .par_chunks_mut(ROWS * n)
        .map(|block| {
            let mut sums = vec![T::zero(); n];
            let mut count = vec![0u64; n];
            for row in block.chunks_mut(n) {
                for (((v, &bi), s), k) in row
                    .iter_mut()
                    .zip(bias)
                    .zip(sums.iter_mut())
                    .zip(count.iter_mut())
                {
                    let z = *v + bi;
                    let on = z > T::zero();
                    *v = if on { z } else { T::zero() };
                    *s += *v;
                    *k += on as u64;
                }
            }
            (sums, count)
        })
        .collect();
    let mut sums = vec![T::zero(); n];
    let mut fired = vec![0u64; n];
    for (s, k) in parts {
        sums.iter_mut().zip(s).for_each(|(a, v)| *a += v);
        fired.iter_mut().zip(k).for_each(|(a, v)| *a += v);
    }
    (sums, fired)
}

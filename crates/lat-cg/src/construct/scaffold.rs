//! What every CG construction shares, whatever its attention: the division guard, the setup
//! layer count, the solver registers and the state read back from the stream, spec checks, and
//! laying prompts out as token matrices. The LAT construction ([`super::cg`]) and the softmax
//! routes (`metarep-softmax-routes`) build on it, each with its own channel layout.

use candle_core::{DType, Device, Tensor};
use nalgebra::{DMatrix, DVector};

use super::weights::Unit;
use crate::error::{Error, Result};
use crate::mask::{PromptChannels, TokenLayout};

/// Layers before the first CG layer (the setup layer).
pub const SETUP_LAYERS: usize = 1;

/// Added to the denominators of `β = r·z / (r·z)_prev` and `γ = r·z / p·Ap`. Without it a layer
/// run after `r·z` has become exactly 0 (labels `y = 0`, or a residual that underflows long past
/// convergence) divides 0 by 0; with it `β = γ = 0` there and `α` stays put. Where the
/// denominator `D` is positive it scales `β` and `γ` by `D/(D + 10⁻³⁰)`, a relative change below
/// `10⁻³⁰/D`: below f64 rounding while `r·z`, `p·Ap` ≥ 1e-14 (e.g. labels of order 1 down to a
/// residual of 1e-7), and only ever shrinking steps. It is representable in f32 (min normal
/// 1.2e-38).
pub const DIVISION_GUARD: f64 = 1e-30;

/// The solver registers of a CG token matrix: where the state lives that every construction
/// reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SolverChannels {
    /// CG iterate `α_k`.
    pub alpha: usize,
    /// Residual `r_k` (holds `y` on input).
    pub r: usize,
    /// Preconditioned residual `z_k = M⁻¹ r_k`.
    pub z: usize,
    /// Direction of the last step, `p_{k−1}` (0 before the first step).
    pub p: usize,
    /// `r_{k−1}·z_{k−1}` on the readers (1 before the first step).
    pub rz_prev: usize,
    /// Aggregator registers `(γ_k, β_{k−1}, r_{k−1}·z_{k−1})`.
    pub agg: [usize; 3],
}

/// Solver state read from the residual stream after CG step `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct SolverState {
    /// `α_k` at the supports.
    pub alpha: DVector<f64>,
    /// Recursively updated residual `r_k` at the supports.
    pub r: DVector<f64>,
    /// `z_k` at the supports.
    pub z: DVector<f64>,
    /// `p_{k−1}`, the direction of step `k`, at the supports (0 before the first step).
    pub p_prev: DVector<f64>,
    /// `r_{k−1}·z_{k−1}` as held by the first support (1 before the first step).
    pub rz_prev: f64,
    /// Aggregator registers `(γ_k, β_{k−1}, r_{k−1}·z_{k−1})`.
    pub aggregator: (f64, f64, f64),
}

impl SolverChannels {
    /// Units that copy `(γ_k, β_{k−1}, r·z)` from the scratch channels `sources` into the
    /// aggregator registers (multiplied by the aggregator flag, so only the aggregator keeps
    /// them).
    pub fn register_writes(&self, sources: [usize; 3], is_aggregator: usize) -> Vec<Unit> {
        sources
            .into_iter()
            .zip(self.agg)
            .map(|(src, reg)| Unit::product(src, is_aggregator, &[(reg, 1.0)]))
            .collect()
    }

    /// Reads the state of problem `batch_index` from a stream `x: [batch, tokens, channels]`
    /// laid out by `layout`.
    pub fn read(
        &self,
        x: &Tensor,
        batch_index: usize,
        layout: &TokenLayout,
    ) -> Result<SolverState> {
        let x = x.get(batch_index)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let n = layout.n_support;
        let col = |chan: usize| DVector::from_fn(n, |i, _| x[i][chan]);
        let agg = &x[layout.aggregator()];
        Ok(SolverState {
            alpha: col(self.alpha),
            r: col(self.r),
            z: col(self.z),
            p_prev: col(self.p),
            rz_prev: x[0][self.rz_prev],
            aggregator: (agg[self.agg[0]], agg[self.agg[1]], agg[self.agg[2]]),
        })
    }
}

/// Checks the settings every construction needs: `λ` finite and `≥ 0`, `t ≥ 1` steps, an input
/// width `≥ 1` (named `width_name` in the error).
pub fn check_spec(lambda: f64, steps: usize, width: usize, width_name: &str) -> Result<()> {
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::invalid(
            "ridge λ",
            format!("must be finite and ≥ 0, got {lambda}"),
        ));
    }
    if width == 0 {
        return Err(Error::invalid(width_name, "width 0"));
    }
    if steps == 0 {
        return Err(Error::invalid("steps", "t must be ≥ 1"));
    }
    Ok(())
}

/// Index into `forward_with_states` output of the stream after `k ≤ steps` CG steps of
/// `layers_per_step` layers each.
pub fn state_index(k: usize, steps: usize, layers_per_step: usize) -> Result<usize> {
    if k > steps {
        return Err(Error::invalid(
            "step",
            format!("{k} > constructed steps {steps}"),
        ));
    }
    Ok(SETUP_LAYERS + layers_per_step * k)
}

/// One prompt: support inputs `[n, d]`, labels `[n]` and query inputs `[m, d]`.
pub type PromptParts<'a> = (&'a DMatrix<f64>, &'a DVector<f64>, &'a DMatrix<f64>);

/// Lays `prompts` out as the token matrix `[batch, tokens, channels]` (f64 on `device`);
/// `check(i, prompt)` validates each one first.
pub fn embed_prompts<'a>(
    layout: &TokenLayout,
    prompt_channels: &PromptChannels,
    channels: usize,
    prompts: impl ExactSizeIterator<Item = PromptParts<'a>>,
    mut check: impl FnMut(usize, PromptParts<'a>) -> Result<()>,
    device: &Device,
) -> Result<Tensor> {
    let (batch, tokens) = (prompts.len(), layout.tokens());
    if batch == 0 {
        return Err(Error::invalid("batch", "no prompts to embed"));
    }
    let mut data = vec![0.0f64; batch * tokens * channels];
    for (bi, parts) in prompts.enumerate() {
        check(bi, parts)?;
        layout.write_prompt(
            prompt_channels,
            channels,
            parts,
            &mut data[bi * tokens * channels..(bi + 1) * tokens * channels],
        );
    }
    Ok(Tensor::from_vec(data, (batch, tokens, channels), device)?)
}

//! Small helpers that write sparse weight matrices for constructions: a hidden unit or a head is
//! described by sparse linear forms over named channels, and these functions turn the forms into
//! the dense `W_Q, W_K, W_V, W_O` and MLP matrices of the generic forward pass.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::lat::{Activation, GatedMlp, LinearAttentionHead};

/// A sparse linear form `Σ coef · x[channel]` plus a bias.
#[derive(Debug, Clone, Default)]
pub struct Form {
    /// `(channel, coefficient)` pairs.
    pub terms: Vec<(usize, f64)>,
    /// Constant term (used by MLP units; ignored by attention projections).
    pub bias: f64,
}

impl Form {
    /// `Σ coef · x[channel]`.
    pub fn of(terms: &[(usize, f64)]) -> Self {
        Self {
            terms: terms.to_vec(),
            bias: 0.0,
        }
    }

    /// The constant `c`.
    pub fn constant(c: f64) -> Self {
        Self {
            terms: vec![],
            bias: c,
        }
    }

    /// The single channel `x[channel]`.
    pub fn ch(channel: usize) -> Self {
        Self::of(&[(channel, 1.0)])
    }

    /// The same form with constant term `bias`.
    pub fn with_bias(self, bias: f64) -> Self {
        Self { bias, ..self }
    }
}

/// A hidden unit of a gated MLP block: `σ(a(x)) · g(x)` written to `out` with coefficients.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The activated branch `a(x)`.
    pub a: Form,
    /// The linear gate `g(x)`.
    pub gate: Form,
    /// `(channel, coefficient)` pairs the unit's value is added to.
    pub out: Vec<(usize, f64)>,
}

impl Unit {
    /// A linear unit `a(x)` (gate = 1) added to `out`.
    pub fn linear(a: Form, out: &[(usize, f64)]) -> Self {
        Self {
            a,
            gate: Form::constant(1.0),
            out: out.to_vec(),
        }
    }

    /// A product unit `σ(x[left]) · x[right]` added to `out`.
    pub fn product(left: usize, right: usize, out: &[(usize, f64)]) -> Self {
        Self {
            a: Form::ch(left),
            gate: Form::ch(right),
            out: out.to_vec(),
        }
    }

    /// A general unit `σ(a(x)) · g(x)` added to `out`.
    pub fn gated(a: Form, gate: Form, out: &[(usize, f64)]) -> Self {
        Self {
            a,
            gate,
            out: out.to_vec(),
        }
    }
}

/// One gated block per `(σ, units)`, in order: an MLP sublayer of a construction.
pub fn blocks(
    channels: usize,
    device: &Device,
    specs: &[(Activation, &[Unit])],
) -> Result<Vec<GatedMlp>> {
    specs
        .iter()
        .map(|(act, units)| block(channels, *act, units, device))
        .collect()
}

/// Units that clear `channels`: each adds `−x[channel]` to its channel, which the residual add
/// turns into exactly 0 (so that a later block can write a new value without cancellation).
pub fn clear(channels: &[usize]) -> Vec<Unit> {
    channels
        .iter()
        .map(|&x| Unit::linear(Form::of(&[(x, -1.0)]), &[(x, 1.0)]))
        .collect()
}

fn matrix(
    rows: usize,
    cols: usize,
    entries: impl IntoIterator<Item = (usize, usize, f64)>,
    device: &Device,
) -> Result<Tensor> {
    let mut data = vec![0.0f64; rows * cols];
    for (r, c, v) in entries {
        data[r * cols + c] += v;
    }
    Ok(Tensor::from_vec(data, (rows, cols), device)?)
}

/// Projection `[channels, cols]` whose column `j` computes the form `forms[j]` (biases ignored).
pub fn projection(channels: usize, forms: &[Form], device: &Device) -> Result<Tensor> {
    let entries = forms
        .iter()
        .enumerate()
        .flat_map(|(j, f)| f.terms.iter().map(move |&(c, v)| (c, j, v)));
    matrix(channels, forms.len(), entries, device)
}

/// Output map `[rows, channels]` where row `i` adds to channels `outs[i]`.
pub fn output(channels: usize, outs: &[Vec<(usize, f64)>], device: &Device) -> Result<Tensor> {
    let entries = outs
        .iter()
        .enumerate()
        .flat_map(|(i, o)| o.iter().map(move |&(c, v)| (i, c, v)));
    matrix(outs.len(), channels, entries, device)
}

/// A linear head reading queries `q`, keys `k`, values `v` and writing value `i` to `outs[i]`
/// (change its kind with [`crate::lat::AttentionHead::with_kind`]).
pub fn head(
    channels: usize,
    q: &[Form],
    k: &[Form],
    v: &[Form],
    outs: &[Vec<(usize, f64)>],
    mask: Tensor,
    device: &Device,
) -> Result<LinearAttentionHead> {
    let tokens = mask.dim(0)?;
    LinearAttentionHead::new(
        projection(channels, q, device)?,
        projection(channels, k, device)?,
        projection(channels, v, device)?,
        output(channels, outs, device)?,
        mask,
        channels,
        tokens,
    )
}

/// A gated MLP block made of `units`, all with activation `act`.
pub fn block(
    channels: usize,
    act: Activation,
    units: &[Unit],
    device: &Device,
) -> Result<GatedMlp> {
    let a: Vec<Form> = units.iter().map(|u| u.a.clone()).collect();
    let g: Vec<Form> = units.iter().map(|u| u.gate.clone()).collect();
    let b_a: Vec<f64> = units.iter().map(|u| u.a.bias).collect();
    let b_g: Vec<f64> = units.iter().map(|u| u.gate.bias).collect();
    let outs: Vec<Vec<(usize, f64)>> = units.iter().map(|u| u.out.clone()).collect();
    let hidden = units.len();
    GatedMlp::new(
        act,
        projection(channels, &a, device)?,
        Tensor::from_vec(b_a, hidden, device)?,
        Some((
            projection(channels, &g, device)?,
            Tensor::from_vec(b_g, hidden, device)?,
        )),
        output(channels, &outs, device)?,
        channels,
    )
}

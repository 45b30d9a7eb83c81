//! The softmax CG construction: weights under which the generic forward pass
//! ([`metarep_lat_cg::lat::Lat`], with softmax heads) runs `t` steps of conjugate gradient on
//! `(K + λI) α = y` for any prompt placed in the token matrix, then reads out
//! `f_t(x_q) = Σ_j k(x_q, x_j) α_t,j` at every query.
//!
//! The kernel mat-vec is supplied by a [`MatVec`]:
//!
//! - **Route A** ([`MatVec::ExpKernel`]): one softmax head with logits `⟨Ux_i, Ux_j⟩/τ` realises the
//!   exponential kernel. The aggregator token, whose input channels are zero, is also a key: its
//!   logit is 0, so its attention weight `w_i = 1/(1 + Σ_j K_ij)` is the reciprocal of the row
//!   normaliser, and dividing the head's output by `w_i` (a reciprocal MLP unit) undoes the
//!   normalisation exactly (`docs/route_a_theorem.md`).
//! - **Route B** ([`MatVec::SmallLogit`]): a softmax head at logit scale `ε_s` minus a uniform-mean
//!   head, rescaled by `n/ε_s` in the MLP, approximates the dot-product mat-vec `ΦΦᵀv` to
//!   `O(ε_s)` for centred inputs (`docs/route_b_bound.md`).
//!
//! Sums over supports (`r·r`, `p·Ap`) come from uniform-mean softmax heads (zero queries and keys)
//! over token-wise products prepared by the MLP, scaled by `n` in `W_O`. Since a reduction of a
//! mat-vec needs a second attention sublayer, one CG step takes two layers: a *mat-vec layer*
//! (`Ar`, `Ap_prev`, `r·r`, `β`, the new direction `p` and `Ap` by linearity) and a *reduction
//! layer* (`p·Ap`, `γ`, the updates). Model depth is `1 + 2t + 1` (setup, CG, readout).
//!
//! With [`Preconditioning::RowSum`] the solver is preconditioned CG whose `M⁻¹` is the sink
//! weight itself: the softmax normalisation kept as a diagonal preconditioner instead of undone.
//!
//! The MLP blocks are the LAT's gated blocks with `σ ∈ {identity, reciprocal}`
//! (`docs/lat_to_cg_proof.md`); the masks are the LAT's, with the aggregator as an extra key in
//! Route A's kernel heads ([`PhaseMask::SupportToSupportAndSink`]).

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use metarep_lat_cg::construct::scaffold::{check_spec, embed_prompts, state_index, SolverChannels};
use metarep_lat_cg::construct::weights::{block, blocks, clear, head, Form, Unit};
use metarep_lat_cg::lat::{
    channels as read_channels, Activation, AttentionHead, AttentionKind, Lat, LatLayer,
};
use metarep_lat_cg::mask::{PhaseMask, PromptChannels, TokenLayout};
use nalgebra::{DMatrix, DVector};

use crate::error::{Error, Result};
use crate::kernel::{ExpKernel, Prompt};

pub use metarep_lat_cg::construct::scaffold::{SolverState, DIVISION_GUARD, SETUP_LAYERS};

/// Layers per CG step (mat-vec layer, reduction layer).
pub const LAYERS_PER_STEP: usize = 2;

/// How Route A's kernel heads are organised (the head-sharing ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadSharing {
    /// One kernel head per mat-vec layer carries both mat-vecs and the sink's value, so every
    /// output is divided by the sink weight of the *same* softmax row (its normaliser cancels
    /// exactly, rounding included).
    #[default]
    Shared,
    /// A dedicated head per mat-vec; the normaliser `1/w_i` is computed once by a setup head and
    /// kept in a channel.
    Dedicated,
}

/// Preconditioner of Route A's CG: the softmax normaliser undone (plain CG) or kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preconditioning {
    /// Plain CG (`M = I`).
    #[default]
    None,
    /// PCG with `M = I + diag(K1)`: `M⁻¹` is the sink weight `w_i = 1/(1 + Σ_j K_ij)` that a
    /// softmax kernel head puts on the sink, i.e. the row normalisation kept as a diagonal
    /// preconditioner (`docs/route_a_theorem.md`, Remark 2).
    RowSum,
}

/// The mat-vec a construction realises.
#[derive(Debug, Clone, PartialEq)]
pub enum MatVec {
    /// Route A: `K_ij = exp(⟨Ux_i, Ux_j⟩/τ)` by a softmax (or exponential) head with the sink.
    ExpKernel {
        /// The kernel (`U` `[width, d]`, `τ`).
        kernel: ExpKernel,
        /// Shared or dedicated kernel heads.
        sharing: HeadSharing,
        /// Softmax heads (`true`) or unnormalised exponential heads (`false`, same weights).
        normalised: bool,
        /// Plain CG or PCG with the row-sum (softmax normaliser) preconditioner.
        preconditioner: Preconditioning,
    },
    /// Route B: `K = ΦΦᵀ` approximated by `(n/ε_s)(softmax_{ε_s} − uniform)`.
    SmallLogit {
        /// Logit scale `ε_s > 0`.
        eps: f64,
    },
}

/// Settings of a softmax CG construction.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftmaxCgSpec {
    /// Token layout (supports, queries).
    pub layout: TokenLayout,
    /// Input width `d` (Route A: raw inputs, Route B: features).
    pub input_dim: usize,
    /// Ridge `λ ≥ 0` (baked into the weights).
    pub lambda: f64,
    /// CG steps `t`.
    pub steps: usize,
    /// The mat-vec.
    pub matvec: MatVec,
}

/// The channel map of the token matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftmaxCgChannels {
    /// Inputs `x` (supports and queries).
    pub input: Range<usize>,
    /// 1 on supports.
    pub is_support: usize,
    /// 1 on the aggregator (which is also Route A's attention sink).
    pub is_aggregator: usize,
    /// 1 on queries.
    pub is_query: usize,
    /// CG iterate `α_k`.
    pub alpha: usize,
    /// Residual `r_k` (holds `y` on input).
    pub r: usize,
    /// Direction of the last step, `p_{k−1}` (0 before the first step).
    pub p: usize,
    /// Readout `f_t(x_q)` on queries.
    pub f: usize,
    /// Preconditioned residual `z_k = M⁻¹ r_k` (`= r_k` for plain CG).
    pub z: usize,
    /// `M⁻¹` diagonal (1 on supports for plain CG).
    pub dinv: usize,
    /// `r_{k−1}·z_{k−1}` on supports and the aggregator (1 before the first step).
    pub rz_prev: usize,
    /// Token-wise `r_i z_i`, the input of the next `r·z` reduction.
    pub prod_rz: usize,
    /// Row normaliser `1/w_i = 1 + Σ_j K_ij` (dedicated Route A heads only; 0 otherwise).
    pub denorm: usize,
    /// Aggregator registers `(γ_k, β_{k−1}, r_{k−1}·z_{k−1})`.
    pub agg: [usize; 3],
    /// Scratch channels (zero between CG steps).
    pub scratch: Scratch,
    /// Total channel count.
    pub total: usize,
}

/// Scratch channels of one CG step. Every write goes to a channel that is zero, and every clear
/// subtracts a channel from itself, so no value is formed as `x + (new − x)` (which loses `new`
/// to cancellation when `|new| ≪ |x|`, as `r·r` does once CG converges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scratch {
    /// Raw head output for `K z` (normalised, or Route B's difference of heads).
    pub hr: usize,
    /// Raw head output for `K p_prev`.
    pub hp: usize,
    /// Sink weight `w_i` (Route A) of the head that wrote `hr`, `hp` or `hf`.
    pub w: usize,
    /// `(A z)_i`.
    pub ar: usize,
    /// `(A p_prev)_i`.
    pub ap_prev: usize,
    /// The new direction `p = z + β p_prev`, before it moves into `p`.
    pub p_next: usize,
    /// `(A p)_i` for the new direction (kept until the reduction layer).
    pub ap: usize,
    /// `Σ r z` (kept until the reduction layer).
    pub rz: usize,
    /// `β`.
    pub beta: usize,
    /// Token-wise `p_i (Ap)_i`.
    pub prod_pap: usize,
    /// `Σ p·Ap`.
    pub pap: usize,
    /// `γ`.
    pub gamma: usize,
    /// Raw readout head output.
    pub hf: usize,
}

impl Scratch {
    /// Every scratch channel.
    pub fn all(&self) -> [usize; 13] {
        [
            self.hr,
            self.hp,
            self.w,
            self.ar,
            self.ap_prev,
            self.p_next,
            self.ap,
            self.rz,
            self.beta,
            self.prod_pap,
            self.pap,
            self.gamma,
            self.hf,
        ]
    }
}

impl SoftmaxCgChannels {
    /// The solver registers.
    pub fn solver(&self) -> SolverChannels {
        SolverChannels {
            alpha: self.alpha,
            r: self.r,
            z: self.z,
            p: self.p,
            rz_prev: self.rz_prev,
            agg: self.agg,
        }
    }

    /// Where the prompt goes: inputs, labels (into `r`) and role flags.
    pub fn prompt(&self) -> PromptChannels {
        PromptChannels {
            input: self.input.clone(),
            label: self.r,
            is_support: self.is_support,
            is_aggregator: self.is_aggregator,
            is_query: self.is_query,
        }
    }

    /// The layout for input width `d`.
    pub fn new(d: usize) -> Self {
        let mut next = d;
        let mut one = || {
            next += 1;
            next - 1
        };
        let (is_support, is_aggregator, is_query) = (one(), one(), one());
        let (alpha, r, z, dinv, p, f) = (one(), one(), one(), one(), one(), one());
        let (rz_prev, prod_rz, denorm) = (one(), one(), one());
        let agg = [one(), one(), one()];
        let scratch = Scratch {
            hr: one(),
            hp: one(),
            w: one(),
            ar: one(),
            ap_prev: one(),
            p_next: one(),
            ap: one(),
            rz: one(),
            beta: one(),
            prod_pap: one(),
            pap: one(),
            gamma: one(),
            hf: one(),
        };
        Self {
            input: 0..d,
            is_support,
            is_aggregator,
            is_query,
            alpha,
            r,
            z,
            dinv,
            p,
            f,
            rz_prev,
            prod_rz,
            denorm,
            agg,
            total: scratch.hf + 1,
            scratch,
        }
    }
}

/// A constructed softmax transformer that runs CG, with its channel map.
#[derive(Debug, Clone)]
pub struct SoftmaxCg {
    /// What was constructed.
    pub spec: SoftmaxCgSpec,
    /// Channel map.
    pub channels: SoftmaxCgChannels,
    /// The transformer (f64 weights; convert with [`Lat::to`]).
    pub model: Lat,
}

impl SoftmaxCg {
    /// Builds the weights. Errors on `λ < 0`, `t = 0`, `d = 0`, `ε_s ≤ 0`, a kernel whose input
    /// dimension is not `d`, or the row-sum preconditioner with unnormalised heads.
    pub fn build(spec: SoftmaxCgSpec, device: &Device) -> Result<Self> {
        check_spec(spec.lambda, spec.steps, spec.input_dim, "input width d")?;
        match &spec.matvec {
            MatVec::ExpKernel { kernel, .. } if kernel.dim() != spec.input_dim => {
                return Err(Error::shape(
                    "kernel projection U",
                    format!("[width, {}]", spec.input_dim),
                    format!("[{}, {}]", kernel.width(), kernel.dim()),
                ))
            }
            MatVec::ExpKernel {
                normalised: false,
                preconditioner: Preconditioning::RowSum,
                ..
            } => return Err(Error::invalid(
                "preconditioner",
                "the row-sum preconditioner is the softmax normaliser: it needs normalised heads",
            )),
            MatVec::SmallLogit { eps } if !(eps.is_finite() && *eps > 0.0) => {
                return Err(Error::invalid(
                    "logit scale ε_s",
                    format!("must be finite and > 0, got {eps}"),
                ))
            }
            _ => {}
        }
        let channels = SoftmaxCgChannels::new(spec.input_dim);
        let b = Builder {
            ch: &channels,
            spec: &spec,
            device,
        };
        let mut layers = vec![b.setup()?];
        for _ in 0..spec.steps {
            layers.push(b.matvec_layer()?);
            layers.push(b.reduction_layer()?);
        }
        layers.push(b.readout()?);
        let model = Lat {
            channels: channels.total,
            tokens: spec.layout.tokens(),
            layers,
        };
        Ok(Self {
            spec,
            channels,
            model,
        })
    }

    /// Index into `forward_with_states` output of the stream after `k ≤ t` CG steps.
    pub fn state_index(&self, k: usize) -> Result<usize> {
        Ok(state_index(k, self.spec.steps, LAYERS_PER_STEP)?)
    }

    /// Lays prompts out as the token matrix `[batch, n + 1 + m, channels]` (f64 on `device`).
    pub fn embed(&self, prompts: &[Prompt], device: &Device) -> Result<Tensor> {
        let layout = self.spec.layout;
        let (n, m, d) = (layout.n_support, layout.n_query, self.spec.input_dim);
        let check = |bi: usize, _| {
            let pr = &prompts[bi];
            if pr.n() != n || pr.m() != m || pr.dim() != d {
                return Err(metarep_lat_cg::Error::shape(
                    format!("prompt {bi}"),
                    format!("n = {n}, m = {m}, d = {d}"),
                    format!("n = {}, m = {}, d = {}", pr.n(), pr.m(), pr.dim()),
                ));
            }
            Ok(())
        };
        let parts = prompts.iter().map(|p| (&p.x, &p.y, &p.x_query));
        let ch = &self.channels;
        Ok(embed_prompts(
            &layout,
            &ch.prompt(),
            ch.total,
            parts,
            check,
            device,
        )?)
    }

    /// Runs the model in `dtype` on a batch of prompts, on the device its weights are on;
    /// returns every residual stream (f64).
    pub fn run(&self, prompts: &[Prompt], dtype: DType) -> Result<Vec<Tensor>> {
        let dev = self.model.device();
        let model = self.model.to(dtype, &dev)?;
        let x = self.embed(prompts, &dev)?.to_dtype(dtype)?;
        model
            .forward_with_states(&x)?
            .into_iter()
            .map(|s| Ok(s.to_dtype(DType::F64)?))
            .collect()
    }

    /// Reads the solver state of prompt `batch_index` from a stream `[batch, tokens, channels]`.
    pub fn read_state(&self, x: &Tensor, batch_index: usize) -> Result<SolverState> {
        Ok(self
            .channels
            .solver()
            .read(x, batch_index, &self.spec.layout)?)
    }

    /// Query predictions `[batch, m]` from the final stream.
    pub fn predictions(&self, out: &Tensor) -> Result<DMatrix<f64>> {
        Ok(self.spec.layout.read_queries(out, self.channels.f)?)
    }

    /// The support operator `K̃` `[n, n]` the kernel heads and their MLP rescaling realise in
    /// `dtype` (without `λ`): column `j` is the first mat-vec layer's `(A r)` output for `r = e_j`,
    /// read before `λr` is added (computed on the device its weights are on).
    pub fn realised_operator(&self, prompt: &Prompt, dtype: DType) -> Result<DMatrix<f64>> {
        let n = self.spec.layout.n_support;
        let probes: Vec<Prompt> = (0..n)
            .map(|j| Prompt {
                y: DVector::from_fn(n, |i, _| if i == j { 1.0 } else { 0.0 }),
                ..prompt.clone()
            })
            .collect();
        let dev = self.model.device();
        let model = self.model.to(dtype, &dev)?;
        let x = model.layers[0].forward(&self.embed(&probes, &dev)?.to_dtype(dtype)?)?;
        let layer = &model.layers[SETUP_LAYERS];
        let x = (&x + layer.attention(&x)?)?;
        let x = (&x + layer.mlp[0].forward(&x)?)?;
        let ar = read_channels(&x, self.channels.scratch.ar..self.channels.scratch.ar + 1)?
            .narrow(1, 0, n)?
            .squeeze(2)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        // Probe j is column j.
        Ok(DMatrix::from_fn(n, n, |i, j| ar[j][i]))
    }

    /// The readout head's attention pattern `[batch, tokens, tokens]` on the stream entering the
    /// readout layer (head 0: Route A's kernel head, Route B's small-logit head).
    pub fn readout_pattern(&self, states: &[Tensor]) -> Result<Tensor> {
        let last = self.model.layers.len() - 1;
        let x = states
            .get(last)
            .ok_or_else(|| Error::invalid("states", "fewer streams than layers"))?;
        let model = self.model.to(x.dtype(), x.device())?;
        Ok(model.layers[last].heads[0].pattern(x)?)
    }

    /// Heads per CG step (both layers).
    pub fn heads_per_step(&self) -> usize {
        self.model.layers[SETUP_LAYERS].heads.len()
            + self.model.layers[SETUP_LAYERS + 1].heads.len()
    }
}

struct Builder<'a> {
    ch: &'a SoftmaxCgChannels,
    spec: &'a SoftmaxCgSpec,
    device: &'a Device,
}

impl Builder<'_> {
    fn mask(&self, m: PhaseMask) -> Result<Tensor> {
        Ok(m.tensor(&self.spec.layout, self.device)?)
    }

    fn n(&self) -> f64 {
        self.spec.layout.n_support as f64
    }

    fn head(
        &self,
        kind: AttentionKind,
        qk: &[Form],
        values: &[Form],
        outs: &[Vec<(usize, f64)>],
        mask: PhaseMask,
    ) -> Result<AttentionHead> {
        let c = self.ch.total;
        Ok(head(c, qk, qk, values, outs, self.mask(mask)?, self.device)?.with_kind(kind)?)
    }

    /// A uniform-mean head: zero queries and keys, so the softmax weights are `1/n` over the
    /// supports; writes `n · mean(value) = Σ_j value_j` into `out` at supports and the aggregator.
    fn sum_head(&self, value: usize, out: usize) -> Result<AttentionHead> {
        self.head(
            AttentionKind::Softmax { scale: 1.0 },
            &[Form::default()],
            &[Form::ch(value)],
            &[vec![(out, self.n())]],
            PhaseMask::Reduction,
        )
    }

    /// Route A's query/key forms `Σ_c U_rc x_c` (one per row of `U`) and attention kind.
    fn exp_forms(&self, kernel: &ExpKernel, normalised: bool) -> (Vec<Form>, AttentionKind) {
        let forms = (0..kernel.width())
            .map(|r| {
                let terms: Vec<(usize, f64)> = self
                    .ch
                    .input
                    .clone()
                    .enumerate()
                    .map(|(c, chan)| (chan, kernel.u[(r, c)]))
                    .collect();
                Form::of(&terms)
            })
            .collect();
        let scale = 1.0 / kernel.tau;
        let kind = if normalised {
            AttentionKind::Softmax { scale }
        } else {
            AttentionKind::Exponential { scale }
        };
        (forms, kind)
    }

    /// Kernel heads writing the raw mat-vec of `values` into `raw` (Route A with `shared`: one
    /// head that also writes the sink weight into `w`).
    fn kernel_heads(
        &self,
        values: &[usize],
        raw: &[usize],
        readout: bool,
    ) -> Result<Vec<AttentionHead>> {
        let outs = |chans: &[usize], coef: f64| -> Vec<Vec<(usize, f64)>> {
            chans.iter().map(|&c| vec![(c, coef)]).collect()
        };
        let vforms: Vec<Form> = values.iter().map(|&v| Form::ch(v)).collect();
        match &self.spec.matvec {
            MatVec::ExpKernel {
                kernel,
                sharing,
                normalised,
                ..
            } => {
                let (qk, kind) = self.exp_forms(kernel, *normalised);
                let mask = if readout {
                    PhaseMask::ReadoutWithSink
                } else {
                    PhaseMask::SupportToSupportAndSink
                };
                if *sharing == HeadSharing::Shared || readout {
                    let mut v = vforms;
                    v.push(Form::ch(self.ch.is_aggregator));
                    let mut o = outs(raw, 1.0);
                    o.push(vec![(self.ch.scratch.w, 1.0)]);
                    Ok(vec![self.head(kind, &qk, &v, &o, mask)?])
                } else {
                    values
                        .iter()
                        .zip(raw)
                        .map(|(&v, &o)| {
                            self.head(kind, &qk, &[Form::ch(v)], &[vec![(o, 1.0)]], mask)
                        })
                        .collect()
                }
            }
            MatVec::SmallLogit { eps } => {
                let qk: Vec<Form> = self.ch.input.clone().map(Form::ch).collect();
                let mask = if readout {
                    PhaseMask::Readout
                } else {
                    PhaseMask::SupportToSupport
                };
                let small = self.head(
                    AttentionKind::Softmax { scale: *eps },
                    &qk,
                    &vforms,
                    &outs(raw, 1.0),
                    mask,
                )?;
                let uniform = self.head(
                    AttentionKind::Softmax { scale: 1.0 },
                    &[Form::default()],
                    &vforms,
                    &outs(raw, -1.0),
                    mask,
                )?;
                Ok(vec![small, uniform])
            }
        }
    }

    /// The MLP block that turns raw head outputs into kernel mat-vecs: `out += raw / w` (Route A
    /// shared or readout; `offset` keeps `1/·` finite where `w = 0`), `out += denorm · raw`
    /// (Route A dedicated), `out += (n/ε_s) raw` (Route B).
    fn rescale_block(
        &self,
        pairs: &[(usize, usize)],
        offset: &[usize],
        readout: bool,
    ) -> Result<metarep_lat_cg::lat::GatedMlp> {
        let (c, dev, ch) = (self.ch.total, self.device, self.ch);
        match &self.spec.matvec {
            MatVec::ExpKernel { sharing, .. } if *sharing == HeadSharing::Shared || readout => {
                let mut a: Vec<(usize, f64)> = vec![(ch.scratch.w, 1.0)];
                a.extend(offset.iter().map(|&o| (o, 1.0)));
                let units: Vec<Unit> = pairs
                    .iter()
                    .map(|&(raw, out)| Unit::gated(Form::of(&a), Form::ch(raw), &[(out, 1.0)]))
                    .collect();
                Ok(block(c, Activation::Reciprocal, &units, dev)?)
            }
            MatVec::ExpKernel { .. } => {
                let units: Vec<Unit> = pairs
                    .iter()
                    .map(|&(raw, out)| Unit::product(ch.denorm, raw, &[(out, 1.0)]))
                    .collect();
                Ok(block(c, Activation::Identity, &units, dev)?)
            }
            MatVec::SmallLogit { eps } => {
                let units: Vec<Unit> = pairs
                    .iter()
                    .map(|&(raw, out)| {
                        Unit::linear(Form::of(&[(raw, self.n() / eps)]), &[(out, 1.0)])
                    })
                    .collect();
                Ok(block(c, Activation::Identity, &units, dev)?)
            }
        }
    }

    fn dedicated(&self) -> bool {
        matches!(
            self.spec.matvec,
            MatVec::ExpKernel {
                sharing: HeadSharing::Dedicated,
                ..
            }
        )
    }

    fn row_sum(&self) -> bool {
        matches!(
            self.spec.matvec,
            MatVec::ExpKernel {
                preconditioner: Preconditioning::RowSum,
                ..
            }
        )
    }

    /// Setup: (dedicated or row-sum Route A) the sink weight `w = 1/(1 + Σ_j K_ij)` from a
    /// sink-only head, kept as `denorm = 1/w` (dedicated) and as `M⁻¹ = w` (row-sum);
    /// `z₀ = M⁻¹ y`; `r·z` register = 1 on supports and the aggregator; `prod_rz = r ⊙ z`.
    fn setup(&self) -> Result<LatLayer> {
        let (ch, c, dev) = (self.ch, self.ch.total, self.device);
        let mut heads = Vec::new();
        let mut mlp = Vec::new();
        if let MatVec::ExpKernel {
            kernel, normalised, ..
        } = &self.spec.matvec
        {
            if self.dedicated() || self.row_sum() {
                let (qk, kind) = self.exp_forms(kernel, *normalised);
                heads.push(self.head(
                    kind,
                    &qk,
                    &[Form::ch(ch.is_aggregator)],
                    &[vec![(ch.scratch.w, 1.0)]],
                    PhaseMask::SupportToSupportAndSink,
                )?);
            }
            if self.dedicated() {
                let a = Form::of(&[
                    (ch.scratch.w, 1.0),
                    (ch.is_aggregator, 1.0),
                    (ch.is_query, 1.0),
                ]);
                mlp.push(block(
                    c,
                    Activation::Reciprocal,
                    &[Unit::gated(a, Form::ch(ch.is_support), &[(ch.denorm, 1.0)])],
                    dev,
                )?);
            }
        }
        // M⁻¹: the sink weight (zero off the supports) or 1 on the supports.
        let dinv = if self.row_sum() {
            ch.scratch.w
        } else {
            ch.is_support
        };
        let registers = [
            Unit::linear(Form::ch(dinv), &[(ch.dinv, 1.0)]),
            Unit::linear(
                Form::of(&[(ch.is_support, 1.0), (ch.is_aggregator, 1.0)]),
                &[(ch.rz_prev, 1.0)],
            ),
        ];
        let mut precondition = vec![Unit::product(ch.dinv, ch.r, &[(ch.z, 1.0)])];
        precondition.extend(clear(&[ch.scratch.w]));
        let product = [Unit::product(ch.r, ch.z, &[(ch.prod_rz, 1.0)])];
        mlp.push(block(c, Activation::Identity, &registers, dev)?);
        mlp.push(block(c, Activation::Identity, &precondition, dev)?);
        mlp.push(block(c, Activation::Identity, &product, dev)?);
        Ok(LatLayer { heads, mlp })
    }

    /// Mat-vec layer of step `k`: `A z_{k−1}`, `A p_{k−2}`, `Σ r z`, `β_{k−1}`,
    /// `p_{k−1} = z_{k−1} + β p_{k−2}`, `A p_{k−1}` by linearity, `prod_pap = p ⊙ Ap`.
    fn matvec_layer(&self) -> Result<LatLayer> {
        let (ch, c, dev) = (self.ch, self.ch.total, self.device);
        let s = &ch.scratch;
        let lam = self.spec.lambda;
        let mut heads = self.kernel_heads(&[ch.z, ch.p], &[s.hr, s.hp], false)?;
        heads.push(self.sum_head(ch.prod_rz, s.rz)?);
        let rescale = self.rescale_block(
            &[(s.hr, s.ar), (s.hp, s.ap_prev)],
            &[ch.is_aggregator, ch.is_query],
            false,
        )?;
        // β = Σrz / (r·z)_prev (the +is_query keeps 1/· finite on queries, where Σrz = 0).
        let beta = [Unit::gated(
            Form::of(&[(ch.rz_prev, 1.0), (ch.is_query, 1.0)]).with_bias(DIVISION_GUARD),
            Form::ch(s.rz),
            &[(s.beta, 1.0)],
        )];
        let ridge = [
            Unit::linear(Form::of(&[(ch.z, lam)]), &[(s.ar, 1.0)]),
            Unit::linear(Form::of(&[(ch.p, lam)]), &[(s.ap_prev, 1.0)]),
        ];
        let direction = [
            Unit::linear(Form::ch(ch.z), &[(s.p_next, 1.0)]),
            Unit::product(s.beta, ch.p, &[(s.p_next, 1.0)]),
            Unit::linear(Form::ch(s.ar), &[(s.ap, 1.0)]),
            Unit::product(s.beta, s.ap_prev, &[(s.ap, 1.0)]),
        ];
        let mut product = vec![Unit::product(s.p_next, s.ap, &[(s.prod_pap, 1.0)])];
        product.extend(clear(&[ch.p, s.hr, s.hp, s.w, s.ar, s.ap_prev]));
        let mut moved = vec![Unit::linear(Form::ch(s.p_next), &[(ch.p, 1.0)])];
        moved.extend(clear(&[s.p_next]));
        let mlp = vec![
            rescale,
            block(c, Activation::Reciprocal, &beta, dev)?,
            block(c, Activation::Identity, &ridge, dev)?,
            block(c, Activation::Identity, &direction, dev)?,
            block(c, Activation::Identity, &product, dev)?,
            block(c, Activation::Identity, &moved, dev)?,
        ];
        Ok(LatLayer { heads, mlp })
    }

    /// Reduction layer of step `k`: `Σ p·Ap`, `γ_k`, `α += γp`, `r −= γAp`, registers,
    /// `z = M⁻¹ r`, `prod_rz = r ⊙ z`, scratch cleared.
    fn reduction_layer(&self) -> Result<LatLayer> {
        let (ch, c, dev) = (self.ch, self.ch.total, self.device);
        let s = &ch.scratch;
        let heads = vec![self.sum_head(s.prod_pap, s.pap)?];
        let gamma = [Unit::gated(
            Form::of(&[(s.pap, 1.0), (ch.is_query, 1.0)]).with_bias(DIVISION_GUARD),
            Form::ch(s.rz),
            &[(s.gamma, 1.0)],
        )];
        let mut update = vec![
            Unit::product(s.gamma, ch.p, &[(ch.alpha, 1.0)]),
            Unit::product(s.gamma, s.ap, &[(ch.r, -1.0)]),
        ];
        update.extend(clear(&[ch.rz_prev, ch.prod_rz, ch.z]));
        update.extend(clear(&ch.agg));
        // Σrz is read by supports and the aggregator only, so it lands where the register lives.
        let mut registers = vec![
            Unit::linear(Form::ch(s.rz), &[(ch.rz_prev, 1.0)]),
            Unit::product(ch.dinv, ch.r, &[(ch.z, 1.0)]),
        ];
        registers.extend(
            ch.solver()
                .register_writes([s.gamma, s.beta, s.rz], ch.is_aggregator),
        );
        registers.extend(clear(&s.all()));
        let product = [Unit::product(ch.r, ch.z, &[(ch.prod_rz, 1.0)])];
        use Activation::{Identity, Reciprocal};
        let mlp = blocks(
            c,
            dev,
            &[
                (Reciprocal, &gamma),
                (Identity, &update),
                (Identity, &registers),
                (Identity, &product),
            ],
        )?;
        Ok(LatLayer { heads, mlp })
    }

    /// Readout: every query reads `f = Σ_j k(x_q, x_j) α_j` from the supports.
    fn readout(&self) -> Result<LatLayer> {
        let (ch, c, dev) = (self.ch, self.ch.total, self.device);
        let s = &ch.scratch;
        let heads = self.kernel_heads(&[ch.alpha], &[s.hf], true)?;
        let rescale =
            self.rescale_block(&[(s.hf, ch.f)], &[ch.is_support, ch.is_aggregator], true)?;
        let tidy = block(c, Activation::Identity, &clear(&[s.hf, s.w]), dev)?;
        Ok(LatLayer {
            heads,
            mlp: vec![rescale, tidy],
        })
    }
}

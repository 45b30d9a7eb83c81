//! The LAT→CG construction: weights under which `t` LAT layers run exactly `t` steps of (P)CG
//! on `(K + λI) α = y`, `K = ΦΦᵀ`, for any data placed in the token matrix.
//!
//! Model depth is `1 + t + 1`: one setup layer (forms `M⁻¹` and `z₀ = M⁻¹y`), `t` CG layers (one
//! (P)CG step each), one readout layer (`f_t(x) = k(x)ᵀα_t` at every query). Layer `k` carries
//! the previous direction `p_{k−2}` and `r·z` of the previous step, finishes `β_{k−1}` and
//! `p_{k−1} = z_{k−1} + β_{k−1} p_{k−2}` from exact one-hop reductions, and takes step `k` with a
//! fresh mat-vec and `p·Ap = ‖Φᵀp‖² + λ‖p‖²` (a sum of squares, no cancellation). The derivation
//! is in `docs/lat_to_cg_proof.md`.
//!
//! Every channel a step changes is cleared by one MLP block and written by a later one (or, for
//! `α`, `r` and the new direction's mat-vecs, takes CG's own increment `x + δ`); no value is ever
//! formed as `x + (new − x)`, which loses `new` to cancellation once `|new| ≪ |x|` — as `r·z` does
//! when CG converges. The divisions for `β` and `γ` carry [`DIVISION_GUARD`], so a layer run after
//! exact convergence (`r·z = 0`) takes `β = γ = 0` and leaves the state where it is.
//!
//! Assumption of the theorem: the token-wise MLP blocks are *gated* (`σ(xW_a) ⊙ xW_b`) with
//! `σ ∈ {identity, reciprocal}`, i.e. they can form products and ratios of channels exactly.

use std::ops::Range;

use candle_core::{Device, Tensor};
use nalgebra::DMatrix;

use super::scaffold::{check_spec, embed_prompts, state_index, SolverChannels};
use super::weights::{block, blocks, clear, head, Form, Unit};
use crate::error::{Error, Result};
use crate::lat::{Activation, Lat, LatLayer};
use crate::mask::{PhaseMask, PromptChannels, TokenLayout};
use crate::problem::KrrProblem;
use crate::reference::Preconditioner;

pub use super::scaffold::{SolverState, DIVISION_GUARD, SETUP_LAYERS};

/// The channel map of the CG token matrix (one row per token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgChannels {
    /// Features `φ(x)` (supports and queries).
    pub phi: Range<usize>,
    /// 1 on support tokens.
    pub is_support: usize,
    /// 1 on the aggregator token.
    pub is_aggregator: usize,
    /// 1 on query tokens.
    pub is_query: usize,
    /// CG iterate `α_i`.
    pub alpha: usize,
    /// Residual `r_i` (holds `y_i` on input).
    pub r: usize,
    /// Preconditioned residual `z_i = d_i r_i`.
    pub z: usize,
    /// Direction of the last step taken, `p_{k−1}` after layer `k` (0 before the first).
    pub p: usize,
    /// Inverse preconditioner diagonal `d_i` (1 without preconditioning).
    pub dinv: usize,
    /// Readout `f_t(x_q)` on query tokens.
    pub f: usize,
    /// `r·z` of the previous step on every reader (1 before the first step).
    pub rz_prev: usize,
    /// Aggregator register: last step size `γ_k`.
    pub agg_gamma: usize,
    /// Aggregator register: last `β_{k−1}` (after the first step it holds `r₀·z₀`, which
    /// multiplies the zero direction `p₋₁` and carries no meaning).
    pub agg_beta: usize,
    /// Aggregator register: `r_{k−1}·z_{k−1}`, the numerator of `γ_k`.
    pub agg_rz: usize,
    /// Scratch channels (zero between layers).
    pub scratch: Scratch,
    /// Total channel count.
    pub total: usize,
}

/// Scratch channels written and cleared inside one layer (zero between layers, so every head
/// writes into a zero channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scratch {
    /// `((K + λI) z)_i`, then `(A p)_i` for the new direction `p = z + βp_prev` (B2 adds
    /// `β (A p_prev)_i`).
    pub az: usize,
    /// `((K + λI) p_prev)_i`.
    pub ap: usize,
    /// The new direction `p = z + βp_prev`, before it moves into `p`.
    pub p_next: usize,
    /// `Σ r z`.
    pub rz: usize,
    /// `Σ z z`.
    pub zz: usize,
    /// `Σ z p_prev`.
    pub zp: usize,
    /// `Σ p_prev p_prev`.
    pub pp: usize,
    /// `Φᵀz`, then `Φᵀp` for the new direction (B2 adds `βΦᵀp_prev`) (p channels).
    pub uz: Range<usize>,
    /// `Φᵀp_prev` (p channels).
    pub up: Range<usize>,
    /// `β`.
    pub beta: usize,
    /// `β Σ z p_prev`.
    pub t1: usize,
    /// `β Σ p_prev p_prev`.
    pub t2: usize,
    /// `p·Ap`.
    pub pap: usize,
    /// `γ`.
    pub gamma: usize,
    /// `‖φ_i‖²` (setup only).
    pub norm: usize,
}

impl Scratch {
    fn all(&self) -> Vec<usize> {
        let mut v = vec![
            self.az,
            self.ap,
            self.p_next,
            self.rz,
            self.zz,
            self.zp,
            self.pp,
            self.beta,
            self.t1,
            self.t2,
            self.pap,
            self.gamma,
            self.norm,
        ];
        v.extend(self.uz.clone());
        v.extend(self.up.clone());
        v
    }

    /// The contiguous range of all scratch channels.
    pub fn range(&self) -> Range<usize> {
        self.az..self.up.end
    }
}

impl CgChannels {
    /// The layout for feature width `p`.
    pub fn new(p: usize) -> Self {
        let mut next = p;
        let mut take = |width: usize| {
            next += width;
            next - width..next
        };
        let mut one = || take(1).start;
        let (is_support, is_aggregator, is_query) = (one(), one(), one());
        let (alpha, r, z, pp, dinv, f, rz_prev) = (one(), one(), one(), one(), one(), one(), one());
        let (agg_gamma, agg_beta, agg_rz) = (one(), one(), one());
        let (az, ap, p_next, rz, zz, zp, ppp, beta, t1, t2, pap, gamma, norm) = (
            one(),
            one(),
            one(),
            one(),
            one(),
            one(),
            one(),
            one(),
            one(),
            one(),
            one(),
            one(),
            one(),
        );
        let uz = take(p);
        let up = take(p);
        let total = up.end;
        let scratch = Scratch {
            az,
            ap,
            p_next,
            rz,
            zz,
            zp,
            pp: ppp,
            uz,
            up,
            beta,
            t1,
            t2,
            pap,
            gamma,
            norm,
        };
        CgChannels {
            phi: 0..p,
            is_support,
            is_aggregator,
            is_query,
            alpha,
            r,
            z,
            p: pp,
            dinv,
            f,
            rz_prev,
            agg_gamma,
            agg_beta,
            agg_rz,
            scratch,
            total,
        }
    }

    /// Where the prompt goes: features, labels (into `r`) and role flags.
    pub fn prompt(&self) -> PromptChannels {
        PromptChannels {
            input: self.phi.clone(),
            label: self.r,
            is_support: self.is_support,
            is_aggregator: self.is_aggregator,
            is_query: self.is_query,
        }
    }

    /// The solver registers.
    pub fn solver(&self) -> SolverChannels {
        SolverChannels {
            alpha: self.alpha,
            r: self.r,
            z: self.z,
            p: self.p,
            rz_prev: self.rz_prev,
            agg: [self.agg_gamma, self.agg_beta, self.agg_rz],
        }
    }

    /// Named channel ranges (for probes, plots and debugging).
    pub fn named(&self) -> Vec<(&'static str, Range<usize>)> {
        let one = |i: usize| i..i + 1;
        vec![
            ("phi", self.phi.clone()),
            ("is_support", one(self.is_support)),
            ("is_aggregator", one(self.is_aggregator)),
            ("is_query", one(self.is_query)),
            ("alpha", one(self.alpha)),
            ("r", one(self.r)),
            ("z", one(self.z)),
            ("p", one(self.p)),
            ("dinv", one(self.dinv)),
            ("f", one(self.f)),
            ("rz_prev", one(self.rz_prev)),
            ("agg_gamma", one(self.agg_gamma)),
            ("agg_beta", one(self.agg_beta)),
            ("agg_rz", one(self.agg_rz)),
            ("scratch", self.scratch.range()),
        ]
    }

    /// The range of a named channel group.
    pub fn range(&self, name: &str) -> Result<Range<usize>> {
        self.named()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r)
            .ok_or_else(|| Error::UnknownChannel(name.to_string()))
    }
}

/// Settings of a CG construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgSpec {
    /// Token layout (supports, queries).
    pub layout: TokenLayout,
    /// Feature width `p`.
    pub features: usize,
    /// Ridge `λ ≥ 0` (baked into the weights).
    pub lambda: f64,
    /// Preconditioner.
    pub preconditioner: Preconditioner,
    /// Number of CG steps `t` (= number of CG layers).
    pub steps: usize,
}

impl CgSpec {
    /// The spec that fits `prob` (its `n`, `m`, `p` and `λ`) for `steps` CG layers.
    pub fn for_problem(
        prob: &KrrProblem,
        steps: usize,
        preconditioner: Preconditioner,
    ) -> Result<Self> {
        let layout = TokenLayout::new(prob.n(), prob.phi_query.nrows())?;
        Ok(CgSpec {
            layout,
            features: prob.p(),
            lambda: prob.lambda,
            preconditioner,
            steps,
        })
    }
}

/// A constructed LAT that runs (P)CG, with its channel map.
#[derive(Debug, Clone)]
pub struct CgLat {
    /// What was constructed.
    pub spec: CgSpec,
    /// Channel map of the token matrix.
    pub channels: CgChannels,
    /// The transformer (f64 weights; convert with [`Lat::to`]).
    pub lat: Lat,
}

impl CgLat {
    /// Builds the weights. Errors on `λ < 0`, `p = 0` or `t = 0`.
    pub fn build(spec: CgSpec, device: &Device) -> Result<Self> {
        check_spec(spec.lambda, spec.steps, spec.features, "feature width p")?;
        let ch = CgChannels::new(spec.features);
        let b = Builder {
            ch: &ch,
            spec: &spec,
            device,
        };
        let mut layers = vec![b.setup()?];
        for _ in 0..spec.steps {
            layers.push(b.cg_layer()?);
        }
        layers.push(b.readout()?);
        let lat = Lat {
            channels: ch.total,
            tokens: spec.layout.tokens(),
            layers,
        };
        Ok(CgLat {
            spec,
            channels: ch,
            lat,
        })
    }

    /// Index into `forward_with_states` output of the stream after `k` CG steps (`k ≤ t`).
    pub fn state_index(&self, k: usize) -> Result<usize> {
        state_index(k, self.spec.steps, 1)
    }

    /// The LAT layer that performs CG step `k` (1-based).
    pub fn cg_layer(&self, k: usize) -> Result<&LatLayer> {
        if k == 0 || k > self.spec.steps {
            return Err(Error::invalid(
                "step",
                format!("CG layer {k} not in 1..={}", self.spec.steps),
            ));
        }
        Ok(&self.lat.layers[SETUP_LAYERS + k - 1])
    }

    /// Lays problems out as the token matrix `[batch, n + 1 + m, channels]` (f64, on `device`).
    pub fn embed(&self, problems: &[KrrProblem], device: &Device) -> Result<Tensor> {
        let (layout, spec) = (self.spec.layout, &self.spec);
        let (n, m) = (layout.n_support, layout.n_query);
        let check = |bi: usize, _| {
            let prob = &problems[bi];
            if prob.n() != n || prob.phi_query.nrows() != m || prob.p() != spec.features {
                return Err(Error::shape(
                    format!("problem {bi}"),
                    format!("n = {n}, m = {m}, p = {}", spec.features),
                    format!(
                        "n = {}, m = {}, p = {}",
                        prob.n(),
                        prob.phi_query.nrows(),
                        prob.p()
                    ),
                ));
            }
            if (prob.lambda - spec.lambda).abs() > 0.0 {
                return Err(Error::invalid(
                    format!("problem {bi}"),
                    format!(
                        "λ = {} but the LAT was constructed for λ = {}",
                        prob.lambda, spec.lambda
                    ),
                ));
            }
            if spec.preconditioner == Preconditioner::Jacobi {
                for i in 0..n {
                    let d = prob.phi.row(i).norm_squared() + prob.lambda;
                    if d.is_nan() || d <= 0.0 {
                        return Err(Error::invalid(
                            format!("problem {bi}"),
                            format!("Jacobi needs K_ii + λ > 0, support {i} has {d}"),
                        ));
                    }
                }
            }
            Ok(())
        };
        let prompts = problems.iter().map(|p| (&p.phi, &p.y, &p.phi_query));
        let ch = &self.channels;
        embed_prompts(&layout, &ch.prompt(), ch.total, prompts, check, device)
    }

    /// Reads the solver state of problem `batch_index` from a residual stream `[batch, tokens, channels]`.
    pub fn read_state(&self, x: &Tensor, batch_index: usize) -> Result<SolverState> {
        self.channels
            .solver()
            .read(x, batch_index, &self.spec.layout)
    }

    /// Query predictions `[batch, m]` read from the readout channel of the final stream.
    pub fn predictions(&self, out: &Tensor) -> Result<DMatrix<f64>> {
        self.spec.layout.read_queries(out, self.channels.f)
    }
}

struct Builder<'a> {
    ch: &'a CgChannels,
    spec: &'a CgSpec,
    device: &'a Device,
}

impl Builder<'_> {
    fn mask(&self, m: PhaseMask) -> Result<Tensor> {
        m.tensor(&self.spec.layout, self.device)
    }

    fn phi_forms(&self) -> Vec<Form> {
        self.ch.phi.clone().map(Form::ch).collect()
    }

    /// Mat-vec heads writing `((K + λI) v_c)_i` into `outs[c]` for value channels `values`
    /// (Lemma A): `Σ_j (φ_i·φ_j) v_j` over supports plus `λ v_i` from a self-masked head.
    fn matvec_heads(
        &self,
        values: &[usize],
        outs: &[usize],
    ) -> Result<Vec<crate::lat::LinearAttentionHead>> {
        let c = self.ch.total;
        let v: Vec<Form> = values.iter().map(|&ch| Form::ch(ch)).collect();
        let o: Vec<Vec<(usize, f64)>> = outs.iter().map(|&ch| vec![(ch, 1.0)]).collect();
        let phi = self.phi_forms();
        let kernel = head(
            c,
            &phi,
            &phi,
            &v,
            &o,
            self.mask(PhaseMask::SupportToSupport)?,
            self.device,
        )?;
        let lam: Vec<Form> = values
            .iter()
            .map(|&ch| Form::of(&[(ch, self.spec.lambda)]))
            .collect();
        let one = [Form::ch(self.ch.is_support)];
        let ridge = head(
            c,
            &one,
            &one,
            &lam,
            &o,
            self.mask(PhaseMask::SupportSelf)?,
            self.device,
        )?;
        Ok(vec![kernel, ridge])
    }

    fn readers(&self) -> Form {
        Form::of(&[(self.ch.is_support, 1.0), (self.ch.is_aggregator, 1.0)])
    }

    /// Reduction head writing `Σ_j key_j · value_j` over supports into `out` at every support and
    /// at the aggregator (Lemma B).
    fn reduction_head(
        &self,
        key: usize,
        value: usize,
        out: usize,
    ) -> Result<crate::lat::LinearAttentionHead> {
        let ch = self.ch;
        head(
            ch.total,
            &[self.readers()],
            &[Form::ch(key)],
            &[Form::ch(value)],
            &[vec![(out, 1.0)]],
            self.mask(PhaseMask::Reduction)?,
            self.device,
        )
    }

    /// Feature reduction head writing `Φᵀv = Σ_j v_j φ_j` (p channels) into `out` at every reader.
    fn feature_reduction_head(
        &self,
        value: usize,
        out: &Range<usize>,
    ) -> Result<crate::lat::LinearAttentionHead> {
        let ch = self.ch;
        let outs: Vec<Vec<(usize, f64)>> = out.clone().map(|c| vec![(c, 1.0)]).collect();
        head(
            ch.total,
            &[self.readers()],
            &[Form::ch(value)],
            &self.phi_forms(),
            &outs,
            self.mask(PhaseMask::Reduction)?,
            self.device,
        )
    }

    /// Setup layer (MLP only): `d = M⁻¹` diagonal, `z₀ = d ⊙ y`, `r·z` register = 1 on readers.
    fn setup(&self) -> Result<LatLayer> {
        let (ch, c, dev) = (self.ch, self.ch.total, self.device);
        let s = &ch.scratch;
        let mut mlp = Vec::new();
        match self.spec.preconditioner {
            Preconditioner::None => {
                mlp.push(block(
                    c,
                    Activation::Identity,
                    &[Unit::linear(Form::ch(ch.is_support), &[(ch.dinv, 1.0)])],
                    dev,
                )?);
            }
            Preconditioner::Jacobi => {
                let norms: Vec<Unit> = ch
                    .phi
                    .clone()
                    .map(|j| Unit::product(j, j, &[(s.norm, 1.0)]))
                    .collect();
                mlp.push(block(c, Activation::Identity, &norms, dev)?);
                // d_i = 1 / (‖φ_i‖² + λ) on supports; the +1 on the other tokens keeps 1/· finite.
                let mut a = Form::of(&[(s.norm, 1.0), (ch.is_aggregator, 1.0), (ch.is_query, 1.0)]);
                a.bias = self.spec.lambda;
                mlp.push(block(
                    c,
                    Activation::Reciprocal,
                    &[Unit::gated(a, Form::ch(ch.is_support), &[(ch.dinv, 1.0)])],
                    dev,
                )?);
            }
        }
        let mut units = vec![
            Unit::product(ch.dinv, ch.r, &[(ch.z, 1.0)]),
            Unit::linear(self.readers(), &[(ch.rz_prev, 1.0)]),
        ];
        units.extend(clear(&[s.norm]));
        mlp.push(block(c, Activation::Identity, &units, dev)?);
        Ok(LatLayer { heads: vec![], mlp })
    }

    /// One (P)CG step (Lemmas A, B, C).
    fn cg_layer(&self) -> Result<LatLayer> {
        let (ch, c, dev) = (self.ch, self.ch.total, self.device);
        let s = &ch.scratch;
        let lam = self.spec.lambda;
        let mut heads = self.matvec_heads(&[ch.z, ch.p], &[s.az, s.ap])?;
        heads.push(self.reduction_head(ch.r, ch.z, s.rz)?);
        heads.push(self.reduction_head(ch.z, ch.z, s.zz)?);
        heads.push(self.reduction_head(ch.z, ch.p, s.zp)?);
        heads.push(self.reduction_head(ch.p, ch.p, s.pp)?);
        heads.push(self.feature_reduction_head(ch.z, &s.uz)?);
        heads.push(self.feature_reduction_head(ch.p, &s.up)?);

        // B1: β = r·z / ((r·z)_prev + guard) (the +is_query keeps 1/· finite on query tokens).
        let b1 = [Unit::gated(
            Form::of(&[(ch.rz_prev, 1.0), (ch.is_query, 1.0)]).with_bias(DIVISION_GUARD),
            Form::ch(s.rz),
            &[(s.beta, 1.0)],
        )];
        // B2: p_next = z + βp (into a zero channel); az += β·ap and uz += β·up, which makes them
        // A p_next and Φᵀp_next by linearity; t1 = β z·p, t2 = β p·p.
        let mut b2 = vec![
            Unit::linear(Form::ch(ch.z), &[(s.p_next, 1.0)]),
            Unit::product(s.beta, ch.p, &[(s.p_next, 1.0)]),
            Unit::product(s.beta, s.ap, &[(s.az, 1.0)]),
            Unit::product(s.beta, s.zp, &[(s.t1, 1.0)]),
            Unit::product(s.beta, s.pp, &[(s.t2, 1.0)]),
        ];
        for (uz, up) in s.uz.clone().zip(s.up.clone()) {
            b2.push(Unit::product(s.beta, up, &[(uz, 1.0)]));
        }
        // B3: p·Ap = ‖Φᵀp‖² + λ(z·z + 2β z·p + β² p·p); clear the state channels that B5 and B6
        // rewrite (nothing after B2 reads them).
        let mut b3: Vec<Unit> =
            s.uz.clone()
                .map(|uz| Unit::product(uz, uz, &[(s.pap, 1.0)]))
                .collect();
        b3.push(Unit::linear(
            Form::of(&[(s.zz, lam), (s.t1, 2.0 * lam)]),
            &[(s.pap, 1.0)],
        ));
        b3.push(Unit::product(s.beta, s.t2, &[(s.pap, lam)]));
        b3.extend(clear(&[
            ch.p,
            ch.z,
            ch.rz_prev,
            ch.agg_gamma,
            ch.agg_beta,
            ch.agg_rz,
        ]));
        // B4: γ = r·z / (p·Ap + guard).
        let b4 = [Unit::gated(
            Form::of(&[(s.pap, 1.0), (ch.is_query, 1.0)]).with_bias(DIVISION_GUARD),
            Form::ch(s.rz),
            &[(s.gamma, 1.0)],
        )];
        // B5: α += γp, r −= γAp; p, r·z and the aggregator registers written into the channels B3
        // cleared; scratch cleared.
        let mut b5 = vec![
            Unit::product(s.gamma, s.p_next, &[(ch.alpha, 1.0)]),
            Unit::product(s.gamma, s.az, &[(ch.r, -1.0)]),
            Unit::linear(Form::ch(s.p_next), &[(ch.p, 1.0)]),
            Unit::linear(Form::ch(s.rz), &[(ch.rz_prev, 1.0)]),
        ];
        b5.extend(
            ch.solver()
                .register_writes([s.gamma, s.beta, s.rz], ch.is_aggregator),
        );
        b5.extend(clear(&s.all()));
        // B6: z = d ⊙ r (B3 cleared z).
        let b6 = [Unit::product(ch.dinv, ch.r, &[(ch.z, 1.0)])];
        use Activation::{Identity, Reciprocal};
        let mlp = blocks(
            c,
            dev,
            &[
                (Reciprocal, &b1),
                (Identity, &b2),
                (Identity, &b3),
                (Reciprocal, &b4),
                (Identity, &b5),
                (Identity, &b6),
            ],
        )?;
        Ok(LatLayer { heads, mlp })
    }

    /// Readout: every query reads `f = Σ_j (φ_q·φ_j) α_j` from the supports.
    fn readout(&self) -> Result<LatLayer> {
        let ch = self.ch;
        let phi = self.phi_forms();
        let h = head(
            ch.total,
            &phi,
            &phi,
            &[Form::ch(ch.alpha)],
            &[vec![(ch.f, 1.0)]],
            self.mask(PhaseMask::Readout)?,
            self.device,
        )?;
        Ok(LatLayer {
            heads: vec![h],
            mlp: vec![],
        })
    }
}

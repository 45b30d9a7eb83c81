//! Route B measurements: the dot-product mat-vec `ΦΦᵀv` approximated by a softmax head at logit
//! scale `ε_s` minus a uniform-mean head, rescaled by `n/ε_s` (`docs/route_b_bound.md`); its
//! per-mat-vec operator error against the a-priori bound, and how the error accumulates over CG.

use candle_core::{DType, Device};
use metarep_eval::baselines::cg::{
    a_norm, cg_bound, condition_number, exact_solution, pcg, Preconditioner,
};
use metarep_eval::tasks::kernel::KrrProblem;
use metarep_lat_cg::mask::TokenLayout;
use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::construct::{MatVec, SoftmaxCg, SoftmaxCgSpec};
use crate::error::{Error, Result};
use crate::kernel::Prompt;
use crate::probe::relative_matvec_error;
use crate::route_a::spectral_norm;

/// Settings of a centred toy problem (a `[problem]` table in fig4's config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CentredSpec {
    /// Supports `n`.
    pub n_support: usize,
    /// Queries `m`.
    pub n_query: usize,
    /// Feature width `p`.
    pub features: usize,
    /// Ridge `λ`.
    pub lambda: f64,
    /// Label noise standard deviation.
    pub noise: f64,
}

/// Draws `φ ~ N(0, I_p/p)` for supports and queries, subtracts the support mean from both (so
/// `Σ_j φ_j = 0`), and labels `y = Φw + noise` with `w ~ N(0, I_p)`.
pub fn centred_problem(rng: &mut impl Rng, spec: &CentredSpec) -> Result<KrrProblem> {
    let (n, m, p) = (spec.n_support, spec.n_query, spec.features);
    if n < 2 || m == 0 || p == 0 {
        return Err(Error::invalid(
            "centred problem",
            format!("needs n ≥ 2, m ≥ 1, p ≥ 1 (got n = {n}, m = {m}, p = {p})"),
        ));
    }
    let scale = 1.0 / (p as f64).sqrt();
    let mut normal = || -> f64 { StandardNormal.sample(rng) };
    let mut phi = DMatrix::from_fn(n, p, |_, _| normal() * scale);
    let mut phi_query = DMatrix::from_fn(m, p, |_, _| normal() * scale);
    let mean = phi.row_mean();
    for mut row in phi.row_iter_mut().chain(phi_query.row_iter_mut()) {
        row -= &mean;
    }
    let w = DVector::from_fn(p, |_, _| normal());
    let y = &phi * &w + DVector::from_fn(n, |_, _| spec.noise * normal());
    Ok(KrrProblem::new(phi, y, spec.lambda, phi_query)?)
}

/// The Route B transformer for `prob` with logit scale `eps` and `steps` CG steps, its weights on
/// `device`.
pub fn build(prob: &KrrProblem, eps: f64, steps: usize, device: &Device) -> Result<SoftmaxCg> {
    SoftmaxCg::build(
        SoftmaxCgSpec {
            layout: TokenLayout::new(prob.n(), prob.phi_query.nrows())?,
            input_dim: prob.p(),
            lambda: prob.lambda,
            steps,
            matvec: MatVec::SmallLogit { eps },
        },
        device,
    )
}

/// The operator Route B realises in exact arithmetic: `(n/ε)(softmax_rows(ε ΦΦᵀ) − 11ᵀ/n)`.
pub fn small_logit_operator(phi: &DMatrix<f64>, eps: f64) -> DMatrix<f64> {
    let n = phi.nrows();
    let s = phi * phi.transpose() * eps;
    let mut out = DMatrix::zeros(n, n);
    for i in 0..n {
        let max = s.row(i).max();
        let e: Vec<f64> = s.row(i).iter().map(|v| (v - max).exp()).collect();
        let z: f64 = e.iter().sum();
        for j in 0..n {
            out[(i, j)] = (n as f64 / eps) * (e[j] / z - 1.0 / n as f64);
        }
    }
    out
}

/// A-priori bound on the relative operator error `‖Ŝ − S‖₂/‖S‖₂` for centred `Φ`
/// (`docs/route_b_bound.md`, Proposition 1):
/// `(ε e^T/2)(‖S∘S‖₂ + √n‖σ²‖₂ + ε σ²_max ‖S‖₂) / ((1 − ε² e^T σ²_max/2) ‖S‖₂)` with `S = ΦΦᵀ`,
/// `T = ε max|S_ij|`, `σ_i² = Σ_l S_il²/n`. Infinite when the denominator is not positive.
pub fn operator_bound(phi: &DMatrix<f64>, eps: f64) -> f64 {
    let n = phi.nrows() as f64;
    let s = phi * phi.transpose();
    let t = eps * s.amax();
    let sigma2 = DVector::from_fn(s.nrows(), |i, _| s.row(i).norm_squared() / n);
    let s_norm = spectral_norm(&s);
    let denom = 1.0 - eps * eps * t.exp() * sigma2.max() / 2.0;
    if denom <= 0.0 || s_norm == 0.0 {
        return f64::INFINITY;
    }
    let num = eps * t.exp() / 2.0
        * (spectral_norm(&s.component_mul(&s))
            + n.sqrt() * sigma2.norm()
            + eps * sigma2.max() * s_norm);
    num / (denom * s_norm)
}

/// The relative operator error of one Route B mat-vec, measured and bounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperatorError {
    /// `‖Ŝ − ΦΦᵀ‖₂ / ‖ΦΦᵀ‖₂` for the operator the model realises in the run's dtype.
    pub measured: f64,
    /// [`operator_bound`].
    pub bound: f64,
}

/// Measures the relative operator error of Route B's mat-vec on `prob` in `dtype` on `device`.
pub fn operator_error(
    prob: &KrrProblem,
    eps: f64,
    dtype: DType,
    device: &Device,
) -> Result<OperatorError> {
    let model = build(prob, eps, 1, device)?;
    let exact = &prob.phi * prob.phi.transpose();
    Ok(OperatorError {
        measured: relative_matvec_error(&model, &Prompt::from(prob), &exact, dtype)?,
        bound: operator_bound(&prob.phi, eps),
    })
}

/// One step of a Route B CG run compared with exact CG.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CumulativeRow {
    /// CG steps `t`.
    pub t: usize,
    /// `‖α_t^B − α_t^CG‖_A / ‖α*‖_A`: deviation from exact CG after the same number of steps.
    pub dev_vs_cg: f64,
    /// `‖α_t^B − α*‖_A / ‖α*‖_A`.
    pub error: f64,
    /// `‖α_t^CG − α*‖_A / ‖α*‖_A`.
    pub cg_error: f64,
    /// CG rate bound `2((√κ−1)/(√κ+1))^t`.
    pub cg_bound: f64,
    /// Residual gap `‖(y − Aα_t) − r_t‖ / ‖y‖` between the true and the model's recursive residual.
    pub gap: f64,
    /// `‖E α_t‖ / ‖y‖` with `E = Ŝ − S`: what the gap equals for a fixed operator (Lemma 2).
    pub gap_identity: f64,
    /// `‖E‖₂ Σ_{k ≤ t} ‖α_k − α_{k−1}‖ / ‖y‖`: the `O(εt)` bound on the gap (Lemma 2).
    pub gap_bound: f64,
}

/// Runs the Route B model for `steps` CG steps on `prob` in `dtype` on `device` and compares
/// every step with exact CG on `A = ΦΦᵀ + λI` (`E` is the operator realised in `dtype`).
pub fn cumulative(
    prob: &KrrProblem,
    eps: f64,
    steps: usize,
    dtype: DType,
    device: &Device,
) -> Result<Vec<CumulativeRow>> {
    let model = build(prob, eps, steps, device)?;
    let prompt = Prompt::from(prob);
    let states = model.run(std::slice::from_ref(&prompt), dtype)?;
    let a = prob.system_matrix();
    let star = exact_solution(&a, &prob.y)?;
    let norm_star = a_norm(&a, &star);
    if norm_star == 0.0 {
        return Err(Error::invalid(
            "labels y",
            "the solution is zero: nothing to converge to",
        ));
    }
    let reference = pcg(&a, &prob.y, steps, Preconditioner::None)?;
    let kappa = condition_number(&a);
    let e = model.realised_operator(&prompt, dtype)? - &prob.phi * prob.phi.transpose();
    let e_norm = spectral_norm(&e);
    let y_norm = prob.y.norm();
    let mut rows = Vec::with_capacity(steps + 1);
    let mut path = 0.0;
    let mut prev = DVector::zeros(prob.n());
    for t in 0..=steps {
        let state = model.read_state(&states[model.state_index(t)?], 0)?;
        path += (&state.alpha - &prev).norm();
        let cg = &reference.states[t].alpha;
        rows.push(CumulativeRow {
            t,
            dev_vs_cg: a_norm(&a, &(&state.alpha - cg)) / norm_star,
            error: a_norm(&a, &(&state.alpha - &star)) / norm_star,
            cg_error: a_norm(&a, &(cg - &star)) / norm_star,
            cg_bound: cg_bound(kappa, t),
            gap: ((&prob.y - &a * &state.alpha) - &state.r).norm() / y_norm,
            gap_identity: (&e * &state.alpha).norm() / y_norm,
            gap_bound: e_norm * path / y_norm,
        });
        prev = state.alpha;
    }
    Ok(rows)
}

/// What one Route B CG run says about the `O(εt)` claim.
#[derive(Debug, Clone, PartialEq)]
pub struct CumulativeAnalysis {
    /// The realised per-mat-vec operator error `ε` (f64).
    pub eps_rel: f64,
    /// Every step compared with exact CG.
    pub rows: Vec<CumulativeRow>,
    /// `(t, dev_t / ε)` for `t ≥ 1`: the deviation per unit operator error.
    pub per_eps: Vec<(f64, f64)>,
    /// `sup_t dev_t / (ε t)`: the constant of `dev_t ≤ C ε t`.
    pub sup_constant: f64,
    /// The line through `dev_t / ε` over the growth phase (while exact CG's error is above
    /// `converged`); `None` when that phase has fewer than two steps.
    pub growth: Option<LineFit>,
    /// Every step's residual gap equals `‖Eα_t‖` (Lemma 2's identity, to 1e-6) and stays
    /// within its bound.
    pub gap_holds: bool,
}

/// Runs [`cumulative`] in f64 on `device` at logit scale `eps` and summarises it (see
/// [`CumulativeAnalysis`]).
pub fn analyse_cumulative(
    prob: &KrrProblem,
    eps: f64,
    steps: usize,
    converged: f64,
    device: &Device,
) -> Result<CumulativeAnalysis> {
    let eps_rel = operator_error(prob, eps, DType::F64, device)?.measured;
    let rows = cumulative(prob, eps, steps, DType::F64, device)?;
    let gap_holds = rows.iter().all(|r| {
        r.gap <= r.gap_bound * (1.0 + 1e-9) + 1e-14
            && (r.gap - r.gap_identity).abs() <= 1e-6 * r.gap_identity + 1e-14
    });
    let per_eps: Vec<(f64, f64)> = rows
        .iter()
        .skip(1)
        .map(|r| (r.t as f64, r.dev_vs_cg / eps_rel))
        .collect();
    let sup_constant = per_eps.iter().map(|&(t, d)| d / t).fold(0.0, f64::max);
    let growth_phase: Vec<(f64, f64)> = rows
        .iter()
        .skip(1)
        .take_while(|r| r.cg_error > converged)
        .map(|r| (r.t as f64, r.dev_vs_cg / eps_rel))
        .collect();
    let growth = match growth_phase.len() >= 2 {
        true => Some(fit_line(&growth_phase)?),
        false => None,
    };
    Ok(CumulativeAnalysis {
        eps_rel,
        rows,
        per_eps,
        sup_constant,
        growth,
        gap_holds,
    })
}

/// `max / min` of the constants `sup_t dev_t/(εt)` over the runs `keep` selects (0 when it
/// selects none): how far the `O(εt)` constant varies across `ε`.
pub fn constant_spread(
    runs: &[CumulativeAnalysis],
    keep: impl Fn(&CumulativeAnalysis) -> bool,
) -> f64 {
    let (lo, hi) = runs
        .iter()
        .filter(|r| keep(r))
        .fold((f64::INFINITY, 0.0f64), |(l, h), r| {
            (l.min(r.sup_constant), h.max(r.sup_constant))
        });
    hi / lo
}

/// A least-squares line `y = slope·x + intercept` with its coefficient of determination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineFit {
    /// Slope.
    pub slope: f64,
    /// Intercept.
    pub intercept: f64,
    /// `R²` (1 for a perfect fit; 1 as well when every `y` is equal and fitted).
    pub r2: f64,
}

/// Fits a line to `points` (at least two distinct `x`).
pub fn fit_line(points: &[(f64, f64)]) -> Result<LineFit> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if points.len() < 2 || sxx == 0.0 {
        return Err(Error::invalid(
            "line fit",
            "needs at least two distinct x values",
        ));
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_tot: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let ss_res: f64 = points
        .iter()
        .map(|p| (p.1 - slope * p.0 - intercept).powi(2))
        .sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        1.0
    };
    Ok(LineFit {
        slope,
        intercept,
        r2,
    })
}

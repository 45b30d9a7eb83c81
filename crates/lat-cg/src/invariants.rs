//! The invariants of (P)CG measured on a sequence of solver states, and where each first breaks:
//! the failure signature an ablation leaves (`docs/cg_ablations.md`).
//!
//! For `A = K + λI`, `M⁻¹ = diag(d)` and states `k = 0…t` (`α_k`, the carried residual `r_k`,
//! the direction `p_{k−1}` of step `k`), with true residuals `ρ_k = y − Aα_k`:
//! - **recursion**: `‖r_k − ρ_k‖ / max(‖y‖, ‖Aα_k‖)` — the carried residual is the true one;
//! - **orthogonality**: `max_{i<k} |ρ_iᵀM⁻¹ρ_k| / (‖ρ_i‖_{M⁻¹} ‖ρ_k‖_{M⁻¹})` over residuals not
//!   yet [`CONVERGED`];
//! - **conjugacy**: `max_{i<k} |p_iᵀA p_k| / (‖p_i‖_A ‖p_k‖_A)` over the nonzero directions
//!   taken so far (a zero direction has no angle, and one taken after a [`CONVERGED`] residual
//!   is noise: both are skipped);
//! - the relative A-norm error `‖α_k − α*‖_A / ‖α*‖_A` and the relative true residual.
//!
//! Exact (P)CG keeps the first three at 0; in f64 over a few steps of a well-conditioned system
//! they stay near 1e-12, so [`BROKEN`] = 1e-6 separates rounding from a broken invariant.

use candle_core::Device;
use nalgebra::{DMatrix, DVector};

use crate::construct::cg::CgLat;
use crate::error::{Error, Result};
use crate::problem::KrrProblem;

/// A normalised invariant above this is broken.
pub const BROKEN: f64 = 1e-6;

/// A true residual below this fraction of `‖y‖` counts as converged: its direction is rounding
/// noise, so orthogonality is not measured against it.
pub const CONVERGED: f64 = 1e-10;

/// One CG invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// The carried residual equals `y − Aα`.
    Recursion,
    /// Residuals are `M⁻¹`-orthogonal.
    Orthogonality,
    /// Directions are `A`-conjugate.
    Conjugacy,
}

impl Invariant {
    /// All three, in a fixed order.
    pub const ALL: [Invariant; 3] = [
        Invariant::Recursion,
        Invariant::Orthogonality,
        Invariant::Conjugacy,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::Recursion => "r = y − Aα",
            Invariant::Orthogonality => "ρᵢᵀM⁻¹ρⱼ = 0",
            Invariant::Conjugacy => "pᵢᵀApⱼ = 0",
        }
    }
}

/// One solver state as the invariants need it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateVectors {
    /// Iterate `α_k`.
    pub alpha: DVector<f64>,
    /// Carried residual `r_k`.
    pub r: DVector<f64>,
    /// Direction of step `k`, `p_{k−1}` (zero at `k = 0`).
    pub p_prev: DVector<f64>,
}

/// The invariants after each step `k = 0…t` of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct InvariantTrace {
    /// Per step: recursion, orthogonality, conjugacy (normalised, see the module docs).
    pub values: Vec<[f64; 3]>,
    /// Per step: `‖α_k − α*‖_A / ‖α*‖_A`.
    pub a_norm_error: Vec<f64>,
    /// Per step: `‖y − Aα_k‖ / ‖y‖`.
    pub residual: Vec<f64>,
}

impl InvariantTrace {
    /// Measures `states` (state `k` at index `k`) of a run on `A α = y` with `M⁻¹ = diag(dinv)`.
    pub fn measure(
        a: &DMatrix<f64>,
        y: &DVector<f64>,
        dinv: &DVector<f64>,
        states: &[StateVectors],
    ) -> Result<Self> {
        let n = y.len();
        if a.shape() != (n, n) || dinv.len() != n || states.is_empty() {
            return Err(Error::invalid(
                "invariants",
                format!(
                    "need A [{n}, {n}], d [{n}] and at least one state; got A {:?}, d [{}], {} states",
                    a.shape(),
                    dinv.len(),
                    states.len()
                ),
            ));
        }
        if let Some(k) = states
            .iter()
            .position(|s| s.alpha.len() != n || s.r.len() != n || s.p_prev.len() != n)
        {
            return Err(Error::invalid(
                "invariants",
                format!("state {k} does not have {n} entries per vector"),
            ));
        }
        let star = a.clone().lu().solve(y).ok_or_else(|| {
            Error::invalid(
                "invariants",
                "A is singular: no solution α* to compare with",
            )
        })?;
        // NaN stays NaN (`f64::max` would turn it into 0 and hide an overflow).
        let a_norm = |v: &DVector<f64>| {
            let q = v.dot(&(a * v));
            if q.is_nan() {
                q
            } else {
                q.max(0.0).sqrt()
            }
        };
        let m_dot = |u: &DVector<f64>, v: &DVector<f64>| u.component_mul(dinv).dot(v);
        let rho: Vec<DVector<f64>> = states.iter().map(|s| y - a * &s.alpha).collect();
        let mut trace = InvariantTrace {
            values: Vec::with_capacity(states.len()),
            a_norm_error: Vec::with_capacity(states.len()),
            residual: Vec::with_capacity(states.len()),
        };
        for (k, s) in states.iter().enumerate() {
            let scale = y.norm().max((a * &s.alpha).norm());
            let recursion = (&s.r - &rho[k]).norm() / scale;
            // A NaN residual is not converged: it is measured, and breaks the invariant.
            let live = |i: usize| {
                let norm = rho[i].norm();
                norm.is_nan() || norm > CONVERGED * y.norm()
            };
            let orthogonality = (0..k)
                .filter(|&i| live(i) && live(k))
                .map(|i| {
                    let den = (m_dot(&rho[i], &rho[i]) * m_dot(&rho[k], &rho[k])).sqrt();
                    cosine(m_dot(&rho[i], &rho[k]), den)
                })
                .fold(0.0, max_or_nan);
            let conjugacy = (1..k)
                .filter(|&i| live(i - 1) && live(k - 1))
                .map(|i| {
                    let (pi, pk) = (&states[i].p_prev, &s.p_prev);
                    cosine(pi.dot(&(a * pk)), a_norm(pi) * a_norm(pk))
                })
                .fold(0.0, max_or_nan);
            trace.values.push([recursion, orthogonality, conjugacy]);
            trace
                .a_norm_error
                .push(a_norm(&(&s.alpha - &star)) / a_norm(&star));
            trace.residual.push(rho[k].norm() / y.norm());
        }
        Ok(trace)
    }

    /// The first step at which `invariant` exceeds [`BROKEN`] (a non-finite value counts as
    /// broken), or `None` if it holds throughout.
    pub fn first_broken(&self, invariant: Invariant) -> Option<usize> {
        let i = Invariant::ALL.iter().position(|&v| v == invariant)?;
        self.values
            .iter()
            .position(|v| !(v[i].is_finite() && v[i] <= BROKEN))
    }

    /// The invariants that break first (those breaking at the earliest step) and that step;
    /// empty and `None` when all hold.
    pub fn first_to_break(&self) -> (Vec<Invariant>, Option<usize>) {
        let steps: Vec<(Invariant, usize)> = Invariant::ALL
            .iter()
            .filter_map(|&v| self.first_broken(v).map(|k| (v, k)))
            .collect();
        let first = steps.iter().map(|s| s.1).min();
        let which = steps
            .iter()
            .filter(|s| Some(s.1) == first)
            .map(|s| s.0)
            .collect();
        (which, first)
    }
}

/// A constructed model run on a batch of problems: every problem's state after each step.
#[derive(Debug, Clone, PartialEq)]
pub struct CgRun {
    /// `states[b][k]`: problem `b` after `k = 0…t` CG steps.
    pub states: Vec<Vec<StateVectors>>,
    /// Query predictions `[batch, m]` read from the final stream.
    pub predictions: DMatrix<f64>,
}

/// Runs `model` (f64 weights) on `problems` and reads every problem's solver state after each
/// CG step from the residual stream.
pub fn run_states(model: &CgLat, problems: &[KrrProblem], device: &Device) -> Result<CgRun> {
    let streams = model
        .lat
        .forward_with_states(&model.embed(problems, device)?)?;
    let mut states = vec![Vec::with_capacity(model.spec.steps + 1); problems.len()];
    for k in 0..=model.spec.steps {
        let x = &streams[model.state_index(k)?];
        for (b, out) in states.iter_mut().enumerate() {
            let s = model.read_state(x, b)?;
            out.push(StateVectors {
                alpha: s.alpha,
                r: s.r,
                p_prev: s.p_prev,
            });
        }
    }
    let last = streams
        .last()
        .ok_or_else(|| Error::invalid("model", "no layers"))?;
    Ok(CgRun {
        states,
        predictions: model.predictions(last)?,
    })
}

/// `|num| / den`, 0 when `den` is 0 (a zero vector has no angle), NaN when either is NaN.
fn cosine(num: f64, den: f64) -> f64 {
    if num.is_nan() || den.is_nan() {
        f64::NAN
    } else if den > 0.0 {
        num.abs() / den
    } else {
        0.0
    }
}

/// The larger of `a` and `b`, NaN if either is (unlike `f64::max`).
fn max_or_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{pcg, Preconditioner};

    fn system() -> (DMatrix<f64>, DVector<f64>) {
        let phi = DMatrix::from_fn(6, 4, |i, j| ((i * 7 + j * 3) as f64 * 0.37).sin());
        let a = &phi * phi.transpose() + DMatrix::identity(6, 6) * 0.5;
        let y = DVector::from_fn(6, |i, _| (i as f64 * 1.3).cos());
        (a, y)
    }

    fn states(trace: &crate::reference::CgTrace) -> Vec<StateVectors> {
        trace
            .states
            .iter()
            .enumerate()
            .map(|(k, s)| StateVectors {
                alpha: s.alpha.clone(),
                r: s.r.clone(),
                p_prev: if k == 0 {
                    DVector::zeros(s.alpha.len())
                } else {
                    trace.states[k - 1].p.clone()
                },
            })
            .collect()
    }

    #[test]
    fn reference_pcg_keeps_every_invariant() {
        let (a, y) = system();
        for pre in [Preconditioner::None, Preconditioner::Jacobi] {
            let cg = pcg(&a, &y, 4, pre).unwrap();
            let d = crate::reference::inverse_diagonal(&a, pre).unwrap();
            let t = InvariantTrace::measure(&a, &y, &d, &states(&cg)).unwrap();
            assert_eq!(
                t.first_to_break(),
                (vec![], None),
                "{pre:?}: {:?}, residuals {:?}",
                t.values,
                t.residual
            );
            assert!(t.a_norm_error[4] < t.a_norm_error[1]);
        }
    }

    #[test]
    fn steepest_descent_breaks_conjugacy_and_a_wrong_residual_breaks_the_recursion() {
        let (a, y) = system();
        let d = DVector::from_element(6, 1.0);
        // Steepest descent with exact line search: consecutive residuals orthogonal, directions
        // not conjugate.
        let mut alpha = DVector::zeros(6);
        let mut sd = vec![StateVectors {
            alpha: alpha.clone(),
            r: y.clone(),
            p_prev: DVector::zeros(6),
        }];
        for _ in 0..3 {
            let r = &y - &a * &alpha;
            let gamma = r.dot(&r) / r.dot(&(&a * &r));
            alpha += &r * gamma;
            sd.push(StateVectors {
                alpha: alpha.clone(),
                r: &y - &a * &alpha,
                p_prev: r,
            });
        }
        let t = InvariantTrace::measure(&a, &y, &d, &sd).unwrap();
        assert_eq!(t.first_broken(Invariant::Recursion), None);
        assert_eq!(t.first_broken(Invariant::Conjugacy), Some(2));
        assert_eq!(t.first_broken(Invariant::Orthogonality), Some(2));
        let mut bad = sd.clone();
        bad[1].r *= 1.5;
        let t = InvariantTrace::measure(&a, &y, &d, &bad).unwrap();
        assert_eq!(t.first_to_break(), (vec![Invariant::Recursion], Some(1)));
    }

    #[test]
    fn an_overflowed_state_breaks_every_invariant_instead_of_hiding_as_zero() {
        let (a, y) = system();
        let d = DVector::from_element(6, 1.0);
        let cg = pcg(&a, &y, 3, Preconditioner::None).unwrap();
        let mut s = states(&cg);
        s[2].alpha[0] = f64::NAN;
        s[2].p_prev[0] = f64::INFINITY;
        let t = InvariantTrace::measure(&a, &y, &d, &s).unwrap();
        assert!(t.a_norm_error[2].is_nan());
        for v in Invariant::ALL {
            assert_eq!(t.first_broken(v), Some(2), "{v:?}: {:?}", t.values);
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let (a, y) = system();
        let d = DVector::from_element(5, 1.0);
        let e = InvariantTrace::measure(&a, &y, &d, &[]).unwrap_err();
        assert!(e.to_string().contains("at least one state"), "{e}");
    }
}

//! Convergence runs of a constructed CG LAT against reference CG (the data behind the demo,
//! fig1 and fig2).
//!
//! Besides the LAT and the reference, every run records a second textbook f64 CG
//! ([`pcg_factored`]) so that the LAT's deviation from the reference can be read against how far
//! two correct f64 implementations of CG drift apart on the same problem.

use candle_core::{DType, Device};
use nalgebra::DVector;

use crate::construct::cg::{CgLat, CgSpec};
use crate::error::{Error, Result};
use crate::problem::KrrProblem;
use crate::reference::{
    a_norm, agreeing_steps, cg_bound, exact_solution, pcg, pcg_factored,
    preconditioned_condition_number, rel_diff, Preconditioner,
};

/// Agreement between two textbook f64 CGs below which a step counts as reproducible.
pub const REPRODUCIBLE_TOL: f64 = 1e-9;

/// One row of a convergence run: the state after `t` steps.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvergenceRow {
    /// Number of CG steps (= CG layers) `t`.
    pub t: usize,
    /// `‖α_t − α*‖_A / ‖α*‖_A` of the LAT.
    pub lat_error: f64,
    /// The same for reference CG.
    pub cg_error: f64,
    /// The rate bound `2((√κ−1)/(√κ+1))^t`.
    pub bound: f64,
    /// True relative residual `‖y − Aα_t‖ / ‖y‖` of the LAT.
    pub lat_residual: f64,
    /// True relative residual of reference CG.
    pub cg_residual: f64,
    /// `‖α_t^LAT − α_t^CG‖ / ‖α_t^CG‖`.
    pub dev_lat_vs_cg: f64,
    /// `‖α_t^CG' − α_t^CG‖ / ‖α_t^CG‖` for a second textbook f64 CG (factored mat-vec).
    pub dev_cg_vs_cg: f64,
}

/// A whole convergence run.
#[derive(Debug, Clone)]
pub struct ConvergenceRun {
    /// Condition number that enters the bound (of the preconditioned system).
    pub kappa: f64,
    /// Preconditioner used.
    pub preconditioner: Preconditioner,
    /// Rows for `t = 0..=steps`.
    pub rows: Vec<ConvergenceRow>,
    /// Steps over which two textbook f64 CGs agree to [`REPRODUCIBLE_TOL`].
    pub reproducible_steps: usize,
}

impl ConvergenceRun {
    /// Largest LAT-vs-CG deviation over the reproducible steps.
    pub fn max_dev_reproducible(&self) -> f64 {
        self.rows
            .iter()
            .filter(|r| r.t >= 1 && r.t <= self.reproducible_steps)
            .map(|r| r.dev_lat_vs_cg)
            .fold(0.0, f64::max)
    }

    /// Largest LAT-vs-CG deviation over all steps.
    pub fn max_dev_all(&self) -> f64 {
        self.rows
            .iter()
            .map(|r| r.dev_lat_vs_cg)
            .fold(0.0, f64::max)
    }

    /// Largest deviation between the two textbook CGs over all steps.
    pub fn max_jitter_all(&self) -> f64 {
        self.rows.iter().map(|r| r.dev_cg_vs_cg).fold(0.0, f64::max)
    }

    /// Whether the LAT's A-norm error is under the bound at every step (with 1e-9 slack).
    pub fn bound_holds(&self) -> bool {
        self.rows
            .iter()
            .all(|r| r.lat_error <= r.bound * (1.0 + 1e-9))
    }

    /// First `t` at which the LAT's true relative residual is ≤ `tol`, if any.
    pub fn lat_steps_to_residual(&self, tol: f64) -> Option<usize> {
        self.rows
            .iter()
            .find(|r| r.lat_residual <= tol)
            .map(|r| r.t)
    }

    /// First `t` at which reference CG's true relative residual is ≤ `tol`, if any.
    pub fn cg_steps_to_residual(&self, tol: f64) -> Option<usize> {
        self.rows.iter().find(|r| r.cg_residual <= tol).map(|r| r.t)
    }
}

/// Builds the LAT for `prob`, runs it in f64 for `steps` CG layers and compares every
/// intermediate state with reference (P)CG.
pub fn run_convergence(
    prob: &KrrProblem,
    steps: usize,
    pre: Preconditioner,
    device: &Device,
) -> Result<ConvergenceRun> {
    let model = CgLat::build(CgSpec::for_problem(prob, steps, pre)?, device)?;
    let states = model
        .lat
        .forward_with_states(&model.embed(std::slice::from_ref(prob), device)?)?;
    let a = prob.system_matrix();
    let star = exact_solution(&a, &prob.y)?;
    let reference = pcg(&a, &prob.y, steps, pre)?;
    let yardstick = pcg_factored(&prob.phi, prob.lambda, &prob.y, steps, pre)?;
    let kappa = preconditioned_condition_number(&a, pre)?;
    let norm_star = a_norm(&a, &star);
    if norm_star.is_nan() || norm_star <= 0.0 {
        return Err(Error::invalid(
            "labels y",
            "the solution is zero (y = 0): nothing to converge to",
        ));
    }
    let y_norm = prob.y.norm();
    let error = |alpha: &DVector<f64>| a_norm(&a, &(alpha - &star)) / norm_star;
    let residual = |alpha: &DVector<f64>| (&prob.y - &a * alpha).norm() / y_norm;
    let mut rows = Vec::with_capacity(steps + 1);
    for t in 0..=steps {
        let lat = model
            .read_state(&states[model.state_index(t)?].to_dtype(DType::F64)?, 0)?
            .alpha;
        let cg = &reference.states[t].alpha;
        let (dev_lat_vs_cg, dev_cg_vs_cg) = if t == 0 {
            (lat.norm(), 0.0)
        } else {
            (rel_diff(&lat, cg), rel_diff(&yardstick.states[t].alpha, cg))
        };
        rows.push(ConvergenceRow {
            t,
            lat_error: error(&lat),
            cg_error: error(cg),
            bound: cg_bound(kappa, t),
            lat_residual: residual(&lat),
            cg_residual: residual(cg),
            dev_lat_vs_cg,
            dev_cg_vs_cg,
        });
    }
    Ok(ConvergenceRun {
        kappa,
        preconditioner: pre,
        rows,
        reproducible_steps: agreeing_steps(&reference, &yardstick, REPRODUCIBLE_TOL),
    })
}

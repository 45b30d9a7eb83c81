//! Reference conjugate gradient (CG) and Jacobi-preconditioned CG (PCG) in plain f64.
//!
//! Solves `(K + λI) α = y` from `α₀ = 0`, recording every iterate so that a constructed LAT
//! can be compared with it step by step. The recursions are the textbook ones:
//!
//! ```text
//! r₀ = y,  z₀ = M⁻¹r₀,  p₀ = z₀
//! γ_k = r·z / p·Ap,  α ← α + γp,  r ← r − γAp,  z ← M⁻¹r,  β_k = r'·z' / r·z,  p ← z' + βp
//! ```
//!
//! with `M = I` (plain CG) or `M = diag(K + λI)` (Jacobi).

use nalgebra::{DMatrix, DVector, RealField};

use crate::{Error, Result};

/// Which preconditioner CG uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preconditioner {
    /// Plain CG (`M = I`).
    #[default]
    None,
    /// Jacobi: `M = diag(K + λI)`.
    Jacobi,
}

/// State of (P)CG after some number of steps (f64 unless stated).
#[derive(Debug, Clone, PartialEq)]
pub struct CgState<T: RealField + Copy = f64> {
    /// Iterate `α_k`.
    pub alpha: DVector<T>,
    /// Residual `r_k = y − Aα_k` (as recursively updated).
    pub r: DVector<T>,
    /// Preconditioned residual `z_k = M⁻¹ r_k`.
    pub z: DVector<T>,
    /// Search direction `p_k`.
    pub p: DVector<T>,
}

/// Every state of a (P)CG run: `states[k]` is the state after `k` steps.
#[derive(Debug, Clone)]
pub struct CgTrace<T: RealField + Copy = f64> {
    /// States after 0, 1, ..., t steps.
    pub states: Vec<CgState<T>>,
    /// Step sizes `γ_1..γ_t`.
    pub gammas: Vec<T>,
    /// Direction weights `β_1..β_t`.
    pub betas: Vec<T>,
}

/// The system matrix `A = K + λI` with `K = ΦΦᵀ` for features `phi` `[n, p]`.
pub fn system_matrix(phi: &DMatrix<f64>, lambda: f64) -> DMatrix<f64> {
    let n = phi.nrows();
    phi * phi.transpose() + DMatrix::identity(n, n) * lambda
}

/// The inverse diagonal `M⁻¹` of the preconditioner for system matrix `a`.
pub fn inverse_diagonal(a: &DMatrix<f64>, pre: Preconditioner) -> Result<DVector<f64>> {
    let n = a.nrows();
    match pre {
        Preconditioner::None => Ok(DVector::from_element(n, 1.0)),
        Preconditioner::Jacobi => {
            let mut d = DVector::zeros(n);
            for i in 0..n {
                let aii = a[(i, i)];
                if aii.is_nan() || aii <= 0.0 {
                    return Err(Error::invalid(
                        "Jacobi preconditioner",
                        format!("diagonal entry {i} of K + λI is {aii}, must be > 0"),
                    ));
                }
                d[i] = 1.0 / aii;
            }
            Ok(d)
        }
    }
}

/// One (P)CG step from `state`, given the mat-vec `w = A p` and `M⁻¹` as `dinv`;
/// returns the new state with `(γ, β)`.
pub fn pcg_step<T: RealField + Copy>(
    state: &CgState<T>,
    w: &DVector<T>,
    dinv: &DVector<T>,
) -> (CgState<T>, T, T) {
    let rz = state.r.dot(&state.z);
    let gamma = rz / state.p.dot(w);
    let alpha = &state.alpha + &state.p * gamma;
    let r = &state.r - w * gamma;
    let z = r.component_mul(dinv);
    let beta = r.dot(&z) / rz;
    let p = &z + &state.p * beta;
    (CgState { alpha, r, z, p }, gamma, beta)
}

fn check_system(n: usize, rows: usize, cols: usize, y: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("support set", "empty (n = 0)"));
    }
    if rows != n || cols != n || y != n {
        return Err(Error::shape(
            "CG system",
            format!("A [{n}, {n}] and y [{n}]"),
            format!("A [{rows}, {cols}] and y [{y}]"),
        ));
    }
    Ok(())
}

fn run<T: RealField + Copy>(
    y: &DVector<T>,
    dinv: DVector<T>,
    steps: usize,
    matvec: impl Fn(&DVector<T>) -> DVector<T>,
) -> CgTrace<T> {
    let z = y.component_mul(&dinv);
    let mut state = CgState {
        alpha: DVector::zeros(y.len()),
        r: y.clone(),
        z: z.clone(),
        p: z,
    };
    let mut trace = CgTrace {
        states: vec![state.clone()],
        gammas: vec![],
        betas: vec![],
    };
    for _ in 0..steps {
        let (next, gamma, beta) = pcg_step(&state, &matvec(&state.p), &dinv);
        state = next;
        trace.gammas.push(gamma);
        trace.betas.push(beta);
        trace.states.push(state.clone());
    }
    trace
}

/// Runs `steps` steps of (P)CG on `a α = y` from `α₀ = 0` (dense mat-vec `A p`).
pub fn pcg(
    a: &DMatrix<f64>,
    y: &DVector<f64>,
    steps: usize,
    pre: Preconditioner,
) -> Result<CgTrace> {
    check_system(a.nrows(), a.nrows(), a.ncols(), y.len())?;
    let dinv = inverse_diagonal(a, pre)?;
    Ok(run(y, dinv, steps, |p| a * p))
}

/// The same textbook (P)CG carried out entirely in f32 arithmetic (inputs rounded to f32): the
/// yardstick for what any f32 implementation of CG can achieve on a problem.
pub fn pcg_f32(
    a: &DMatrix<f64>,
    y: &DVector<f64>,
    steps: usize,
    pre: Preconditioner,
) -> Result<CgTrace<f32>> {
    check_system(a.nrows(), a.nrows(), a.ncols(), y.len())?;
    let dinv = inverse_diagonal(a, pre)?.map(|v| v as f32);
    let a32 = a.map(|v| v as f32);
    Ok(run(&y.map(|v| v as f32), dinv, steps, |p| &a32 * p))
}

/// The same (P)CG with the mat-vec in factored form `Φ(Φᵀp) + λp` (`O(np)` per step). Its
/// iterates differ from [`pcg`]'s only by rounding, which makes it the yardstick for how far
/// two correct f64 CG implementations drift apart on a given problem.
pub fn pcg_factored(
    phi: &DMatrix<f64>,
    lambda: f64,
    y: &DVector<f64>,
    steps: usize,
    pre: Preconditioner,
) -> Result<CgTrace> {
    let n = phi.nrows();
    check_system(n, n, n, y.len())?;
    let dinv = match pre {
        Preconditioner::None => DVector::from_element(n, 1.0),
        Preconditioner::Jacobi => inverse_diagonal(
            &DMatrix::from_diagonal(&DVector::from_fn(n, |i, _| {
                phi.row(i).norm_squared() + lambda
            })),
            pre,
        )?,
    };
    Ok(run(y, dinv, steps, |p| {
        phi * (phi.transpose() * p) + lambda * p
    }))
}

/// The largest `t` such that two traces agree to `tol` at every step `≤ t` (α and p relative to
/// their norms, r relative to ‖r₀‖): the range over which CG is reproducible in f64.
pub fn agreeing_steps(a: &CgTrace, b: &CgTrace, tol: f64) -> usize {
    let len = a.states.len().min(b.states.len());
    let r0 = a.states[0].r.norm().max(f64::MIN_POSITIVE);
    (1..len)
        .take_while(|&k| {
            let (x, y) = (&a.states[k], &b.states[k]);
            rel_diff(&x.alpha, &y.alpha) <= tol
                && rel_diff(&x.p, &y.p) <= tol
                && (&x.r - &y.r).norm() <= tol * r0
        })
        .count()
}

/// The exact solution `A⁻¹ y` (Cholesky; `A` must be symmetric positive definite).
pub fn exact_solution(a: &DMatrix<f64>, y: &DVector<f64>) -> Result<DVector<f64>> {
    let chol = a
        .clone()
        .cholesky()
        .ok_or_else(|| Error::invalid("system matrix", "K + λI is not positive definite"))?;
    Ok(chol.solve(y))
}

/// `‖v‖_A = sqrt(vᵀ A v)`.
pub fn a_norm(a: &DMatrix<f64>, v: &DVector<f64>) -> f64 {
    v.dot(&(a * v)).max(0.0).sqrt()
}

/// Spectral condition number of a symmetric positive definite matrix.
pub fn condition_number(a: &DMatrix<f64>) -> f64 {
    let eig = a.clone().symmetric_eigen();
    let max = eig.eigenvalues.max();
    let min = eig.eigenvalues.min();
    max / min
}

/// Condition number of the Jacobi-preconditioned matrix `D^{-1/2} A D^{-1/2}`.
pub fn preconditioned_condition_number(a: &DMatrix<f64>, pre: Preconditioner) -> Result<f64> {
    let dinv = inverse_diagonal(a, pre)?;
    let s = dinv.map(f64::sqrt);
    let scaled = DMatrix::from_diagonal(&s) * a * DMatrix::from_diagonal(&s);
    Ok(condition_number(&scaled))
}

/// The CG rate bound `2((√κ − 1)/(√κ + 1))^t` on `‖α_t − α*‖_A / ‖α*‖_A` (from `α₀ = 0`).
pub fn cg_bound(kappa: f64, t: usize) -> f64 {
    let s = kappa.sqrt();
    2.0 * ((s - 1.0) / (s + 1.0)).powi(t as i32)
}

/// Relative difference `‖a − b‖ / max(‖b‖, tiny)`.
pub fn rel_diff(a: &DVector<f64>, b: &DVector<f64>) -> f64 {
    (a - b).norm() / b.norm().max(f64::MIN_POSITIVE)
}

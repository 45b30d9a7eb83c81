//! Orthogonal matching pursuit: a sparse decomposition of a direction (e.g. a neuron's
//! principal component) over a dictionary of unit atoms (e.g. a [`crate::Lexicon`]).
//!
//! Each step picks the unused atom with the largest `|⟨residual, atom⟩|`, then refits the
//! coefficients of all chosen atoms by least squares (in f64), so the residual stays orthogonal
//! to every chosen atom. It stops after `m` atoms, when the residual is zero, or when no atom
//! correlates with the residual any more ("zero": below 1e-6 of the target's norm, the
//! precision of f32 input).

use candle_core::{DType, Tensor};
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Relative size (to the target's norm) below which a residual or correlation counts as zero:
/// the precision of f32 input.
const ZERO: f64 = 1e-6;

/// Singular values below this (relative) are dropped in the fallback least-squares solve.
const TINY: f64 = 1e-12;

/// The result of [`omp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Omp {
    /// Chosen atom indices, in the order they were picked.
    pub atoms: Vec<usize>,
    /// Least-squares coefficient of each chosen atom (same order).
    pub coefficients: Vec<f64>,
    /// Cosine between the reconstruction `Σ c_i atom_i` and the target (0 when either is zero).
    pub cosine: f64,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Least-squares coefficients of `target` on the atoms `chosen` (normal equations, Cholesky;
/// SVD when the Gram matrix is singular).
fn refit(rows: &[Vec<f64>], chosen: &[usize], target: &[f64]) -> Result<Vec<f64>> {
    let s = chosen.len();
    let gram = DMatrix::from_fn(s, s, |i, j| dot(&rows[chosen[i]], &rows[chosen[j]]));
    let rhs = DVector::from_fn(s, |i, _| dot(&rows[chosen[i]], target));
    if let Some(ch) = gram.clone().cholesky() {
        return Ok(ch.solve(&rhs).iter().copied().collect());
    }
    let x = gram
        .svd(true, true)
        .solve(&rhs, TINY)
        .map_err(|e| Error::Invalid(format!("OMP least-squares refit failed: {e}")))?;
    Ok(x.iter().copied().collect())
}

/// Orthogonal matching pursuit of `target: [d]` over `atoms: [n_atoms, d]` (unit rows) with at
/// most `m` atoms.
pub fn omp(target: &[f32], atoms: &Tensor, m: usize) -> Result<Omp> {
    let (n_atoms, d) = atoms.dims2().map_err(|_| {
        Error::Invalid(format!(
            "atoms must be [n_atoms, d], got shape {:?}",
            atoms.dims()
        ))
    })?;
    if n_atoms == 0 || d == 0 {
        return Err(Error::Invalid(format!(
            "atoms must be a non-empty [n_atoms, d], got [{n_atoms}, {d}]"
        )));
    }
    if target.len() != d {
        return Err(Error::Invalid(format!(
            "target has {} entries but atoms have d = {d}",
            target.len()
        )));
    }
    if m == 0 {
        return Err(Error::Invalid(
            "m (atoms to pick) must be at least 1".into(),
        ));
    }
    if target.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(
            "target contains NaN or infinite values".into(),
        ));
    }
    let rows = atoms.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    for (i, row) in rows.iter().enumerate() {
        let norm = dot(row, row).sqrt();
        if !norm.is_finite() || (norm - 1.0).abs() > 1e-3 {
            return Err(Error::Invalid(format!(
                "atom {i} has norm {norm}, expected unit-normalised atoms"
            )));
        }
    }
    let target: Vec<f64> = target.iter().map(|&v| v as f64).collect();
    let t_norm = dot(&target, &target).sqrt();
    let mut chosen: Vec<usize> = Vec::new();
    let mut coefficients: Vec<f64> = Vec::new();
    let mut residual = target.clone();
    let mut used = vec![false; n_atoms];
    while chosen.len() < m.min(n_atoms) {
        if dot(&residual, &residual).sqrt() <= ZERO * t_norm.max(f64::MIN_POSITIVE) {
            break;
        }
        let best = (0..n_atoms)
            .filter(|&i| !used[i])
            .map(|i| (i, dot(&residual, &rows[i]).abs()))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((i, score)) = best else { break };
        if score <= ZERO * t_norm {
            break;
        }
        used[i] = true;
        chosen.push(i);
        coefficients = refit(&rows, &chosen, &target)?;
        residual = target.clone();
        for (&a, &c) in chosen.iter().zip(&coefficients) {
            for (r, v) in residual.iter_mut().zip(&rows[a]) {
                *r -= c * v;
            }
        }
    }
    let recon: Vec<f64> = target.iter().zip(&residual).map(|(t, r)| t - r).collect();
    let r_norm = dot(&recon, &recon).sqrt();
    let cosine = if r_norm > 0.0 && t_norm > 0.0 {
        dot(&recon, &target) / (r_norm * t_norm)
    } else {
        0.0
    };
    Ok(Omp {
        atoms: chosen,
        coefficients,
        cosine,
    })
}

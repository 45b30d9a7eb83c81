//! In-context linear regression with a controlled input covariance spectrum.
//!
//! `x ~ N(0, Σ)` with `Σ = U diag(λ) Uᵀ` (`U` a random rotation), `w ~ N(0, I_d / d)`,
//! `y = wᵀx + σ ε`. The spectrum `λ` is normalised so that `λ_max = 1`; its condition number is
//! `κ = λ_max / λ_min`.

use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{Error, Result};

/// Shape of the covariance spectrum.
#[derive(Debug, Clone, PartialEq)]
pub enum Spectrum {
    /// `λ_i ∝ i^{−a}` with `a` chosen so that `λ_1 / λ_d = κ`.
    PowerLaw {
        /// Condition number `κ ≥ 1`.
        kappa: f64,
    },
    /// A fraction of directions at 1, the rest at `1/κ`.
    TwoLevel {
        /// Condition number `κ ≥ 1`.
        kappa: f64,
        /// Fraction of directions at the high level, in (0, 1].
        fraction_high: f64,
    },
    /// Explicit positive eigenvalues (length d; rescaled so the largest is 1).
    Explicit(Vec<f64>),
}

impl Spectrum {
    /// The `d` eigenvalues, largest first, largest = 1.
    pub fn eigenvalues(&self, d: usize) -> Result<Vec<f64>> {
        if d == 0 {
            return Err(Error::Invalid("dimension d must be ≥ 1".into()));
        }
        let check_kappa = |k: f64| {
            if k >= 1.0 && k.is_finite() {
                Ok(k)
            } else {
                Err(Error::Invalid(format!(
                    "condition number κ must be finite and ≥ 1, got {k}"
                )))
            }
        };
        match self {
            Spectrum::PowerLaw { kappa } => {
                let k = check_kappa(*kappa)?;
                let a = if d > 1 { k.ln() / (d as f64).ln() } else { 0.0 };
                Ok((1..=d).map(|i| (i as f64).powf(-a)).collect())
            }
            Spectrum::TwoLevel {
                kappa,
                fraction_high,
            } => {
                let k = check_kappa(*kappa)?;
                if !(*fraction_high > 0.0 && *fraction_high <= 1.0) {
                    return Err(Error::Invalid(format!(
                        "fraction_high must be in (0, 1], got {fraction_high}"
                    )));
                }
                let high = ((d as f64 * fraction_high).round() as usize).clamp(1, d);
                Ok((0..d)
                    .map(|i| if i < high { 1.0 } else { 1.0 / k })
                    .collect())
            }
            Spectrum::Explicit(values) => {
                if values.len() != d {
                    return Err(Error::Invalid(format!(
                        "explicit spectrum has {} values, d = {d}",
                        values.len()
                    )));
                }
                if values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                    return Err(Error::Invalid(
                        "explicit eigenvalues must be finite and > 0".into(),
                    ));
                }
                let mut v = values.clone();
                v.sort_by(|a, b| b.total_cmp(a));
                let max = v[0];
                Ok(v.into_iter().map(|x| x / max).collect())
            }
        }
    }
}

/// Settings of a linear regression task family.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearTaskSpec {
    /// Input dimension `d`.
    pub dim: usize,
    /// In-context examples `n`.
    pub n_support: usize,
    /// Held-out queries per task.
    pub n_query: usize,
    /// Covariance spectrum.
    pub spectrum: Spectrum,
    /// Label noise `σ ≥ 0`.
    pub noise: f64,
}

/// One regression task: supports, queries, the true weights and the covariance.
#[derive(Debug, Clone)]
pub struct RegressionTask {
    /// Support inputs `[n, d]`.
    pub x_support: DMatrix<f64>,
    /// Support labels `[n]`.
    pub y_support: DVector<f64>,
    /// Query inputs `[m, d]`.
    pub x_query: DMatrix<f64>,
    /// Noise-free query targets `wᵀx` `[m]`.
    pub y_query: DVector<f64>,
    /// True weights `[d]`.
    pub w_true: DVector<f64>,
    /// Input covariance `Σ` `[d, d]`.
    pub covariance: DMatrix<f64>,
}

fn gaussian_matrix<R: Rng + ?Sized>(rng: &mut R, rows: usize, cols: usize) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(rng))
}

/// A random rotation (Q of the QR of a Gaussian matrix, with signs fixed so it is Haar).
fn random_rotation(rng: &mut impl Rng, d: usize) -> DMatrix<f64> {
    let qr = gaussian_matrix(rng, d, d).qr();
    let (q, r) = (qr.q(), qr.r());
    let mut q = q;
    for j in 0..d {
        if r[(j, j)] < 0.0 {
            q.column_mut(j).neg_mut();
        }
    }
    q
}

impl LinearTaskSpec {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.n_support == 0 {
            return Err(Error::Invalid("n_support must be ≥ 1 (n = 0)".into()));
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::Invalid(format!(
                "noise σ must be finite and ≥ 0, got {}",
                self.noise
            )));
        }
        self.spectrum.eigenvalues(self.dim).map(|_| ())
    }

    /// Draws one task.
    pub fn sample(&self, rng: &mut impl Rng) -> Result<RegressionTask> {
        self.validate()?;
        let d = self.dim;
        let lambda = self.spectrum.eigenvalues(d)?;
        let u = random_rotation(rng, d);
        let scale =
            DMatrix::from_diagonal(&DVector::from_iterator(d, lambda.iter().map(|l| l.sqrt())));
        let root = &u * scale; // x = root · g has covariance U diag(λ) Uᵀ
        let covariance = &root * root.transpose();
        let draw = |rng: &mut dyn rand::RngCore, rows: usize| {
            gaussian_matrix(rng, rows, d) * root.transpose()
        };
        let w_true = DVector::from_fn(d, |_, _| Distribution::<f64>::sample(&StandardNormal, rng))
            / (d as f64).sqrt();
        let x_support = draw(rng, self.n_support);
        let x_query = draw(rng, self.n_query);
        let noise = DVector::from_fn(self.n_support, |_, _| {
            self.noise * Distribution::<f64>::sample(&StandardNormal, rng)
        });
        let y_support = &x_support * &w_true + noise;
        let y_query = &x_query * &w_true;
        Ok(RegressionTask {
            x_support,
            y_support,
            x_query,
            y_query,
            w_true,
            covariance,
        })
    }
}

/// The setting of von Oswald et al. (2023): `x ~ U(low, high)^d`, `w ~ N(0, I_d)`, `y = wᵀx + σε`.
pub fn uniform_task(
    rng: &mut impl Rng,
    dim: usize,
    n_support: usize,
    n_query: usize,
    (low, high): (f64, f64),
    noise: f64,
) -> Result<RegressionTask> {
    if dim == 0 || n_support == 0 {
        return Err(Error::invalid(
            "uniform task",
            format!("need d ≥ 1 and n ≥ 1, got d = {dim}, n = {n_support}"),
        ));
    }
    if !(low < high && low.is_finite() && high.is_finite()) {
        return Err(Error::invalid(
            "uniform task",
            format!("need low < high, got [{low}, {high}]"),
        ));
    }
    let mut uniform = |rows: usize| DMatrix::from_fn(rows, dim, |_, _| rng.random_range(low..high));
    let x_support = uniform(n_support);
    let x_query = uniform(n_query);
    let w_true = DVector::from_fn(dim, |_, _| {
        Distribution::<f64>::sample(&StandardNormal, rng)
    });
    let noise = DVector::from_fn(n_support, |_, _| {
        noise * Distribution::<f64>::sample(&StandardNormal, rng)
    });
    let y_support = &x_support * &w_true + noise;
    let y_query = &x_query * &w_true;
    let var = (high - low).powi(2) / 12.0;
    let mean = 0.5 * (low + high);
    let covariance =
        DMatrix::identity(dim, dim) * var + DMatrix::from_element(dim, dim, mean * mean);
    Ok(RegressionTask {
        x_support,
        y_support,
        x_query,
        y_query,
        w_true,
        covariance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::seeded;

    #[test]
    fn declared_spectra_have_the_declared_condition_number() {
        for spec in [
            Spectrum::PowerLaw { kappa: 100.0 },
            Spectrum::TwoLevel {
                kappa: 50.0,
                fraction_high: 0.25,
            },
        ] {
            let ev = spec.eigenvalues(16).unwrap();
            let kappa = ev[0] / ev[15];
            let want = match spec {
                Spectrum::PowerLaw { kappa } | Spectrum::TwoLevel { kappa, .. } => kappa,
                Spectrum::Explicit(_) => unreachable!(),
            };
            assert!((kappa - want).abs() < 1e-9 * want, "{spec:?}: κ {kappa}");
            assert_eq!(ev[0], 1.0);
        }
        assert_eq!(
            Spectrum::Explicit(vec![2.0, 8.0, 4.0])
                .eigenvalues(3)
                .unwrap(),
            vec![1.0, 0.5, 0.25]
        );
    }

    #[test]
    fn sampled_inputs_have_the_declared_covariance() {
        let spec = LinearTaskSpec {
            dim: 6,
            n_support: 40_000,
            n_query: 1,
            spectrum: Spectrum::PowerLaw { kappa: 30.0 },
            noise: 0.0,
        };
        let task = spec.sample(&mut seeded(5)).unwrap();
        let empirical = task.x_support.transpose() * &task.x_support / 40_000.0;
        let mut got: Vec<f64> = empirical
            .symmetric_eigen()
            .eigenvalues
            .iter()
            .copied()
            .collect();
        got.sort_by(|a, b| b.total_cmp(a));
        let want = spec.spectrum.eigenvalues(6).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.03 * w + 0.01, "eigenvalue {g} vs {w}");
        }
        // The stated covariance has exactly the declared spectrum.
        let mut exact: Vec<f64> = task
            .covariance
            .symmetric_eigen()
            .eigenvalues
            .iter()
            .copied()
            .collect();
        exact.sort_by(|a, b| b.total_cmp(a));
        for (e, w) in exact.iter().zip(&want) {
            assert!((e - w).abs() < 1e-12);
        }
        // Noise-free labels are exactly linear.
        assert!((&task.x_support * &task.w_true - &task.y_support).norm() < 1e-9);
    }

    #[test]
    fn same_seed_same_task() {
        let spec = LinearTaskSpec {
            dim: 4,
            n_support: 8,
            n_query: 3,
            spectrum: Spectrum::TwoLevel {
                kappa: 10.0,
                fraction_high: 0.5,
            },
            noise: 0.1,
        };
        let (a, b) = (
            spec.sample(&mut seeded(9)).unwrap(),
            spec.sample(&mut seeded(9)).unwrap(),
        );
        assert_eq!(a.x_support, b.x_support);
        assert_eq!(a.y_support, b.y_support);
    }

    #[test]
    fn uniform_tasks_are_in_range_and_exactly_linear() {
        let t = uniform_task(&mut seeded(3), 10, 10, 4, (-1.0, 1.0), 0.0).unwrap();
        assert!(t
            .x_support
            .iter()
            .chain(t.x_query.iter())
            .all(|v| (-1.0..1.0).contains(v)));
        assert!((&t.x_query * &t.w_true - &t.y_query).norm() < 1e-12);
        assert!(uniform_task(&mut seeded(3), 10, 0, 4, (-1.0, 1.0), 0.0).is_err());
        assert!(uniform_task(&mut seeded(3), 10, 5, 4, (1.0, -1.0), 0.0).is_err());
    }

    #[test]
    fn bad_configs_are_errors() {
        let ok = LinearTaskSpec {
            dim: 4,
            n_support: 8,
            n_query: 1,
            spectrum: Spectrum::PowerLaw { kappa: 10.0 },
            noise: 0.0,
        };
        let mut s = ok.clone();
        s.n_support = 0;
        assert!(s.validate().unwrap_err().to_string().contains("n = 0"));
        let mut s = ok.clone();
        s.spectrum = Spectrum::PowerLaw { kappa: 0.5 };
        assert!(s.validate().unwrap_err().to_string().contains("κ"));
        let mut s = ok.clone();
        s.spectrum = Spectrum::Explicit(vec![1.0, 2.0]);
        assert!(s.validate().unwrap_err().to_string().contains("d = 4"));
        let mut s = ok;
        s.dim = 0;
        assert!(s.validate().is_err());
    }
}

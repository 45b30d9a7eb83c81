//! Linear probes: ridge readouts of a scalar target from token states.
//!
//! A probe maps one token's residual-stream vector (plus a bias) to a scalar, `ŷ = wᵀs + b`. It is
//! fitted by ridge regression on the tokens of training tasks and scored on held-out tasks two
//! ways: the mean over tasks of the cosine between the probe's predictions and the true targets
//! across that task's tokens, and the held-out `R²` (pooled over tokens, centred on the targets'
//! mean). Two controls run next to it, and both must score `R²` ≈ 0:
//!
//! - *shuffled targets*: the same probe fitted to targets permuted across all training tokens and
//!   scored against the true held-out targets;
//! - *unrelated location*: the same probe (same targets, same tasks) fitted to states read from a
//!   location that carries none of the target's information (which location is the caller's
//!   argument; [`crate::solver_probe`] uses the query tokens' rows), scored the same way.
//!
//! A control's cosine is the chance level of the cosine score, which is *not* near 0 in general:
//! the cosine ignores scale, so even the tiny noise weights of the control probe get credit for
//! their direction (about `1/√channels` in magnitude), and an uncentred target with a common
//! offset gets credit for the bias alone.

use std::sync::Arc;

use nalgebra::{DMatrix, DVector};
use rand::seq::SliceRandom;

use crate::error::{Error, Result};

/// One task's probe data: token states `[tokens, channels]` and a target per token `[tokens]`.
#[derive(Debug, Clone)]
pub struct ProbeTask {
    /// Residual-stream rows of the probed tokens (shared by the tasks that probe the same
    /// states for other targets or with shuffled ones).
    pub states: Arc<DMatrix<f64>>,
    /// The target value at each token.
    pub targets: DVector<f64>,
}

/// A fitted linear probe `target ≈ wᵀ state + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbe {
    /// Weights `[channels]`.
    pub weights: DVector<f64>,
    /// Bias.
    pub bias: f64,
}

/// Relative ridge: `λ = RIDGE · tr(SᵀS) / channels`, so the fit does not depend on the states'
/// scale and constant channels (zero columns) stay solvable.
const RIDGE: f64 = 1e-8;

impl LinearProbe {
    /// Ridge fit (on the weights, not the bias) over all tokens of `tasks`; every task must have
    /// the same channel count and one target per token.
    pub fn fit(tasks: &[ProbeTask]) -> Result<Self> {
        let first = tasks
            .first()
            .ok_or_else(|| Error::invalid("probe", "no training tasks"))?;
        let c = first.states.ncols();
        let rows: usize = tasks.iter().map(|t| t.states.nrows()).sum();
        let mut x = DMatrix::from_element(rows, c + 1, 1.0);
        let mut y = DVector::zeros(rows);
        let mut r = 0;
        for (k, t) in tasks.iter().enumerate() {
            let n = t.states.nrows();
            if t.states.ncols() != c || t.targets.len() != n {
                return Err(Error::shape(
                    format!("probe task {k}"),
                    format!("[tokens, {c}] states with one target per token"),
                    format!(
                        "[{n}, {}] with {} targets",
                        t.states.ncols(),
                        t.targets.len()
                    ),
                ));
            }
            x.view_mut((r, 0), (n, c)).copy_from(&t.states);
            y.rows_mut(r, n).copy_from(&t.targets);
            r += n;
        }
        let gram = x.transpose() * &x;
        let scale = (0..c).map(|i| gram[(i, i)]).sum::<f64>() / c.max(1) as f64;
        let mut a = gram;
        for i in 0..c {
            a[(i, i)] += RIDGE * scale.max(f64::MIN_POSITIVE);
        }
        let rhs = x.transpose() * &y;
        let sol = a
            .clone()
            .cholesky()
            .map(|ch| ch.solve(&rhs))
            .or_else(|| a.pseudo_inverse(1e-12).ok().map(|p| p * &rhs))
            .ok_or_else(|| Error::invalid("probe", "normal equations are singular"))?;
        Ok(Self {
            weights: sol.rows(0, c).into_owned(),
            bias: sol[c],
        })
    }

    /// Predictions `[tokens]` for token states `[tokens, channels]`.
    pub fn predict(&self, states: &DMatrix<f64>) -> Result<DVector<f64>> {
        if states.ncols() != self.weights.len() {
            return Err(Error::shape(
                "probe input",
                format!("[tokens, {}]", self.weights.len()),
                format!("[{}, {}]", states.nrows(), states.ncols()),
            ));
        }
        Ok(states * &self.weights + DVector::from_element(states.nrows(), self.bias))
    }

    /// Mean over `tasks` of the cosine between predictions and targets (0 for a task where
    /// either is the zero vector), and the pooled held-out `R²`.
    pub fn score(&self, tasks: &[ProbeTask]) -> Result<(f64, f64)> {
        if tasks.is_empty() {
            return Err(Error::invalid("probe", "no tasks to score"));
        }
        let (mut cos, mut sse, mut sum, mut sq, mut count) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for t in tasks {
            let p = self.predict(&t.states)?;
            cos += cosine(&p, &t.targets);
            sse += (&p - &t.targets).norm_squared();
            sum += t.targets.sum();
            sq += t.targets.norm_squared();
            count += t.targets.len() as f64;
        }
        let total_var = sq - sum * sum / count.max(1.0);
        let r2 = if total_var > 0.0 {
            1.0 - sse / total_var
        } else {
            0.0
        };
        Ok((cos / tasks.len() as f64, r2))
    }
}

/// Cosine of two vectors (0 when either is zero).
pub fn cosine(a: &DVector<f64>, b: &DVector<f64>) -> f64 {
    let den = a.norm() * b.norm();
    if den > 0.0 {
        a.dot(b) / den
    } else {
        0.0
    }
}

/// The same tasks with their targets permuted across all tokens of all tasks (seeded), which
/// breaks the token ↔ target link while keeping the targets' distribution.
pub fn shuffled_targets(tasks: &[ProbeTask], seed: u64) -> Vec<ProbeTask> {
    let mut pooled: Vec<f64> = tasks
        .iter()
        .flat_map(|t| t.targets.iter().copied())
        .collect();
    pooled.shuffle(&mut metarep_core::rng::seeded(seed));
    let mut next = pooled.into_iter();
    tasks
        .iter()
        .map(|t| ProbeTask {
            states: t.states.clone(),
            targets: DVector::from_iterator(t.targets.len(), next.by_ref().take(t.targets.len())),
        })
        .collect()
}

/// A probe's held-out scores and its two controls'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeScore {
    /// Mean held-out cosine of the probe fitted on the true targets.
    pub cosine: f64,
    /// Its held-out `R²`.
    pub r2: f64,
    /// Mean held-out cosine of the probe fitted on shuffled training targets (the chance level).
    pub control_cosine: f64,
    /// Its held-out `R²` (≈ 0 when the probe machinery is sound).
    pub control_r2: f64,
    /// Mean held-out cosine of the probe fitted at the unrelated location.
    pub unrelated_cosine: f64,
    /// Its held-out `R²` (≈ 0 when that location carries nothing linearly related to the target).
    pub unrelated_r2: f64,
}

/// A probe's training and held-out tasks at the probed location and at an unrelated one: the
/// same tasks with the same targets, token for token, and states read elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct ProbeData<'a> {
    /// Training tasks at the probed location.
    pub train: &'a [ProbeTask],
    /// Held-out tasks at the probed location.
    pub test: &'a [ProbeTask],
    /// The training tasks with states from the unrelated location.
    pub unrelated_train: &'a [ProbeTask],
    /// The held-out tasks with states from the unrelated location.
    pub unrelated_test: &'a [ProbeTask],
}

/// Errors unless `elsewhere` are the tasks `here` with other states: same count, same targets.
fn same_targets(here: &[ProbeTask], elsewhere: &[ProbeTask], what: &str) -> Result<()> {
    let same = here.len() == elsewhere.len()
        && here
            .iter()
            .zip(elsewhere)
            .all(|(a, b)| a.targets == b.targets);
    if same {
        Ok(())
    } else {
        Err(Error::invalid(
            "unrelated-location probe",
            format!("its {what} tasks must carry the probed tasks' targets, token for token"),
        ))
    }
}

/// Fits on `data.train`, scores on `data.test`, and runs both controls: the shuffled-target
/// probe (seed `seed`) and the same probe fitted and scored at the unrelated location.
pub fn probe_with_controls(data: ProbeData<'_>, seed: u64) -> Result<ProbeScore> {
    same_targets(data.train, data.unrelated_train, "training")?;
    same_targets(data.test, data.unrelated_test, "held-out")?;
    let (cosine, r2) = LinearProbe::fit(data.train)?.score(data.test)?;
    let (control_cosine, control_r2) =
        LinearProbe::fit(&shuffled_targets(data.train, seed))?.score(data.test)?;
    let (unrelated_cosine, unrelated_r2) =
        LinearProbe::fit(data.unrelated_train)?.score(data.unrelated_test)?;
    Ok(ProbeScore {
        cosine,
        r2,
        control_cosine,
        control_r2,
        unrelated_cosine,
        unrelated_r2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(seed: u64, f: impl Fn(&[f64]) -> f64) -> ProbeTask {
        let mut rng = metarep_core::rng::seeded(seed);
        let v = metarep_core::rng::normal_vec(&mut rng, 12 * 4, 0.0, 1.0).unwrap();
        let states = DMatrix::from_row_slice(12, 4, &v);
        let targets = DVector::from_fn(12, |i, _| {
            f(&states.row(i).iter().copied().collect::<Vec<_>>())
        });
        ProbeTask {
            states: Arc::new(states),
            targets,
        }
    }

    /// The same tasks with states drawn independently of their targets (seeded).
    fn elsewhere(tasks: &[ProbeTask], seed: u64) -> Vec<ProbeTask> {
        tasks
            .iter()
            .enumerate()
            .map(|(k, t)| ProbeTask {
                states: task(seed + k as u64, |_| 0.0).states,
                targets: t.targets.clone(),
            })
            .collect()
    }

    /// Both controls, the unrelated location holding states independent of the targets.
    fn probe_with_control(train: &[ProbeTask], test: &[ProbeTask], seed: u64) -> ProbeScore {
        let (unrelated_train, unrelated_test) = (elsewhere(train, 50_000), elsewhere(test, 90_000));
        probe_with_controls(
            ProbeData {
                train,
                test,
                unrelated_train: &unrelated_train,
                unrelated_test: &unrelated_test,
            },
            seed,
        )
        .unwrap()
    }

    #[test]
    fn the_unrelated_location_probe_reads_the_states_it_is_given() {
        let f = |s: &[f64]| 2.0 * s[0] - s[2];
        let train: Vec<_> = (0..400).map(|k| task(k, f)).collect();
        let test: Vec<_> = (1000..1100).map(|k| task(k, f)).collect();
        let s = probe_with_control(&train, &test, 7);
        assert!(s.unrelated_r2.abs() < 0.05, "{s:?}");
        // At a location that does carry the target (the probed one itself) it scores like the
        // probe: the control is fitted to the states it is given, not to a fixed stand-in.
        let same = ProbeData {
            train: &train,
            test: &test,
            unrelated_train: &train,
            unrelated_test: &test,
        };
        let s = probe_with_controls(same, 7).unwrap();
        assert!(
            s.unrelated_r2 > 0.999_999 && s.unrelated_cosine > 0.999_999,
            "{s:?}"
        );
        // The control must carry the probed tasks' targets.
        let mut moved = elsewhere(&test, 3);
        moved[4].targets[0] += 1.0;
        let bad = ProbeData {
            unrelated_test: &moved,
            ..same
        };
        let err = probe_with_controls(bad, 7).unwrap_err().to_string();
        assert!(err.contains("held-out"), "{err}");
        let short = ProbeData {
            unrelated_train: &train[1..],
            ..same
        };
        assert!(probe_with_controls(short, 7).is_err());
    }

    #[test]
    fn linear_targets_are_recovered_and_the_shuffled_control_fails() {
        let f = |s: &[f64]| 2.0 * s[0] - s[2];
        let train: Vec<_> = (0..400).map(|k| task(k, f)).collect();
        let test: Vec<_> = (1000..1100).map(|k| task(k, f)).collect();
        let s = probe_with_control(&train, &test, 7);
        assert!(s.cosine > 0.999_999 && s.r2 > 0.999_999, "{s:?}");
        assert!(s.control_r2.abs() < 0.1, "{s:?}");
        // A common offset raises the cosine's chance level (the shuffled probe learns the mean)
        // but not the control's R².
        let g = |s: &[f64]| 2.0 * s[0] - s[2] + 3.0;
        let train: Vec<_> = (0..400).map(|k| task(k, g)).collect();
        let test: Vec<_> = (1000..1100).map(|k| task(k, g)).collect();
        let s = probe_with_control(&train, &test, 7);
        assert!(s.r2 > 0.999_999 && s.control_cosine > 0.5, "{s:?}");
        assert!(s.control_r2.abs() < 0.1, "{s:?}");
        assert!(
            s.unrelated_r2.abs() < 0.1 && s.unrelated_cosine > 0.5,
            "{s:?}"
        );
    }

    #[test]
    fn a_nonlinear_target_is_not_linearly_readable() {
        // s0·s1 has no linear component in Gaussian states: the probe must score near 0.
        let f = |s: &[f64]| s[0] * s[1];
        let train: Vec<_> = (0..200).map(|k| task(k, f)).collect();
        let test: Vec<_> = (1000..1050).map(|k| task(k, f)).collect();
        let s = probe_with_control(&train, &test, 3);
        assert!(s.r2 < 0.05, "{s:?}");
    }

    #[test]
    fn constant_channels_and_scale_do_not_break_the_fit() {
        let f = |s: &[f64]| 1e6 * s[1];
        let train: Vec<_> = (0..10)
            .map(|k| {
                let mut t = task(k, f);
                let states = Arc::make_mut(&mut t.states);
                states.column_mut(3).fill(0.0);
                *states *= 1e3;
                t
            })
            .collect();
        assert!(LinearProbe::fit(&train).unwrap().score(&train).unwrap().1 > 0.999_999);
    }

    #[test]
    fn mismatched_shapes_are_errors_naming_the_task() {
        let mut bad = task(0, |s| s[0]);
        bad.targets = DVector::zeros(3);
        let err = LinearProbe::fit(&[task(1, |s| s[0]), bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("probe task 1"), "{err}");
        assert!(LinearProbe::fit(&[]).is_err());
        let p = LinearProbe::fit(&[task(1, |s| s[0])]).unwrap();
        assert!(p.predict(&DMatrix::zeros(2, 5)).is_err());
    }
}

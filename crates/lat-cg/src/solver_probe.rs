//! Probes of solver state in LAT residual streams (fig7): do the layers carry GD-like or
//! CG-like state?
//!
//! Every target is a per-support-token quantity of an iterative solver for the dual system
//! `A a = y` (`A = XXᵀ + λI` for linear regression, `A = K + λI` for kernel ridge), read after
//! `t` steps from the residual stream after layer `t`:
//!
//! | target | definition |
//! |---|---|
//! | GD residual | `y − A a_t^GD`, Richardson/GD `a_{t+1} = a_t + η (y − A a_t)` |
//! | GD iterate | `a_t^GD` (for regression `w_t = Xᵀ a_t` is GD on `‖Xw − y‖²/2n` with step `nη`) |
//! | CG residual | `r_t` of dual CG on `A` (as in the construction of [`crate::construct::cg`]) |
//! | CG iterate | `α_t` |
//! | CG direction | `p_{t−1}`, the direction step `t` moved along |
//! | ridge dual | the solution `a*` of a ridge system (same at every layer) |
//!
//! A target that is identically zero at a step (`a_0`, `α_0`, `p_{−1}`) is not probed there.
//! Each (layer, target) probe is a [`crate::probe::LinearProbe`] fitted on training tasks and
//! scored on held-out tasks, with the shuffled-target control.

use candle_core::{DType, Device, Tensor};
use nalgebra::{DMatrix, DVector};

use crate::construct::cg::CgLat;
use crate::error::{Error, Result};
use crate::probe::{probe_with_control, ProbeScore, ProbeTask};
use crate::problem::KrrProblem;
use crate::reference::{pcg, system_matrix, Preconditioner};
use crate::train::{icl_batch, TrainableLat};
use metarep_eval::tasks::linear::RegressionTask;

/// A probed solver quantity (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `y − A a_t` of GD.
    GdResidual,
    /// `a_t` of GD.
    GdIterate,
    /// `r_t` of CG.
    CgResidual,
    /// `α_t` of CG.
    CgIterate,
    /// `p_{t−1}` of CG.
    CgDirection,
    /// The ridge solution `a*`.
    RidgeDual,
}

impl Target {
    /// Every target, in table order.
    pub const ALL: [Target; 6] = [
        Target::GdResidual,
        Target::GdIterate,
        Target::CgResidual,
        Target::CgIterate,
        Target::CgDirection,
        Target::RidgeDual,
    ];

    /// Name for tables and plots.
    pub fn name(self) -> &'static str {
        match self {
            Target::GdResidual => "GD residual",
            Target::GdIterate => "GD iterate",
            Target::CgResidual => "CG residual r_t",
            Target::CgIterate => "CG iterate α_t",
            Target::CgDirection => "CG direction p_t-1",
            Target::RidgeDual => "ridge solution",
        }
    }
}

/// Each probed target's per-support values after one number of steps.
pub type StepTargets = Vec<(Target, DVector<f64>)>;

/// One dual system and how each solver is run on it.
#[derive(Debug, Clone)]
pub struct DualSystem {
    /// `A` `[n, n]` (CG and GD run on it).
    pub a: DMatrix<f64>,
    /// Right-hand side `y` `[n]`.
    pub y: DVector<f64>,
    /// GD (Richardson) step `η`.
    pub eta: f64,
    /// The ridge solution `a*` `[n]`.
    pub ridge: DVector<f64>,
}

/// Ridge for the regression tasks' `ridge solution` target: `(XXᵀ + n·λ I) a* = y`.
pub const REGRESSION_RIDGE: f64 = 0.01;
/// `λ` of dual CG on `XXᵀ + λI` for regression tasks (tiny: CG on the Gram matrix).
pub const REGRESSION_CG_LAMBDA: f64 = 1e-6;

impl DualSystem {
    /// The dual system of in-context regression on `task`'s supports; `gd_step` is the primal
    /// GD step on `‖Xw − y‖²/2n` (the dual step is `gd_step / n`).
    pub fn regression(task: &RegressionTask, gd_step: f64) -> Result<Self> {
        let (x, y) = (&task.x_support, &task.y_support);
        let n = x.nrows();
        let gram = x * x.transpose();
        let ridge = (&gram + DMatrix::identity(n, n) * (n as f64 * REGRESSION_RIDGE))
            .cholesky()
            .ok_or_else(|| Error::invalid("ridge system", "not positive definite"))?
            .solve(y);
        Ok(Self {
            a: gram + DMatrix::identity(n, n) * REGRESSION_CG_LAMBDA,
            y: y.clone(),
            eta: gd_step / n as f64,
            ridge,
        })
    }

    /// The kernel ridge system `(K + λI) α = y` of `problem`; GD uses `η = 1/λ_max(A)` and the
    /// ridge target is the exact solution.
    pub fn kernel(problem: &KrrProblem) -> Result<Self> {
        let a = system_matrix(&problem.phi, problem.lambda);
        let top = a.symmetric_eigenvalues().max();
        let ridge = a
            .clone()
            .cholesky()
            .ok_or_else(|| Error::invalid("kernel system", "K + λI is not positive definite"))?
            .solve(&problem.y);
        Ok(Self {
            eta: 1.0 / top,
            y: problem.y.clone(),
            a,
            ridge,
        })
    }

    /// `targets[t]` for `t = 0..=steps`: each probed target's per-support values after `t`
    /// steps (identically-zero targets left out).
    pub fn targets(&self, steps: usize) -> Result<Vec<StepTargets>> {
        let cg = pcg(&self.a, &self.y, steps, Preconditioner::None)?;
        let n = self.y.len();
        let mut gd = DVector::zeros(n);
        let mut out = Vec::with_capacity(steps + 1);
        for t in 0..=steps {
            let gd_res = &self.y - &self.a * &gd;
            let mut at_t = vec![(Target::GdResidual, gd_res.clone())];
            if t > 0 {
                at_t.push((Target::GdIterate, gd.clone()));
            }
            let state = &cg.states[t.min(cg.states.len() - 1)];
            at_t.push((Target::CgResidual, state.r.clone()));
            if t > 0 {
                at_t.push((Target::CgIterate, state.alpha.clone()));
                let prev = &cg.states[(t - 1).min(cg.states.len() - 1)];
                at_t.push((Target::CgDirection, prev.p.clone()));
            }
            at_t.push((Target::RidgeDual, self.ridge.clone()));
            out.push(at_t);
            gd += gd_res * self.eta;
        }
        Ok(out)
    }
}

/// Probe data for a set of tasks: support-token states and solver targets, per layer.
#[derive(Debug, Clone, Default)]
pub struct ProbeSet {
    /// `layers[l]`: for each target, one [`ProbeTask`] per task (states after layer `l`).
    pub layers: Vec<Vec<(Target, Vec<ProbeTask>)>>,
}

impl ProbeSet {
    /// Builds the set from per-task support states `states[l][task]` `[n, channels]` and the
    /// tasks' systems; layer `l` is compared with solver step `l`.
    pub fn new(states: Vec<Vec<DMatrix<f64>>>, systems: &[DualSystem]) -> Result<Self> {
        let steps = states.len().saturating_sub(1);
        let per_task: Vec<_> = systems
            .iter()
            .map(|s| s.targets(steps))
            .collect::<Result<_>>()?;
        let mut layers = Vec::with_capacity(states.len());
        for (l, layer_states) in states.into_iter().enumerate() {
            if layer_states.len() != systems.len() {
                return Err(Error::invalid(
                    "probe set",
                    format!(
                        "layer {l} has {} task states for {} systems",
                        layer_states.len(),
                        systems.len()
                    ),
                ));
            }
            let mut by_target: Vec<(Target, Vec<ProbeTask>)> = Vec::new();
            for (st, targets) in layer_states.into_iter().zip(&per_task) {
                for (target, values) in &targets[l] {
                    let task = ProbeTask {
                        states: st.clone(),
                        targets: values.clone(),
                    };
                    match by_target.iter_mut().find(|(t, _)| t == target) {
                        Some((_, tasks)) => tasks.push(task),
                        None => by_target.push((*target, vec![task])),
                    }
                }
            }
            layers.push(by_target);
        }
        Ok(Self { layers })
    }

    /// The probe set of a trained LAT on regression `tasks` (GD compared at primal step
    /// `gd_step`).
    pub fn trained(model: &TrainableLat, tasks: &[RegressionTask], gd_step: f64) -> Result<Self> {
        let batch = icl_batch(tasks, DType::F32, &Device::Cpu)?;
        let states = model.lat()?.forward_with_states(&batch.tokens)?;
        let n = model.config.n_support;
        let systems: Vec<_> = tasks
            .iter()
            .map(|t| DualSystem::regression(t, gd_step))
            .collect::<Result<_>>()?;
        Self::new(support_rows(&states, n)?, &systems)
    }

    /// The probe set of a constructed CG LAT on kernel `problems` (layer `t` = after CG step `t`).
    pub fn constructed(model: &CgLat, problems: &[KrrProblem]) -> Result<Self> {
        let states = model
            .lat
            .forward_with_states(&model.embed(problems, &Device::Cpu)?)?;
        let picked: Vec<Tensor> = (0..=model.spec.steps)
            .map(|t| Ok(states[model.state_index(t)?].clone()))
            .collect::<Result<_>>()?;
        let systems: Vec<_> = problems
            .iter()
            .map(DualSystem::kernel)
            .collect::<Result<_>>()?;
        Self::new(
            support_rows(&picked, model.spec.layout.n_support)?,
            &systems,
        )
    }
}

/// The first `n` token rows of each stream `[batch, tokens, channels]`, as `[l][task]` matrices.
fn support_rows(states: &[Tensor], n: usize) -> Result<Vec<Vec<DMatrix<f64>>>> {
    states
        .iter()
        .map(|s| {
            let rows = s.narrow(1, 0, n)?.to_dtype(DType::F64)?.to_vec3::<f64>()?;
            Ok(rows
                .iter()
                .map(|task| DMatrix::from_fn(n, task[0].len(), |i, j| task[i][j]))
                .collect())
        })
        .collect()
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    /// Residual stream after this many layers (0 = the input).
    pub layer: usize,
    /// What was probed.
    pub target: Target,
    /// Held-out scores of the probe and of its shuffled-target control.
    pub score: ProbeScore,
}

/// Fits every (layer, target) probe on `train` and scores it on `test`.
pub fn probe_layers(train: &ProbeSet, test: &ProbeSet, seed: u64) -> Result<Vec<ProbeRow>> {
    if train.layers.len() != test.layers.len() {
        return Err(Error::invalid(
            "probe sets",
            format!(
                "train has {} layers, test {}",
                train.layers.len(),
                test.layers.len()
            ),
        ));
    }
    let mut rows = Vec::new();
    for (layer, (tr, te)) in train.layers.iter().zip(&test.layers).enumerate() {
        for (target, tasks) in tr {
            let held = te
                .iter()
                .find(|(t, _)| t == target)
                .ok_or_else(|| Error::invalid("probe sets", "targets differ"))?;
            rows.push(ProbeRow {
                layer,
                target: *target,
                score: probe_with_control(tasks, &held.1, seed)?,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gd_targets_follow_primal_gd_and_cg_targets_follow_reference_cg() {
        let mut rng = metarep_core::rng::seeded(3);
        let task =
            metarep_eval::tasks::linear::uniform_task(&mut rng, 4, 6, 1, (-1.0, 1.0), 0.0).unwrap();
        let eta = 0.7;
        let sys = DualSystem::regression(&task, eta).unwrap();
        let targets = sys.targets(3).unwrap();
        let gd = metarep_eval::baselines::GradientDescent {
            steps: 3,
            step: metarep_eval::baselines::StepSize::Fixed(eta),
        }
        .trajectory(&task.x_support, &task.y_support)
        .unwrap();
        for (t, w) in gd.iter().enumerate() {
            let res = &task.y_support - &task.x_support * w;
            let got = &targets[t]
                .iter()
                .find(|(k, _)| *k == Target::GdResidual)
                .unwrap()
                .1;
            assert!((got - &res).norm() < 1e-5 * res.norm(), "step {t}");
        }
        assert!(targets[0].iter().all(|(k, _)| *k != Target::CgIterate));
        let alpha3 = &targets[3]
            .iter()
            .find(|(k, _)| *k == Target::CgIterate)
            .unwrap()
            .1;
        let cg = pcg(&sys.a, &sys.y, 3, Preconditioner::None).unwrap();
        assert_eq!(alpha3, &cg.states[3].alpha);
    }
}

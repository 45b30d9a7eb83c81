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
//! scored on held-out tasks, with two controls ([`crate::probe::probe_with_controls`]): shuffled
//! targets, and the same probe at an *unrelated location*, the query tokens' rows of the same
//! stream (support `i`'s target is read from query `i mod m`). Why the query rows:
//!
//! - In the constructed solvers ([`crate::construct::cg`], and the softmax routes built on the
//!   same scaffold) no head has a query token as a reader before the readout layer (the mat-vec
//!   masks are support-to-support, the reductions write to supports and the aggregator) and
//!   every MLP unit that writes solver state is gated by a support or aggregator flag or reads
//!   channels that are zero on queries. Up to the readout, which is after the last probed
//!   stream, a query row holds its own inputs and role flag and nothing else: no solver state,
//!   by construction (checked by a unit test here and in `metarep-softmax-routes`).
//! - In trained LATs ([`crate::train`]) the query row is not free of solver state: it
//!   accumulates the model's own prediction at `x_q`. It carries nothing *linearly* related to
//!   a support's target, for a reason that holds for any weights: supports never read the query
//!   (the mask), so their rows do not depend on `x_q`, and by induction over layers the query
//!   row is an odd function of `x_q` (linear attention, no MLP). With `x_q` drawn symmetrically
//!   and independently of the supports, every coordinate of the query row has conditional mean
//!   0 given the supports, so its covariance with any support target is 0 (also checked by a
//!   unit test).
//!
//! In both cases the population `R²` of the unrelated-location probe is 0 (the targets of the
//! kernel problems are odd in the labels, whose distribution is sign-symmetric given the
//! inputs), and held-out scores differ from it by finite-sample noise only. Another support's
//! row would not do: it carries that support's solver state, which is coupled to support `i`'s
//! through `A`.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use nalgebra::{DMatrix, DVector};

use crate::construct::cg::CgLat;
use crate::error::{Error, Result};
use crate::mask::TokenLayout;
use crate::probe::{probe_with_controls, ProbeData, ProbeScore, ProbeTask};
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
        Self::from_matrix(
            system_matrix(&problem.phi, problem.lambda),
            problem.y.clone(),
        )
    }

    /// The system `a α = y` for a symmetric positive definite `a` (any kernel, e.g. the
    /// exponential kernel of the softmax routes); GD uses `η = 1/λ_max(a)` and the ridge target
    /// is the exact solution.
    pub fn from_matrix(a: DMatrix<f64>, y: DVector<f64>) -> Result<Self> {
        if a.nrows() != y.len() || a.ncols() != y.len() {
            return Err(Error::shape(
                "dual system",
                format!("[{n}, {n}] matrix for {n} labels", n = y.len()),
                format!("[{}, {}]", a.nrows(), a.ncols()),
            ));
        }
        let top = a.symmetric_eigenvalues().max();
        let ridge = a
            .clone()
            .cholesky()
            .ok_or_else(|| Error::invalid("kernel system", "K + λI is not positive definite"))?
            .solve(&y);
        Ok(Self {
            eta: 1.0 / top,
            y,
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

/// The residual-stream rows the probes read, per probed layer `l` and task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamRows {
    /// `supports[l][task]`: the support tokens' rows `[n, channels]` (row `i` = support `i`).
    pub supports: Vec<Vec<DMatrix<f64>>>,
    /// `unrelated[l][task]`: the unrelated location's rows `[n, channels]`; row `i` is where
    /// support `i`'s target is probed by the control (see the module docs).
    pub unrelated: Vec<Vec<DMatrix<f64>>>,
}

impl StreamRows {
    /// Reads streams `[batch, tokens, channels]` whose supports are tokens `0..n_support`: the
    /// support rows, and as the unrelated location for support `i` the row of query token
    /// `queries.start + i mod queries.len()`.
    pub fn read(streams: &[Tensor], n_support: usize, queries: Range<usize>) -> Result<Self> {
        let m = queries.len();
        if n_support == 0 || m == 0 {
            return Err(Error::invalid(
                "probe rows",
                format!("need ≥ 1 support and ≥ 1 query, got {n_support} and {m}"),
            ));
        }
        let mut rows = Self::default();
        for s in streams {
            let (_, tokens, channels) = s.dims3()?;
            if n_support > tokens || queries.end > tokens {
                return Err(Error::shape(
                    "probed stream",
                    format!("≥ {} tokens", n_support.max(queries.end)),
                    format!("{tokens} tokens"),
                ));
            }
            let all = s.to_dtype(DType::F64)?.to_vec3::<f64>()?;
            let pick = |task: &Vec<Vec<f64>>, token: &dyn Fn(usize) -> usize| {
                DMatrix::from_fn(n_support, channels, |i, j| task[token(i)][j])
            };
            rows.supports
                .push(all.iter().map(|t| pick(t, &|i| i)).collect());
            rows.unrelated.push(
                all.iter()
                    .map(|t| pick(t, &|i| queries.start + i % m))
                    .collect(),
            );
        }
        Ok(rows)
    }
}

/// The index of the first of `streams` (`[batch, tokens, channels]`, stream 0 the embedding)
/// whose query rows differ from stream 0's, i.e. the first layer that writes into a query token
/// laid out by `layout`; `None` when none does. The query-row control of the constructed solvers
/// rests on this being the readout, after the last probed stream.
pub fn first_query_write(streams: &[Tensor], layout: &TokenLayout) -> Result<Option<usize>> {
    let queries = |s: &Tensor| -> Result<Vec<f64>> {
        Ok(s.narrow(1, layout.first_query(), layout.n_query)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?)
    };
    let Some(first) = streams.first() else {
        return Ok(None);
    };
    let input = queries(first)?;
    for (k, s) in streams.iter().enumerate().skip(1) {
        if queries(s)? != input {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// One target's probe data at one layer.
#[derive(Debug, Clone)]
pub struct TargetTasks {
    /// What is probed.
    pub target: Target,
    /// One task per problem: its support rows and the target's values.
    pub tasks: Vec<ProbeTask>,
    /// The same tasks and targets with the unrelated location's rows as states.
    pub unrelated: Vec<ProbeTask>,
}

/// Probe data for a set of tasks: stream rows and solver targets, per layer.
#[derive(Debug, Clone, Default)]
pub struct ProbeSet {
    /// `layers[l]`: every target probed at layer `l` (states after layer `l`).
    pub layers: Vec<Vec<TargetTasks>>,
}

impl ProbeSet {
    /// Builds the set from per-task stream rows and the tasks' systems; layer `l` is compared
    /// with solver step `l`.
    pub fn new(rows: StreamRows, systems: &[DualSystem]) -> Result<Self> {
        if rows.unrelated.len() != rows.supports.len() {
            return Err(Error::invalid(
                "probe set",
                format!(
                    "{} layers of support rows but {} of unrelated rows",
                    rows.supports.len(),
                    rows.unrelated.len()
                ),
            ));
        }
        let steps = rows.supports.len().saturating_sub(1);
        let per_task: Vec<_> = systems
            .iter()
            .map(|s| s.targets(steps))
            .collect::<Result<_>>()?;
        let mut layers = Vec::with_capacity(rows.supports.len());
        for (l, (here, there)) in rows.supports.into_iter().zip(rows.unrelated).enumerate() {
            if here.len() != systems.len() || there.len() != systems.len() {
                return Err(Error::invalid(
                    "probe set",
                    format!(
                        "layer {l} has {} and {} task states for {} systems",
                        here.len(),
                        there.len(),
                        systems.len()
                    ),
                ));
            }
            let mut by_target: Vec<TargetTasks> = Vec::new();
            for ((st, elsewhere), targets) in here.into_iter().zip(there).zip(&per_task) {
                let (st, elsewhere) = (Arc::new(st), Arc::new(elsewhere));
                for (target, values) in &targets[l] {
                    let task = |states: &Arc<DMatrix<f64>>| ProbeTask {
                        states: states.clone(),
                        targets: values.clone(),
                    };
                    let entry = match by_target.iter().position(|t| t.target == *target) {
                        Some(k) => &mut by_target[k],
                        None => {
                            by_target.push(TargetTasks {
                                target: *target,
                                tasks: Vec::new(),
                                unrelated: Vec::new(),
                            });
                            by_target.last_mut().expect("just pushed")
                        }
                    };
                    entry.tasks.push(task(&st));
                    entry.unrelated.push(task(&elsewhere));
                }
            }
            layers.push(by_target);
        }
        Ok(Self { layers })
    }

    /// The probe set of streams laid out as `layout` (supports, aggregator, queries; the
    /// constructed solvers' layout), stream `l` compared with step `l` of `systems`.
    pub fn from_layout(
        streams: &[Tensor],
        layout: &TokenLayout,
        systems: &[DualSystem],
    ) -> Result<Self> {
        let queries = layout.first_query()..layout.first_query() + layout.n_query;
        Self::new(
            StreamRows::read(streams, layout.n_support, queries)?,
            systems,
        )
    }

    /// The probe set of a trained LAT on regression `tasks` (GD compared at primal step
    /// `gd_step`); the unrelated location is the query token (token `n`). The tasks are laid
    /// out in the model's dtype on its device.
    pub fn trained(model: &TrainableLat, tasks: &[RegressionTask], gd_step: f64) -> Result<Self> {
        let batch = icl_batch(tasks, model.dtype(), model.device())?;
        let states = model.lat()?.forward_with_states(&batch.tokens)?;
        let n = model.config.n_support;
        let systems: Vec<_> = tasks
            .iter()
            .map(|t| DualSystem::regression(t, gd_step))
            .collect::<Result<_>>()?;
        Self::new(StreamRows::read(&states, n, n..n + 1)?, &systems)
    }

    /// The probe set of a constructed CG LAT on kernel `problems` (layer `t` = after CG step `t`),
    /// run on the model's device.
    pub fn constructed(model: &CgLat, problems: &[KrrProblem]) -> Result<Self> {
        let states = model
            .lat
            .forward_with_states(&model.embed(problems, &model.lat.device())?)?;
        let picked: Vec<Tensor> = (0..=model.spec.steps)
            .map(|t| Ok(states[model.state_index(t)?].clone()))
            .collect::<Result<_>>()?;
        let systems: Vec<_> = problems
            .iter()
            .map(DualSystem::kernel)
            .collect::<Result<_>>()?;
        Self::from_layout(&picked, &model.spec.layout, &systems)
    }
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    /// Residual stream after this many layers (0 = the input).
    pub layer: usize,
    /// What was probed.
    pub target: Target,
    /// Held-out scores of the probe and of its two controls.
    pub score: ProbeScore,
}

/// Fits every (layer, target) probe and its controls on `train` and scores them on `test`.
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
        for fit in tr {
            let held = te
                .iter()
                .find(|t| t.target == fit.target)
                .ok_or_else(|| Error::invalid("probe sets", "targets differ"))?;
            let data = ProbeData {
                train: &fit.tasks,
                test: &held.tasks,
                unrelated_train: &fit.unrelated,
                unrelated_test: &held.unrelated,
            };
            rows.push(ProbeRow {
                layer,
                target: fit.target,
                score: probe_with_controls(data, seed)?,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::construct::cg::CgSpec;
    use crate::problem::{rbf_problem, RbfProblemSpec};
    use crate::train::{IclAttention, IclLatConfig};
    use candle_core::Device;

    #[test]
    fn stream_rows_pair_support_i_with_query_i_mod_m() {
        // 2 tasks, 3 supports, an aggregator (token 3), queries 4 and 5; value = 100b + 10t + c.
        let data: Vec<f64> = (0..2 * 6 * 2)
            .map(|k| (100 * (k / 12) + 10 * ((k / 2) % 6) + k % 2) as f64)
            .collect();
        let x = Tensor::from_vec(data, (2, 6, 2), &Device::Cpu).unwrap();
        let rows = StreamRows::read(&[x.clone(), x.clone()], 3, 4..6).unwrap();
        assert_eq!((rows.supports.len(), rows.unrelated.len()), (2, 2));
        assert_eq!(rows.supports[1][1][(2, 1)], 121.0);
        let u = &rows.unrelated[0][1];
        assert_eq!(u.shape(), (3, 2));
        assert_eq!((u[(0, 0)], u[(1, 1)], u[(2, 0)]), (140.0, 151.0, 140.0));
        assert!(StreamRows::read(std::slice::from_ref(&x), 3, 4..7).is_err());
        let layout = TokenLayout::new(3, 2).unwrap();
        assert_eq!(
            first_query_write(&[x.clone(), x.clone()], &layout).unwrap(),
            None
        );
        let written = x
            .slice_assign(
                &[0..1, 5..6, 1..2],
                &Tensor::zeros((1, 1, 1), DType::F64, &Device::Cpu).unwrap(),
            )
            .unwrap();
        assert_eq!(
            first_query_write(&[x.clone(), x.clone(), written], &layout).unwrap(),
            Some(2)
        );
        assert!(StreamRows::read(&[x], 3, 4..4).is_err());
    }

    #[test]
    fn the_constructed_lat_writes_nothing_into_query_rows_before_the_readout() {
        let spec = RbfProblemSpec {
            n_support: 6,
            n_query: 3,
            dim: 2,
            features: 8,
            lengthscale: 1.0,
            noise: 0.1,
        };
        let mut rng = metarep_core::rng::seeded(4);
        let problems: Vec<_> = (0..3)
            .map(|_| rbf_problem(&mut rng, &spec, 0.1).unwrap())
            .collect();
        for pre in [Preconditioner::None, Preconditioner::Jacobi] {
            let model = CgLat::build(
                CgSpec::for_problem(&problems[0], 3, pre).unwrap(),
                &Device::Cpu,
            )
            .unwrap();
            let states = model
                .lat
                .forward_with_states(&model.embed(&problems, &Device::Cpu).unwrap())
                .unwrap();
            // Every probed stream (up to the one after the last CG step) leaves them as
            // embedded; the readout is the first layer to write there.
            let last_probed = model.state_index(model.spec.steps).unwrap();
            assert_eq!(
                first_query_write(&states, &model.spec.layout).unwrap(),
                Some(last_probed + 1),
                "{pre:?}"
            );
        }
    }

    #[test]
    fn a_trained_lat_query_row_is_odd_in_the_query_input_and_supports_ignore_it() {
        let config = IclLatConfig {
            dim: 3,
            n_support: 5,
            layers: 3,
            heads: 2,
            attention: IclAttention::Linear,
        };
        let model = TrainableLat::new(config, 0.4, 1, DType::F64, &Device::Cpu).unwrap();
        let setting = crate::icl::VonOswaldSetting {
            dim: 3,
            n_support: 5,
            ..Default::default()
        };
        let tasks = setting.tasks(0, 4).unwrap();
        let flipped: Vec<_> = tasks
            .iter()
            .map(|t| RegressionTask {
                x_query: -&t.x_query,
                ..t.clone()
            })
            .collect();
        let run = |tasks: &[RegressionTask]| {
            let batch = icl_batch(tasks, DType::F64, &Device::Cpu).unwrap();
            let states = model
                .lat()
                .unwrap()
                .forward_with_states(&batch.tokens)
                .unwrap();
            StreamRows::read(&states, 5, 5..6).unwrap()
        };
        let (a, b) = (run(&tasks), run(&flipped));
        for l in 0..a.supports.len() {
            for k in 0..tasks.len() {
                assert_eq!(a.supports[l][k], b.supports[l][k], "layer {l}");
                let (q, q_flipped) = (&a.unrelated[l][k], &b.unrelated[l][k]);
                assert!(q.norm() > 0.0);
                assert!((q + q_flipped).norm() <= 1e-12 * q.norm(), "layer {l}");
            }
        }
    }

    #[test]
    fn a_matrix_system_is_the_kernel_system_of_its_problem() {
        let spec = RbfProblemSpec {
            n_support: 5,
            n_query: 1,
            dim: 2,
            features: 6,
            lengthscale: 1.0,
            noise: 0.0,
        };
        let prob = rbf_problem(&mut metarep_core::rng::seeded(2), &spec, 0.3).unwrap();
        let a = DualSystem::kernel(&prob).unwrap();
        let b = DualSystem::from_matrix(prob.system_matrix(), prob.y.clone()).unwrap();
        assert_eq!(a.a, b.a);
        assert!((&b.a * &b.ridge - &b.y).norm() < 1e-10 * b.y.norm());
        assert!(DualSystem::from_matrix(DMatrix::identity(3, 3), DVector::zeros(2)).is_err());
    }

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

//! Linear probes of the softmax routes' CG state (fig7): the probes and controls of
//! [`metarep_lat_cg::solver_probe`] on the residual streams of a [`SoftmaxCg`].
//!
//! A [`SoftmaxCg`] takes two layers per CG step (a mat-vec layer, then a reduction layer), so the
//! stream after CG step `k` is stream `1 + 2k` ([`SoftmaxCg::state_index`]); the stream between
//! them holds half a step (the new direction `p_{k−1}` formed, `α` and `r` not yet moved) and
//! is not probed. Layer `k` of a probe set here is the stream after step `k`, `k = 0..=t`.
//! The unrelated location of the controls is the query rows: no layer before the readout writes
//! into a query token (checked below), so up to the last probed stream they hold the query's
//! inputs and role flag only.
//!
//! The targets are exact f64 CG (and GD, ridge) on the system the route approximates: Route A's
//! exponential kernel `K_exp + λI`, Route B's `ΦΦᵀ + λI`. A route that runs CG on a realised
//! operator `K̃ ≠ K` carries `K̃`'s CG state, so its probes can fall short of the targets by as
//! much as that state deviates; [`register_cosines`] measures the deviation directly (the
//! cosine of the model's own `r`, `α`, `p` channels with the targets), and
//! [`relative_matvec_error`] the per-mat-vec error `‖K̃ − K‖₂/‖K‖₂` behind it. Finite precision
//! moves CG's state too, with no route involved: [`textbook_cosines`] runs textbook CG in the
//! run dtype on the same systems and scores it the same way.

use candle_core::{DType, Tensor};
use metarep_eval::tasks::kernel::KrrProblem;
use metarep_lat_cg::probe::cosine;
use metarep_lat_cg::solver_probe::{probe_layers, DualSystem, ProbeRow, ProbeSet, Target};
use nalgebra::{DMatrix, DVector, RealField};

use crate::construct::{MatVec, Preconditioning, SoftmaxCg};
use crate::error::{Error, Result};
use crate::kernel::{ExpTask, Prompt};
use crate::route_a::spectral_norm;

/// Prompts with their dual systems: what a softmax CG model is probed on.
#[derive(Debug, Clone)]
pub struct ProbeTasks {
    /// The prompts the model runs on.
    pub prompts: Vec<Prompt>,
    /// Each prompt's system `(K + λI) α = y` (exact kernel), whose solver steps are the targets.
    pub systems: Vec<DualSystem>,
}

impl ProbeTasks {
    /// Route A tasks: the exponential-kernel systems `K_exp + λI`.
    pub fn route_a(tasks: &[ExpTask]) -> Result<Self> {
        Ok(Self {
            prompts: tasks.iter().map(|t| t.prompt.clone()).collect(),
            systems: tasks
                .iter()
                .map(|t| {
                    Ok(DualSystem::from_matrix(
                        t.system_matrix()?,
                        t.prompt.y.clone(),
                    )?)
                })
                .collect::<Result<_>>()?,
        })
    }

    /// Route B (feature-form) problems: the dot-product systems `ΦΦᵀ + λI`.
    pub fn route_b(problems: &[KrrProblem]) -> Result<Self> {
        Ok(Self {
            prompts: problems.iter().map(Prompt::from).collect(),
            systems: problems
                .iter()
                .map(|p| Ok(DualSystem::kernel(p)?))
                .collect::<Result<_>>()?,
        })
    }
}

/// The streams after CG steps `k = 0..=t` of `model` run on `prompts` in `dtype` (as f64). An
/// error for a row-sum preconditioned model: it runs PCG, and the targets here are plain CG's.
pub fn step_streams(model: &SoftmaxCg, prompts: &[Prompt], dtype: DType) -> Result<Vec<Tensor>> {
    if let MatVec::ExpKernel {
        preconditioner: Preconditioning::RowSum,
        ..
    } = model.spec.matvec
    {
        return Err(Error::invalid(
            "probed model",
            "a row-sum preconditioned model runs PCG; the probe targets are plain CG's",
        ));
    }
    let all = model.run(prompts, dtype)?;
    (0..=model.spec.steps)
        .map(|k| Ok(all[model.state_index(k)?].clone()))
        .collect()
}

/// The probe set of `model` on `tasks` run in `dtype`: layer `k` = the stream after CG step `k`,
/// support rows probed, query rows as the unrelated location.
pub fn probe_set(model: &SoftmaxCg, tasks: &ProbeTasks, dtype: DType) -> Result<ProbeSet> {
    let streams = step_streams(model, &tasks.prompts, dtype)?;
    Ok(ProbeSet::from_layout(
        &streams,
        &model.spec.layout,
        &tasks.systems,
    )?)
}

/// `‖K̃ − K‖₂ / ‖K‖₂` for the support operator `K̃` that `model`'s kernel heads realise on
/// `prompt` in `dtype` ([`SoftmaxCg::realised_operator`]) against the exact kernel `exact`.
pub fn relative_matvec_error(
    model: &SoftmaxCg,
    prompt: &Prompt,
    exact: &DMatrix<f64>,
    dtype: DType,
) -> Result<f64> {
    let realised = model.realised_operator(prompt, dtype)?;
    if realised.shape() != exact.shape() {
        return Err(Error::shape(
            "exact kernel",
            format!("{:?}", realised.shape()),
            format!("{:?}", exact.shape()),
        ));
    }
    Ok(spectral_norm(&(realised - exact)) / spectral_norm(exact))
}

/// The CG-state targets, in table order.
pub const CG_TARGETS: [Target; 3] = [Target::CgResidual, Target::CgIterate, Target::CgDirection];

/// Per CG step `k = 0..=t` and CG target, a mean cosine over tasks.
pub type StepCosines = Vec<Vec<(Target, f64)>>;

/// One task's CG state after step `k`: `(α_k, r_k, p_{k−1})`.
type CgTriple = (DVector<f64>, DVector<f64>, DVector<f64>);

/// Per step `k = 0..=steps`, the mean over `tasks` of the cosine between `own(task)[k]` and
/// exact CG's value, for each CG target probed at that step (`r_k`; `α_k`, `p_{k−1}` from
/// `k = 1`).
fn mean_cosines(
    tasks: &ProbeTasks,
    steps: usize,
    mut own: impl FnMut(usize, &DualSystem) -> Result<Vec<CgTriple>>,
) -> Result<StepCosines> {
    let mut sums: StepCosines = vec![Vec::new(); steps + 1];
    for (b, system) in tasks.systems.iter().enumerate() {
        let targets = system.targets(steps)?;
        let states = own(b, system)?;
        for (k, ((alpha, r, p_prev), at_k)) in states.iter().zip(&targets).enumerate() {
            for (target, exact) in at_k {
                let mine = match target {
                    Target::CgResidual => r,
                    Target::CgIterate => alpha,
                    Target::CgDirection => p_prev,
                    _ => continue,
                };
                let c = cosine(mine, exact);
                match sums[k].iter_mut().find(|(tg, _)| tg == target) {
                    Some((_, sum)) => *sum += c,
                    None => sums[k].push((*target, c)),
                }
            }
        }
    }
    let count = tasks.systems.len().max(1) as f64;
    Ok(sums
        .into_iter()
        .map(|at| at.into_iter().map(|(tg, s)| (tg, s / count)).collect())
        .collect())
}

/// Per CG step `k = 0..=t`, the mean over `tasks` of the cosine between the model's own register
/// (`r`, `α`, `p` channels of the stream after step `k`) and exact CG's value for each CG target
/// at that step: the best a probe that reads the register can score.
pub fn register_cosines(
    model: &SoftmaxCg,
    tasks: &ProbeTasks,
    dtype: DType,
) -> Result<StepCosines> {
    let streams = step_streams(model, &tasks.prompts, dtype)?;
    mean_cosines(tasks, model.spec.steps, |b, _| {
        streams
            .iter()
            .map(|x| {
                let s = model.read_state(x, b)?;
                Ok((s.alpha, s.r, s.p_prev))
            })
            .collect()
    })
}

/// Textbook CG (`M = I`, `x₀ = 0`) on `a x = y` in the float type `T`: `(α_k, r_k, p_{k−1})` for
/// `k = 0..=steps`. The mat-vec is `aᵀp` by dot products (`= ap` for a symmetric `a`), summed in
/// another order than the reference's, so that even in f64 this is a second rounding sample of
/// the same algorithm (fig1's CG').
fn textbook_cg<T: RealField + Copy>(
    a: &DMatrix<T>,
    y: &DVector<T>,
    steps: usize,
) -> Vec<(DVector<T>, DVector<T>, DVector<T>)> {
    let n = y.len();
    let (mut alpha, mut r) = (DVector::zeros(n), y.clone());
    let mut p = r.clone();
    let mut rr = r.dot(&r);
    let mut out = vec![(alpha.clone(), r.clone(), DVector::zeros(n))];
    for _ in 0..steps {
        let ap = a.tr_mul(&p);
        let pap = p.dot(&ap);
        let gamma = if pap > T::zero() { rr / pap } else { T::zero() };
        alpha += &p * gamma;
        r -= &ap * gamma;
        out.push((alpha.clone(), r.clone(), p.clone()));
        let next = r.dot(&r);
        let beta = if rr > T::zero() { next / rr } else { T::zero() };
        p = &r + &p * beta;
        rr = next;
    }
    out
}

/// Per CG step `k = 0..=steps`, the mean over `tasks` of the cosine between textbook CG run in
/// `dtype` (f32 or f64) and the f64 reference CG of the targets, for each CG target: how far
/// finite-precision CG drifts from the targets by rounding alone, with no transformer involved.
pub fn textbook_cosines(tasks: &ProbeTasks, steps: usize, dtype: DType) -> Result<StepCosines> {
    mean_cosines(tasks, steps, |_, system| match dtype {
        DType::F64 => Ok(textbook_cg(&system.a, &system.y, steps)),
        DType::F32 => {
            let widen = |v: &DVector<f32>| v.map(f64::from);
            Ok(textbook_cg(
                &system.a.map(|v| v as f32),
                &system.y.map(|v| v as f32),
                steps,
            )
            .iter()
            .map(|(a, r, p)| (widen(a), widen(r), widen(p)))
            .collect())
        }
        other => Err(Error::invalid(
            "dtype",
            format!("textbook CG runs in f32 or f64, not {other:?}"),
        )),
    })
}

/// What fig7 measures on one softmax CG model.
#[derive(Debug, Clone)]
pub struct RouteProbes {
    /// Every (step, target) probe with its controls (layer = CG step).
    pub rows: Vec<ProbeRow>,
    /// The largest [`relative_matvec_error`] over the held-out prompts.
    pub matvec_error: f64,
    /// [`register_cosines`] on the held-out prompts.
    pub registers: StepCosines,
    /// [`textbook_cosines`] on the held-out prompts, in the run dtype.
    pub textbook: StepCosines,
}

/// Fits the probes of `model` on `train`, scores them on `test` (control seed `seed`), and
/// measures the route's per-mat-vec error and register cosines, and textbook CG's cosines, on
/// `test`; everything in `dtype`.
pub fn probe_route(
    model: &SoftmaxCg,
    train: &ProbeTasks,
    test: &ProbeTasks,
    dtype: DType,
    seed: u64,
) -> Result<RouteProbes> {
    let rows = probe_layers(
        &probe_set(model, train, dtype)?,
        &probe_set(model, test, dtype)?,
        seed,
    )?;
    let lambda = model.spec.lambda;
    let mut matvec_error = 0.0f64;
    for (prompt, system) in test.prompts.iter().zip(&test.systems) {
        // The exact kernel is the system matrix without its ridge.
        let n = system.y.len();
        let exact = &system.a - DMatrix::identity(n, n) * lambda;
        matvec_error = matvec_error.max(relative_matvec_error(model, prompt, &exact, dtype)?);
    }
    Ok(RouteProbes {
        rows,
        matvec_error,
        registers: register_cosines(model, test, dtype)?,
        textbook: textbook_cosines(test, model.spec.steps, dtype)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::construct::HeadSharing;
    use crate::kernel::{sample_exp_tasks, ExpTaskSpec};
    use crate::route_a::RouteAModel;
    use crate::route_b::{build, centred_problem, CentredSpec};
    use candle_core::Device;
    use metarep_core::rng::seeded;
    use metarep_lat_cg::solver_probe::first_query_write;

    fn exp_tasks(count: usize) -> Vec<ExpTask> {
        let spec = ExpTaskSpec {
            n_support: 8,
            n_query: 3,
            dim: 2,
            width: 2,
            u_norm: 1.0,
            tau: 1.0,
            lambda: 0.3,
            noise: 0.1,
            frequency: 1.0,
        };
        sample_exp_tasks(&mut seeded(11), &spec, count).unwrap()
    }

    fn route_a(steps: usize, sharing: HeadSharing, pre: Preconditioning) -> RouteAModel {
        RouteAModel {
            steps,
            sharing,
            normalised: true,
            width: None,
            preconditioner: pre,
        }
    }

    fn centred(seed: u64, count: usize) -> Vec<KrrProblem> {
        let spec = CentredSpec {
            n_support: 10,
            n_query: 3,
            features: 4,
            lambda: 0.1,
            noise: 0.1,
        };
        let mut rng = seeded(seed);
        (0..count)
            .map(|_| centred_problem(&mut rng, &spec).unwrap())
            .collect()
    }

    #[test]
    fn no_layer_before_the_readout_writes_into_a_query_row() {
        let tasks = exp_tasks(2);
        let mut models: Vec<SoftmaxCg> = [HeadSharing::Shared, HeadSharing::Dedicated]
            .into_iter()
            .flat_map(|sh| {
                [Preconditioning::None, Preconditioning::RowSum]
                    .map(|pre| route_a(3, sh, pre).build(&tasks[0], &Device::Cpu).unwrap())
            })
            .collect();
        let problems = centred(1, 2);
        models.push(build(&problems[0], 1e-2, 3, &Device::Cpu).unwrap());
        for model in &models {
            let prompts: Vec<Prompt> = match model.spec.matvec {
                MatVec::ExpKernel { .. } => tasks.iter().map(|t| t.prompt.clone()).collect(),
                MatVec::SmallLogit { .. } => problems.iter().map(Prompt::from).collect(),
            };
            let streams = model.run(&prompts, DType::F64).unwrap();
            let last_probed = model.state_index(model.spec.steps).unwrap();
            assert_eq!(
                first_query_write(&streams, &model.spec.layout).unwrap(),
                Some(last_probed + 1),
                "{:?}",
                model.spec
            );
        }
    }

    #[test]
    fn route_a_in_f64_carries_exact_cg_state_and_the_controls_fail() {
        let tasks = exp_tasks(300);
        let model = route_a(3, HeadSharing::Shared, Preconditioning::None)
            .build(&tasks[0], &Device::Cpu)
            .unwrap();
        let train = ProbeTasks::route_a(&tasks[..200]).unwrap();
        let test = ProbeTasks::route_a(&tasks[200..]).unwrap();
        let got = probe_route(&model, &train, &test, DType::F64, 3).unwrap();
        assert!(got.matvec_error < 1e-12, "{}", got.matvec_error);
        let cg: Vec<_> = got
            .rows
            .iter()
            .filter(|r| CG_TARGETS.contains(&r.target))
            .collect();
        // r at k = 0..=3, α and p at k = 1..=3.
        assert_eq!(cg.len(), 4 + 3 + 3);
        for r in &cg {
            assert!(r.score.cosine > 0.999_999 && r.score.r2 > 0.999_99, "{r:?}");
        }
        for r in &got.rows {
            assert!(
                r.score.unrelated_r2 < 0.1 && r.score.control_r2 < 0.1,
                "{r:?}"
            );
        }
        assert_eq!(got.registers.len(), 4);
        assert!(got.registers.iter().flatten().all(|(_, c)| *c > 1.0 - 1e-9));
        let pcg = route_a(3, HeadSharing::Shared, Preconditioning::RowSum)
            .build(&tasks[0], &Device::Cpu)
            .unwrap();
        assert!(probe_set(&pcg, &test, DType::F64).is_err());
    }

    #[test]
    fn textbook_cg_matches_the_targets_in_f64_and_drifts_by_rounding_in_f32() {
        let tasks = ProbeTasks::route_a(&exp_tasks(5)).unwrap();
        let f64_run = textbook_cosines(&tasks, 6, DType::F64).unwrap();
        assert_eq!(f64_run.len(), 7);
        assert_eq!(f64_run[0].len(), 1);
        // Same recurrences as the reference (α_k, r_k and the direction p_{k−1} of step k), so
        // only rounding separates them over a few steps.
        for at_k in &f64_run[1..] {
            assert_eq!(at_k.len(), 3);
            assert!(at_k.iter().all(|(_, c)| *c > 1.0 - 1e-10), "{at_k:?}");
        }
        let f32_run = textbook_cosines(&tasks, 6, DType::F32).unwrap();
        let worst = |run: &StepCosines| {
            run.iter()
                .flatten()
                .map(|(_, c)| 1.0 - c)
                .fold(0.0, f64::max)
        };
        assert!(
            worst(&f32_run) > 1e3 * worst(&f64_run).max(1e-16),
            "{f32_run:?}"
        );
        assert!(textbook_cosines(&tasks, 2, DType::F16).is_err());
    }

    #[test]
    fn route_b_registers_drift_from_exact_cg_as_the_logit_scale_grows() {
        let problems = centred(2, 6);
        let tasks = ProbeTasks::route_b(&problems).unwrap();
        let at = |eps: f64| {
            let model = build(&problems[0], eps, 4, &Device::Cpu).unwrap();
            let regs = register_cosines(&model, &tasks, DType::F64).unwrap();
            let last = regs[4]
                .iter()
                .find(|(t, _)| *t == Target::CgResidual)
                .unwrap()
                .1;
            let err = relative_matvec_error(
                &model,
                &tasks.prompts[0],
                &(&problems[0].phi * problems[0].phi.transpose()),
                DType::F64,
            )
            .unwrap();
            (last, err)
        };
        let (small, large) = (at(1e-4), at(0.5));
        assert!(small.1 < 1e-3 && large.1 > 1e-2, "{small:?} {large:?}");
        assert!(small.0 > 0.999 && large.0 < small.0, "{small:?} {large:?}");
    }
}

//! Knob sweeps of the Route A model — ridge `λ`, condition number `κ`, depth `t`, head width `m`,
//! temperature `τ`, normalisation on/off — and its ablations (shared vs dedicated kernel heads,
//! temperature), each a multi-seed [`Sweep`] of metarep-eval's harness driven by a TOML config
//! (`configs/routes_knobs.toml`, `configs/routes_ablations.toml`).

use std::path::Path;

use candle_core::{DType, Device};
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::DTypePolicy;
use metarep_eval::baselines::cg::{
    agreeing_steps, condition_number, pcg, pcg_factored, rel_diff, Preconditioner,
};
use metarep_eval::harness::{Sweep, SweepResult};
use metarep_eval::table::{Cell, Table};
use metarep_lat_cg::convergence::REPRODUCIBLE_TOL;
use serde::{Deserialize, Serialize};

use crate::construct::{HeadSharing, Preconditioning};
use crate::error::{Error, Result};
use crate::kernel::{sample_exp_task, square_root, ExpTask, ExpTaskSpec};
use crate::route_a::{
    evaluate, kernel_error, max_logit, reference_cg, row_sum_preconditioned_kappa, RouteAModel,
};

/// A setting swept by a knob sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Knob {
    /// Ridge `λ` (values: λ).
    Lambda,
    /// Condition number of `K + λI` (values: κ; λ is solved for per task).
    Kappa,
    /// CG steps `t` (values: t).
    Steps,
    /// Rows of `U` the kernel heads use (values: m ≤ d; the oracle keeps all of `U`).
    Width,
    /// Temperature `τ` (values: τ; kernel and oracle change together).
    Tau,
    /// Softmax kernel heads with the normalisation undone, unnormalised exponential heads (same
    /// weights), softmax heads whose normalisation is kept as a row-sum preconditioner, and the
    /// Nadaraya–Watson smoother that keeps it without a solver (values: τ).
    Normalisation,
}

impl Knob {
    /// Its name in file names and tables.
    pub fn name(self) -> &'static str {
        match self {
            Knob::Lambda => "lambda",
            Knob::Kappa => "kappa",
            Knob::Steps => "steps",
            Knob::Width => "width",
            Knob::Tau => "tau",
            Knob::Normalisation => "normalisation",
        }
    }
}

/// One sweep: a knob and its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnobSweep {
    /// The swept setting.
    pub knob: Knob,
    /// Its values.
    pub values: Vec<f64>,
}

/// A knob-sweep config: the base task and model, the seeds, and the sweeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnobConfig {
    /// Seeds (one task per seed, shared by every value of a knob).
    pub seeds: Vec<u64>,
    /// Dtype the model runs in.
    pub dtype: DTypePolicy,
    /// Base task.
    pub task: ExpTaskSpec,
    /// Base model.
    pub model: RouteAModel,
    /// The sweeps.
    pub sweep: Vec<KnobSweep>,
}

fn task_for(spec: &ExpTaskSpec, seed: u64) -> Result<ExpTask> {
    sample_exp_task(&mut seeded(derive_seed(seed, "routes/task")), spec)
}

fn as_count(x: f64, what: &str) -> Result<usize> {
    if x >= 1.0 && x.fract() == 0.0 {
        Ok(x as usize)
    } else {
        Err(Error::invalid(
            what,
            format!("must be a positive integer, got {x}"),
        ))
    }
}

/// The named numbers one knob setting yields on one seed.
pub fn measure_knob(
    cfg: &KnobConfig,
    knob: Knob,
    seed: u64,
    x: f64,
    device: &Device,
) -> Result<Vec<(String, f64)>> {
    let (mut spec, mut model) = (cfg.task, cfg.model);
    match knob {
        Knob::Lambda => spec.lambda = x,
        Knob::Tau | Knob::Normalisation => spec.tau = x,
        Knob::Steps => model.steps = as_count(x, "steps")?,
        Knob::Width => model.width = Some(as_count(x, "width")?),
        Knob::Kappa => {}
    }
    let mut task = task_for(&spec, seed)?;
    if knob == Knob::Kappa {
        task = task.with_lambda(task.lambda_for_kappa(x)?)?;
    }
    let dtype = cfg.dtype.compute;
    if knob == Knob::Normalisation {
        let mut out = Vec::new();
        let variants = [
            ("softmax", true, Preconditioning::None),
            ("exponential", false, Preconditioning::None),
            ("softmax, row-sum PCG", true, Preconditioning::RowSum),
        ];
        for (name, normalised, preconditioner) in variants {
            let e = evaluate(
                &task,
                &RouteAModel {
                    normalised,
                    preconditioner,
                    ..model
                },
                dtype,
                device,
            )?;
            out.push((format!("{name}: rmse ratio"), e.rmse_ratio));
            out.push((format!("{name}: rel dev vs oracle"), e.rel_dev_vs_oracle));
            if preconditioner == Preconditioning::None && normalised {
                out.push((
                    "nadaraya-watson: rmse ratio".to_string(),
                    e.rmse_nadaraya_watson / e.rmse_oracle,
                ));
            }
        }
        return Ok(out);
    }
    let e = evaluate(&task, &model, dtype, device)?;
    Ok(vec![
        ("rmse ratio".to_string(), e.rmse_ratio),
        ("spearman vs oracle".to_string(), e.spearman_vs_oracle),
        ("rel dev vs oracle".to_string(), e.rel_dev_vs_oracle),
    ])
}

/// Runs every sweep of `cfg` on `device` (with a progress bar).
pub fn run_knobs(cfg: &KnobConfig, device: &Device) -> Result<Vec<(Knob, SweepResult)>> {
    let total: usize = cfg
        .sweep
        .iter()
        .map(|s| s.values.len() * cfg.seeds.len())
        .sum();
    let bar = metarep_core::progress::bar(total as u64, "sweep points");
    let mut out = Vec::new();
    for s in &cfg.sweep {
        let result = Sweep::new(&cfg.seeds, &s.values).run(|seed, x| {
            bar.inc(1);
            measure_knob(cfg, s.knob, seed, x, device)
        })?;
        out.push((s.knob, result));
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Writes a knob sweep as `<knob>_quality.{csv,md,svg}` (RMSE ratios and rank correlations,
/// linear axis) and `<knob>_deviation.{csv,md,svg}` (relative deviation from the oracle, log axis).
pub fn write_knob(dir: &Path, knob: Knob, result: &SweepResult) -> Result<()> {
    let deviation = |m: &str| m.contains("rel dev");
    let name = knob.name();
    result.select(|m| !deviation(m)).write(
        dir,
        &format!("{name}_quality"),
        &format!("routes_knobs: RMSE ratios and rank correlations vs {name}"),
        (knob.name(), "ratio / correlation"),
        false,
    )?;
    result.select(deviation).write(
        dir,
        &format!("{name}_deviation"),
        &format!("routes_knobs: relative deviation from the oracle vs {name}"),
        (knob.name(), "‖f − f_oracle‖ / ‖f_oracle‖"),
        true,
    )?;
    Ok(())
}

/// The ablation config: head sharing and temperature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationConfig {
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Base task.
    pub task: ExpTaskSpec,
    /// CG steps of the models.
    pub steps: usize,
    /// Temperatures of the temperature ablation.
    pub taus: Vec<f64>,
}

/// Mean ± 95% CI of the finite `values` as a cell; when some are not finite (a tolerance never
/// reached, a dtype's range left), the cell says how many of them the statistic is over.
fn ci_cell(values: &[f64]) -> Result<Cell> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let text = match finite.len() {
        0 => "none finite".to_string(),
        1 => metarep_eval::format::fmt_sig(finite[0], 3),
        _ => metarep_eval::stats::mean_ci(&finite, 0.95)?.display(3),
    };
    Ok(Cell::from(if finite.len() < values.len() {
        format!("{text} ({} of {} finite)", finite.len(), values.len())
    } else {
        text
    }))
}

fn summary_row(
    label: Vec<Cell>,
    result: &SweepResult,
    x: f64,
    methods: &[&str],
) -> Result<Vec<Cell>> {
    let mut row = label;
    for method in methods {
        let values: Vec<f64> = result
            .measurements
            .iter()
            .filter(|m| m.method == *method && m.x == x)
            .map(|m| m.value)
            .collect();
        row.push(ci_cell(&values)?);
    }
    Ok(row)
}

/// Mean over seeds of `method` at each setting of `result`, by ascending setting; a NaN (a
/// tolerance never reached) counts as `+∞`. An error when `result` has no such method.
pub fn means(result: &SweepResult, method: &str) -> Result<Vec<(f64, f64)>> {
    let mut out: Vec<(f64, Vec<f64>)> = Vec::new();
    for m in result.measurements.iter().filter(|m| m.method == method) {
        let v = if m.value.is_nan() {
            f64::INFINITY
        } else {
            m.value
        };
        match out.iter_mut().find(|(x, _)| *x == m.x) {
            Some((_, values)) => values.push(v),
            None => out.push((m.x, vec![v])),
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(
            "method",
            format!("the sweep measured no {method:?}"),
        ));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out
        .into_iter()
        .map(|(x, v)| (x, v.iter().sum::<f64>() / v.len() as f64))
        .collect())
}

/// The head-sharing ablation's measurements (per seed; `x` = 0 shared, 1 dedicated), named as in
/// the table: relative deviations are of query predictions (`… vs CG_t`) or of α over the steps
/// two textbook f64 CGs agree to `REPRODUCIBLE_TOL` (`… reproducible steps`).
pub const SHARING_METRICS: [&str; 8] = [
    "textbook CG' vs CG_t (f64)",
    "realised K error / ‖K‖ (f64)",
    "reproducible CG steps (f64)",
    "max dev vs CG, reproducible steps (f64)",
    "dev vs CG_t (f64)",
    "dev vs CG_t (f32)",
    "rmse ratio (f32)",
    "spearman vs oracle (f32)",
];

/// Shared vs dedicated kernel heads: heads per CG step, weight count, the f64 realised kernel's
/// error, the f64 model's deviation from reference CG over the reproducible steps, deviation of
/// the readout from reference CG after the same `t` (f64 and f32, next to how far a second
/// textbook f64 CG drifts from it), RMSE ratio and rank correlation (f32). Returns the
/// measurements ([`SHARING_METRICS`]) and the table (mean ± 95% CI); the models run on `device`.
pub fn head_sharing_table(cfg: &AblationConfig, device: &Device) -> Result<(SweepResult, Table)> {
    let variants = [HeadSharing::Shared, HeadSharing::Dedicated];
    let t = cfg.steps;
    let result =
        Sweep::new(&cfg.seeds, &[0.0, 1.0]).run(|seed, x| -> Result<Vec<(String, f64)>> {
            let task = task_for(&cfg.task, seed)?;
            let model = RouteAModel {
                steps: t,
                sharing: variants[x as usize],
                normalised: true,
                width: None,
                preconditioner: Preconditioning::None,
            };
            let a = task.system_matrix()?;
            let cg = pcg(&a, &task.prompt.y, t, Preconditioner::None)?;
            let other = pcg_factored(
                &square_root(&task.gram()?),
                task.lambda,
                &task.prompt.y,
                t,
                Preconditioner::None,
            )?;
            let kq = task.query_gram()?;
            let f_cg = &kq * &cg.states[t].alpha;
            let built = model.build(&task, device)?;
            let states = built.run(std::slice::from_ref(&task.prompt), DType::F64)?;
            let last = states
                .last()
                .ok_or_else(|| Error::invalid("model", "no layers"))?;
            let f64_predictions = built.predictions(last)?.row(0).transpose();
            let repro = agreeing_steps(&cg, &other, REPRODUCIBLE_TOL).min(t);
            let mut max_dev = 0.0f64;
            for k in 1..=repro {
                let alpha = built.read_state(&states[built.state_index(k)?], 0)?.alpha;
                max_dev = max_dev.max(rel_diff(&alpha, &cg.states[k].alpha));
            }
            let kernel = kernel_error(&built, &task, DType::F64)?;
            let e32 = evaluate(&task, &model, DType::F32, device)?;
            let values = [
                rel_diff(&(&kq * &other.states[t].alpha), &f_cg),
                kernel.op_error / kernel.kernel_norm,
                repro as f64,
                max_dev,
                rel_diff(&f64_predictions, &f_cg),
                rel_diff(&e32.predictions, &f_cg),
                e32.rmse_ratio,
                e32.spearman_vs_oracle,
            ];
            Ok(named(&SHARING_METRICS, values))
        })?;
    let mut headers = vec!["kernel heads", "heads per CG step", "weights"];
    headers.extend(SHARING_METRICS);
    let mut table = Table::new(headers);
    let task = task_for(&cfg.task, cfg.seeds.first().copied().unwrap_or(0))?;
    for (i, sharing) in variants.into_iter().enumerate() {
        let model = RouteAModel {
            steps: cfg.steps,
            sharing,
            normalised: true,
            width: None,
            preconditioner: Preconditioning::None,
        }
        .build(&task, device)?;
        let weights: usize = model
            .model
            .layers
            .iter()
            .flat_map(|l| l.heads.iter())
            .map(|h| {
                h.w_q.elem_count() + h.w_k.elem_count() + h.w_v.elem_count() + h.w_o.elem_count()
            })
            .sum::<usize>()
            + model
                .model
                .layers
                .iter()
                .flat_map(|l| l.mlp.iter())
                .map(|b| {
                    b.w_a.elem_count()
                        + b.b_a.elem_count()
                        + b.w_out.elem_count()
                        + b.gate
                            .as_ref()
                            .map_or(0, |(w, bb)| w.elem_count() + bb.elem_count())
                })
                .sum::<usize>();
        let label = vec![
            Cell::from(format!("{sharing:?}").to_lowercase()),
            Cell::from(model.heads_per_step() as i64),
            Cell::from(weights as i64),
        ];
        table.push_row(summary_row(label, &result, i as f64, &SHARING_METRICS)?)?;
    }
    Ok((result, table))
}

/// `(name, value)` pairs for a sweep measurement.
fn named<const N: usize>(names: &[&str; N], values: [f64; N]) -> Vec<(String, f64)> {
    names
        .iter()
        .zip(values)
        .map(|(name, v)| (name.to_string(), v))
        .collect()
}

/// The temperature ablation's measurements (per seed; `x` = τ), named as in the table; the step
/// counts are NaN where the residual never reaches 1e-6 within `4n` steps.
pub const TEMPERATURE_METRICS: [&str; 11] = [
    "kappa(K + λI)",
    "kappa, row-sum preconditioned",
    "max logit",
    "eps_f32 / ‖K‖",
    "rounding bound / ‖K‖",
    "rmse ratio (f32)",
    "spearman vs oracle (f32)",
    "nadaraya-watson rmse ratio",
    "CG steps to 1e-6 residual",
    "rmse ratio, row-sum PCG (f32)",
    "row-sum PCG steps to 1e-6 residual",
];

/// Temperature ablation: conditioning (plain and row-sum preconditioned), logit range, the f32
/// kernel error and its bound, the f32 model's RMSE ratio and rank correlation, and steps to a
/// 1e-6 residual for CG and row-sum PCG at each `τ`. Returns the measurements
/// ([`TEMPERATURE_METRICS`]) and the table (mean ± 95% CI); the models run on `device`.
pub fn temperature_table(cfg: &AblationConfig, device: &Device) -> Result<(SweepResult, Table)> {
    let result =
        Sweep::new(&cfg.seeds, &cfg.taus).run(|seed, tau| -> Result<Vec<(String, f64)>> {
            let spec = ExpTaskSpec { tau, ..cfg.task };
            let task = task_for(&spec, seed)?;
            let model = RouteAModel::plain(cfg.steps);
            let a = task.system_matrix()?;
            let k = kernel_error(&model.build(&task, device)?, &task, DType::F32)?;
            let e = evaluate(&task, &model, DType::F32, device)?;
            let y_norm = task.prompt.y.norm();
            let to_tol = |pre| -> Result<f64> {
                Ok(reference_cg(&task, 4 * task.prompt.n(), pre)?
                    .states
                    .iter()
                    .position(|s| (&task.prompt.y - &a * &s.alpha).norm() <= 1e-6 * y_norm)
                    .map_or(f64::NAN, |t| t as f64))
            };
            let pre = evaluate(
                &task,
                &RouteAModel {
                    preconditioner: Preconditioning::RowSum,
                    ..model
                },
                DType::F32,
                device,
            )?;
            let values = [
                condition_number(&a),
                row_sum_preconditioned_kappa(&task)?,
                max_logit(&task.kernel, &task.prompt.x)?,
                k.op_error / k.kernel_norm,
                k.bound / k.kernel_norm,
                e.rmse_ratio,
                e.spearman_vs_oracle,
                e.rmse_nadaraya_watson / e.rmse_oracle,
                to_tol(Preconditioning::None)?,
                pre.rmse_ratio,
                to_tol(Preconditioning::RowSum)?,
            ];
            Ok(named(&TEMPERATURE_METRICS, values))
        })?;
    let mut headers = vec!["tau"];
    headers.extend(TEMPERATURE_METRICS);
    let mut table = Table::new(headers);
    for &tau in &cfg.taus {
        table.push_row(summary_row(
            vec![Cell::from(tau)],
            &result,
            tau,
            &TEMPERATURE_METRICS,
        )?)?;
    }
    Ok((result, table))
}

//! fig16: what breaks when a part of the CG construction is removed. Each class of heads and MLP
//! blocks is removed from every CG layer of the plain and the Jacobi model in turn; the failure
//! signature (which CG invariant breaks first, at which step, which never break, how the error
//! moves) is measured on every problem and compared with the prediction `docs/cg_ablations.md`
//! states. Also draws the heads' attention patterns next to their masks.

use std::path::Path;

use candle_core::Device;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::{Heatmap, HeatmapPlot, LegendPosition, LinePlot, Series, SeriesStyle};
use metarep_eval::table::{Cell, Table};
use metarep_lat_cg::construct::ablation::CgPart;
use metarep_lat_cg::construct::cg::{CgLat, CgSpec};
use metarep_lat_cg::invariants::{run_states, CgRun, Invariant, InvariantTrace, StateVectors};
use metarep_lat_cg::problem::{rbf_problem, KrrProblem, RbfProblemSpec};
use metarep_lat_cg::reference::{inverse_diagonal, pcg, Preconditioner};
use serde::{Deserialize, Serialize};

use crate::checks::{self, CheckedConfig};
use crate::error::BoxError;
use crate::output::ResultDir;

/// Settings of fig16 (`configs/fig16.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fig16Config {
    /// One problem per seed.
    seeds: Vec<u64>,
    problem: RbfProblemSpec,
    lambda: f64,
    /// CG layers `t`.
    steps: usize,
}

impl CheckedConfig for Fig16Config {
    fn check(&self) -> Result<(), BoxError> {
        checks::rbf_problem("problem", &self.problem)?;
        checks::positive("lambda", self.lambda)?;
        checks::at_least_one("steps", self.steps)?;
        checks::at_least_one("seeds", self.seeds.len())
    }
}

/// How the A-norm error is predicted to move (`docs/cg_ablations.md`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Progress {
    /// Not predicted.
    Any,
    /// Non-increasing, and above the intact model's after `t` steps.
    Slower,
    /// α never changes after this step.
    StallsFrom(usize),
    /// Above 1 after step 1.
    Diverges,
    /// The same solver state as the intact model.
    AsIntact,
    /// The state of plain reference CG (to 1e-8).
    PlainCg,
}

/// The predicted failure signature of removing one part.
struct Prediction {
    part: CgPart,
    /// The invariants that break first, and the step.
    first: (&'static [Invariant], Option<usize>),
    /// Invariants that never break within `t` steps.
    holds: &'static [Invariant],
    progress: Progress,
}

/// The predictions of `docs/cg_ablations.md`, row by row.
fn predictions() -> Vec<Prediction> {
    use Invariant::{Conjugacy as C, Orthogonality as O, Recursion as R};
    let p = |part, first, step, holds, progress| Prediction {
        part,
        first: (first, step),
        holds,
        progress,
    };
    vec![
        p(CgPart::KernelMatVec, &[R], Some(1), &[], Progress::Any),
        p(CgPart::Ridge, &[R], Some(1), &[], Progress::Any),
        p(
            CgPart::ScalarReductions,
            &[O],
            Some(1),
            &[R],
            Progress::StallsFrom(0),
        ),
        p(
            CgPart::FeatureReductions,
            &[O],
            Some(1),
            &[R],
            Progress::Diverges,
        ),
        p(CgPart::Readout, &[], None, &[R, O, C], Progress::AsIntact),
        p(CgPart::Block(1), &[O, C], Some(2), &[R], Progress::Slower),
        p(
            CgPart::Block(2),
            &[R, O],
            Some(1),
            &[C],
            Progress::StallsFrom(0),
        ),
        p(CgPart::Block(3), &[O], Some(1), &[], Progress::Diverges),
        p(
            CgPart::Block(4),
            &[O],
            Some(1),
            &[R],
            Progress::StallsFrom(0),
        ),
        p(
            CgPart::Block(5),
            &[O],
            Some(1),
            &[R, C],
            Progress::StallsFrom(0),
        ),
        p(
            CgPart::Block(6),
            &[O],
            Some(2),
            &[R, C],
            Progress::StallsFrom(1),
        ),
        p(
            CgPart::Preconditioner,
            &[O],
            Some(1),
            &[R, C],
            Progress::PlainCg,
        ),
    ]
}

/// One problem's references: the intact model's and plain CG's iterates, and `M⁻¹`.
struct Reference<'a> {
    problem: &'a KrrProblem,
    dinv: nalgebra::DVector<f64>,
    intact: &'a [StateVectors],
    plain_cg: Vec<nalgebra::DVector<f64>>,
}

/// What was measured for one part on one problem.
struct Measured {
    trace: InvariantTrace,
    first: (Vec<Invariant>, Option<usize>),
    /// Whether the predicted progress was observed.
    progress: bool,
}

/// Runs fig16 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig16Config = checks::load_checked(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let dev = Device::Cpu;
    let problems = cfg
        .seeds
        .iter()
        .map(|&s| {
            rbf_problem(
                &mut seeded(derive_seed(s, "fig16/problem")),
                &cfg.problem,
                cfg.lambda,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut table = Table::new(vec![
        "model",
        "part removed",
        "predicted first to break",
        "measured (every problem)",
        "predicted never broken",
        "never broken",
        "predicted progress",
        "observed",
        "A-norm error at t (mean)",
    ]);
    let mut all = true;
    for pre in [Preconditioner::None, Preconditioner::Jacobi] {
        let name = model_name(pre);
        let spec = CgSpec::for_problem(&problems[0], cfg.steps, pre)?;
        let intact = CgLat::build(spec, &dev)?;
        let intact_run = run_states(&intact, &problems, &dev)?;
        let refs = references(&problems, &intact_run, cfg.steps, pre)?;
        let intact_error = mean_error_curve(&refs, &intact_run)?;
        let mut curves = vec![("intact".to_string(), intact_error.clone())];
        let mut first_steps = Vec::new();
        for pred in predictions() {
            if pred.part == CgPart::Preconditioner && pre == Preconditioner::None {
                continue;
            }
            let run = run_states(&intact.without(pred.part, &dev)?, &problems, &dev)?;
            let measured: Vec<Measured> = refs
                .iter()
                .zip(&run.states)
                .map(|(r, states)| measure(r, states, &pred, &intact_error))
                .collect::<Result<_, _>>()?;
            let row = compare(&pred, &measured);
            all &= row.pass;
            let key = format!("{}_{}", metric_slug(name), metric_slug(&pred.part.name()));
            out.metrics.set_bool(format!("{key}_pass"), row.pass);
            let error_t = mean_error_curve(&refs, &run)?[cfg.steps];
            out.metrics
                .set_number(format!("{key}_a_norm_error_t"), error_t);
            table.push_row(vec![
                Cell::from(name),
                Cell::from(pred.part.name()),
                Cell::from(signature(pred.first.0, pred.first.1)),
                Cell::from(row.measured_first),
                Cell::from(invariant_list(pred.holds)),
                Cell::from(row.never_broken),
                Cell::from(format!("{:?}", pred.progress)),
                Cell::from(if row.progress { "yes" } else { "no" }),
                Cell::Num(error_t),
            ])?;
            println!(
                "   {name}, {} removed: {} ({})",
                pred.part.name(),
                if row.pass {
                    "as predicted"
                } else {
                    "NOT as predicted"
                },
                row.summary
            );
            let errors = measured.iter().map(|m| &m.trace.a_norm_error);
            curves.push((pred.part.name(), mean_of(errors)));
            first_steps.push((pred, measured));
        }
        out.plot(
            &format!("fig16_{}_error", metric_slug(name)),
            &error_plot(name, &curves),
        )?;
        out.plot(
            &format!("fig16_{}_first_broken", metric_slug(name)),
            &first_broken_map(name, &first_steps),
        )?;
        if pre == Preconditioner::None {
            attention_maps(&intact, &problems, &out)?;
        }
    }
    out.table("fig16", &table)?;
    println!("{}", table.to_markdown());
    out.finish(all)
}

fn model_name(pre: Preconditioner) -> &'static str {
    match pre {
        Preconditioner::None => "plain CG LAT",
        Preconditioner::Jacobi => "Jacobi PCG LAT",
    }
}

/// Lower-case words joined by `_` (`"MLP block B3"` → `mlp_block_b3`).
fn metric_slug(text: &str) -> String {
    crate::output::metric_key(text)
}

/// The references each problem's measurements are compared with.
fn references<'a>(
    problems: &'a [KrrProblem],
    intact: &'a CgRun,
    steps: usize,
    pre: Preconditioner,
) -> Result<Vec<Reference<'a>>, BoxError> {
    problems
        .iter()
        .zip(&intact.states)
        .map(|(p, states)| {
            let a = p.system_matrix();
            let plain = pcg(&a, &p.y, steps, Preconditioner::None)?;
            Ok(Reference {
                problem: p,
                dinv: inverse_diagonal(&a, pre)?,
                intact: states,
                plain_cg: plain.states.into_iter().map(|s| s.alpha).collect(),
            })
        })
        .collect()
}

/// The invariants, first-to-break and the predicted progress of one ablated run.
fn measure(
    r: &Reference,
    states: &[StateVectors],
    pred: &Prediction,
    intact_error: &[f64],
) -> Result<Measured, BoxError> {
    let a = r.problem.system_matrix();
    let trace = InvariantTrace::measure(&a, &r.problem.y, &r.dinv, states)?;
    let scale = r.intact.last().map_or(1.0, |s| s.alpha.norm()).max(1e-300);
    let same = |x: &nalgebra::DVector<f64>, y: &nalgebra::DVector<f64>, tol: f64| {
        (x - y).norm() <= tol * scale
    };
    let e = &trace.a_norm_error;
    let t = e.len() - 1;
    let progress = match pred.progress {
        Progress::Any => true,
        Progress::Slower => {
            e.windows(2).all(|w| w[1] <= w[0] * (1.0 + 1e-9)) && e[t] > intact_error[t]
        }
        Progress::StallsFrom(s) => {
            let moved_before = s == 0 || !same(&states[s].alpha, &states[s - 1].alpha, 1e-12);
            moved_before
                && states[s..]
                    .iter()
                    .all(|k| same(&k.alpha, &states[s].alpha, 1e-12))
        }
        Progress::Diverges => e.get(1).is_some_and(|&v| v.is_nan() || v > 1.0),
        Progress::AsIntact => states
            .iter()
            .zip(r.intact)
            .all(|(s, i)| same(&s.alpha, &i.alpha, 1e-12) && same(&s.r, &i.r, 1e-12)),
        Progress::PlainCg => states
            .iter()
            .zip(&r.plain_cg)
            .all(|(s, cg)| same(&s.alpha, cg, 1e-8)),
    };
    let first = trace.first_to_break();
    Ok(Measured {
        trace,
        first,
        progress,
    })
}

/// One table row's comparison over every problem.
struct Row {
    pass: bool,
    progress: bool,
    measured_first: String,
    never_broken: String,
    summary: String,
}

fn compare(pred: &Prediction, measured: &[Measured]) -> Row {
    let mut firsts: Vec<String> = measured
        .iter()
        .map(|m| signature(&m.first.0, m.first.1))
        .collect();
    firsts.dedup();
    let first_ok = measured
        .iter()
        .all(|m| m.first.0 == pred.first.0 && m.first.1 == pred.first.1);
    let never: Vec<Invariant> = Invariant::ALL
        .into_iter()
        .filter(|&v| measured.iter().all(|m| m.trace.first_broken(v).is_none()))
        .collect();
    let holds_ok = pred.holds.iter().all(|v| never.contains(v));
    let progress = measured.iter().all(|m| m.progress);
    Row {
        pass: first_ok && holds_ok && progress,
        progress,
        measured_first: firsts.join(" / "),
        never_broken: invariant_list(&never),
        summary: format!(
            "first {}, never {}, progress {}",
            firsts.join(" / "),
            invariant_list(&never),
            if progress {
                "as predicted"
            } else {
                "not as predicted"
            }
        ),
    }
}

fn invariant_list(v: &[Invariant]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
}

fn signature(v: &[Invariant], step: Option<usize>) -> String {
    match step {
        None => "none".into(),
        Some(k) => format!("{} at step {k}", invariant_list(v)),
    }
}

/// The mean over problems of each run's A-norm error per step.
fn mean_error_curve(refs: &[Reference], run: &CgRun) -> Result<Vec<f64>, BoxError> {
    let traces = refs
        .iter()
        .zip(&run.states)
        .map(|(r, s)| {
            let a = r.problem.system_matrix();
            Ok(InvariantTrace::measure(&a, &r.problem.y, &r.dinv, s)?.a_norm_error)
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    Ok(mean_of(traces.iter()))
}

fn mean_of<'a>(curves: impl Iterator<Item = &'a Vec<f64>> + Clone) -> Vec<f64> {
    let n = curves.clone().count().max(1) as f64;
    let len = curves.clone().map(Vec::len).min().unwrap_or(0);
    (0..len)
        .map(|k| curves.clone().map(|c| c[k]).sum::<f64>() / n)
        .collect()
}

/// A-norm error against depth for the intact model (solid) and each ablation (heads dashed,
/// MLP blocks as markers), log axis; a run whose error leaves 1e3 (or overflows) is named in a
/// note instead, so it does not flatten the others.
fn error_plot(model: &str, curves: &[(String, Vec<f64>)]) -> LinePlot {
    let mut plot = LinePlot::new(format!(
        "fig16: {model}, A-norm error with one part removed from every CG layer"
    ))
    .x_label("CG layers k")
    .y_label("‖α_k − α*‖_A / ‖α*‖_A (mean over problems)")
    .log_y(true)
    .legend(LegendPosition::Outside);
    let mut diverged = Vec::new();
    for (i, (name, curve)) in curves.iter().enumerate() {
        if curve.iter().any(|v| v.is_nan() || v.abs() > 1e3) {
            let at1 = curve.get(1).copied().unwrap_or(f64::NAN);
            diverged.push(format!("{name} ({at1:.1e} after step 1)"));
            continue;
        }
        let style = match i {
            0 => SeriesStyle::Solid,
            _ if name.starts_with("MLP") => SeriesStyle::Markers,
            _ => SeriesStyle::Dashed,
        };
        plot = plot.series(Series {
            name: name.clone(),
            points: curve
                .iter()
                .enumerate()
                .map(|(k, &v)| (k as f64, v))
                .collect(),
            style,
            color: Some(i),
        });
    }
    if !diverged.is_empty() {
        plot = plot.note(format!(
            "not drawn, error above 1e3 or overflowed: {}",
            diverged.join("; ")
        ));
    }
    plot.size(1000, 560)
}

/// Per part and invariant, the predicted and the measured first step at which it breaks (0: it
/// holds; −1: the prediction leaves it open; the measured value is problem 0's, the table says
/// whether every problem agrees).
fn first_broken_map(model: &str, rows: &[(Prediction, Vec<Measured>)]) -> HeatmapPlot {
    let mut cols = Vec::new();
    for v in Invariant::ALL {
        cols.push(format!("{} pred.", short(v)));
        cols.push(format!("{} meas.", short(v)));
    }
    let values: Vec<Vec<f64>> = rows
        .iter()
        .map(|(p, m)| {
            Invariant::ALL
                .iter()
                .flat_map(|&v| {
                    let predicted = if p.first.0.contains(&v) {
                        p.first.1.map_or(0.0, |k| k as f64)
                    } else if p.holds.contains(&v) {
                        0.0
                    } else {
                        -1.0
                    };
                    let measured = m[0].trace.first_broken(v).map_or(0.0, |k| k as f64);
                    [predicted, measured]
                })
                .collect()
        })
        .collect();
    Heatmap {
        title: format!("fig16: {model}, first step at which each CG invariant breaks"),
        row_label: "part removed".into(),
        col_label: "invariant".into(),
        values,
    }
    .plot()
    .row_names(rows.iter().map(|(p, _)| p.part.name()))
    .col_names(cols)
    .units("first broken step (0: holds; −1: not predicted)")
    .transpose(false)
}

fn short(v: Invariant) -> &'static str {
    match v {
        Invariant::Recursion => "recur.",
        Invariant::Orthogonality => "orth.",
        Invariant::Conjugacy => "conj.",
    }
}

/// Attention patterns (problem 0) of each head class in the first CG layer and of the readout
/// head, and each distinct mask.
fn attention_maps(model: &CgLat, problems: &[KrrProblem], out: &ResultDir) -> Result<(), BoxError> {
    let dev = Device::Cpu;
    let streams = model
        .lat
        .forward_with_states(&model.embed(&problems[..1], &dev)?)?;
    let layout = model.spec.layout;
    let names: Vec<String> = (1..=layout.n_support)
        .map(|i| format!("s{i}"))
        .chain(std::iter::once("agg".to_string()))
        .chain((1..=layout.n_query).map(|i| format!("q{i}")))
        .collect();
    let first_cg = 1;
    let last = model.lat.layers.len() - 1;
    let heads = [
        ("kernel mat-vec", first_cg, 0),
        ("ridge", first_cg, 1),
        ("scalar reduction Σrz", first_cg, 2),
        ("feature reduction Φᵀz", first_cg, 6),
        ("readout", last, 0),
    ];
    for (what, layer, h) in heads {
        let head = &model.lat.layers[layer].heads[h];
        let pattern = head.pattern(&streams[layer])?.get(0)?.to_vec2::<f64>()?;
        let mask = head.mask.to_vec2::<f64>()?;
        let slug = metric_slug(what);
        for (kind, values, units) in [
            ("pattern", pattern, "attention weight (masked score)"),
            ("mask", mask, "1: reader may read key"),
        ] {
            let map = Heatmap {
                title: format!("fig16: plain CG LAT, {what} head (layer {layer}) {kind}"),
                row_label: "reader".into(),
                col_label: "key".into(),
                values,
            }
            .plot()
            .row_names(names.clone())
            .col_names(names.clone())
            .units(units)
            .transpose(false);
            out.plot(&format!("fig16_attention_{slug}_{kind}"), &map)?;
        }
    }
    Ok(())
}

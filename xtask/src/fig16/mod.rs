//! fig16: what breaks when a part of the CG construction is removed. Each class of heads and MLP
//! blocks is removed from every CG layer of the plain and the Jacobi model in turn; the failure
//! signature (which CG invariant breaks first, at which step, which never break, how the error
//! moves) is measured on every problem and compared with the prediction `docs/cg_ablations.md`
//! states. Also draws the heads' attention patterns next to their masks.

mod routes;

use std::path::Path;

use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::{Heatmap, HeatmapPlot, LegendPosition, LinePlot, Series, SeriesStyle};
use metarep_eval::table::{Cell, Table};
use metarep_lat_cg::construct::ablation::CgPart;
use metarep_lat_cg::construct::cg::{CgLat, CgSpec};
use metarep_lat_cg::invariants::{run_states, Invariant, InvariantTrace, StateVectors};
use metarep_lat_cg::lat::Lat;
use metarep_lat_cg::mask::TokenLayout;
use metarep_lat_cg::problem::{rbf_problem, KrrProblem, RbfProblemSpec};
use metarep_lat_cg::reference::{inverse_diagonal, pcg, Preconditioner};
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::checks::{self, CheckedConfig};
use crate::device::device;
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
    /// The softmax routes' ablations.
    routes: routes::RoutesConfig,
}

impl CheckedConfig for Fig16Config {
    fn check(&self) -> Result<(), BoxError> {
        checks::rbf_problem("problem", &self.problem)?;
        checks::positive("lambda", self.lambda)?;
        checks::at_least_one("steps", self.steps)?;
        checks::at_least_one("seeds", self.seeds.len())?;
        self.routes.check()
    }
}

/// How the A-norm error is predicted to move (`docs/cg_ablations.md`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Progress {
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
pub(crate) struct Prediction {
    /// The part's name in tables and figures.
    name: String,
    /// The invariants that break first (`None`: which ones is not predicted), and the step.
    first: (Option<&'static [Invariant]>, Option<usize>),
    /// Invariants that never break within `t` steps.
    holds: &'static [Invariant],
    progress: Progress,
}

impl Prediction {
    /// A prediction for the part named `name`.
    pub(crate) fn new(
        name: String,
        first: Option<&'static [Invariant]>,
        step: Option<usize>,
        holds: &'static [Invariant],
        progress: Progress,
    ) -> Self {
        Prediction {
            name,
            first: (first, step),
            holds,
            progress,
        }
    }
}

/// The predictions of `docs/cg_ablations.md` for the CG LATs, row by row.
fn cg_predictions() -> Vec<(CgPart, Prediction)> {
    use Invariant::{Conjugacy as C, Orthogonality as O, Recursion as R};
    use Progress::{AsIntact, Diverges, PlainCg, Slower, StallsFrom};
    let p = |part: CgPart, first: &'static [Invariant], step, holds, progress| {
        let first = (!first.is_empty()).then_some(first);
        (
            part,
            Prediction::new(part.name(), first.or(Some(&[])), step, holds, progress),
        )
    };
    vec![
        p(CgPart::KernelMatVec, &[R], Some(1), &[], Progress::Any),
        p(CgPart::Ridge, &[R], Some(1), &[], Progress::Any),
        p(CgPart::ScalarReductions, &[O], Some(1), &[R], StallsFrom(0)),
        p(CgPart::FeatureReductions, &[O], Some(1), &[R], Diverges),
        p(CgPart::Readout, &[], None, &[R, O, C], AsIntact),
        p(CgPart::Block(1), &[O, C], Some(2), &[R], Slower),
        p(CgPart::Block(2), &[R, O], Some(1), &[C], StallsFrom(0)),
        p(CgPart::Block(3), &[O], Some(1), &[], Diverges),
        p(CgPart::Block(4), &[O], Some(1), &[R], StallsFrom(0)),
        p(CgPart::Block(5), &[O], Some(1), &[R, C], StallsFrom(0)),
        p(CgPart::Block(6), &[O], Some(2), &[R, C], StallsFrom(1)),
        p(CgPart::Preconditioner, &[O], Some(1), &[R, C], PlainCg),
    ]
}

/// One problem's references: the system the invariants are measured on, `M⁻¹`, and the intact
/// model's and plain CG's iterates.
pub(crate) struct Reference {
    a: DMatrix<f64>,
    y: DVector<f64>,
    dinv: DVector<f64>,
    intact: Vec<StateVectors>,
    plain_cg: Vec<DVector<f64>>,
}

impl Reference {
    /// The references for `A α = y` with `M⁻¹ = diag(dinv)` and the intact model's states.
    pub(crate) fn new(
        a: DMatrix<f64>,
        y: DVector<f64>,
        dinv: DVector<f64>,
        intact: Vec<StateVectors>,
    ) -> Result<Self, BoxError> {
        let steps = intact.len().saturating_sub(1);
        let plain = pcg(&a, &y, steps, Preconditioner::None)?;
        Ok(Reference {
            a,
            y,
            dinv,
            intact,
            plain_cg: plain.states.into_iter().map(|s| s.alpha).collect(),
        })
    }

    fn trace(&self, states: &[StateVectors]) -> Result<InvariantTrace, BoxError> {
        Ok(InvariantTrace::measure(
            &self.a, &self.y, &self.dinv, states,
        )?)
    }
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
    let dev = device();
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
        let spec = CgSpec::for_problem(&problems[0], cfg.steps, pre)?;
        let intact = CgLat::build(spec, &dev)?;
        let refs = problems
            .iter()
            .zip(run_states(&intact, &problems, &dev)?.states)
            .map(|(p, states)| {
                let a = p.system_matrix();
                let dinv = inverse_diagonal(&a, pre)?;
                Reference::new(a, p.y.clone(), dinv, states)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut ablations = Vec::new();
        for (part, pred) in cg_predictions() {
            if part == CgPart::Preconditioner && pre == Preconditioner::None {
                continue;
            }
            let states = run_states(&intact.without(part, &dev)?, &problems, &dev)?.states;
            ablations.push((pred, states));
        }
        all &= report(model_name(pre), &refs, ablations, &mut table, &mut out)?;
        if pre == Preconditioner::None {
            attention_maps(&intact, &problems, &out)?;
        }
    }
    all &= routes::run(&cfg.routes, &mut table, &mut out)?;
    out.table("fig16", &table)?;
    println!("{}", table.to_markdown());
    out.finish(all)
}

/// Measures every ablation of one model against its prediction on every problem: table rows,
/// metrics, the A-norm error figure and the first-broken heat map; returns whether every
/// prediction was observed.
pub(crate) fn report(
    name: &str,
    refs: &[Reference],
    ablations: Vec<(Prediction, Vec<Vec<StateVectors>>)>,
    table: &mut Table,
    out: &mut ResultDir,
) -> Result<bool, BoxError> {
    let intact_traces = refs
        .iter()
        .map(|r| r.trace(&r.intact))
        .collect::<Result<Vec<_>, _>>()?;
    let intact_error = mean_of(intact_traces.iter().map(|t| &t.a_norm_error));
    let (never, _) = broken_in_any(&intact_traces);
    if never.len() != Invariant::ALL.len() {
        return Err(format!(
            "{name}: the intact model itself breaks {} within t steps; the ablations cannot be read",
            invariant_list(&Invariant::ALL.iter().copied().filter(|v| !never.contains(v)).collect::<Vec<_>>())
        )
        .into());
    }
    for (i, v) in Invariant::ALL.iter().enumerate() {
        let worst = intact_traces
            .iter()
            .flat_map(|t| t.values.iter().map(|row| row[i]))
            .fold(0.0, f64::max);
        let key = format!("{}_intact_max_{}", metric_slug(name), short(*v));
        out.metrics.set_number(metric_slug(&key), worst);
    }
    let t = intact_error.len() - 1;
    let mut curves = vec![("intact".to_string(), intact_error.clone())];
    let mut rows = Vec::new();
    let mut all = true;
    for (pred, states) in ablations {
        let measured: Vec<Measured> = refs
            .iter()
            .zip(&states)
            .map(|(r, s)| measure(r, s, &pred, &intact_error))
            .collect::<Result<_, _>>()?;
        let row = compare(&pred, &measured);
        all &= row.pass;
        let key = format!("{}_{}", metric_slug(name), metric_slug(&pred.name));
        out.metrics.set_bool(format!("{key}_pass"), row.pass);
        let errors = mean_of(measured.iter().map(|m| &m.trace.a_norm_error));
        out.metrics
            .set_number(format!("{key}_a_norm_error_t"), errors[t]);
        table.push_row(vec![
            Cell::from(name),
            Cell::from(pred.name.clone()),
            Cell::from(predicted_signature(&pred)),
            Cell::from(row.measured_first),
            Cell::from(invariant_list(pred.holds)),
            Cell::from(row.never_broken),
            Cell::from(format!("{:?}", pred.progress)),
            Cell::from(if row.progress { "yes" } else { "no" }),
            Cell::Num(errors[t]),
        ])?;
        println!(
            "   {name}, {} removed: {} ({})",
            pred.name,
            if row.pass {
                "as predicted"
            } else {
                "NOT as predicted"
            },
            row.summary
        );
        curves.push((pred.name.clone(), errors));
        rows.push((pred, measured));
    }
    out.plot(
        &format!("fig16_{}_error", metric_slug(name)),
        &error_plot(name, &curves),
    )?;
    out.plot(
        &format!("fig16_{}_first_broken", metric_slug(name)),
        &first_broken_map(name, &rows),
    )?;
    Ok(all)
}

/// The invariants no trace breaks, and those some trace does.
fn broken_in_any(traces: &[InvariantTrace]) -> (Vec<Invariant>, Vec<Invariant>) {
    Invariant::ALL
        .into_iter()
        .partition(|&v| traces.iter().all(|t| t.first_broken(v).is_none()))
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

/// The invariants, first-to-break and the predicted progress of one ablated run.
fn measure(
    r: &Reference,
    states: &[StateVectors],
    pred: &Prediction,
    intact_error: &[f64],
) -> Result<Measured, BoxError> {
    let trace = r.trace(states)?;
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
            .zip(&r.intact)
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
        .all(|m| m.first.1 == pred.first.1 && pred.first.0.is_none_or(|set| m.first.0 == set));
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

/// The predicted first-to-break as text (`(any) at step 2` when the set is not predicted).
fn predicted_signature(pred: &Prediction) -> String {
    match pred.first {
        (None, Some(k)) => format!("(any) at step {k}"),
        (set, step) => signature(set.unwrap_or(&[]), step),
    }
}

fn signature(v: &[Invariant], step: Option<usize>) -> String {
    match step {
        None => "none".into(),
        Some(k) => format!("{} at step {k}", invariant_list(v)),
    }
}

/// The mean over runs of a per-step curve.
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
        "fig16: {model}, A-norm error with one part removed from every CG step"
    ))
    .x_label("CG steps k")
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
            _ if name.contains("block") => SeriesStyle::Markers,
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
                    let predicted = if p.first.0.is_some_and(|set| set.contains(&v)) {
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
    .row_names(rows.iter().map(|(p, _)| p.name.clone()))
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
/// head of the plain CG LAT, and their masks.
fn attention_maps(model: &CgLat, problems: &[KrrProblem], out: &ResultDir) -> Result<(), BoxError> {
    let dev = model.lat.device();
    let streams = model
        .lat
        .forward_with_states(&model.embed(&problems[..1], &dev)?)?;
    let last = model.lat.layers.len() - 1;
    let heads = [
        ("kernel mat-vec", 1, 0),
        ("ridge", 1, 1),
        ("scalar reduction Σrz", 1, 2),
        ("feature reduction Φᵀz", 1, 6),
        ("readout", last, 0),
    ];
    let maps = Attention {
        model: "plain CG LAT",
        lat: &model.lat,
        streams: &streams,
        layout: model.spec.layout,
    };
    maps.write(&heads, out)
}

/// One model's attention patterns on one prompt, drawn next to their masks.
pub(crate) struct Attention<'a> {
    /// The model's name in titles and file names.
    pub model: &'a str,
    pub lat: &'a Lat,
    /// The residual streams of the prompt (`forward_with_states`), batch index 0 drawn.
    pub streams: &'a [candle_core::Tensor],
    pub layout: TokenLayout,
}

impl Attention<'_> {
    /// Writes `fig16_attention_<model>_<head>_{pattern,mask}` for each `(name, layer, head)`.
    pub(crate) fn write(
        &self,
        heads: &[(&str, usize, usize)],
        out: &ResultDir,
    ) -> Result<(), BoxError> {
        let layout = self.layout;
        let names: Vec<String> = (1..=layout.n_support)
            .map(|i| format!("s{i}"))
            .chain(std::iter::once("agg".to_string()))
            .chain((1..=layout.n_query).map(|i| format!("q{i}")))
            .collect();
        for &(what, layer, h) in heads {
            let head = &self.lat.layers[layer].heads[h];
            let pattern = head
                .pattern(&self.streams[layer])?
                .get(0)?
                .to_vec2::<f64>()?;
            let mask = head.mask.to_vec2::<f64>()?;
            let slug = metric_slug(&format!("{} {what}", self.model));
            for (kind, values, units) in [
                ("pattern", pattern, "attention weight"),
                ("mask", mask, "1: reader may read key"),
            ] {
                let map = Heatmap {
                    title: format!("fig16: {}, {what} head (layer {layer}) {kind}", self.model),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The B1 ablation of a small plain CG LAT, measured against `pred`.
    fn b1_against(pred: &Prediction) -> Row {
        let spec = RbfProblemSpec {
            n_support: 8,
            n_query: 2,
            dim: 2,
            features: 12,
            lengthscale: 1.0,
            noise: 0.1,
        };
        let problem = rbf_problem(&mut seeded(3), &spec, 0.1).unwrap();
        let dev = Device::Cpu;
        let model = CgLat::build(
            CgSpec::for_problem(&problem, 4, Preconditioner::None).unwrap(),
            &dev,
        )
        .unwrap();
        let probs = std::slice::from_ref(&problem);
        let intact = run_states(&model, probs, &dev).unwrap().states.remove(0);
        let a = problem.system_matrix();
        let ones = DVector::from_element(8, 1.0);
        let r = Reference::new(a, problem.y.clone(), ones, intact).unwrap();
        let ablated = model.without(CgPart::Block(1), &dev).unwrap();
        let states = run_states(&ablated, probs, &dev).unwrap().states.remove(0);
        let intact_error = r.trace(&r.intact).unwrap().a_norm_error;
        compare(pred, &[measure(&r, &states, pred, &intact_error).unwrap()])
    }

    #[test]
    fn the_check_passes_the_stated_signature_and_fails_any_other() {
        use Invariant::{Conjugacy as C, Orthogonality as O, Recursion as R};
        let right = Prediction::new("B1".into(), Some(&[O, C]), Some(2), &[R], Progress::Slower);
        assert!(b1_against(&right).pass);
        for wrong in [
            Prediction::new("B1".into(), Some(&[O]), Some(2), &[R], Progress::Slower),
            Prediction::new("B1".into(), Some(&[O, C]), Some(1), &[R], Progress::Slower),
            Prediction::new(
                "B1".into(),
                Some(&[O, C]),
                Some(2),
                &[R, C],
                Progress::Slower,
            ),
            Prediction::new(
                "B1".into(),
                Some(&[O, C]),
                Some(2),
                &[R],
                Progress::StallsFrom(0),
            ),
            Prediction::new(
                "B1".into(),
                Some(&[O, C]),
                Some(2),
                &[R],
                Progress::AsIntact,
            ),
        ] {
            assert!(
                !b1_against(&wrong).pass,
                "{:?} {:?}",
                wrong.first,
                wrong.progress
            );
        }
    }
}

//! fig5: width–rank — a CG transformer whose mat-vec heads have width m < p runs KRR on a
//! rank-m sketch; query error vs m next to the bound, on kernels with power-law spectra of
//! several decay rates (3 seeds, 95% CIs), with the spectrum and the effective dimension.

use std::path::Path;

use metarep_core::config::load_config;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::harness::Sweep;
use metarep_eval::plot::{LegendPosition, LinePlot, Series, SeriesStyle};
use metarep_eval::stats::mean_ci;
use metarep_eval::table::{Cell, Table};
use metarep_eval::tasks::linear::RegressionTask;
use metarep_softmax_routes::width_rank::{
    kernel_spectrum, measure, power_law_task, Sketch, SpectrumSummary, WidthRankPoint,
    WidthRankSpec,
};
use serde::{Deserialize, Serialize};

use crate::device::device;
use crate::error::BoxError;
use crate::output::ResultDir;

/// Settings of fig5 (`configs/fig5.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fig5Config {
    seeds: Vec<u64>,
    decays: Vec<f64>,
    widths: Vec<usize>,
    task: WidthRankSpec,
}

/// The width-m model equals reference CG on the sketched system to this, wherever f64 CG is
/// reproducible (fig1's criterion; see `WidthRankPoint::reproducible`).
const MAX_MODEL_VS_CG: f64 = 1e-6;

const SERIES: [(&str, SeriesStyle); 6] = [
    ("error, population sketch (model)", SeriesStyle::Solid),
    ("error, optimal sketch (model)", SeriesStyle::Solid),
    ("bound, population sketch", SeriesStyle::Dashed),
    ("bound, optimal sketch (σ_{m+1})", SeriesStyle::Dashed),
    (
        "bound, optimal sketch (tail Σ_{i>m} σ_i)",
        SeriesStyle::Dashed,
    ),
    ("a-posteriori bound, population sketch", SeriesStyle::Dashed),
];

/// What the sweep points say about the checks.
#[derive(Debug, Default)]
struct Checks {
    bound_ok: bool,
    solver_ok: bool,
    worst_repro: f64,
    worst_all: f64,
    worst_solver: f64,
    points: usize,
    repro_points: usize,
}

impl Checks {
    fn add(&mut self, p: &WidthRankPoint) {
        self.bound_ok &= p.within_bounds();
        self.points += 1;
        self.worst_all = self.worst_all.max(p.model_vs_cg);
        self.worst_solver = self.worst_solver.max(p.solver_dev);
        if p.reproducible {
            self.repro_points += 1;
            self.worst_repro = self.worst_repro.max(p.model_vs_cg);
            self.solver_ok &= p.model_vs_cg <= MAX_MODEL_VS_CG;
        }
    }
}

/// Runs fig5 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig5Config = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let mut checks = Checks {
        bound_ok: true,
        solver_ok: true,
        ..Checks::default()
    };
    let mut spectra = Vec::new();
    for &decay in &cfg.decays {
        let task_for = |seed: u64| -> Result<RegressionTask, BoxError> {
            let mut rng = seeded(derive_seed(seed, &format!("fig5/decay{decay}")));
            Ok(power_law_task(&mut rng, &cfg.task, decay)?)
        };
        error_vs_width(&cfg, decay, &task_for, &mut checks, &mut out)?;
        let all = cfg
            .seeds
            .iter()
            .map(|&s| Ok(kernel_spectrum(&task_for(s)?.x_support)))
            .collect::<Result<Vec<_>, BoxError>>()?;
        spectra.push(SpectrumSummary::new(
            &all,
            cfg.task.lambda,
            cfg.task.features,
        )?);
    }
    spectrum_section(&cfg, &spectra, &mut out)?;
    record(&checks, &mut out);
    out.finish(checks.bound_ok && checks.solver_ok)
}

/// Query error and bounds vs head width at one decay rate (table, plot, metrics).
fn error_vs_width(
    cfg: &Fig5Config,
    decay: f64,
    task_for: &dyn Fn(u64) -> Result<RegressionTask, BoxError>,
    checks: &mut Checks,
    out: &mut ResultDir,
) -> Result<(), BoxError> {
    let lambda = cfg.task.lambda;
    let xs: Vec<f64> = cfg.widths.iter().map(|&m| m as f64).collect();
    let result = Sweep::new(&cfg.seeds, &xs).run(|seed, m| -> Result<_, BoxError> {
        let task = task_for(seed)?;
        let pop = measure(&task, lambda, Sketch::Population, m as usize, &device())?;
        let opt = measure(&task, lambda, Sketch::Optimal, m as usize, &device())?;
        checks.add(&pop);
        checks.add(&opt);
        Ok(vec![
            (SERIES[0].0.to_string(), pop.error),
            (SERIES[1].0.to_string(), opt.error),
            (SERIES[2].0.to_string(), pop.bound),
            (SERIES[3].0.to_string(), opt.bound),
            (SERIES[4].0.to_string(), opt.bound_tail),
            (SERIES[5].0.to_string(), pop.bound_a_posteriori),
            ("sketch error, population".to_string(), pop.sketch_error),
            ("‖E‖₂, population".to_string(), pop.residual_norm),
            ("tr E, population".to_string(), pop.residual_trace),
            ("σ_{m+1}(K)".to_string(), opt.sigma_next),
            ("Σ_{i>m} σ_i(K)".to_string(), opt.tail),
            ("RMS f*".to_string(), pop.f_rms),
        ])
    })?;
    let name = format!("width_rank_decay{decay}");
    out.table(&name, &result.table(0.95)?)?;
    let rows = result.summary(0.95)?;
    let mut plot = LinePlot::new(format!(
        "fig5: width–rank, spectrum decay i^-{decay}: query error vs head width"
    ))
    .x_label("head width m")
    .y_label("RMS |f̂_m − f*| over queries")
    .log_y(true)
    .legend(LegendPosition::LowerLeft)
    .note(format!(
        "mean over seeds {}; shaded: 95% confidence interval of the model's error (bounds: means)",
        cfg.seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for (k, (series, style)) in SERIES.iter().enumerate() {
        let mine: Vec<_> = rows.iter().filter(|r| r.method == *series).collect();
        plot = plot.series(Series {
            name: (*series).to_string(),
            points: mine.iter().map(|r| (r.x, r.mean)).collect(),
            style: *style,
            color: Some(k),
        });
        if *style == SeriesStyle::Solid {
            plot = plot.band(mine.iter().map(|r| (r.x, r.low, r.high)).collect());
        }
    }
    out.plot(&name, &plot)?;
    for (series, tag) in [(SERIES[0].0, "error"), (SERIES[2].0, "bound")] {
        for r in rows.iter().filter(|r| r.method == series) {
            out.metrics
                .set_number(format!("{tag}_population_decay{decay}_m{}", r.x), r.mean);
        }
    }
    Ok(())
}

/// The mean spectrum per decay rate against λ, and the effective dimensions.
fn spectrum_section(
    cfg: &Fig5Config,
    spectra: &[SpectrumSummary],
    out: &mut ResultDir,
) -> Result<(), BoxError> {
    let lambda = cfg.task.lambda;
    let mut plot = LinePlot::new("Spectrum of K = ΦΦᵀ (mean over seeds)")
        .x_label("index i")
        .y_label("σ_i(K)")
        .log_x(true)
        .log_y(true)
        .legend(LegendPosition::LowerLeft);
    let mut eff = Table::new(vec![
        "decay",
        "effective_dim",
        "2·d_λ",
        "eigenvalues ≥ λ",
        "σ_{⌈2d_λ⌉+1} < λ (all seeds)",
    ]);
    let cell = |v: &[f64]| -> Result<Cell, BoxError> {
        Ok(Cell::from(if v.len() >= 2 {
            mean_ci(v, 0.95)?.display(3)
        } else {
            format!("{:.3}", v[0])
        }))
    };
    for (i, (&decay, s)) in cfg.decays.iter().zip(spectra).enumerate() {
        plot = plot.series(Series {
            name: format!("decay {decay}"),
            points: s
                .mean
                .iter()
                .enumerate()
                .map(|(j, &v)| ((j + 1) as f64, v))
                .collect(),
            style: SeriesStyle::Solid,
            color: Some(i),
        });
        let dims = &s.effective_dims;
        eff.push_row(vec![
            Cell::from(decay),
            cell(dims)?,
            cell(&dims.iter().map(|d| 2.0 * d).collect::<Vec<_>>())?,
            cell(&s.above_lambda)?,
            Cell::from(s.tail_below_lambda),
        ])?;
        out.metrics.set_number(
            format!("effective_dim_decay{decay}"),
            dims.iter().sum::<f64>() / dims.len() as f64,
        );
    }
    plot = plot.series(Series {
        name: format!("λ = {lambda}"),
        points: vec![(1.0, lambda), (cfg.task.features as f64, lambda)],
        style: SeriesStyle::Dashed,
        color: Some(7),
    });
    out.plot("spectrum", &plot)?;
    out.table("effective_dimension", &eff)
}

/// The check metrics.
fn record(c: &Checks, out: &mut ResultDir) {
    let m = &mut out.metrics;
    m.set_bool("sketch_error_within_bound", c.bound_ok);
    m.set_number("max_model_vs_cg_reproducible", c.worst_repro);
    m.set_number("max_model_vs_cg_all", c.worst_all);
    m.set_number("max_model_vs_exact_sketched_krr", c.worst_solver);
    m.set_number("reproducible_points", c.repro_points as f64);
    m.set_number("points", c.points as f64);
    println!(
        "   sketched-KRR error within the bound everywhere: {}; width-m LAT vs reference CG: {:.1e} on the {}/{} reproducible points (≤ {MAX_MODEL_VS_CG}), {:.1e} on all; vs exact sketched KRR {:.1e}",
        c.bound_ok, c.worst_repro, c.repro_points, c.points, c.worst_all, c.worst_solver
    );
}

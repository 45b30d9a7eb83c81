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
use metarep_softmax_routes::width_rank::{
    effective_dimension, kernel_spectrum, measure, power_law_task, Sketch, WidthRankSpec,
};
use serde::{Deserialize, Serialize};

use crate::output::ResultDir;
use crate::BoxError;

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

/// Runs fig5 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig5Config = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let lambda = cfg.task.lambda;
    let xs: Vec<f64> = cfg.widths.iter().map(|&m| m as f64).collect();
    let (mut bound_ok, mut solver_ok) = (true, true);
    let (mut worst_repro, mut worst_all, mut worst_solver) = (0.0f64, 0.0f64, 0.0f64);
    let (mut points, mut repro_points) = (0usize, 0usize);
    let mut spectrum_plot = LinePlot::new("Spectrum of K = ΦΦᵀ (mean over seeds)")
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
    for (i, &decay) in cfg.decays.iter().enumerate() {
        let task_for = |seed: u64| -> Result<_, BoxError> {
            Ok(power_law_task(
                &mut seeded(derive_seed(seed, &format!("fig5/decay{decay}"))),
                &cfg.task,
                decay,
            )?)
        };
        let result = Sweep::new(&cfg.seeds, &xs).run(|seed, m| -> Result<_, BoxError> {
            let task = task_for(seed)?;
            let pop = measure(&task, lambda, Sketch::Population, m as usize)?;
            let opt = measure(&task, lambda, Sketch::Optimal, m as usize)?;
            for p in [&pop, &opt] {
                bound_ok &= p.sketch_error <= p.bound_a_posteriori + 1e-12 * p.f_rms
                    && p.bound_a_posteriori <= p.bound * (1.0 + 1e-12) + 1e-15;
                points += 1;
                worst_all = worst_all.max(p.model_vs_cg);
                worst_solver = worst_solver.max(p.solver_dev);
                if p.reproducible {
                    repro_points += 1;
                    worst_repro = worst_repro.max(p.model_vs_cg);
                    solver_ok &= p.model_vs_cg <= MAX_MODEL_VS_CG;
                }
            }
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
            "Width–rank, spectrum decay i^-{decay}: query error vs head width (mean of {} seeds)",
            cfg.seeds.len()
        ))
        .x_label("head width m")
        .y_label("RMS |f̂_m − f*| over queries")
        .log_y(true)
        .legend(LegendPosition::LowerLeft);
        for (k, (series, style)) in SERIES.iter().enumerate() {
            plot = plot.series(Series {
                name: (*series).to_string(),
                points: rows
                    .iter()
                    .filter(|r| r.method == *series)
                    .map(|r| (r.x, r.mean))
                    .collect(),
                style: *style,
                color: Some(k),
            });
        }
        out.plot(&name, &plot)?;

        // The spectrum and the effective dimension.
        let spectra: Vec<Vec<f64>> = cfg
            .seeds
            .iter()
            .map(|&s| Ok(kernel_spectrum(&task_for(s)?.x_support)))
            .collect::<Result<_, BoxError>>()?;
        let len = spectra[0].len().min(cfg.task.features);
        let mean: Vec<(f64, f64)> = (0..len)
            .map(|j| {
                let v = spectra.iter().map(|s| s[j]).sum::<f64>() / spectra.len() as f64;
                ((j + 1) as f64, v)
            })
            .collect();
        spectrum_plot = spectrum_plot.series(Series {
            name: format!("decay {decay}"),
            points: mean,
            style: SeriesStyle::Solid,
            color: Some(i),
        });
        let dims: Vec<f64> = spectra
            .iter()
            .map(|s| effective_dimension(s, lambda))
            .collect();
        let above: Vec<f64> = spectra
            .iter()
            .map(|s| s.iter().filter(|&&v| v >= lambda).count() as f64)
            .collect();
        let below = spectra.iter().zip(&dims).all(|(s, d)| {
            let m = (2.0 * d).ceil() as usize;
            s.get(m).is_none_or(|&v| v < lambda)
        });
        let cell = |v: &[f64]| -> Result<Cell, BoxError> {
            Ok(Cell::from(if v.len() >= 2 {
                mean_ci(v, 0.95)?.display(3)
            } else {
                format!("{:.3}", v[0])
            }))
        };
        eff.push_row(vec![
            Cell::from(decay),
            cell(&dims)?,
            cell(&dims.iter().map(|d| 2.0 * d).collect::<Vec<_>>())?,
            cell(&above)?,
            Cell::from(below),
        ])?;
        out.metrics.set_number(
            format!("effective_dim_decay{decay}"),
            dims.iter().sum::<f64>() / dims.len() as f64,
        );
        for r in rows
            .iter()
            .filter(|r| r.method == SERIES[0].0 || r.method == SERIES[2].0)
        {
            let tag = if r.method == SERIES[0].0 {
                "error"
            } else {
                "bound"
            };
            out.metrics
                .set_number(format!("{tag}_population_decay{decay}_m{}", r.x), r.mean);
        }
    }
    spectrum_plot = spectrum_plot.series(Series {
        name: format!("λ = {lambda}"),
        points: vec![(1.0, lambda), (cfg.task.features as f64, lambda)],
        style: SeriesStyle::Dashed,
        color: Some(7),
    });
    out.plot("spectrum", &spectrum_plot)?;
    out.table("effective_dimension", &eff)?;
    let m = &mut out.metrics;
    m.set_bool("sketch_error_within_bound", bound_ok);
    m.set_number("max_model_vs_cg_reproducible", worst_repro);
    m.set_number("max_model_vs_cg_all", worst_all);
    m.set_number("max_model_vs_exact_sketched_krr", worst_solver);
    m.set_number("reproducible_points", repro_points as f64);
    m.set_number("points", points as f64);
    println!(
        "   sketched-KRR error within the bound everywhere: {bound_ok}; width-m LAT vs reference CG: {worst_repro:.1e} on the {repro_points}/{points} reproducible points (≤ {MAX_MODEL_VS_CG}), {worst_all:.1e} on all; vs exact sketched KRR {worst_solver:.1e}"
    );
    out.finish(bound_ok && solver_ok)
}

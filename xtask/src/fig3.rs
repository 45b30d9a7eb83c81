//! fig3: Route A — the softmax CG transformer on exponential-kernel KRR: accuracy against the
//! oracle, RMSE vs depth, the realised kernel's error ε as a function of τ and ‖U‖, attention
//! rows against kernel smoothers, and the silent-failure grid (high dimension, peaked kernel).

use std::path::Path;

use candle_core::DType;
use metarep_core::config::load_config;
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::DTypePolicy;
use metarep_eval::baselines::cg::condition_number;
use metarep_eval::harness::Sweep;
use metarep_eval::plot::{LegendPosition, LinePlot, Series, SeriesStyle};
use metarep_eval::table::{Cell, Table};
use metarep_softmax_routes::construct::Preconditioning;
use metarep_softmax_routes::kernel::{sample_exp_task, ExpTask, ExpTaskSpec};
use metarep_softmax_routes::route_a::{
    evaluate, kernel_error, row_sum_preconditioned_kappa, silent_failure_cell, smoother_alignment,
    RouteAModel,
};
use serde::{Deserialize, Serialize};

use crate::device::device;
use crate::error::BoxError;
use crate::output::ResultDir;

/// ε as a function of τ and ‖U‖.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KernelSweep {
    taus: Vec<f64>,
    u_norms: Vec<f64>,
}

/// The silent-failure grid.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SilentGrid {
    dims: Vec<usize>,
    u_norms: Vec<f64>,
    steps: usize,
    /// RMSE ratio within this of 1 "looks acceptable".
    rmse_tolerance: f64,
    /// Rank correlation below this has "collapsed".
    spearman_floor: f64,
}

/// Settings of fig3 (`configs/fig3.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fig3Config {
    seeds: Vec<u64>,
    dtype: DTypePolicy,
    task: ExpTaskSpec,
    model: RouteAModel,
    depths: Vec<usize>,
    kernel_sweep: KernelSweep,
    silent: SilentGrid,
}

/// RMSE within 5% of the oracle.
const MAX_RMSE_RATIO: f64 = 1.05;
/// Attention rows align with the Nadaraya–Watson weights.
const MIN_NW_CORRELATION: f64 = 0.99;

fn task(spec: &ExpTaskSpec, seed: u64) -> Result<ExpTask, BoxError> {
    Ok(sample_exp_task(
        &mut seeded(derive_seed(seed, "fig3/task")),
        spec,
    )?)
}

/// Runs fig3 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig3Config = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let (worst_ratio, min_nw) = accuracy(&cfg, &mut out)?;
    rmse_by_depth(&cfg, dir)?;
    let bound_holds = kernel_error_sweep(&cfg, &mut out)?;
    let silent_cells = silent_failure(&cfg, &mut out)?;
    println!(
        "   worst RMSE ratio {worst_ratio:.4} (≤ {MAX_RMSE_RATIO}); ε within the rounding bound: {bound_holds}; silent-failure cells: {silent_cells}"
    );
    out.finish(worst_ratio <= MAX_RMSE_RATIO && bound_holds && min_nw >= MIN_NW_CORRELATION)
}

/// Accuracy against the oracle and attention alignment, per seed; returns the worst RMSE
/// ratio and the lowest attention-vs-Nadaraya–Watson correlation.
fn accuracy(cfg: &Fig3Config, out: &mut ResultDir) -> Result<(f64, f64), BoxError> {
    let (dtype, dev) = (cfg.dtype.compute, device());
    let mut acc = Table::new(vec![
        "seed",
        "rmse_model",
        "rmse_oracle",
        "rmse_nadaraya_watson",
        "rmse_ratio",
        "spearman_vs_oracle",
        "rel_dev_vs_oracle",
        "rel_dev_vs_oracle_f64",
        "attention_vs_nw_corr",
        "attention_vs_krr_corr",
        "kappa",
        "kappa_row_sum_preconditioned",
    ]);
    let (mut worst_ratio, mut min_nw, mut krr_corr) = (0.0f64, 1.0f64, Vec::new());
    for &seed in &cfg.seeds {
        let t = task(&cfg.task, seed)?;
        let e = evaluate(&t, &cfg.model, dtype, &dev)?;
        let e64 = evaluate(&t, &cfg.model, DType::F64, &dev)?;
        let al = smoother_alignment(&cfg.model.build(&t, &dev)?, &t, dtype)?;
        acc.push_row(vec![
            Cell::from(seed as i64),
            Cell::from(e.rmse_model),
            Cell::from(e.rmse_oracle),
            Cell::from(e.rmse_nadaraya_watson),
            Cell::from(e.rmse_ratio),
            Cell::from(e.spearman_vs_oracle),
            Cell::from(e.rel_dev_vs_oracle),
            Cell::from(e64.rel_dev_vs_oracle),
            Cell::from(al.nadaraya_watson),
            Cell::from(al.krr),
            Cell::from(condition_number(&t.system_matrix()?)),
            Cell::from(row_sum_preconditioned_kappa(&t)?),
        ])?;
        worst_ratio = worst_ratio.max(e.rmse_ratio);
        min_nw = min_nw.min(al.nadaraya_watson);
        krr_corr.push(al.krr);
        println!(
            "   seed {seed}: RMSE {:.4} vs oracle {:.4} (ratio {:.4}), NW {:.4}; attention~NW {:.6}, ~KRR smoother {:.3}",
            e.rmse_model, e.rmse_oracle, e.rmse_ratio, e.rmse_nadaraya_watson, al.nadaraya_watson, al.krr
        );
    }
    out.table("accuracy", &acc)?;
    let m = &mut out.metrics;
    m.set_number("worst_rmse_ratio", worst_ratio);
    m.set_number("min_attention_vs_nw_corr", min_nw);
    m.set_number(
        "mean_attention_vs_krr_corr",
        krr_corr.iter().sum::<f64>() / krr_corr.len().max(1) as f64,
    );

    Ok((worst_ratio, min_nw))
}

/// RMSE ratio vs depth (f32 and f64 model, row-sum PCG, Nadaraya–Watson for reference).
fn rmse_by_depth(cfg: &Fig3Config, dir: &Path) -> Result<(), BoxError> {
    let (dtype, dev) = (cfg.dtype.compute, device());
    let depths: Vec<f64> = cfg.depths.iter().map(|&t| t as f64).collect();
    let by_depth = Sweep::new(&cfg.seeds, &depths).run(|seed, t| -> Result<_, BoxError> {
        let tk = task(&cfg.task, seed)?;
        let model = RouteAModel {
            steps: t as usize,
            ..cfg.model
        };
        let e = evaluate(&tk, &model, dtype, &dev)?;
        let e64 = evaluate(&tk, &model, DType::F64, &dev)?;
        let pre = evaluate(
            &tk,
            &RouteAModel {
                preconditioner: Preconditioning::RowSum,
                ..model
            },
            dtype,
            &dev,
        )?;
        Ok(vec![
            (format!("model ({})", cfg.dtype.name()), e.rmse_ratio),
            (
                format!("model, row-sum PCG ({})", cfg.dtype.name()),
                pre.rmse_ratio,
            ),
            ("model (f64)".to_string(), e64.rmse_ratio),
            (
                "Nadaraya–Watson".to_string(),
                e.rmse_nadaraya_watson / e.rmse_oracle,
            ),
        ])
    })?;
    by_depth.write(
        dir,
        "rmse_vs_depth",
        "fig3: Route A test RMSE relative to the KRR oracle vs CG steps",
        ("CG steps t", "RMSE / oracle RMSE"),
        true,
    )?;

    Ok(())
}

/// ε = ‖K̃ − K_exp‖₂ (run dtype) vs τ for each ‖U‖, with the rounding bound; returns whether
/// the bound holds everywhere.
fn kernel_error_sweep(cfg: &Fig3Config, out: &mut ResultDir) -> Result<bool, BoxError> {
    let (dtype, dev) = (cfg.dtype.compute, device());
    let mut eps_table = Table::new(vec![
        "seed",
        "u_norm",
        "tau",
        "max_logit",
        "eps",
        "kernel_norm",
        "eps_rel",
        "bound_rel",
    ]);
    let mut eps_plot = LinePlot::new(format!(
        "Route A: realised kernel error ({}) vs temperature",
        cfg.dtype.name()
    ))
    .x_label("τ")
    .y_label("‖K̃ − K_exp‖₂ / ‖K_exp‖₂")
    .log_x(true)
    .log_y(true)
    .legend(LegendPosition::UpperRight);
    let mut bound_holds = true;
    for (i, &u_norm) in cfg.kernel_sweep.u_norms.iter().enumerate() {
        let (mut measured, mut bound) = (Vec::new(), Vec::new());
        for &tau in &cfg.kernel_sweep.taus {
            let spec = ExpTaskSpec {
                tau,
                u_norm,
                ..cfg.task
            };
            let (mut em, mut eb) = (0.0, 0.0);
            for &seed in &cfg.seeds {
                let t = task(&spec, seed)?;
                let model = RouteAModel {
                    steps: 1,
                    ..cfg.model
                }
                .build(&t, &dev)?;
                let k = kernel_error(&model, &t, dtype)?;
                bound_holds &= k.op_error <= k.bound;
                eps_table.push_row(vec![
                    Cell::from(seed as i64),
                    Cell::from(u_norm),
                    Cell::from(tau),
                    Cell::from(k.max_logit),
                    Cell::from(k.op_error),
                    Cell::from(k.kernel_norm),
                    Cell::from(k.op_error / k.kernel_norm),
                    Cell::from(k.bound / k.kernel_norm),
                ])?;
                em += k.op_error / k.kernel_norm / cfg.seeds.len() as f64;
                eb += k.bound / k.kernel_norm / cfg.seeds.len() as f64;
            }
            measured.push((tau, em));
            bound.push((tau, eb));
            out.metrics
                .set_number(format!("eps_rel_u{u_norm}_tau{tau}"), em);
        }
        eps_plot = eps_plot
            .series(Series {
                name: format!("measured, ‖U‖ = {u_norm}"),
                points: measured,
                style: SeriesStyle::Solid,
                color: Some(i),
            })
            .series(Series {
                name: format!("bound, ‖U‖ = {u_norm}"),
                points: bound,
                style: SeriesStyle::Dashed,
                color: Some(i),
            });
    }
    out.table("kernel_error", &eps_table)?;
    out.plot("kernel_error", &eps_plot)?;
    out.metrics
        .set_bool("kernel_error_within_bound", bound_holds);

    Ok(bound_holds)
}

/// Silent failure: RMSE ratio and rank correlation with the oracle over d × ‖U‖; returns the
/// number of silently failing cells.
fn silent_failure(cfg: &Fig3Config, out: &mut ResultDir) -> Result<usize, BoxError> {
    let g = &cfg.silent;
    let dev = device();
    let mut silent = Table::new(vec![
        "dim",
        "u_norm",
        "seed",
        "max_logit",
        "kappa",
        "rmse_oracle",
        "rmse_ratio",
        "spearman_vs_oracle",
        "silent_failure",
    ]);
    let (mut ratio_plot, mut rank_plot) = silent_plots();
    let (mut silent_cells, mut out_of_range) = (0usize, 0usize);
    for (i, &u_norm) in g.u_norms.iter().enumerate() {
        let (mut ratios, mut ranks) = (Vec::new(), Vec::new());
        for &d in &g.dims {
            let spec = ExpTaskSpec {
                dim: d,
                width: d,
                u_norm,
                ..cfg.task
            };
            let model = RouteAModel {
                steps: g.steps,
                ..cfg.model
            };
            let (mut r_sum, mut s_sum) = (0.0, 0.0);
            for &seed in &cfg.seeds {
                let t = task(&spec, seed)?;
                let c = silent_failure_cell(
                    &t,
                    &model,
                    cfg.dtype.compute,
                    &dev,
                    g.rmse_tolerance,
                    g.spearman_floor,
                )?;
                silent_cells += usize::from(c.silent_failure);
                out_of_range += usize::from(c.out_of_range);
                silent.push_row(vec![
                    Cell::from(d as i64),
                    Cell::from(u_norm),
                    Cell::from(seed as i64),
                    Cell::from(c.max_logit),
                    Cell::from(c.kappa),
                    Cell::from(c.rmse_oracle),
                    Cell::from(c.rmse_ratio),
                    Cell::from(c.spearman_vs_oracle),
                    Cell::from(c.silent_failure),
                ])?;
                r_sum += c.rmse_ratio / cfg.seeds.len() as f64;
                s_sum += c.spearman_vs_oracle / cfg.seeds.len() as f64;
            }
            ratios.push((d as f64, r_sum));
            ranks.push((d as f64, s_sum));
        }
        let series = |points| Series {
            name: format!("‖U‖ = {u_norm}"),
            points,
            style: SeriesStyle::Solid,
            color: Some(i),
        };
        ratio_plot = ratio_plot.series(series(ratios));
        rank_plot = rank_plot.series(series(ranks));
    }
    out.table("silent_failure", &silent)?;
    out.plot("silent_failure_rmse", &ratio_plot)?;
    out.plot("silent_failure_rank", &rank_plot)?;
    out.metrics
        .set_number("silent_failure_cells", silent_cells as f64);
    out.metrics
        .set_number("silent_grid_out_of_range", out_of_range as f64);
    Ok(silent_cells)
}

/// Empty plots of the silent-failure grid: RMSE ratio and rank correlation vs dimension.
fn silent_plots() -> (LinePlot, LinePlot) {
    let ratio_plot = LinePlot::new("Silent failure: RMSE / oracle RMSE")
        .x_label("input dimension d")
        .y_label("RMSE ratio")
        .log_x(true)
        .log_y(true);
    let rank_plot = LinePlot::new("Silent failure: rank correlation with the oracle")
        .x_label("input dimension d")
        .y_label("Spearman ρ(model, oracle)")
        .log_x(true)
        .legend(LegendPosition::LowerLeft);
    (ratio_plot, rank_plot)
}

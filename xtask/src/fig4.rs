//! fig4: Route B — a softmax head at logit scale ε_s minus a uniform-mean head, rescaled by
//! n/ε_s, as the dot-product mat-vec: per-mat-vec operator error vs ε_s (with the a-priori
//! bound) on centred toy problems, and the error it accumulates over CG steps (O(εt)).

use std::path::Path;

use candle_core::DType;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::{LegendPosition, LinePlot, Series, SeriesStyle};
use metarep_eval::table::{Cell, Table};
use metarep_softmax_routes::route_b::{
    analyse_cumulative, centred_problem, constant_spread, operator_error, CentredSpec,
    CumulativeAnalysis, CumulativeRow, LineFit,
};
use serde::{Deserialize, Serialize};

use crate::checks::{self, CheckedConfig};
use crate::device::device;
use crate::error::BoxError;
use crate::output::ResultDir;

/// The cumulative-error runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CumulativeConfig {
    problem: CentredSpec,
    steps: usize,
    eps: Vec<f64>,
    /// The growth phase used for the slope fit ends when exact CG's error first drops below this.
    converged: f64,
}

/// Settings of fig4 (`configs/fig4.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fig4Config {
    seeds: Vec<u64>,
    /// Logit scale held to the per-mat-vec target.
    eps: f64,
    /// Logit scales of the operator-error curve.
    eps_grid: Vec<f64>,
    /// Toy problem sizes `[n, p]`.
    sizes: Vec<[usize; 2]>,
    n_query: usize,
    lambda: f64,
    noise: f64,
    cumulative: CumulativeConfig,
}

impl CheckedConfig for Fig4Config {
    fn check(&self) -> Result<(), BoxError> {
        checks::each("seeds", &self.seeds, |_, _| Ok(()))?;
        checks::positive("eps", self.eps)?;
        checks::each("eps_grid", &self.eps_grid, checks::positive)?;
        checks::each("sizes", &self.sizes, |key, [n, p]| {
            checks::at_least_one(&format!("{key}[0]"), n)?;
            checks::at_least_one(&format!("{key}[1]"), p)
        })?;
        checks::at_least_one("n_query", self.n_query)?;
        checks::non_negative("lambda", self.lambda)?;
        checks::non_negative("noise", self.noise)?;
        let c = &self.cumulative;
        checks::at_least_one("cumulative.steps", c.steps)?;
        checks::each("cumulative.eps", &c.eps, checks::positive)?;
        checks::positive("cumulative.converged", c.converged)?;
        let p = &c.problem;
        checks::at_least_one("cumulative.problem.n_support", p.n_support)?;
        checks::at_least_one("cumulative.problem.n_query", p.n_query)?;
        checks::at_least_one("cumulative.problem.features", p.features)?;
        checks::non_negative("cumulative.problem.lambda", p.lambda)?;
        checks::non_negative("cumulative.problem.noise", p.noise)
    }
}

/// Per-mat-vec relative operator error target.
const MAX_OPERATOR_ERROR: f64 = 1e-2;
/// `sup_t dev_t/(ε t)` may differ by at most this factor across the ε_s whose per-mat-vec error
/// is within [`MAX_OPERATOR_ERROR`] (the O(εt) check; the spread over every ε_s is reported too).
const MAX_CONSTANT_SPREAD: f64 = 2.0;

/// Runs fig4 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig4Config = checks::load_checked(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let (worst_at_eps, bound_holds) = operator_errors(&cfg, &mut out)?;
    let (gap_ok, spread_ok) = cumulative_errors(&cfg, &mut out)?;
    out.finish(worst_at_eps <= MAX_OPERATOR_ERROR && bound_holds && gap_ok && spread_ok)
}

/// Operator error vs ε_s on every toy problem, f64 and f32, with the bound; returns the worst
/// error at the configured ε_s and whether the bound holds (f64).
fn operator_errors(cfg: &Fig4Config, out: &mut ResultDir) -> Result<(f64, bool), BoxError> {
    let mut op = Table::new(vec![
        "seed",
        "n",
        "p",
        "eps_s",
        "dtype",
        "rel_error",
        "bound",
    ]);
    let mut grid = cfg.eps_grid.clone();
    if !grid.contains(&cfg.eps) {
        grid.push(cfg.eps);
    }
    grid.sort_by(f64::total_cmp);
    let (mut worst_at_eps, mut bound_holds) = (0.0f64, true);
    let mut worst = vec![[0.0f64; 3]; grid.len()]; // f64, f32, bound
    for &seed in &cfg.seeds {
        for &[n, p] in &cfg.sizes {
            let spec = CentredSpec {
                n_support: n,
                n_query: cfg.n_query,
                features: p,
                lambda: cfg.lambda,
                noise: cfg.noise,
            };
            let mut rng = seeded(derive_seed(seed, &format!("fig4/{n}x{p}")));
            let prob = centred_problem(&mut rng, &spec)?;
            for (g, &eps) in grid.iter().enumerate() {
                for (k, (dtype, name)) in [(DType::F64, "f64"), (DType::F32, "f32")]
                    .into_iter()
                    .enumerate()
                {
                    let e = operator_error(&prob, eps, dtype, &device())?;
                    op.push_row(vec![
                        Cell::from(seed as i64),
                        Cell::from(n as i64),
                        Cell::from(p as i64),
                        Cell::from(eps),
                        Cell::from(name),
                        Cell::from(e.measured),
                        Cell::from(e.bound),
                    ])?;
                    worst[g][k] = worst[g][k].max(e.measured);
                    worst[g][2] = worst[g][2].max(e.bound);
                    if eps == cfg.eps {
                        worst_at_eps = worst_at_eps.max(e.measured);
                    }
                    if dtype == DType::F64 {
                        bound_holds &= e.measured <= e.bound;
                    }
                }
            }
        }
    }
    out.table("operator_error", &op)?;
    out.plot("operator_error", &operator_plot(&grid, &worst))?;
    out.metrics
        .set_number("worst_operator_error_at_eps", worst_at_eps);
    out.metrics.set_bool("operator_bound_holds", bound_holds);
    println!(
        "   worst per-mat-vec error at ε_s = {}: {worst_at_eps:.2e} (≤ {MAX_OPERATOR_ERROR}); bound holds: {bound_holds}",
        cfg.eps
    );
    Ok((worst_at_eps, bound_holds))
}

/// The worst operator error over problems per ε_s (f64, f32) with the bound and the target.
fn operator_plot(grid: &[f64], worst: &[[f64; 3]]) -> LinePlot {
    let series = |name: &str, k: usize, style, color| Series {
        name: name.into(),
        points: grid.iter().zip(worst).map(|(&e, w)| (e, w[k])).collect(),
        style,
        color: Some(color),
    };
    LinePlot::new("Route B: per-mat-vec operator error (worst over toy problems)")
        .x_label("logit scale ε_s")
        .y_label("‖Ŝ − ΦΦᵀ‖₂ / ‖ΦΦᵀ‖₂")
        .log_x(true)
        .log_y(true)
        .legend(LegendPosition::LowerRight)
        .series(series("f64", 0, SeriesStyle::Solid, 0))
        .series(series("f32", 1, SeriesStyle::Solid, 1))
        .series(series("bound (Prop. 1)", 2, SeriesStyle::Dashed, 2))
        .series(Series {
            name: "target 1e-2".into(),
            points: vec![
                (grid[0], MAX_OPERATOR_ERROR),
                (grid[grid.len() - 1], MAX_OPERATOR_ERROR),
            ],
            style: SeriesStyle::Dashed,
            color: Some(7),
        })
}

/// Error over CG steps for every seed and ε_s: the gap identity and bound, the `O(εt)`
/// constant's spread across ε_s and the growth slopes; returns (gap check, spread check).
fn cumulative_errors(cfg: &Fig4Config, out: &mut ResultDir) -> Result<(bool, bool), BoxError> {
    let c = &cfg.cumulative;
    let mut cum = Table::new(vec![
        "seed",
        "eps_s",
        "eps_rel",
        "t",
        "dev_vs_cg",
        "error",
        "cg_error",
        "cg_bound",
        "gap",
        "gap_identity",
        "gap_bound",
    ]);
    let (mut gap_ok, mut spread_ok) = (true, true);
    let (mut worst_spread, mut worst_spread_all) = (1.0f64, 1.0f64);
    let mut slopes = vec![Vec::new(); c.eps.len()];
    let mut first_seed = Vec::new();
    for &seed in &cfg.seeds {
        let mut rng = seeded(derive_seed(seed, "fig4/cumulative"));
        let prob = centred_problem(&mut rng, &c.problem)?;
        let runs = c
            .eps
            .iter()
            .map(|&eps| {
                analyse_cumulative(&prob, eps, c.steps, c.converged, &device())
                    .map_err(BoxError::from)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, (&eps, run)) in c.eps.iter().zip(&runs).enumerate() {
            gap_ok &= run.gap_holds;
            add_cumulative_rows(&mut cum, seed, eps, run)?;
            slopes[i].extend(run.growth);
            let m = &mut out.metrics;
            m.set_number(format!("eps_rel_seed{seed}_eps{eps:e}"), run.eps_rel);
            let last = run.rows.last().map_or(f64::NAN, |r| r.error);
            m.set_number(format!("final_error_seed{seed}_eps{eps:e}"), last);
            m.set_number(
                format!("sup_dev_over_eps_t_seed{seed}_eps{eps:e}"),
                run.sup_constant,
            );
        }
        let spread = constant_spread(&runs, |r| r.eps_rel <= MAX_OPERATOR_ERROR);
        worst_spread = worst_spread.max(spread);
        worst_spread_all = worst_spread_all.max(constant_spread(&runs, |_| true));
        spread_ok &= spread <= MAX_CONSTANT_SPREAD;
        if first_seed.is_empty() {
            first_seed = runs;
        }
    }
    growth_slopes(&c.eps, &slopes, out);
    out.table("cumulative", &cum)?;
    let (collapse, errors) = cumulative_plots(&c.eps, &first_seed);
    out.plot("cumulative_collapse", &collapse)?;
    out.plot("cumulative_error", &errors)?;
    let m = &mut out.metrics;
    m.set_bool("gap_identity_and_bound_hold", gap_ok);
    m.set_number("sup_dev_over_eps_t_spread", worst_spread);
    m.set_number("sup_dev_over_eps_t_spread_all_eps", worst_spread_all);
    println!(
        "   gap identity/bound: {gap_ok}; sup dev/(εt) spread across ε_s with ε ≤ 1e-2: {worst_spread:.2} (≤ {MAX_CONSTANT_SPREAD}), across all ε_s: {worst_spread_all:.2}"
    );
    Ok((gap_ok, spread_ok))
}

/// One table row per step of `run`.
fn add_cumulative_rows(
    cum: &mut Table,
    seed: u64,
    eps: f64,
    run: &CumulativeAnalysis,
) -> Result<(), BoxError> {
    for r in &run.rows {
        cum.push_row(vec![
            Cell::from(seed as i64),
            Cell::from(eps),
            Cell::from(run.eps_rel),
            Cell::from(r.t as i64),
            Cell::from(r.dev_vs_cg),
            Cell::from(r.error),
            Cell::from(r.cg_error),
            Cell::from(r.cg_bound),
            Cell::from(r.gap),
            Cell::from(r.gap_identity),
            Cell::from(r.gap_bound),
        ])?;
    }
    Ok(())
}

/// Mean growth slope and R² per ε_s over the seeds that had a growth phase.
fn growth_slopes(eps: &[f64], slopes: &[Vec<LineFit>], out: &mut ResultDir) {
    for (&eps, fits) in eps.iter().zip(slopes) {
        if fits.is_empty() {
            continue;
        }
        let k = fits.len() as f64;
        let slope = fits.iter().map(|f| f.slope).sum::<f64>() / k;
        let r2 = fits.iter().map(|f| f.r2).sum::<f64>() / k;
        out.metrics
            .set_number(format!("growth_slope_per_eps_eps{eps:e}"), slope);
        out.metrics.set_number(format!("growth_r2_eps{eps:e}"), r2);
        println!("   ε_s = {eps:e}: deviation from exact CG grows {slope:.3}·ε per step while CG converges (R² {r2:.3})");
    }
}

/// The first seed's deviation per unit error and error to the solution, per ε_s.
fn cumulative_plots(eps: &[f64], runs: &[CumulativeAnalysis]) -> (LinePlot, LinePlot) {
    let mut collapse = LinePlot::new("Route B: deviation from exact CG per unit operator error")
        .x_label("CG steps t")
        .y_label("‖α_t − α_t^CG‖_A / (‖α*‖_A · ε)")
        .legend(LegendPosition::LowerRight);
    let mut errors = LinePlot::new("Route B: error to the KRR solution")
        .x_label("CG steps t")
        .y_label("‖α_t − α*‖_A / ‖α*‖_A")
        .log_y(true)
        .legend(LegendPosition::LowerLeft);
    let curve = |rows: &[CumulativeRow], f: fn(&CumulativeRow) -> f64| {
        rows.iter().map(|r| (r.t as f64, f(r))).collect()
    };
    for (i, (&eps, run)) in eps.iter().zip(runs).enumerate() {
        collapse = collapse.series(Series {
            name: format!("ε_s = {eps:e} (ε = {:.1e})", run.eps_rel),
            points: run.per_eps.clone(),
            style: SeriesStyle::Solid,
            color: Some(i),
        });
        errors = errors.series(Series {
            name: format!("Route B, ε_s = {eps:e}"),
            points: curve(&run.rows, |r| r.error),
            style: SeriesStyle::Solid,
            color: Some(i),
        });
        if i == 0 {
            errors = errors
                .series(Series {
                    name: "exact CG".into(),
                    points: curve(&run.rows, |r| r.cg_error),
                    style: SeriesStyle::Markers,
                    color: Some(7),
                })
                .series(Series {
                    name: "CG bound".into(),
                    points: curve(&run.rows, |r| r.cg_bound),
                    style: SeriesStyle::Dashed,
                    color: Some(7),
                });
        }
    }
    (collapse, errors)
}

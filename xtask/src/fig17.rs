//! fig17: trained LATs and a softmax variant vs GLM baselines (GD and IRLS on the NLL, the MLE,
//! the true-w oracle) on in-context logistic and Poisson regression: held-out NLL vs depth,
//! 3 seeds, and whether one trained layer is one GD step on the GLM loss.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;

use metarep_core::config::load_config;
use metarep_core::rng::derive_seed;
use metarep_core::train::RunReport;
use metarep_eval::baselines::glm::{tuned_glm_gd, GlmFit, GlmMle, GlmScore, Irls, TrueWeights};
use metarep_eval::format::fmt_sig;
use metarep_eval::harness::{Measurement, Sweep, SweepResult};
use metarep_eval::plot::LinePlot;
use metarep_eval::stats::mean_ci;
use metarep_eval::tasks::glm::{FeatureMap, GlmFamily, GlmProblem};
use metarep_lat_cg::glm::{lat_score, one_layer_directions, GlmIclSetting};
use metarep_lat_cg::icl::lat_predictions;
use metarep_lat_cg::train::{IclAttention, IclLatConfig, IclSetting, IclTrainConfig, TrainableLat};
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::fig6::SoftmaxConfig;
use crate::output::{metric_key, ResultDir};

/// Check 1 and 2: the trained one-layer LAT's NLL within this fraction of one tuned GD step's
/// excess NLL over the oracle (two-sided for logistic, one-sided for Poisson).
const GD_MATCH: f64 = 0.10;
/// Check 3: the least cosine between the one-layer LAT's weights and the GD-from-0 span.
const SPAN_COSINE: f64 = 0.99;
/// The MLE's gradient tolerance `‖∇‖∞`.
const MLE_TOLERANCE: f64 = 1e-9;
/// Tasks the one-layer direction diagnostics use (the first of the held-out set).
const DIRECTION_TASKS: usize = 2000;

/// Settings of fig17 (`configs/fig17.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fig17Config {
    seeds: Vec<u64>,
    layers: Vec<usize>,
    families: Vec<GlmFamily>,
    /// Input dimension `d` (features `[x, 1]`).
    dim: usize,
    n_support: usize,
    held_out: usize,
    tuning_tasks: usize,
    /// Ridge `λ` of IRLS and the MLE.
    ridge: f64,
    train: IclTrainConfig,
    softmax: SoftmaxConfig,
}

const LAT: &str = "trained LAT";
const GD: &str = "GD on the NLL (tuned η)";
const IRLS: &str = "IRLS (Newton)";
const MLE: &str = "GLM MLE (IRLS converged)";
const ORACLE: &str = "true w (oracle)";

/// One seed's one-layer comparison.
struct OneLayer {
    seed: u64,
    lat: f64,
    gd: f64,
    irls: f64,
    oracle: f64,
    /// The LAT's and one IRLS step's weights against the GD span (means over tasks), and the
    /// LAT's median label centre.
    lat_span: f64,
    irls_span: f64,
    lat_centre: f64,
    /// Per held-out task `d_t = NLL_t(LAT-1) − NLL_t(GD-1)`: the median, and the share of
    /// `Σ_t d_t` from the 1% of tasks with the largest `d_t` (where a heavy tail sits).
    median_task_gap: f64,
    worst_percent_share: f64,
}

impl OneLayer {
    /// `(NLL(LAT-1) − NLL(GD-1)) / (NLL(GD-1) − NLL(oracle))`.
    fn rel_gap(&self) -> f64 {
        (self.lat - self.gd) / (self.gd - self.oracle)
    }
}

/// The held-out and tuning problems of one seed with the depth-free scores.
struct SeedData {
    held: Vec<GlmProblem>,
    tuning: Vec<GlmProblem>,
    mle: GlmScore,
    oracle: GlmScore,
    zero: GlmScore,
}

/// Runs fig17 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig17Config = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let mut pass = !cfg.families.is_empty();
    for &family in &cfg.families {
        pass &= run_family(&cfg, family, &mut out)?;
    }
    out.finish(pass)
}

/// One family's sweep, outputs and checks; whether its checks pass.
fn run_family(cfg: &Fig17Config, family: GlmFamily, out: &mut ResultDir) -> Result<bool, BoxError> {
    let name = family_name(family);
    println!("   {name}:");
    let xs: Vec<f64> = cfg.layers.iter().map(|&l| l as f64).collect();
    let mut seeds: HashMap<u64, SeedData> = HashMap::new();
    let mut one_layer = Vec::new();
    let mut accuracy = Vec::new();
    let mut zero = Vec::new();
    let nll = Sweep::new(&cfg.seeds, &xs).run(|seed, x| {
        if let Entry::Vacant(slot) = seeds.entry(seed) {
            let data = seed_data(cfg, family, seed)?;
            zero.push(data.zero.nll);
            slot.insert(data);
        }
        let data = &seeds[&seed];
        let (rows, one) = compare(cfg, family, data, seed, x as usize)?;
        one_layer.extend(one);
        let mut nll = Vec::new();
        for (method, score) in rows {
            if let Some(a) = score.accuracy {
                accuracy.push(Measurement {
                    method: method.clone(),
                    x,
                    seed,
                    value: a,
                });
            }
            nll.push((method, score.nll));
        }
        Ok::<_, BoxError>(nll)
    })?;
    let stem = format!("fig17_{name}");
    out.table(&stem, &nll.table(0.95)?)?;
    out.plot(&stem, &excess_plot(cfg, family, &nll, &zero)?)?;
    if !accuracy.is_empty() {
        let accuracy = SweepResult {
            seeds: cfg.seeds.clone(),
            measurements: accuracy,
        };
        out.table(&format!("{stem}_accuracy"), &accuracy.table(0.95)?)?;
        for r in accuracy.summary(0.95)? {
            let key = metric_key(&r.method);
            out.metrics
                .set_number(format!("{name}_accuracy_{key}_layers_{}", r.x), r.mean);
        }
    }
    for r in nll.summary(0.95)? {
        let key = metric_key(&r.method);
        out.metrics
            .set_number(format!("{name}_nll_{key}_layers_{}", r.x), r.mean);
    }
    checks(cfg, family, &nll, &one_layer, out)
}

/// `"logistic"` or `"poisson"`.
fn family_name(family: GlmFamily) -> &'static str {
    match family {
        GlmFamily::Logistic => "logistic",
        GlmFamily::Poisson => "poisson",
    }
}

/// The setting of `family` at depth 1 (no depth scaling).
fn setting(cfg: &Fig17Config, family: GlmFamily) -> GlmIclSetting {
    GlmIclSetting {
        family,
        features: FeatureMap::Linear,
        dim: cfg.dim,
        n_support: cfg.n_support,
        train: cfg.train,
    }
}

fn seed_data(cfg: &Fig17Config, family: GlmFamily, seed: u64) -> Result<SeedData, BoxError> {
    let s = setting(cfg, family);
    let name = family_name(family);
    let held = s.problems(
        derive_seed(seed, &format!("fig17/{name}/held-out")),
        cfg.held_out,
    )?;
    let tuning = s.problems(
        derive_seed(seed, &format!("fig17/{name}/tuning")),
        cfg.tuning_tasks,
    )?;
    let mle = GlmMle {
        ridge: cfg.ridge,
        tolerance: MLE_TOLERANCE,
        max_steps: 100,
    };
    Ok(SeedData {
        mle: GlmScore::of_fit(&mle, &held)?,
        oracle: GlmScore::of_fit(&TrueWeights, &held)?,
        zero: GlmScore::of_first_queries(&held, &vec![0.0; held.len()])?,
        held,
        tuning,
    })
}

/// Held-out scores by method, and the one-layer comparison when `layers` is 1.
type Comparison = (Vec<(String, GlmScore)>, Option<OneLayer>);

/// The trained models and every baseline at depth `layers` for `seed`.
fn compare(
    cfg: &Fig17Config,
    family: GlmFamily,
    data: &SeedData,
    seed: u64,
    layers: usize,
) -> Result<Comparison, BoxError> {
    let base = setting(cfg, family);
    let s = base.depth_scaled(layers);
    let trained = train_or_diverge(&s, s.model(layers, 1, IclAttention::Linear), seed)?;
    let lat = match &trained {
        Some((model, _)) => lat_score(model, &data.held)?,
        None => DIVERGED,
    };
    let (gd, _) = tuned_glm_gd(layers, &data.tuning)?;
    let irls = Irls {
        steps: layers,
        ridge: cfg.ridge,
    };
    let gd_score = GlmScore::of_fit(&gd, &data.held)?;
    let irls_score = GlmScore::of_fit(&irls, &data.held)?;
    let mut rows = vec![
        (LAT.to_string(), lat),
        (GD.to_string(), gd_score),
        (IRLS.to_string(), irls_score),
        (MLE.to_string(), data.mle),
        (ORACLE.to_string(), data.oracle),
    ];
    println!(
        "   seed {seed}, {layers} layer(s): LAT {:.4}, GD {:.4} (η {:.3}), IRLS {:.4}, oracle {:.4} ({})",
        lat.nll,
        gd_score.nll,
        gd.step,
        irls_score.nll,
        data.oracle.nll,
        trained_in(&trained)
    );
    if cfg.softmax.layers.contains(&layers) {
        let mut soft = base;
        soft.train.lr = cfg.softmax.lr;
        let shape = soft.model(layers, cfg.softmax.heads, IclAttention::Softmax);
        let soft_trained = train_or_diverge(&soft, shape, seed)?;
        let score = match &soft_trained {
            Some((model, _)) => lat_score(model, &data.held)?,
            None => DIVERGED,
        };
        println!(
            "   seed {seed}, {layers} layer(s): softmax TF {:.4} ({})",
            score.nll,
            trained_in(&soft_trained)
        );
        rows.push((
            format!("trained softmax TF ({} heads)", cfg.softmax.heads),
            score,
        ));
    }
    let one = if layers == 1 {
        let tasks = &data.held[..data.held.len().min(DIRECTION_TASKS)];
        let (lat_span, lat_centre, irls_span) = match &trained {
            Some((model, _)) => {
                let dirs = one_layer_directions(model, tasks, cfg.ridge)?;
                (dirs.model_cosine, dirs.model_centre, dirs.newton_cosine)
            }
            None => (f64::NAN, f64::NAN, f64::NAN),
        };
        let (median_task_gap, worst_percent_share) = match &trained {
            Some((model, _)) => task_gaps(model, &data.held, &gd)?,
            None => (f64::NAN, f64::NAN),
        };
        println!(
            "   seed {seed}: one layer's weights vs the GD span: cosine {lat_span:.5} (one IRLS step: {irls_span:.5}), label centre {lat_centre:.3}; per-task NLL gap to GD-1: median {median_task_gap:.2e}, worst 1% of tasks carry {:.0}% of the total",
            100.0 * worst_percent_share
        );
        Some(OneLayer {
            seed,
            lat: lat.nll,
            gd: gd_score.nll,
            irls: irls_score.nll,
            oracle: data.oracle.nll,
            lat_span,
            irls_span,
            lat_centre,
            median_task_gap,
            worst_percent_share,
        })
    } else {
        None
    };
    Ok((rows, one))
}

/// Per-task `d_t = NLL_t(model) − NLL_t(gd)` over `held`: the median, and the share of `Σ_t d_t`
/// from the 1% of tasks with the largest `d_t`.
fn task_gaps(
    model: &TrainableLat,
    held: &[GlmProblem],
    gd: &impl GlmFit,
) -> Result<(f64, f64), BoxError> {
    let eta = lat_predictions(model, held)?;
    let mut gaps = held
        .iter()
        .zip(&eta)
        .map(|(p, &e)| {
            let (mu, phi) = (p.mean_query[0], p.phi_query.row(0));
            let gd_eta = phi.dot(&gd.weights(p)?.transpose());
            Ok(p.family.expected_nll(e, mu) - p.family.expected_nll(gd_eta, mu))
        })
        .collect::<Result<Vec<f64>, BoxError>>()?;
    gaps.sort_by(f64::total_cmp);
    let total: f64 = gaps.iter().sum();
    let worst: f64 = gaps[gaps.len() - gaps.len().div_ceil(100)..].iter().sum();
    Ok((gaps[gaps.len() / 2], worst / total))
}

/// The score of a model whose training diverged: NaN, which fails every check it enters and is
/// left out of the figure with a note.
const DIVERGED: GlmScore = GlmScore {
    nll: f64::NAN,
    accuracy: None,
};

/// Trains `shape` in `setting` from `seed`; `None` (and a line saying so) if the training loss
/// became non-finite, any other error as is.
fn train_or_diverge(
    setting: &GlmIclSetting,
    shape: IclLatConfig,
    seed: u64,
) -> Result<Option<(TrainableLat, RunReport)>, BoxError> {
    match setting.train_model(shape, seed, None) {
        Ok(trained) => Ok(Some(trained)),
        // The run loop's only error for a non-finite loss.
        Err(metarep_lat_cg::Error::Core(metarep_core::Error::Invalid(msg)))
            if msg.starts_with("training loss became") =>
        {
            println!("   seed {seed}: {shape:?} diverged: {msg}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// `"trained in Ns"` or `"diverged"`.
fn trained_in(trained: &Option<(TrainableLat, RunReport)>) -> String {
    match trained {
        Some((_, report)) => format!("trained in {:.0}s", report.seconds),
        None => "diverged".into(),
    }
}

/// Held-out NLL minus the oracle's (per seed: the expected KL divergence from the true
/// conditional), log scale, with 95% bands; the oracle (0 by definition) and the zero
/// predictor in notes.
fn excess_plot(
    cfg: &Fig17Config,
    family: GlmFamily,
    nll: &SweepResult,
    zero: &[f64],
) -> Result<LinePlot, BoxError> {
    let oracle: HashMap<u64, f64> = nll
        .measurements
        .iter()
        .filter(|m| m.method == ORACLE)
        .map(|m| (m.seed, m.value))
        .collect();
    let excess = SweepResult {
        seeds: nll.seeds.clone(),
        measurements: nll
            .measurements
            .iter()
            .filter(|m| m.method != ORACLE)
            .map(|m| Measurement {
                value: m.value - oracle[&m.seed],
                ..m.clone()
            })
            .collect(),
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let oracle_mean = mean(&oracle.values().copied().collect::<Vec<_>>());
    let zero_excess = mean(zero) - oracle_mean;
    let (what, link) = match family {
        GlmFamily::Logistic => ("logistic", "logit"),
        GlmFamily::Poisson => ("Poisson", "log-rate"),
    };
    let (d, n) = (cfg.dim, cfg.n_support);
    Ok(excess
        .plot(
            &format!(
                "fig17: trained transformers vs GD and IRLS on the NLL, in-context {what} \
                 regression (d\u{a0}=\u{a0}{d}, n\u{a0}=\u{a0}{n})"
            ),
            "layers (= GD / IRLS steps)",
            "held-out NLL − oracle NLL (log scale)",
            true,
            0.95,
        )?
        .integer_x(true)
        .note(format!(
            "{ORACLE}, not drawn: excess 0 by definition; its NLL (the label's expected \
             entropy) is {} on average",
            fmt_sig(oracle_mean, 3)
        ))
        .note(format!(
            "predicting {link}\u{a0}0 for every query (w\u{a0}=\u{a0}0, where GD and IRLS \
             start): excess {}",
            fmt_sig(zero_excess, 3)
        )))
}

/// Writes the one-layer and depth metrics; whether the family's checks pass.
fn checks(
    cfg: &Fig17Config,
    family: GlmFamily,
    nll: &SweepResult,
    one_layer: &[OneLayer],
    out: &mut ResultDir,
) -> Result<bool, BoxError> {
    let name = family_name(family);
    let (mut gd_pass, mut direction_pass) = (!one_layer.is_empty(), !one_layer.is_empty());
    for o in one_layer {
        let (seed, rel) = (o.seed, o.rel_gap());
        let m = &mut out.metrics;
        m.set_number(format!("{name}_one_layer_rel_gap_seed_{seed}"), rel);
        m.set_number(format!("{name}_one_layer_lat_nll_seed_{seed}"), o.lat);
        m.set_number(format!("{name}_one_layer_gd_nll_seed_{seed}"), o.gd);
        m.set_number(format!("{name}_one_layer_irls_nll_seed_{seed}"), o.irls);
        m.set_number(format!("{name}_one_layer_oracle_nll_seed_{seed}"), o.oracle);
        m.set_number(
            format!("{name}_one_layer_lat_span_cosine_seed_{seed}"),
            o.lat_span,
        );
        m.set_number(
            format!("{name}_one_layer_irls_span_cosine_seed_{seed}"),
            o.irls_span,
        );
        m.set_number(
            format!("{name}_one_layer_lat_label_centre_seed_{seed}"),
            o.lat_centre,
        );
        m.set_number(
            format!("{name}_one_layer_median_task_gap_seed_{seed}"),
            o.median_task_gap,
        );
        m.set_number(
            format!("{name}_one_layer_worst_1pct_gap_share_seed_{seed}"),
            o.worst_percent_share,
        );
        gd_pass &= match family {
            GlmFamily::Logistic => rel.abs() <= GD_MATCH,
            GlmFamily::Poisson => rel <= GD_MATCH,
        };
        direction_pass &= o.lat_span >= SPAN_COSINE && o.lat_span > o.irls_span;
    }
    let depth_pass = depth_not_worse(cfg, nll, name, out)?;
    let m = &mut out.metrics;
    m.set_bool(format!("{name}_one_layer_gd_pass"), gd_pass);
    m.set_bool(format!("{name}_one_layer_direction_pass"), direction_pass);
    m.set_bool(format!("{name}_depth_pass"), depth_pass);
    Ok(gd_pass && direction_pass && depth_pass)
}

/// Check 4: for consecutive depths `L < L′`, the 95% t-interval over seeds of
/// `NLL(LAT-L′) − NLL(LAT-L)` reaches down to ≤ 0 (one seed: the difference is ≤ 0).
fn depth_not_worse(
    cfg: &Fig17Config,
    nll: &SweepResult,
    name: &str,
    out: &mut ResultDir,
) -> Result<bool, BoxError> {
    let mut depths = cfg.layers.clone();
    depths.sort_unstable();
    let lat = |seed: u64, layers: usize| {
        nll.measurements
            .iter()
            .find(|m| m.method == LAT && m.seed == seed && m.x == layers as f64)
            .map(|m| m.value)
            .ok_or_else(|| format!("no LAT NLL at seed {seed}, {layers} layers"))
    };
    let mut pass = true;
    for pair in depths.windows(2) {
        let diffs = cfg
            .seeds
            .iter()
            .map(|&s| Ok(lat(s, pair[1])? - lat(s, pair[0])?))
            .collect::<Result<Vec<f64>, BoxError>>()?;
        let low = if diffs.len() >= 2 {
            mean_ci(&diffs, 0.95)?.low
        } else {
            diffs[0]
        };
        out.metrics.set_number(
            format!("{name}_depth_{}_to_{}_diff_ci_low", pair[0], pair[1]),
            low,
        );
        pass &= low <= 0.0;
    }
    Ok(pass)
}

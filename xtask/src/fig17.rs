//! fig17: trained LATs and a softmax variant vs GLM baselines (GD and IRLS on the NLL, the MLE,
//! the true-w oracle) on in-context logistic and Poisson regression: held-out NLL vs depth,
//! 3 seeds, and whether one trained layer is one GD step on the GLM loss.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;

use metarep_core::config::load_config;
use metarep_core::rng::derive_seed;
use metarep_core::train::RunReport;
use metarep_eval::baselines::glm::{
    first_query_nlls, first_query_predictions, tuned_glm_gd, GlmFit, GlmMle, GlmScore, Irls,
    TrueWeights,
};
use metarep_eval::format::fmt_sig;
use metarep_eval::harness::{Measurement, Sweep, SweepResult};
use metarep_eval::plot::LinePlot;
use metarep_eval::stats::mean_ci;
use metarep_eval::tasks::glm::{FeatureMap, GlmFamily, GlmProblem};
use metarep_lat_cg::glm::{one_layer_directions, GlmIclSetting};
use metarep_lat_cg::icl::lat_predictions;
use metarep_lat_cg::train::{IclAttention, IclLatConfig, IclSetting, IclTrainConfig, TrainableLat};
use serde::{Deserialize, Serialize};

use crate::device::device;
use crate::error::BoxError;
use crate::fig6::SoftmaxConfig;
use crate::output::{metric_key, ResultDir};

/// Check 1 and 2: the trained one-layer LAT's mean NLL within this fraction of one tuned GD
/// step's excess NLL over the oracle (two-sided for logistic, one-sided for Poisson); Poisson's
/// median-task check uses the same fraction of GD-1's median excess. Poisson's mean-NLL checks
/// (one GD step, depth) are dominated by the few tasks with wild log-rates, even guarded
/// ([`GlmFamily::guarded`]), and are recorded, not part of `pass` (see [`checks`]).
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
    /// The median over held-out tasks of `NLL_t(LAT-1) − NLL_t(GD-1)`.
    median_task_gap: f64,
    /// The median over held-out tasks of `NLL_t(GD-1) − NLL_t(oracle)`.
    gd_median_excess: f64,
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
    mle: Eval,
    oracle: Eval,
    zero: GlmScore,
}

/// A method's held-out score with its per-task NLLs.
#[derive(Clone)]
struct Eval {
    score: GlmScore,
    nlls: Vec<f64>,
}

impl Eval {
    /// The score of first-query predictions `eta` on `held`.
    fn of(held: &[GlmProblem], eta: &[f64]) -> Result<Self, BoxError> {
        Ok(Self {
            score: GlmScore::of_first_queries(held, eta)?,
            nlls: first_query_nlls(held, eta)?,
        })
    }

    /// A fit's score on `held`.
    fn of_fit(fit: &dyn GlmFit, held: &[GlmProblem]) -> Result<Self, BoxError> {
        Self::of(held, &first_query_predictions(fit, held)?)
    }

    /// The score of a model whose training diverged: NaN, which fails every check it enters
    /// and is left out of the figures with a note.
    fn diverged() -> Self {
        Self {
            score: GlmScore {
                nll: f64::NAN,
                accuracy: None,
            },
            nlls: Vec::new(),
        }
    }

    /// The median over tasks of `NLL_t(self) − NLL_t(other)` (NaN without per-task NLLs).
    fn median_gap(&self, other: &Eval) -> f64 {
        if self.nlls.is_empty() || self.nlls.len() != other.nlls.len() {
            return f64::NAN;
        }
        let mut d: Vec<f64> = self
            .nlls
            .iter()
            .zip(&other.nlls)
            .map(|(a, b)| a - b)
            .collect();
        d.sort_by(f64::total_cmp);
        d[d.len() / 2]
    }
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
    let (mut accuracy, mut median) = (Vec::new(), Vec::new());
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
        for (method, eval) in rows {
            let at = |value| Measurement {
                method: method.clone(),
                x,
                seed,
                value,
            };
            if let Some(a) = eval.score.accuracy {
                accuracy.push(at(a));
            }
            if method != ORACLE {
                median.push(at(eval.median_gap(&data.oracle)));
            }
            nll.push((method, eval.score.nll));
        }
        Ok::<_, BoxError>(nll)
    })?;
    let stem = format!("fig17_{name}");
    out.table(&stem, &nll.table(0.95)?)?;
    let median = SweepResult {
        seeds: cfg.seeds.clone(),
        measurements: median,
    };
    out.table(&format!("{stem}_median_excess"), &median.table(0.95)?)?;
    let oracle: HashMap<u64, f64> = nll
        .measurements
        .iter()
        .filter(|m| m.method == ORACLE)
        .map(|m| (m.seed, m.value))
        .collect();
    let mean_excess = SweepResult {
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
    let oracle_nll = oracle.values().sum::<f64>() / oracle.len() as f64;
    let zero_excess = zero.iter().sum::<f64>() / zero.len() as f64 - oracle_nll;
    let plots = [
        (stem.clone(), &mean_excess, "mean"),
        (format!("{stem}_median"), &median, "median"),
    ];
    for (file, result, statistic) in plots {
        let plot = excess_plot(cfg, family, result, statistic, oracle_nll, zero_excess)?;
        out.plot(&file, &plot)?;
    }
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
    for r in median.summary(0.95)? {
        let key = metric_key(&r.method);
        out.metrics
            .set_number(format!("{name}_median_excess_{key}_layers_{}", r.x), r.mean);
    }
    checks(cfg, family, [&nll, &median], &one_layer, out)
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
        mle: Eval::of_fit(&mle, &held)?,
        oracle: Eval::of_fit(&TrueWeights, &held)?,
        zero: GlmScore::of_first_queries(&held, &vec![0.0; held.len()])?,
        held,
        tuning,
    })
}

/// Held-out scores by method, and the one-layer comparison when `layers` is 1.
type Comparison = (Vec<(String, Eval)>, Option<OneLayer>);

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
        Some((model, _)) => Eval::of(&data.held, &lat_predictions(model, &data.held)?)?,
        None => Eval::diverged(),
    };
    let (gd, _) = tuned_glm_gd(layers, &data.tuning)?;
    let irls = Irls {
        steps: layers,
        ridge: cfg.ridge,
    };
    let gd_eval = Eval::of_fit(&gd, &data.held)?;
    let irls_eval = Eval::of_fit(&irls, &data.held)?;
    let gd_median_excess = gd_eval.median_gap(&data.oracle);
    println!(
        "   seed {seed}, {layers} layer(s): mean NLL: LAT {:.4}, GD {:.4} (η {:.3}), IRLS {:.4}, oracle {:.4}; median excess: LAT {:.2e}, GD {:.2e}, IRLS {:.2e} ({})",
        lat.score.nll,
        gd_eval.score.nll,
        gd.step,
        irls_eval.score.nll,
        data.oracle.score.nll,
        lat.median_gap(&data.oracle),
        gd_median_excess,
        irls_eval.median_gap(&data.oracle),
        trained_in(&trained)
    );
    let (lat_nll, gd_nll, irls_nll) = (lat.score.nll, gd_eval.score.nll, irls_eval.score.nll);
    let median_task_gap = lat.median_gap(&gd_eval);
    let mut rows = vec![
        (LAT.to_string(), lat),
        (GD.to_string(), gd_eval),
        (IRLS.to_string(), irls_eval),
        (MLE.to_string(), data.mle.clone()),
        (ORACLE.to_string(), data.oracle.clone()),
    ];
    if cfg.softmax.layers.contains(&layers) {
        let mut soft = base;
        soft.train.lr = cfg.softmax.lr;
        let shape = soft.model(layers, cfg.softmax.heads, IclAttention::Softmax);
        let soft_trained = train_or_diverge(&soft, shape, seed)?;
        let score = match &soft_trained {
            Some((model, _)) => Eval::of(&data.held, &lat_predictions(model, &data.held)?)?,
            None => Eval::diverged(),
        };
        println!(
            "   seed {seed}, {layers} layer(s): softmax TF mean NLL {:.4}, median excess {:.2e} ({})",
            score.score.nll,
            score.median_gap(&data.oracle),
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
        println!(
            "   seed {seed}: one layer's weights vs the GD span: cosine {lat_span:.5} (one IRLS step: {irls_span:.5}), label centre {lat_centre:.3}; median per-task NLL(LAT) − NLL(GD-1): {median_task_gap:.2e}"
        );
        Some(OneLayer {
            seed,
            lat: lat_nll,
            gd: gd_nll,
            irls: irls_nll,
            oracle: data.oracle.score.nll,
            lat_span,
            irls_span,
            lat_centre,
            median_task_gap,
            gd_median_excess,
        })
    } else {
        None
    };
    Ok((rows, one))
}

/// Trains `shape` in `setting` from `seed`; `None` (and a line saying so) if the training loss
/// became non-finite, any other error as is.
fn train_or_diverge(
    setting: &GlmIclSetting,
    shape: IclLatConfig,
    seed: u64,
) -> Result<Option<(TrainableLat, RunReport)>, BoxError> {
    match setting.train_model(shape, seed, &device(), None) {
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

/// `statistic` (mean or median) over held-out tasks of NLL − oracle NLL (each task's: the
/// expected KL divergence from the true conditional) against depth, log scale, with 95% bands
/// over seeds; the oracle (0 by definition) and the zero predictor in notes.
fn excess_plot(
    cfg: &Fig17Config,
    family: GlmFamily,
    excess: &SweepResult,
    statistic: &str,
    oracle_nll: f64,
    zero_excess: f64,
) -> Result<LinePlot, BoxError> {
    let (what, link) = match family {
        GlmFamily::Logistic => ("logistic", "logit"),
        GlmFamily::Poisson => ("Poisson", "log-rate"),
    };
    let (d, n) = (cfg.dim, cfg.n_support);
    Ok(excess
        .plot(
            &format!(
                "fig17: trained transformers vs GD and IRLS on the NLL, in-context {what} \
                 regression (d\u{a0}=\u{a0}{d}, n\u{a0}=\u{a0}{n}), {statistic} over \
                 held-out tasks"
            ),
            "layers (= GD / IRLS steps)",
            &format!("{statistic} held-out NLL − oracle NLL (log scale)"),
            true,
            0.95,
        )?
        .integer_x(true)
        .note(format!(
            "{ORACLE}, not drawn: excess 0 by definition; its mean NLL (the label's expected \
             entropy) is {}",
            fmt_sig(oracle_nll, 3)
        ))
        .note(format!(
            "predicting {link}\u{a0}0 for every query (w\u{a0}=\u{a0}0, where GD and IRLS \
             start): mean excess {}",
            fmt_sig(zero_excess, 3)
        )))
}

/// Writes the one-layer and depth metrics; whether the family's checks pass. `[mean, median]`:
/// the held-out mean NLL and the median excess NLL over the oracle, by method, depth and seed.
fn checks(
    cfg: &Fig17Config,
    family: GlmFamily,
    [nll, median]: [&SweepResult; 2],
    one_layer: &[OneLayer],
    out: &mut ResultDir,
) -> Result<bool, BoxError> {
    let name = family_name(family);
    let all = !one_layer.is_empty();
    let (mut gd_pass, mut direction_pass, mut median_gd_pass) = (all, all, all);
    for o in one_layer {
        let (seed, rel) = (o.seed, o.rel_gap());
        let m = &mut out.metrics;
        let mut set = |what: &str, value: f64| {
            m.set_number(format!("{name}_one_layer_{what}_seed_{seed}"), value)
        };
        set("rel_gap", rel);
        set("lat_nll", o.lat);
        set("gd_nll", o.gd);
        set("irls_nll", o.irls);
        set("oracle_nll", o.oracle);
        set("lat_span_cosine", o.lat_span);
        set("irls_span_cosine", o.irls_span);
        set("lat_label_centre", o.lat_centre);
        set("median_task_gap", o.median_task_gap);
        set("gd_median_excess", o.gd_median_excess);
        gd_pass &= match family {
            GlmFamily::Logistic => rel.abs() <= GD_MATCH,
            GlmFamily::Poisson => rel <= GD_MATCH,
        };
        median_gd_pass &= o.median_task_gap <= GD_MATCH * o.gd_median_excess;
        direction_pass &= o.lat_span >= SPAN_COSINE && o.lat_span > o.irls_span;
    }
    let depth_pass = depth_not_worse(cfg, nll, &format!("{name}_depth"), out)?;
    let m = &mut out.metrics;
    m.set_bool(format!("{name}_one_layer_gd_pass"), gd_pass);
    m.set_bool(format!("{name}_one_layer_direction_pass"), direction_pass);
    m.set_bool(format!("{name}_depth_pass"), depth_pass);
    match family {
        GlmFamily::Logistic => Ok(direction_pass && gd_pass && depth_pass),
        // Poisson's checks on the (guarded) mean NLL are recorded and not gated: a few tasks'
        // wild log-rates dominate the means (docs/results.md); the median-task checks are.
        GlmFamily::Poisson => {
            let median_depth_pass =
                depth_not_worse(cfg, median, &format!("{name}_median_depth"), out)?;
            let m = &mut out.metrics;
            m.set_bool(format!("{name}_one_layer_gd_median_pass"), median_gd_pass);
            m.set_bool(format!("{name}_median_depth_pass"), median_depth_pass);
            Ok(direction_pass && median_gd_pass && median_depth_pass)
        }
    }
}

/// Check 4: for consecutive depths `L < L′`, the 95% t-interval over seeds of
/// `score(LAT-L′) − score(LAT-L)` reaches down to ≤ 0 (one seed: the difference is ≤ 0); each
/// bound written as `{key}_{L}_to_{L′}_diff_ci_low`.
fn depth_not_worse(
    cfg: &Fig17Config,
    nll: &SweepResult,
    key: &str,
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
        let low = if diffs.iter().any(|d| !d.is_finite()) {
            f64::NAN // a diverged or infinite mean: the check fails
        } else if diffs.len() >= 2 {
            mean_ci(&diffs, 0.95)?.low
        } else {
            diffs[0]
        };
        out.metrics
            .set_number(format!("{key}_{}_to_{}_diff_ci_low", pair[0], pair[1]), low);
        pass &= low <= 0.0;
    }
    Ok(pass)
}

//! fig6: trained LATs vs GD, GD++, CG and the least-squares oracle (loss vs depth, 3 seeds).

use std::path::Path;

use metarep_core::config::load_config;
use metarep_core::rng::derive_seed;
use metarep_eval::baselines::{MinNormLeastSquares, StepSize};
use metarep_eval::format::fmt_sig;
use metarep_eval::harness::{Sweep, SweepResult};
use metarep_eval::plot::LinePlot;
use metarep_lat_cg::icl::{
    baseline_loss, cg_loss, gd_one_step_sensitivity, lat_loss, sensitivity_cosine, tuned_gd,
    tuned_gdpp, VonOswaldSetting,
};
use metarep_lat_cg::train::{IclAttention, IclTrainConfig};
use serde::{Deserialize, Serialize};

use crate::device::device;
use crate::error::BoxError;
use crate::output::ResultDir;

/// The softmax-attention variant trained beside the LAT (fig6, fig17).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SoftmaxConfig {
    /// Depths at which it is trained (a subset of `layers`).
    pub(crate) layers: Vec<usize>,
    /// Heads per layer.
    pub(crate) heads: usize,
    /// Peak learning rate (not depth-scaled).
    pub(crate) lr: f64,
}

/// Settings of fig6 (`configs/fig6.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fig6Config {
    seeds: Vec<u64>,
    layers: Vec<usize>,
    held_out: usize,
    tuning_tasks: usize,
    train: IclTrainConfig,
    softmax: SoftmaxConfig,
}

/// One seed's one-layer comparison: trained LAT loss, tuned one-step GD loss and the
/// sensitivity cosine between them.
struct OneLayer {
    seed: u64,
    lat: f64,
    gd: f64,
    cosine: f64,
}

/// Runs fig6 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig6Config = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, cfg.seeds.clone())?;
    let xs: Vec<f64> = cfg.layers.iter().map(|&l| l as f64).collect();
    let mut one_layer = Vec::new();
    let result = Sweep::new(&cfg.seeds, &xs).run(|seed, x| {
        let (row, one) = compare(&cfg, seed, x as usize)?;
        one_layer.extend(one);
        Ok::<_, BoxError>(row)
    })?;
    out.table("fig6", &result.table(0.95)?)?;
    out.plot("fig6", &loss_plot(&result)?)?;
    let mut pass = !one_layer.is_empty();
    for o in &one_layer {
        let rel = (o.lat - o.gd).abs() / o.gd;
        let seed = o.seed;
        out.metrics
            .set_number(format!("one_layer_rel_gap_seed_{seed}"), rel);
        out.metrics.set_number(
            format!("one_layer_sensitivity_cosine_seed_{seed}"),
            o.cosine,
        );
        pass &= rel <= 0.05 && o.cosine >= 0.99;
    }
    for r in result.summary(0.95)? {
        let key = crate::output::metric_key(&r.method);
        out.metrics
            .set_number(format!("loss_{key}_layers_{}", r.x), r.mean);
    }
    out.finish(pass)
}

/// The label of the least-squares oracle's row.
const ORACLE: &str = "least squares (oracle)";

/// Held-out loss against depth with 95% bands for every method but the oracle, whose loss
/// (numerically zero on these noiseless, fully determined tasks) is stated in a note: on the
/// same axis it would stretch the scale over ~25 decades and flatten every other curve.
fn loss_plot(result: &SweepResult) -> Result<LinePlot, BoxError> {
    let oracle: Vec<f64> = result
        .summary(0.95)?
        .iter()
        .filter(|r| r.method == ORACLE)
        .map(|r| r.mean)
        .collect();
    let (lo, hi) = oracle
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let setting = VonOswaldSetting::default();
    let (d, n) = (setting.dim, setting.n_support);
    let (lo, hi) = (fmt_sig(lo, 2), fmt_sig(hi, 2));
    let range = if lo == hi {
        lo
    } else {
        format!("{lo} to {hi}")
    };
    let plot = result
        .select(|m| m != ORACLE)
        .plot(
            &format!(
                "fig6: trained transformers vs GD, GD++ and CG on in-context linear regression \
                 (d\u{a0}=\u{a0}{d}, n\u{a0}=\u{a0}{n})"
            ),
            "layers (= GD/CG steps)",
            "0.5·MSE on held-out tasks",
            false,
            0.95,
        )?
        .note(format!(
            "{ORACLE}, not drawn: mean 0.5·MSE {range} at every depth \
             (noiseless tasks, n\u{a0}=\u{a0}{n}\u{a0}≥\u{a0}d)"
        ));
    Ok(plot)
}

/// Held-out losses by method, and the one-layer comparison.
type Comparison = (Vec<(String, f64)>, Option<OneLayer>);

/// The trained models and every baseline at depth `layers` for `seed`: held-out losses by
/// method, and the one-layer comparison when `layers` is 1.
fn compare(cfg: &Fig6Config, seed: u64, layers: usize) -> Result<Comparison, BoxError> {
    let base = VonOswaldSetting {
        held_out: cfg.held_out,
        train: cfg.train,
        ..Default::default()
    };
    let setting = base.depth_scaled(layers);
    let held = setting.tasks(derive_seed(seed, "fig6/held-out"), cfg.held_out)?;
    let tuning = setting.tasks(derive_seed(seed, "fig6/tuning"), cfg.tuning_tasks)?;
    let (model, report) = setting.train_lat(layers, seed, &device(), None)?;
    let (gd, _) = tuned_gd(layers, &tuning)?;
    let (gdpp, _) = tuned_gdpp(layers, &tuning)?;
    let lat = lat_loss(&model, &held)?;
    let gd_loss = baseline_loss(&gd, &held)?;
    let mut row = vec![
        ("trained LAT".to_string(), lat),
        ("GD (tuned η)".to_string(), gd_loss),
        (
            "GD++ (tuned η, γ)".to_string(),
            baseline_loss(&gdpp, &held)?,
        ),
        ("CG".to_string(), cg_loss(layers, &held)?),
        (
            ORACLE.to_string(),
            baseline_loss(&MinNormLeastSquares, &held)?,
        ),
    ];
    if cfg.softmax.layers.contains(&layers) {
        let mut soft = base;
        soft.train.lr = cfg.softmax.lr;
        let shape = soft.model(layers, cfg.softmax.heads, IclAttention::Softmax);
        let (model, report) = soft.train_model(shape, seed, &device(), None)?;
        let loss = lat_loss(&model, &held)?;
        println!(
            "   seed {seed}, {layers} layer(s): softmax TF {loss:.4} (trained in {:.0}s)",
            report.seconds
        );
        row.push((
            format!("trained softmax TF ({} heads)", cfg.softmax.heads),
            loss,
        ));
    }
    let one = if layers == 1 {
        let eta = match gd.step {
            StepSize::Fixed(e) => e,
            _ => f64::NAN,
        };
        let tasks = &held[..held.len().min(2000)];
        let cosine = sensitivity_cosine(&model, tasks, gd_one_step_sensitivity(eta))?;
        Some(OneLayer {
            seed,
            lat,
            gd: gd_loss,
            cosine,
        })
    } else {
        None
    };
    println!(
        "   seed {seed}, {layers} layer(s): LAT {lat:.4}, GD {gd_loss:.4} (trained in {:.0}s)",
        report.seconds
    );
    Ok((row, one))
}

//! Train a linear-attention transformer on in-context logistic or Poisson regression (fig17's
//! setting: x ~ N(0, I_5), features [x, 1], w ~ N(0, I/6), n = 40) with the GLM's NLL, and compare
//! it with GD and IRLS on the NLL with the same number of steps, the MLE and the true w.
//!
//! Run: `cargo run --release --example icl_glm [-- logistic|poisson [SEED [LAYERS [STEPS]]]]`
//! (default logistic, seed 0, 1 layer, 4000 steps as fig17).

use candle_core::Device;
use metarep::eval::baselines::glm::{tuned_glm_gd, GlmMle, GlmScore, Irls, TrueWeights};
use metarep::eval::tasks::glm::{FeatureMap, GlmFamily};
use metarep::lat_cg::glm::{lat_score, one_layer_directions, GlmIclSetting};
use metarep::lat_cg::icl::VonOswaldSetting;
use metarep::lat_cg::train::{IclAttention, IclSetting};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let family = match args.next().as_deref() {
        None | Some("logistic") => GlmFamily::Logistic,
        Some("poisson") => GlmFamily::Poisson,
        Some(other) => {
            return Err(format!("family must be logistic or poisson, got {other}").into())
        }
    };
    let mut number = |what: &str, default: usize| -> Result<usize, String> {
        args.next()
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| format!("{what} must be an unsigned integer"))
            .map(|v| v.unwrap_or(default))
    };
    let seed = number("SEED", 0)? as u64;
    let layers = number("LAYERS", 1)?.max(1);
    let mut train = VonOswaldSetting::default().train;
    train.steps = number("STEPS", train.steps)?;
    let setting = GlmIclSetting {
        family,
        features: FeatureMap::Linear,
        dim: 5,
        n_support: 40,
        train,
    }
    .depth_scaled(layers);
    println!(
        "training a {layers}-layer LAT on in-context {family:?} regression (d = 5, n = 40): {} steps × {} tasks, AdamW lr {:.4}",
        setting.train.steps, setting.train.batch, setting.train.lr
    );
    let (model, report) = setting.train_model(
        setting.model(layers, 1, IclAttention::Linear),
        seed,
        &Device::Cpu,
        None,
    )?;
    println!("  trained in {:.1} s", report.seconds);
    let held = setting.problems(999, 10_000)?;
    let tuning = setting.problems(998, 2000)?;
    let (gd, _) = tuned_glm_gd(layers, &tuning)?;
    let irls = Irls {
        steps: layers,
        ridge: 1e-3,
    };
    let mle = GlmMle {
        ridge: 1e-3,
        tolerance: 1e-9,
        max_steps: 100,
    };
    let rows: [(&str, GlmScore); 5] = [
        ("trained LAT", lat_score(&model, &held)?),
        ("GD on the NLL (tuned η)", GlmScore::of_fit(&gd, &held)?),
        ("IRLS (Newton)", GlmScore::of_fit(&irls, &held)?),
        ("MLE", GlmScore::of_fit(&mle, &held)?),
        ("true w (oracle)", GlmScore::of_fit(&TrueWeights, &held)?),
    ];
    println!(
        "  held-out expected NLL over {} tasks ({layers} step(s) / layer(s)):",
        held.len()
    );
    for (name, score) in rows {
        let acc = score
            .accuracy
            .map(|a| format!(", accuracy {a:.4}"))
            .unwrap_or_default();
        println!("    {name:<26} {:.4}{acc}", score.nll);
    }
    if layers == 1 {
        let d = one_layer_directions(&model, &held[..1000], 1e-3)?;
        println!(
            "  weights vs the span of one GD step from 0 (any step, any label centre): cosine {:.5} for the LAT (median label centre {:.3}), {:.5} for one IRLS step",
            d.model_cosine, d.model_centre, d.newton_cosine
        );
    }
    Ok(())
}

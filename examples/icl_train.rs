//! Train a linear-attention transformer (or its softmax-attention variant) on in-context linear
//! regression and compare it with gradient descent with the same number of steps (von Oswald et
//! al. 2023, Fig. 2 setting: d = 10, n = 10, x ~ U(−1, 1), w ~ N(0, I), no noise).
//!
//! Run: `cargo run --release --example icl_train [-- SEED [LAYERS [linear|softmax]]]` (the
//! softmax variant has 2 heads and peak lr `SOFTMAX_LR`).

use candle_core::Device;
use metarep::eval::baselines::StepSize;
use metarep::lat_cg::icl::{
    gd_one_step_sensitivity, lat_loss, sensitivity_cosine, tuned_gd, VonOswaldSetting, SOFTMAX_LR,
};
use metarep::lat_cg::train::IclAttention;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .map_err(|_| "SEED must be an unsigned integer")?
        .unwrap_or(0);
    let layers: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()
        .map_err(|_| "LAYERS must be a positive integer")?
        .unwrap_or(1);
    let attention = match args.next().as_deref() {
        None | Some("linear") => IclAttention::Linear,
        Some("softmax") => IclAttention::Softmax,
        Some(other) => {
            return Err(format!("attention must be linear or softmax, got {other}").into())
        }
    };
    let (setting, heads) = match attention {
        IclAttention::Linear => (VonOswaldSetting::default().depth_scaled(layers), 1),
        IclAttention::Softmax => {
            let mut s = VonOswaldSetting::default();
            s.train.lr = SOFTMAX_LR;
            (s, 2)
        }
    };
    println!(
        "training a {layers}-layer {attention:?}-attention model ({heads} head(s)) on d = {}, n = {}: {} steps × {} tasks, AdamW lr {}",
        setting.dim, setting.n_support, setting.train.steps, setting.train.batch, setting.train.lr
    );
    let (model, report) = setting.train_model(
        setting.model(layers, heads, attention),
        seed,
        &Device::Cpu,
        None,
    )?;
    println!(
        "  trained in {:.1} s, last batch loss {:.4}",
        report.seconds, report.final_loss
    );
    let held_out = setting.tasks(999, setting.held_out)?;
    let lat = lat_loss(&model, &held_out)?;
    let (gd, gd_loss) = tuned_gd(layers, &held_out)?;
    println!("  held-out 0.5·MSE over {} tasks: trained model {lat:.4}, {layers}-step GD with the best step {gd_loss:.4}", held_out.len());
    if let (1, StepSize::Fixed(eta)) = (layers, gd.step) {
        let cos = sensitivity_cosine(&model, &held_out[..2000], gd_one_step_sensitivity(eta))?;
        println!("  relative gap {:.2e}; cosine of ∂ŷ/∂x_query between the LAT and GD (η = {eta:.3}): {cos:.5}", (lat - gd_loss).abs() / gd_loss);
    }
    Ok(())
}

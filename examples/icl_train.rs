//! Train a one-layer linear-attention transformer on in-context linear regression and compare it
//! with one step of gradient descent (von Oswald et al. 2023, Fig. 2 setting: d = 10, n = 10,
//! x ~ U(−1, 1), w ~ N(0, I), no noise).
//!
//! Run: `cargo run --release --example icl_train [-- SEED [LAYERS]]`

use metarep::eval::baselines::StepSize;
use metarep::lat_cg::icl::{
    gd_one_step_sensitivity, lat_loss, sensitivity_cosine, tuned_gd, VonOswaldSetting,
};

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
    let setting = VonOswaldSetting::default().depth_scaled(layers);
    println!(
        "training a {layers}-layer LAT (1 head) on d = {}, n = {}: {} steps × {} tasks, AdamW lr {}",
        setting.dim, setting.n_support, setting.train.steps, setting.train.batch, setting.train.lr
    );
    let (model, report) = setting.train_lat(layers, seed, None)?;
    println!(
        "  trained in {:.1} s, last batch loss {:.4}",
        report.seconds, report.final_loss
    );
    let held_out = setting.tasks(999, setting.held_out)?;
    let lat = lat_loss(&model, &held_out)?;
    let (gd, gd_loss) = tuned_gd(layers, &held_out)?;
    println!("  held-out 0.5·MSE over {} tasks: trained LAT {lat:.4}, {layers}-step GD with the best step {gd_loss:.4}", held_out.len());
    if let (1, StepSize::Fixed(eta)) = (layers, gd.step) {
        let cos = sensitivity_cosine(&model, &held_out[..2000], gd_one_step_sensitivity(eta))?;
        println!("  relative gap {:.2e}; cosine of ∂ŷ/∂x_query between the LAT and GD (η = {eta:.3}): {cos:.5}", (lat - gd_loss).abs() / gd_loss);
    }
    Ok(())
}

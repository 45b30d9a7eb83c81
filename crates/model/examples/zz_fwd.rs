use candle_core::{DType, Device, Tensor};
use metarep_model::{HookedTransformer, Input, ModelConfig, NoHooks, RunTo};
use std::time::Instant;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = ModelConfig::gpt2_like(12, 768, 12, 50257, 1024);
    cfg.d_mlp = 3072;
    let m = HookedTransformer::random(cfg, 0, DType::F32, &Device::Cpu)?;
    let ids: Vec<u32> = (0..512).map(|i| (i * 7919 % 50000) as u32).collect();
    let t = Tensor::from_vec(ids, (4, 128), &Device::Cpu)?;
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(10);
    for _ in 0..n {
        let s = Instant::now();
        let _ = m.run(&Input::new(t.clone()), &mut NoHooks, RunTo::Logits)?;
        println!("{:.0} ms", s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

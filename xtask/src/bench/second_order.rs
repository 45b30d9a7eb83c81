//! `second_order`: effects of N neurons of one MLP layer on a batch, computed in one pass
//! (`Readout::new` — one forward pass with a cache — then `second_order` and `direct` for all N
//! neurons as matmuls) vs the naive method (one clean forward pass, then one forward pass per
//! neuron with that neuron zeroed, reading the change of the final normalised stream at the
//! read-out positions), same batch, same machine, medians over `reps`. Target: ≥ 100×.
//!
//! The naive change is direct + second-order + higher-order terms (later MLPs, the attention
//! patterns and norm scales the neuron moves), so it is a check only up to those terms: on a
//! subset of neurons the report gives the relative error of direct + second-order against it,
//! and against path patching (`path_patched_effect`, which freezes exactly what the method
//! freezes) the maximum absolute difference, which must be rounding.
//!
//! Three models: the `arith` fixture (seed 0, 2 layers: layer 0, its first N neurons and then
//! all 512, 64 arith prompts) and a GPT-2-small-shaped random model (12 layers, d_model 768,
//! d_mlp 3072: layer 5, N neurons, 8 prompts of 64 random tokens), and SmolLM2-135M (`cargo
//! xtask fixtures smollm2` first; layer 15 of 30, N neurons, 16 IOI prompts). The target is judged at the
//! N of the pipeline (the `neurons` setting); with N neurons the naive method takes N + 1
//! forward passes, which bounds the speed-up near N + 1. Peak resident memory (`VmHWM`) is reported after each.
//! Settings: `neurons` (default 100), `reps` (default 3).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use metarep_circuits::ioi::{
    ioi_prompts, patch_set, single_token_names, IoiPrompt, NAMES, TEMPLATES,
};
use metarep_core::memory;
use metarep_core::rng::seeded;
use metarep_model::interventions::{Intervention, Interventions};
use metarep_model::{HookedTransformer, LoadOptions, ModelConfig, NoHooks};
use metarep_second_order::{naive_effect, path_patched_effect, readout_stream, Readout};
use metarep_testbeds::arith::{framing, ArithSpec};
use metarep_testbeds::tokenization::{prompt_batch, tokenize_all};
use rand::Rng;
use serde_json::json;

use super::{median, setting, write_report};
use crate::error::BoxError;

/// The `--set` keys this benchmark accepts.
pub const SETTINGS: &[&str] = &["neurons", "reps"];
const TARGET: f64 = 100.0;
/// Neurons on which the naive and path-patched effects are compared.
const CHECKED: usize = 8;

fn norm(t: &Tensor) -> Result<f64, BoxError> {
    Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64)
}

/// Times both methods on one model and checks agreement on a subset.
fn case(
    name: &str,
    model: &HookedTransformer,
    tokens: &Tensor,
    positions: &[usize],
    layer: usize,
    neurons: &[usize],
    reps: usize,
) -> Result<serde_json::Value, BoxError> {
    let (mut single, mut naive) = (Vec::new(), Vec::new());
    let mut effects = None;
    for _ in 0..reps {
        let t = Instant::now();
        let r = Readout::new(model, tokens, positions)?;
        let so = r.second_order(layer, neurons)?;
        let di = r.direct(layer, neurons)?;
        single.push(t.elapsed().as_secs_f64());
        effects = Some((so, di));
        let t = Instant::now();
        let clean = readout_stream(model, tokens, positions, &mut NoHooks)?;
        for &n in neurons {
            let mut zero = Interventions::new(vec![Intervention::zero_neurons(layer, &[n])]);
            let _change = (&clean - readout_stream(model, tokens, positions, &mut zero)?)?;
        }
        naive.push(t.elapsed().as_secs_f64());
    }
    let (so, di) = effects.ok_or("no repetitions")?;
    let (mut rel, mut rel_direct, mut patch_gap) = (Vec::new(), Vec::new(), 0.0f64);
    for (k, &n) in neurons.iter().enumerate().take(CHECKED) {
        let truth = naive_effect(model, tokens, positions, layer, n)?;
        let s = so.narrow(1, k, 1)?.squeeze(1)?;
        let d = di.narrow(1, k, 1)?.squeeze(1)?;
        let scale = norm(&truth)?.max(1e-12);
        rel.push(norm(&(&truth - (&d + &s)?)?)? / scale);
        rel_direct.push(norm(&(&truth - &d)?)? / scale);
        let pp = path_patched_effect(model, tokens, positions, layer, n)?;
        let gap = (pp.second_order - &s)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()? as f64;
        patch_gap = patch_gap.max(gap);
    }
    let (ts, tn) = (median(&single), median(&naive));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "  {name}: {} neurons of layer {layer}, batch {}: one pass {:.1} ms, naive {:.1} ms → {:.0}× (target ≥ {TARGET}×); naive vs direct + second-order: relative error {:.3} (direct alone {:.3}); vs path patching max |Δ| {patch_gap:.1e}; peak RSS {:.0} MiB",
        neurons.len(),
        tokens.dim(0)?,
        1e3 * ts,
        1e3 * tn,
        tn / ts,
        mean(&rel),
        mean(&rel_direct),
        memory::peak_resident_mib().unwrap_or(f64::NAN)
    );
    Ok(json!({
        "neurons": neurons.len(),
        "layer": layer,
        "batch": tokens.dim(0)?,
        "positions": tokens.dim(1)?,
        "one_pass_ms": 1e3 * ts,
        "naive_ms": 1e3 * tn,
        "speedup": tn / ts,
        "target_met": tn / ts >= TARGET,
        "checked_neurons": rel.len(),
        "naive_rel_error_direct_plus_second_order": mean(&rel),
        "naive_rel_error_direct_only": mean(&rel_direct),
        "path_patching_max_abs_diff": patch_gap,
        "peak_rss_mib": memory::peak_resident_mib(),
    }))
}

/// Runs the benchmark and writes `results/bench/second_order.json`.
pub fn run(out: &Path) -> Result<bool, BoxError> {
    let n: usize = setting("neurons").map_or(Ok(100), str::parse)?;
    let reps: usize = setting("reps").map_or(Ok(3), str::parse)?;
    let root = crate::fixtures::repo_root();
    let arith = HookedTransformer::from_dir(
        &crate::fixtures::arith::dir(&root, 0),
        &LoadOptions::default(),
    )?;
    let tok = arith
        .tokenizer()
        .ok_or("arith fixture without tokenizer")?
        .clone();
    let fr = framing(&tok)?;
    let problems = tokenize_all(
        &tok,
        &ArithSpec::default().suite().sample(&mut seeded(1), 64)?,
        &fr,
    )?;
    let (tokens, positions) = prompt_batch(&problems, fr.pad)?;
    let neurons: Vec<usize> = (0..n.min(arith.config().d_mlp)).collect();
    let small = case("arith", &arith, &tokens, &positions, 0, &neurons, reps)?;
    // Every neuron of the layer: the naive cost grows with N, the one pass hardly.
    let every: Vec<usize> = (0..arith.config().d_mlp).collect();
    let whole = case(
        "arith, whole layer",
        &arith,
        &tokens,
        &positions,
        0,
        &every,
        reps,
    )?;

    let mut cfg = ModelConfig::gpt2_like(12, 768, 12, 50257, 1024);
    cfg.d_mlp = 3072;
    let gpt2 = HookedTransformer::random(cfg, 0, DType::F32, &Device::Cpu)?;
    let mut rng = seeded(2);
    let (b, p) = (8usize, 64usize);
    let ids: Vec<u32> = (0..b * p).map(|_| rng.random_range(0..50257u32)).collect();
    let tokens = Tensor::from_vec(ids, (b, p), &Device::Cpu)?;
    let positions = vec![p - 1; b];
    let neurons: Vec<usize> = (0..n.min(3072)).map(|i| i * 29 % 3072).collect();
    let large = case(
        "gpt2-small-shaped",
        &gpt2,
        &tokens,
        &positions,
        5,
        &neurons,
        reps,
    )?;
    let smollm2 = smollm2_case(&crate::fixtures::gguf::smollm2_file(&root)?, n, reps)?;
    let met = [&small, &large, &smollm2]
        .iter()
        .all(|c| c["target_met"] == true);
    write_report(
        out,
        "second_order",
        json!({
            "target_speedup": TARGET,
            "arith": small,
            "arith_whole_layer": whole,
            "gpt2_small_shaped": large,
            "smollm2": smollm2,
            "reps": reps,
        }),
    )?;
    Ok(met)
}

/// SmolLM2-135M (GGUF): N neurons of layer 15 on 16 IOI prompts of one template, read at the
/// last position.
fn smollm2_case(path: &Path, n: usize, reps: usize) -> Result<serde_json::Value, BoxError> {
    let model = HookedTransformer::from_gguf(path, &LoadOptions::default())?;
    let tok = model
        .tokenizer()
        .ok_or("the SmolLM2 GGUF carries no tokenizer")?;
    let names = single_token_names(tok, NAMES)?;
    let prompts = ioi_prompts(
        tok,
        tok.bos_id(),
        &TEMPLATES[..1],
        &names,
        8,
        &mut seeded(3),
    )?;
    let rows: Vec<&IoiPrompt> = prompts.iter().collect();
    let tokens = patch_set(&rows, &Device::Cpu)?.clean;
    let positions = vec![tokens.dim(1)? - 1; rows.len()];
    let d_mlp = model.config().d_mlp;
    let neurons: Vec<usize> = (0..n.min(d_mlp)).map(|i| i * 29 % d_mlp).collect();
    case(
        "smollm2-135m (IOI prompts)",
        &model,
        &tokens,
        &positions,
        15,
        &neurons,
        reps,
    )
}

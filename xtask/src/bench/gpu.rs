//! `gpu`: the GPU targets of issue 20 on the device of `--set device=cuda:N` (default `cuda:0`;
//! xtask built with `--features cuda`), each side by side with PyTorch in the same run
//! (`$METAREP_PYTHON`, default `python3`; a missing reference is a note, not a failure):
//!
//! - `forward`: a GPT-2-small-shaped model (random weights), batch 32 × 1 024, bf16: tokens/s
//!   of the plain forward against plain PyTorch modules in eager mode
//!   (`xtask/python/bench_gpu_forward.py`, explicit attention; torch's fused attention is
//!   reported next to it for context), and `run_with_cache` of every `hook_resid_post` against
//!   the plain forward. Targets: ≥ 1.2× eager, cache ≤ 10% over plain.
//! - `sae`: one TopK SAE training step, d_in 768 → 24 576 latents, k 32, batch 4 096, f32,
//!   against the plain PyTorch implementation (`bench_sae.py --device`, dense scatter). Target
//!   ≥ 2×.
//! - `capture`: a SmolLM2-135M-shaped model (random bf16 weights: the same shapes and work as
//!   the real checkpoint, which is too large to carry to a lent GPU machine) captured to an f16
//!   store at `blocks.15.hook_resid_post`, contexts of 1 024 tokens. Target ≥ 50 000 tokens/s.
//!
//! Settings: `device` (`cpu`, `cuda`, `cuda:N`), `parts` (comma-separated, default all),
//! `quick=1` (small shapes, to check the benchmark itself on a CPU), `reps` (timed runs per
//! measurement, default 10), `torch=0` (skip the PyTorch references, e.g. under a profiler).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use metarep_capture::{capture, CaptureSpec, TokenDataset};
use metarep_core::rng::{derive_seed, normal_vec, seeded};
use metarep_model::{HookPoint, HookedTransformer, Input};
use metarep_sae::source::Batch;
use metarep_sae::{Architecture, Sae, SaeConfig, SaeTrainer};
use serde_json::{json, Value};

use super::forward::gpt2_small;
use super::{median, setting, write_report};
use crate::error::BoxError;

/// The `--set` keys this benchmark accepts.
pub const SETTINGS: &[&str] = &["parts", "quick", "reps", "torch"];

const FORWARD_TARGET: f64 = 1.2;
const CACHE_TARGET: f64 = 0.10;
const SAE_TARGET: f64 = 2.0;
const CAPTURE_TARGET: f64 = 50_000.0;

/// SmolLM2-135M's `config.json` (the published architecture numbers).
const SMOLLM2_CONFIG: &str = r#"{
  "model_type": "llama", "architectures": ["LlamaForCausalLM"],
  "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
  "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_act": "silu",
  "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 100000,
  "tie_word_embeddings": true, "vocab_size": 49152,
  "attention_bias": false, "mlp_bias": false
}"#;

/// Shapes of one run: the full ones of the issue, or small ones (`quick=1`).
struct Shapes {
    forward: (usize, usize),
    sae_batch: usize,
    sae_expansion: usize,
    capture_contexts: usize,
    reps: usize,
}

impl Shapes {
    fn new(quick: bool) -> Self {
        if quick {
            Shapes {
                forward: (2, 64),
                sae_batch: 256,
                sae_expansion: 4,
                capture_contexts: 8,
                reps: 2,
            }
        } else {
            Shapes {
                forward: (32, 1024),
                sae_batch: 4096,
                sae_expansion: 32,
                capture_contexts: 512,
                reps: 10,
            }
        }
    }
}

/// Runs the benchmark and writes `results/bench/gpu.json`.
pub fn run(out: &Path) -> Result<bool, BoxError> {
    let spec = crate::device::chosen().unwrap_or(metarep_core::device::DeviceSpec::Cuda(0));
    let dev = spec.to_device()?;
    let mut shapes = Shapes::new(setting("quick") == Some("1"));
    if let Some(r) = setting("reps") {
        shapes.reps = r.parse().map_err(|_| format!("bad reps `{r}`"))?;
    }
    let parts: Vec<&str> = setting("parts")
        .unwrap_or("forward,sae,capture")
        .split(',')
        .collect();
    let mut body = json!({ "device": spec.to_string() });
    let mut ok = true;
    for part in parts {
        let (result, met) = match part {
            "forward" => forward(&dev, &spec, &shapes)?,
            "sae" => sae(&dev, &spec, &shapes)?,
            "capture" => capture_rate(&dev, &shapes, out)?,
            other => return Err(format!("unknown part `{other}` (forward, sae, capture)").into()),
        };
        println!("  {part}: {result}");
        ok &= met != Some(false);
        body[part] = result;
    }
    write_report(out, "gpu", body)?;
    Ok(ok)
}

/// Median ms of `f` over `reps` runs after `warmup` runs, each ended by a device sync.
fn time_on(
    dev: &Device,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<(), BoxError>,
) -> Result<Vec<f64>, BoxError> {
    for _ in 0..warmup.min(reps) {
        f()?;
    }
    dev.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// Runs `xtask/python/<script> args...` and parses the last line of its output as JSON; the
/// error (as a note) when it fails or when the references are switched off (`torch=0`).
fn python_json(script: &str, args: &[String]) -> Result<Value, String> {
    if setting("torch") == Some("0") {
        return Err("PyTorch reference skipped (torch=0)".into());
    }
    let py = crate::fixtures::python();
    let path = crate::fixtures::repo_root()
        .join("xtask/python")
        .join(script);
    let out = Command::new(&py)
        .arg(&path)
        .args(args)
        .output()
        .map_err(|e| format!("{py} not runnable: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(format!("{script} failed: {}", tail.join(" | ")));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("{script}: bad JSON ({e}): {last}"))
}

/// Random token ids `[b, p]` below `vocab`, on the CPU.
fn tokens(b: usize, p: usize, vocab: usize) -> Result<Tensor, BoxError> {
    let ids: Vec<u32> = (0..b * p)
        .map(|i| ((i as u64 * 2_654_435_761) % vocab as u64) as u32)
        .collect();
    Ok(Tensor::from_vec(ids, (b, p), &Device::Cpu)?)
}

fn forward(
    dev: &Device,
    spec: &metarep_core::device::DeviceSpec,
    s: &Shapes,
) -> Result<(Value, Option<bool>), BoxError> {
    let (b, p) = s.forward;
    let dtype = if dev.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let model = HookedTransformer::random(gpt2_small(), 0, dtype, dev)?;
    let input = Input::new(tokens(b, p, 50257)?.to_device(dev)?);
    let plain = time_on(dev, 3, s.reps, || {
        drop(std::hint::black_box(model.forward(input.clone())?));
        Ok(())
    })?;
    let cached = time_on(dev, 2, s.reps, || {
        drop(std::hint::black_box(
            model.run_with_cache(input.clone(), "blocks.*.hook_resid_post")?,
        ));
        Ok(())
    })?;
    let ms = median(&plain);
    let tokens_per_s = (b * p) as f64 / (ms / 1e3);
    let overhead = median(&cached) / ms - 1.0;
    let mut result = json!({
        "shape": [b, p], "dtype": format!("{dtype:?}"),
        "metarep": { "ms": ms, "times_ms": plain, "tokens_per_s": tokens_per_s },
        "cache_resid_post": { "ms": median(&cached), "times_ms": cached, "overhead": overhead,
                              "target": CACHE_TARGET, "meets_target": overhead <= CACHE_TARGET },
    });
    let mut met = overhead <= CACHE_TARGET;
    if dev.is_cuda() {
        let args: Vec<String> = [
            "--batch".into(),
            b.to_string(),
            "--pos".into(),
            p.to_string(),
            "--reps".into(),
            s.reps.to_string(),
            "--device".into(),
            spec.to_string(),
        ]
        .to_vec();
        match python_json("bench_gpu_forward.py", &args) {
            Ok(torch) => {
                let eager = torch["eager"]["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
                let speedup = tokens_per_s / eager;
                result["speedup_vs_eager"] = json!(speedup);
                result["speedup_vs_sdpa"] = json!(
                    tokens_per_s / torch["sdpa"]["tokens_per_s"].as_f64().unwrap_or(f64::NAN)
                );
                result["target"] = json!(FORWARD_TARGET);
                result["meets_target"] = json!(speedup >= FORWARD_TARGET);
                met &= speedup >= FORWARD_TARGET;
                result["pytorch"] = torch;
            }
            Err(note) => result["note"] = json!(note),
        }
    } else {
        result["note"] = json!("no PyTorch reference on the CPU (the CPU bench is `forward`)");
    }
    Ok((result, Some(met)))
}

fn sae(
    dev: &Device,
    spec: &metarep_core::device::DeviceSpec,
    s: &Shapes,
) -> Result<(Value, Option<bool>), BoxError> {
    let (d_in, k) = (768, 32);
    let arch = Architecture::TopK { k };
    let config = SaeConfig::new(d_in, s.sae_expansion, arch)?;
    let mut sae = Sae::new(config, 0, DType::F32, dev)?;
    let mut cfg = super::sae::train_config(arch);
    cfg.batch = s.sae_batch;
    let mut trainer = SaeTrainer::new(&sae, &cfg)?;
    let x = normal_vec(
        &mut seeded(derive_seed(0, "bench/gpu/sae")),
        s.sae_batch * d_in,
        0.0,
        1.0,
    )?;
    let batch = Batch {
        x: Tensor::from_vec(x, (s.sae_batch, d_in), dev)?.to_dtype(DType::F32)?,
        labels: None,
        window: 1,
    };
    let mut step = 0;
    let times = time_on(dev, 2, s.reps, || {
        trainer.step(&mut sae, &batch, step)?;
        step += 1;
        Ok(())
    })?;
    let ms = median(&times);
    let tokens_per_s = s.sae_batch as f64 / (ms / 1e3);
    let mut result = json!({
        "d_in": d_in, "d_sae": d_in * s.sae_expansion, "k": k, "batch": s.sae_batch,
        "metarep": { "step_ms": ms, "times_ms": times, "tokens_per_s": tokens_per_s },
    });
    let mut met = None;
    let args: Vec<String> = [
        "topk".to_string(),
        "--d-in".into(),
        d_in.to_string(),
        "--expansion".into(),
        s.sae_expansion.to_string(),
        "--batch".into(),
        s.sae_batch.to_string(),
        "--k".into(),
        k.to_string(),
        "--steps".into(),
        s.reps.to_string(),
        "--device".into(),
        if dev.is_cpu() {
            "cpu".to_string()
        } else {
            spec.to_string()
        },
    ]
    .to_vec();
    match python_json("bench_sae.py", &args) {
        Ok(torch) => {
            let speedup = tokens_per_s / torch["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            result["speedup"] = json!(speedup);
            result["target"] = json!(SAE_TARGET);
            result["meets_target"] = json!(speedup >= SAE_TARGET);
            met = Some(speedup >= SAE_TARGET);
            result["pytorch"] = torch;
        }
        Err(note) => result["note"] = json!(note),
    }
    Ok((result, met))
}

fn capture_rate(dev: &Device, s: &Shapes, out: &Path) -> Result<(Value, Option<bool>), BoxError> {
    let cfg = metarep_model::hf_config::parse_hf_config(
        SMOLLM2_CONFIG,
        Path::new("SmolLM2-135M config.json"),
    )?;
    let context = if s.capture_contexts < 64 { 128 } else { 1024 };
    let dtype = if dev.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let model = HookedTransformer::random(cfg.clone(), 0, dtype, dev)?;
    let ids = tokens(s.capture_contexts, context, cfg.d_vocab)?.to_vec2::<u32>()?;
    let data = |n: usize| TokenDataset {
        path: PathBuf::from("generated"),
        sha256: String::new(),
        sequences: ids[..n].to_vec(),
        dropped: 0,
    };
    let spec = CaptureSpec {
        hooks: vec![HookPoint::ResidPost(15)],
        dtype: "f16".into(),
        shard_tokens: 1 << 16,
        batch_contexts: 32,
        model_name: "SmolLM2-135M-shaped (random weights)".into(),
        max_contexts: None,
    };
    let dir = out.join("gpu-capture");
    let _ = std::fs::remove_dir_all(&dir);
    // A warm-up capture (kernel loading, allocator), then the timed one.
    capture(
        &model,
        &data(s.capture_contexts.min(32)),
        &dir.join("warm"),
        &spec,
        |_, _| {},
    )?;
    let report = capture(
        &model,
        &data(s.capture_contexts),
        &dir.join("timed"),
        &spec,
        |_, _| {},
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    let rate = report.tokens_this_run as f64 / report.seconds;
    let met = rate >= CAPTURE_TARGET;
    Ok((
        json!({
            "hook": "blocks.15.hook_resid_post", "dtype": format!("{dtype:?}"), "store": "f16",
            "context": context, "tokens": report.tokens_this_run, "seconds": report.seconds,
            "tokens_per_s": rate, "target": CAPTURE_TARGET, "meets_target": met,
        }),
        Some(met),
    ))
}

//! `forward`: tokens/s of the hooked GPT-2-small-shaped transformer (12 layers, d_model 768,
//! 12 heads, d_mlp 3072, vocab 50257, random weights), batch 4 × 128, f32 on the CPU: a plain
//! forward, `run_with_cache` of every hook, and of `hook_resid_post` only. In the same run: the
//! machine's f32 matmul peak (best rate of candle's matmul over large shapes) and TransformerLens
//! 2.x on the same config through `xtask/python/bench_forward_tl.py` (skipped with a note when
//! Python, torch or transformer_lens are missing).
//!
//! Targets: plain forward ≥ 1.3× TransformerLens tokens/s; ≥ 60% of the matmul peak; caching
//! every hook ≤ 10% over the plain forward.

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use metarep_model::{HookFilter, HookedTransformer, Input, ModelConfig};

use super::{median_ms, write_report};
use crate::BoxError;

const BATCH: usize = 4;
const POS: usize = 128;

fn gpt2_small() -> ModelConfig {
    let mut cfg = ModelConfig::gpt2_like(12, 768, 12, 50257, 1024);
    cfg.d_mlp = 3072;
    cfg
}

/// FLOPs of one forward pass of `cfg` on `b × p` tokens (matmuls only, as computed: the full
/// `p × p` score matrix per head).
fn forward_flops(cfg: &ModelConfig, b: usize, p: usize) -> f64 {
    let (d, m, v) = (cfg.d_model as f64, cfg.d_mlp as f64, cfg.d_vocab as f64);
    let t = (b * p) as f64;
    let per_layer =
        t * (2.0 * d * 3.0 * d + 2.0 * d * d + 2.0 * 2.0 * d * m + 2.0 * 2.0 * p as f64 * d);
    cfg.n_layers as f64 * per_layer + t * 2.0 * d * v
}

/// Best f32 GFLOP/s of candle's matmul over a few large shapes (the machine's practical peak).
fn matmul_peak() -> Result<(f64, Vec<serde_json::Value>), BoxError> {
    let mut best = 0f64;
    let mut rows = Vec::new();
    for (m, k, n) in [
        (512, 768, 3072),
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (512, 768, 50257),
    ] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
        let reps = if m * k * n > 1 << 32 { 3 } else { 7 };
        let ms = median_ms(reps, || {
            std::hint::black_box(a.matmul(&b)?);
            Ok(())
        })?;
        let gflops = 2.0 * (m * k * n) as f64 / (ms * 1e6);
        println!("  matmul {m}×{k}×{n}: {ms:.1} ms, {gflops:.1} GFLOP/s");
        rows.push(serde_json::json!({"m": m, "k": k, "n": n, "ms": ms, "gflops": gflops}));
        best = best.max(gflops);
    }
    Ok((best, rows))
}

/// TransformerLens's timings, or the reason they are missing.
fn transformer_lens(threads: usize, reps: usize) -> Result<serde_json::Value, String> {
    let root = crate::fixtures::repo_root();
    let py = crate::fixtures::python();
    let out = Command::new(&py)
        .arg(root.join("xtask/python/bench_forward_tl.py"))
        .args([threads.to_string(), reps.to_string()])
        .output()
        .map_err(|e| format!("{py} not runnable ({e}); set METAREP_PYTHON to a Python with torch and transformer_lens"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(format!("TransformerLens benchmark skipped ({py}): {last}"));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line)
        .map_err(|e| format!("unreadable TransformerLens output ({e}): {line}"))
}

/// Runs the benchmark and writes `results/bench/forward.json`.
pub fn run(out: &Path) -> Result<bool, BoxError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cfg = gpt2_small();
    println!("  building a random GPT-2-small-shaped model ...");
    let model = HookedTransformer::random(cfg.clone(), 0, DType::F32, &Device::Cpu)?;
    let tokens = Tensor::rand(0f32, cfg.d_vocab as f32, (BATCH, POS), &Device::Cpu)?
        .floor()?
        .to_dtype(DType::U32)?;
    let input = Input::new(tokens);
    let reps = 5;
    let plain = median_ms(reps, || {
        std::hint::black_box(model.forward(input.clone())?);
        Ok(())
    })?;
    let all = HookFilter::All.resolve(model.config())?.len();
    let cache_all = median_ms(reps, || {
        std::hint::black_box(model.run_with_cache(input.clone(), HookFilter::All)?);
        Ok(())
    })?;
    let cache_resid = median_ms(reps, || {
        std::hint::black_box(model.run_with_cache(input.clone(), "blocks.*.hook_resid_post")?);
        Ok(())
    })?;
    let tokens = (BATCH * POS) as f64;
    let tps = |ms: f64| tokens / (ms / 1e3);
    let flops = forward_flops(&cfg, BATCH, POS);
    let achieved = flops / (plain * 1e6);
    println!("  metarep: plain {plain:.1} ms ({:.0} tok/s, {achieved:.1} GFLOP/s), cache all {all} hooks {cache_all:.1} ms, cache resid_post {cache_resid:.1} ms", tps(plain));
    let (peak, peak_rows) = matmul_peak()?;
    let frac_peak = achieved / peak;
    let cache_overhead = cache_all / plain - 1.0;
    println!("  matmul peak {peak:.1} GFLOP/s → forward at {:.0}% of peak; caching everything costs {:+.1}%", 100.0 * frac_peak, 100.0 * cache_overhead);
    let tl = transformer_lens(threads, reps);
    let (tl_json, speedup, note) = match &tl {
        Ok(v) => {
            let tl_plain = v["plain_ms"].as_f64().unwrap_or(f64::NAN);
            let s = tl_plain / plain;
            println!(
                "  TransformerLens: plain {tl_plain:.1} ms, cache all {:.1} ms, cache resid_post {:.1} ms → metarep plain is {s:.2}× TransformerLens",
                v["cache_all_ms"].as_f64().unwrap_or(f64::NAN),
                v["cache_resid_post_ms"].as_f64().unwrap_or(f64::NAN)
            );
            (v.clone(), Some(s), String::new())
        }
        Err(note) => {
            println!("  {note}");
            (serde_json::Value::Null, None, note.clone())
        }
    };
    let body = serde_json::json!({
        "what": "GPT-2-small shape (12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257), random weights, batch 4 x 128, f32 CPU",
        "tokens": BATCH * POS,
        "metarep": {
            "plain_ms": plain, "plain_tokens_per_s": tps(plain),
            "cache_all_ms": cache_all, "cache_all_hooks": all, "cache_all_tokens_per_s": tps(cache_all),
            "cache_resid_post_ms": cache_resid, "cache_resid_post_tokens_per_s": tps(cache_resid),
            "forward_gflop": flops / 1e9, "forward_gflops": achieved,
        },
        "matmul_peak_gflops": peak,
        "matmul_shapes": peak_rows,
        "fraction_of_matmul_peak": frac_peak,
        "cache_all_overhead": cache_overhead,
        "transformer_lens": tl_json,
        "speedup_vs_transformer_lens": speedup,
        "note": note,
        "targets": {
            "speedup_vs_transformer_lens_ge_1_3": speedup.map(|s| s >= 1.3),
            "fraction_of_matmul_peak_ge_0_6": frac_peak >= 0.6,
            "cache_all_overhead_le_0_1": cache_overhead <= 0.1,
        },
    });
    write_report(out, "forward", body)?;
    Ok(true)
}

//! `sae`: one training step (forward, backward, AdamW, decoder renormalisation) of a TopK
//! (k = 32) and a ReLU + L1 sparse autoencoder, d_in = 768, expansion 16, batch 4096, f32 on
//! the CPU — metarep-sae vs a plain PyTorch implementation of the same model, loss and
//! optimiser (`xtask/python/bench_sae.py`, run with `$METAREP_PYTHON`, default `python3`;
//! skipped with a note when it or torch is missing), in the same run, as tokens/s and ratios.
//! Peak memory: each side's peak resident set (metarep: `VmHWM` of this process, reset before
//! each measurement through `/proc/self/clear_refs`; PyTorch: `ru_maxrss` of its process).

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use metarep_core::memory;
use metarep_core::rng::{derive_seed, normal_vec, seeded};
use metarep_sae::source::Batch;
use metarep_sae::{Architecture, LossConfig, Sae, SaeConfig, SaeTrainConfig, SaeTrainer};
use serde::Serialize;

use super::{load_average, median, sae_store, write_report};
use crate::error::BoxError;

const D_IN: usize = 768;
pub(super) const EXPANSION: usize = 16;
pub(super) const BATCH: usize = 4096;
pub(super) const K: usize = 32;
const L1: f64 = 5.0;
const LR: f64 = 3e-4;
/// Timed steps per side (after one warm-up step).
pub(super) const STEPS: usize = 5;
/// Targets of the issue: metarep tokens/s over PyTorch tokens/s.
const TOPK_TARGET: f64 = 4.0;
const RELU_TARGET: f64 = 1.2;
/// Target of the store row (end to end, real activations).
const STORE_TARGET: f64 = 3.0;

/// One side's timings.
#[derive(Serialize)]
pub(super) struct Side {
    /// Median wall time of a step.
    pub step_ms: f64,
    /// Median CPU time (user + system, all threads) of a step: less sensitive than wall time to
    /// other processes competing for the 2 cores.
    pub step_cpu_ms: f64,
    /// Rows per second.
    pub tokens_per_s: f64,
    /// Peak resident memory of the side's process.
    pub peak_rss_mb: Option<f64>,
    /// Where a metarep step's time goes (not measured for PyTorch).
    pub profile: Option<StepProfile>,
}

/// A metarep step split into time inside dense products (`metarep_kernels::profile`: the
/// kernels' gemm calls and the candle matmuls they issue) and everything else, per step, from
/// the mean over the timed steps.
#[derive(Serialize)]
pub(super) struct StepProfile {
    /// Wall ms per step inside dense products.
    pub matmul_ms: f64,
    /// The products' rate, GFLOP/s.
    pub matmul_gflops: f64,
    /// Wall ms per step elsewhere (element-wise passes, selection, sparse kernels, optimiser,
    /// allocation, batch reading).
    pub other_ms: f64,
    /// `other_ms` over the mean step time.
    pub other_fraction: f64,
}

/// Times `step(i)` for `i` in `0..=STEPS` (step 0 is a warm-up, not timed) with the kernels'
/// matmul counters around the timed steps; `rows` per step.
pub(super) fn time_steps(
    rows: usize,
    mut step: impl FnMut(usize) -> Result<(), BoxError>,
) -> Result<Side, BoxError> {
    step(0)?;
    metarep_kernels::profile::reset();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for i in 1..=STEPS {
        let (c0, t0) = (cpu_ms(), std::time::Instant::now());
        step(i)?;
        wall.push(t0.elapsed().as_secs_f64() * 1e3);
        cpu.push(cpu_ms() - c0);
    }
    let mm = metarep_kernels::profile::matmul_time();
    let mean = wall.iter().sum::<f64>() / STEPS as f64;
    let matmul_ms = mm.seconds * 1e3 / STEPS as f64;
    let ms = median(&wall);
    Ok(Side {
        step_ms: ms,
        step_cpu_ms: median(&cpu),
        tokens_per_s: rows as f64 / (ms / 1e3),
        peak_rss_mb: memory::peak_resident_mib(),
        profile: Some(StepProfile {
            matmul_ms,
            matmul_gflops: mm.gflops(),
            other_ms: mean - matmul_ms,
            other_fraction: (mean - matmul_ms) / mean,
        }),
    })
}

#[derive(Serialize)]
struct Row {
    arch: &'static str,
    metarep: Side,
    pytorch: Option<Side>,
    /// torch version, thread count and the SIMD level its CPU kernels dispatch to.
    pytorch_build: Option<serde_json::Value>,
    speedup: Option<f64>,
    /// PyTorch CPU time per step over metarep's.
    cpu_time_ratio: Option<f64>,
    target: f64,
    meets_target: Option<bool>,
}

/// Runs the benchmark and writes `results/bench/sae.json`.
pub fn run(out: &Path) -> Result<bool, BoxError> {
    // The store row's capture runs first: nothing is timed next to it.
    let captured = sae_store::prepare(&out.join("sae_store"))?;
    let load_before = load_average();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    println!(
        "  {:<10} {:>16} {:>9} {:>8} | {:>16} {:>9} {:>8} | speedup (target), CPU-time ratio",
        "arch",
        "metarep ms (cpu)",
        "tokens/s",
        "peak MB",
        "PyTorch ms (cpu)",
        "tokens/s",
        "peak MB"
    );
    for (arch, name, target) in [
        (Architecture::TopK { k: K }, "topk", TOPK_TARGET),
        (Architecture::Relu, "relu", RELU_TARGET),
    ] {
        let metarep = time_metarep(arch)?;
        let pytorch = time_pytorch(name, D_IN, None);
        rows.push(row(name, target, metarep, pytorch, &mut notes));
    }
    let metarep = sae_store::time_metarep(&captured)?;
    let pytorch = time_pytorch("topk", captured.d_in, Some(&captured.npy));
    rows.push(row(
        "topk_store",
        STORE_TARGET,
        metarep,
        pytorch,
        &mut notes,
    ));
    for n in &notes {
        println!("  note: {n}");
    }
    write_report(
        out,
        "sae",
        serde_json::json!({
            "what": "one SAE training step (forward, backward, AdamW, decoder renormalisation), expansion 16, batch 4096, f32 CPU; metarep-sae vs plain PyTorch, same run; median of 5 steps after 1 warm-up; step_cpu_ms = median CPU time (all threads) per step. Rows topk and relu: d_in 768, one fixed random batch. Row topk_store: d_in 576, real SmolLM2 activations, each step reads its shuffled batch (metarep from the f16 activation store, PyTorch from an f16 NumPy memmap of the same rows)",
            "d_in": D_IN, "expansion": EXPANSION, "batch": BATCH, "k": K, "l1": L1,
            "store_rows": captured.rows, "store_d_in": captured.d_in,
            "rows": rows,
            "notes": notes,
            "load_average_before": load_before,
            "load_average_after": load_average(),
        }),
    )?;
    std::fs::remove_dir_all(out.join("sae_store"))?;
    Ok(true)
}

/// One row from both sides' timings (a PyTorch side that could not run becomes a note), printed.
fn row(
    name: &'static str,
    target: f64,
    metarep: Side,
    pytorch: Result<(Side, serde_json::Value), BoxError>,
    notes: &mut Vec<String>,
) -> Row {
    let (pytorch, pytorch_build) = match pytorch {
        Ok((s, build)) => (Some(s), Some(build)),
        Err(e) => {
            notes.push(format!("PyTorch side of {name} skipped: {e}"));
            (None, None)
        }
    };
    let speedup = pytorch
        .as_ref()
        .map(|p| metarep.tokens_per_s / p.tokens_per_s);
    let cpu_time_ratio = pytorch
        .as_ref()
        .map(|p| p.step_cpu_ms / metarep.step_cpu_ms);
    let fmt_mb = |s: &Side| s.peak_rss_mb.map_or("n/a".into(), |m| format!("{m:.0}"));
    let fmt_ms = |s: &Side| format!("{:.1} ({:.0})", s.step_ms, s.step_cpu_ms);
    println!(
        "  {name:<10} {:>16} {:>9.0} {:>8} | {:>16} {:>9} {:>8} | {} ({target}×), {}",
        fmt_ms(&metarep),
        metarep.tokens_per_s,
        fmt_mb(&metarep),
        pytorch.as_ref().map_or("skipped".into(), fmt_ms),
        pytorch
            .as_ref()
            .map_or("-".into(), |p| format!("{:.0}", p.tokens_per_s)),
        pytorch.as_ref().map_or("-".into(), fmt_mb),
        speedup.map_or("-".into(), |s| format!("{s:.2}×")),
        cpu_time_ratio.map_or("-".into(), |r| format!("{r:.2}×")),
    );
    if let Some(p) = &metarep.profile {
        println!(
            "  {:<10} metarep step: {:.0} ms in products ({:.0} GFLOP/s), {:.0} ms elsewhere ({:.0}%)",
            "",
            p.matmul_ms,
            p.matmul_gflops,
            p.other_ms,
            p.other_fraction * 100.0
        );
    }
    Row {
        arch: name,
        metarep,
        pytorch,
        pytorch_build,
        speedup,
        cpu_time_ratio,
        target,
        meets_target: speedup.map(|s| s >= target),
    }
}

/// The training settings of every row (`arch`'s L1 penalty for ReLU, none otherwise).
pub(super) fn train_config(arch: Architecture) -> SaeTrainConfig {
    let loss = LossConfig {
        l1: if arch == Architecture::Relu { L1 } else { 0.0 },
        ..Default::default()
    };
    SaeTrainConfig {
        seed: 0,
        batch: BATCH,
        steps: 1_000_000,
        lr: LR,
        warmup: 0,
        weight_decay: 0.0,
        clip: 0.0,
        loss,
        dead_window: 10_000_000,
        resample: None,
        b_dec_init_mean: false,
        norm_batches: 1,
        threshold_lr: 0.01,
        checkpoint_every: 0,
        log_every: 0,
    }
}

fn time_metarep(arch: Architecture) -> Result<Side, BoxError> {
    memory::reset_peak();
    let config = SaeConfig::new(D_IN, EXPANSION, arch)?;
    let mut sae = Sae::new(config, 0, DType::F32, &Device::Cpu)?;
    let mut trainer = SaeTrainer::new(&sae, &train_config(arch))?;
    let x = normal_vec(
        &mut seeded(derive_seed(0, "bench/sae")),
        BATCH * D_IN,
        0.0,
        1.0,
    )?;
    let batch = Batch {
        x: Tensor::from_vec(x, (BATCH, D_IN), &Device::Cpu)?.to_dtype(DType::F32)?,
        labels: None,
        window: 1,
    };
    time_steps(BATCH, |step| {
        trainer.step(&mut sae, &batch, step)?;
        Ok(())
    })
}

/// The PyTorch side's timings and build facts (version, threads, CPU capability).
/// `d_in` is the row width; with `memmap`, each step reads its shuffled batch from that `.npy`
/// file instead of reusing one random batch.
fn time_pytorch(
    arch: &str,
    d_in: usize,
    memmap: Option<&Path>,
) -> Result<(Side, serde_json::Value), BoxError> {
    let python = std::env::var("METAREP_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/bench_sae.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script);
    if let Some(path) = memmap {
        cmd.arg("--memmap").arg(path);
    }
    let out = cmd
        .arg(arch)
        .args([
            "--d-in",
            &d_in.to_string(),
            "--expansion",
            &EXPANSION.to_string(),
        ])
        .args([
            "--batch",
            &BATCH.to_string(),
            "--k",
            &K.to_string(),
            "--l1",
            &L1.to_string(),
        ])
        .args(["--steps", &STEPS.to_string(), "--warmup", "1"])
        .output()
        .map_err(|e| {
            format!("cannot run `{python}` ({e}); set METAREP_PYTHON to a Python with torch")
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(format!("`{python} {}` failed: {last}", script.display()).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| format!("bench_sae.py output has no `{k}`"))
    };
    let side = Side {
        step_ms: num("step_ms")?,
        step_cpu_ms: num("step_cpu_ms")?,
        tokens_per_s: num("tokens_per_s")?,
        peak_rss_mb: v.get("peak_rss_mb").and_then(|x| x.as_f64()),
        profile: None,
    };
    let build = serde_json::json!({
        "torch": v.get("torch"),
        "threads": v.get("threads"),
        "cpu_capability": v.get("cpu_capability"),
    });
    Ok((side, build))
}

/// CPU time (user + system) of this process so far, in ms (Linux; clock ticks of 10 ms).
pub(super) fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (tick(11) + tick(12)) * 10.0
}

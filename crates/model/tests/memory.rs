//! `run_with_cache` of every hook in a loop of 1 000 passes holds flat memory: the resident set
//! after the last pass is within a few MiB of the one after a warm-up, both with glibc's default
//! trimming ([`keep_allocator_defaults`]) and with [`retain_freed_memory`], which caching
//! applies by default. A cache kept alive by anything (a hook registry, a
//! reference cycle) would grow it by the cache's size on every pass, hundreds of times the bound.
//!
//! This file holds one test (Linux: it reads `/proc/self/status`), so its binary runs nothing
//! else while it measures.

#![cfg(target_os = "linux")]

use candle_core::{DType, Device, Tensor};
use metarep_core::memory::resident_mib;
use metarep_model::memory::{keep_allocator_defaults, retain_freed_memory};
use metarep_model::{HookFilter, HookedTransformer, ModelConfig};

const WARMUP: usize = 100;
const PASSES: usize = 1_000;
/// Growth of the resident set over the measured passes allowed (MiB): allocator and page-cache
/// noise, far below one leaked cache per pass.
const ALLOWED_GROWTH_MIB: f64 = 8.0;

/// Runs `passes` cached forward passes and returns the resident set after each hundredth (MiB).
fn loop_rss(model: &HookedTransformer, tokens: &Tensor, passes: usize) -> Vec<f64> {
    let mut readings = Vec::new();
    for pass in 1..=passes {
        let (logits, cache) = model
            .run_with_cache(tokens.clone(), HookFilter::All)
            .unwrap();
        assert_eq!(logits.dims()[0], 4);
        assert!(cache.len() > 40);
        drop((logits, cache));
        if pass % 100 == 0 {
            readings.push(resident_mib().expect("/proc/self/status is readable on Linux"));
        }
    }
    readings
}

/// The bytes one pass's cache holds (MiB).
fn cache_mib(model: &HookedTransformer, tokens: &Tensor) -> f64 {
    let (_, cache) = model
        .run_with_cache(tokens.clone(), HookFilter::All)
        .unwrap();
    let bytes: usize = cache
        .iter()
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    bytes as f64 / (1 << 20) as f64
}

#[test]
fn run_with_cache_in_a_loop_holds_flat_memory() {
    keep_allocator_defaults();
    let model = HookedTransformer::random(
        ModelConfig::gpt2_like(4, 64, 4, 100, 64),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let ids: Vec<u32> = (0..4 * 64).map(|i| (i * 7 % 100) as u32).collect();
    let tokens = Tensor::from_vec(ids, (4, 64), &Device::Cpu).unwrap();
    let per_pass = cache_mib(&model, &tokens);
    // A leak of one cache per pass would add this much over the measured passes.
    let leak = per_pass * (PASSES - WARMUP) as f64;
    assert!(
        leak > 100.0 * ALLOWED_GROWTH_MIB,
        "cache {per_pass:.2} MiB per pass"
    );
    for retained in [false, true] {
        if retained {
            retain_freed_memory();
        }
        let warm = *loop_rss(&model, &tokens, WARMUP).last().unwrap();
        let readings = loop_rss(&model, &tokens, PASSES - WARMUP);
        let growth = readings.last().unwrap() - warm;
        eprintln!(
            "retain_freed_memory = {retained}: cache {per_pass:.2} MiB per pass; resident \
             {warm:.1} MiB after {WARMUP} passes, then every 100 passes {readings:.1?}"
        );
        assert!(
            growth <= ALLOWED_GROWTH_MIB,
            "resident set grew {growth:.1} MiB over {} passes (retain_freed_memory = {retained})",
            PASSES - WARMUP
        );
    }
}

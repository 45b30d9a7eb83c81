//! `capture`: activation-store write and read throughput against the disk's sequential
//! bandwidth, measured in the same run on the same file system.
//!
//! - Write: the store writer (f16 shards from f32 rows: conversion, safetensors encoding,
//!   SHA-256, temp file + fsync + rename, `meta.json` update per shard) vs one plain file of the
//!   same size written in shard-sized chunks, fdatasync after each. Target: ≥ 80%.
//! - Read, cold (page cache dropped with `posix_fadvise(DONTNEED)` before each side): the
//!   shuffled reader (read, SHA-256 check, decode, f16 → f32, shuffle buffer, batches of 4096
//!   rows) vs reading the plain file sequentially. Target: ≥ 80%.
//! - End to end: `capture` of `blocks.0.hook_resid_post` of a GPT-2-small-shaped random model
//!   (tokens/s), where the forward pass, not the disk, is the limit.
//!
//! Settings (`--set key=value`): `size_mib` (store size, default 1024). Files go under
//! `target/capture-bench/` and are deleted afterwards.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use metarep_capture::{capture, CaptureSpec, StoreMeta, StoreReader, StoreWriter, TokenDataset};
use metarep_model::{HookPoint, HookedTransformer, ModelConfig};
use serde_json::json;

use super::disk::{cpu_secs, drop_cache, num, plain_write};
use super::write_report;
use crate::BoxError;

/// The `--set` keys this benchmark accepts.
pub const SETTINGS: &[&str] = &["size_mib"];

const D_IN: usize = 768;
const SHARD_TOKENS: usize = 1 << 16;
const CONTEXT: usize = 128;
const TARGET: f64 = 0.8;

fn meta(d_in: usize) -> StoreMeta {
    StoreMeta {
        format_version: metarep_capture::store::FORMAT_VERSION,
        model: "bench".into(),
        model_config_sha256: String::new(),
        hook: "blocks.0.hook_resid_post".into(),
        dtype: "f16".into(),
        d_in,
        context: CONTEXT,
        contexts_per_shard: SHARD_TOKENS / CONTEXT,
        dataset: "random".into(),
        dataset_sha256: String::new(),
        dataset_tokens: 0,
        shards: Vec::new(),
        complete: false,
    }
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>, BoxError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// Runs the benchmark and writes `results/bench/capture.json`.
pub fn run(out: &Path) -> Result<bool, BoxError> {
    let size_mib = num("size_mib", 1024.0)?;
    let shards = ((size_mib * (1 << 20) as f64) / (SHARD_TOKENS * D_IN * 2) as f64)
        .ceil()
        .max(1.0) as usize;
    let root = PathBuf::from("target/capture-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let result = run_in(out, &root, shards);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(out: &Path, root: &Path, shards: usize) -> Result<bool, BoxError> {
    // One shard's worth of f32 rows, reused (the writer converts and hashes each time).
    let rows = Tensor::randn(0f32, 1.0, (SHARD_TOKENS, D_IN), &Device::Cpu)?;
    let store = root.join("store");
    let bytes_per_shard = (SHARD_TOKENS * D_IN * 2) as u64;
    let total = bytes_per_shard * shards as u64;
    println!(
        "  {shards} shards of {SHARD_TOKENS} × {D_IN} f16 ({:.0} MiB)",
        total as f64 / (1 << 20) as f64
    );

    // Plain sequential write of the same size in shard-sized chunks, fdatasync after each
    // (as the store syncs each shard), then the store.
    let plain = root.join("plain.bin");
    let (plain_w, plain_w_cpu) = plain_write(&plain, total, bytes_per_shard as usize, true)?;
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let mut writer = StoreWriter::open(&store, meta(D_IN))?;
    for i in 0..shards {
        writer.push(rows.clone())?;
        writer.finish_shard(i + 1 == shards)?;
    }
    let store_w = t0.elapsed().as_secs_f64();
    let store_w_cpu = cpu_secs() - cpu0;

    // Cold reads: the plain file (written again, untimed) and the store, both dropped from the
    // page cache first.
    let chunk: Vec<u8> = (0..bytes_per_shard as usize)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    {
        let mut f = File::create(&plain)?;
        for _ in 0..shards {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    for f in files_under(&store)? {
        drop_cache(&f)?;
    }
    drop_cache(&plain)?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1 << 22];
    let mut f = File::open(&plain)?;
    let mut read = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    let plain_r = t0.elapsed().as_secs_f64();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let mut reader = StoreReader::open(&store, 0, SHARD_TOKENS)?;
    let mut rows_read = 0usize;
    while let Some(b) = reader.next_batch(4096)? {
        rows_read += b.dim(0)?;
    }
    let store_r = t0.elapsed().as_secs_f64();
    let store_r_cpu = cpu_secs() - cpu0;
    if rows_read != shards * SHARD_TOKENS || read != total {
        return Err(format!(
            "read {rows_read} rows / {read} bytes, expected {} / {total}",
            shards * SHARD_TOKENS
        )
        .into());
    }

    // End to end on a GPT-2-small-shaped random model.
    let mut cfg = ModelConfig::gpt2_like(12, D_IN, 12, 50257, 1024);
    cfg.d_mlp = 4 * D_IN;
    let model = HookedTransformer::random(cfg, 0, DType::F32, &Device::Cpu)?;
    let ids = root.join("data.ids");
    let line: Vec<String> = (0..CONTEXT * 64)
        .map(|i| ((i * 7919) % 50257).to_string())
        .collect();
    std::fs::write(&ids, line.join(" "))?;
    let data = TokenDataset::load(&ids, None, CONTEXT)?;
    let spec = CaptureSpec {
        hooks: vec![HookPoint::ResidPost(0)],
        dtype: "f16".into(),
        shard_tokens: SHARD_TOKENS,
        batch_contexts: 8,
        model_name: "random-gpt2-small".into(),
        max_contexts: None,
    };
    let report = capture(&model, &data, &root.join("e2e"), &spec, |_, _| {})?;
    let e2e_tps = report.tokens_this_run as f64 / report.seconds;

    let mb = |secs: f64| total as f64 / 1e6 / secs;
    let (wr, rr) = (mb(store_w) / mb(plain_w), mb(store_r) / mb(plain_r));
    println!(
        "  write: store {:.0} MB/s ({:.2} CPU s), plain {:.0} MB/s ({:.2} CPU s) → {:.2} (target ≥ {TARGET})",
        mb(store_w), store_w_cpu, mb(plain_w), plain_w_cpu, wr
    );
    println!(
        "  cold read: store {:.0} MB/s ({:.2} CPU s, shuffled batches of 4096), plain {:.0} MB/s → {:.2} (target ≥ {TARGET})",
        mb(store_r), store_r_cpu, mb(plain_r), rr
    );
    println!("  end to end: capture of a 12-layer d 768 random model at {e2e_tps:.0} tokens/s (the forward pass is the limit)");
    let body = json!({
        "what": "activation store: f16 shards of 65536 x 768 from f32 rows vs plain sequential file I/O on the same file system",
        "bytes": total,
        "shards": shards,
        "write": {"store_mb_s": mb(store_w), "store_cpu_s": store_w_cpu, "plain_mb_s": mb(plain_w), "plain_cpu_s": plain_w_cpu, "ratio": wr},
        "read_cold": {"store_mb_s": mb(store_r), "store_cpu_s": store_r_cpu, "plain_mb_s": mb(plain_r), "ratio": rr},
        "end_to_end_tokens_per_s": e2e_tps,
        "targets": {"write_ge_0_8": wr >= TARGET, "read_ge_0_8": rr >= TARGET},
    });
    write_report(out, "capture", body)?;
    Ok(true)
}

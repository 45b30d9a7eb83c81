//! `capture`: activation-store write and read throughput against the disk's sequential
//! bandwidth, measured in the same run on the same file system, `reps` times alternating
//! (medians reported: this disk's bandwidth varies by ×3 from minute to minute).
//!
//! - Write: the store writer (f32 rows encoded to f16, CRC-32C, temp file + fsync + rename,
//!   `meta.json` update per shard, the file writes overlapping the next shard's encoding) vs
//!   one plain file of the same size written in shard-sized chunks, both with fdatasync after
//!   each chunk and with one fsync at the end; the faster plain figure is the reference.
//!   Target: ≥ 80%.
//! - Read, cold (page cache dropped with `posix_fadvise(DONTNEED)` before each side): the
//!   shuffled reader (read ahead in a thread, CRC-32C check, f16 → f32, shuffle buffer of
//!   2^18 rows as `metarep sae train` uses, batches of 4096 rows) vs reading the plain file
//!   sequentially. Target: ≥ 80% (issue 24's: ≥ 50%, reported as its own flag).
//! - End to end: `capture` of `blocks.0.hook_resid_post` of a GPT-2-small-shaped random model
//!   (tokens/s), where the forward pass, not the disk, is the limit.
//!
//! Settings (`--set key=value`): `size_mib` (store size, default 1024), `reps` (default 3).
//! Files go under `target/capture-bench/` and are deleted afterwards.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use metarep_capture::{capture, CaptureSpec, StoreMeta, StoreReader, StoreWriter, TokenDataset};
use metarep_model::{HookPoint, HookedTransformer, ModelConfig};
use serde_json::json;

use super::disk::{cpu_secs, drop_cache, num, plain_write, Sync};
use super::{median, write_report};
use crate::error::BoxError;

/// The `--set` keys this benchmark accepts.
pub const SETTINGS: &[&str] = &["size_mib", "reps"];

const D_IN: usize = 768;
const SHARD_TOKENS: usize = 1 << 16;
const BUFFER_ROWS: usize = 1 << 18;
const CONTEXT: usize = 128;
const TARGET: f64 = 0.8;

fn meta(d_in: usize) -> StoreMeta {
    StoreMeta {
        format_version: metarep_capture::store::FORMAT_VERSION,
        model: "bench".into(),
        model_config_sha256: String::new(),
        model_weights_sha256: String::new(),
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
    let reps = num("reps", 3.0)? as usize;
    let shards = ((size_mib * (1 << 20) as f64) / (SHARD_TOKENS * D_IN * 2) as f64)
        .ceil()
        .max(1.0) as usize;
    let root = PathBuf::from("target/capture-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let result = run_in(out, &root, shards, reps.max(1));
    let _ = std::fs::remove_dir_all(&root);
    result
}

/// One round's throughputs (MB/s) and CPU seconds.
struct Round {
    store_w: f64,
    store_w_cpu: f64,
    plain_w_sync: f64,
    plain_w_end: f64,
    /// Epochs 0 and 1.
    store_r: [f64; 2],
    store_r_cpu: [f64; 2],
    plain_r: f64,
}

fn round(rows: &Tensor, root: &Path, shards: usize) -> Result<Round, BoxError> {
    let store = root.join("store");
    let _ = std::fs::remove_dir_all(&store);
    let bytes_per_shard = (SHARD_TOKENS * D_IN * 2) as u64;
    let total = bytes_per_shard * shards as u64;
    let mb = |secs: f64| total as f64 / 1e6 / secs;

    let plain = root.join("plain.bin");
    let (plain_sync, _) = plain_write(&plain, total, bytes_per_shard as usize, Sync::EachChunk)?;
    let (plain_end, _) = plain_write(&plain, total, bytes_per_shard as usize, Sync::AtEnd)?;
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let mut writer = StoreWriter::open(&store, meta(D_IN))?;
    for i in 0..shards {
        writer.push(rows.clone())?;
        writer.finish_shard(i + 1 == shards)?;
    }
    writer.close()?;
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
    std::fs::remove_file(&plain)?;
    // Epoch 0 allocates the reader's buffers (a page fault per 4 KiB of a 2^18-row shuffle
    // buffer); epoch 1, after dropping the cache again, is the steady state of training.
    let mut reader = StoreReader::open(&store, 0, BUFFER_ROWS)?;
    let mut store_r = [0.0; 2];
    let mut store_r_cpu = [0.0; 2];
    for epoch in 0..2 {
        for f in files_under(&store)? {
            drop_cache(&f)?;
        }
        reader.start_epoch(epoch as u64)?;
        let cpu0 = cpu_secs();
        let t0 = Instant::now();
        let mut rows_read = 0usize;
        while let Some(b) = reader.next_batch(4096)? {
            rows_read += b.dim(0)?;
        }
        store_r[epoch] = mb(t0.elapsed().as_secs_f64());
        store_r_cpu[epoch] = cpu_secs() - cpu0;
        if rows_read != shards * SHARD_TOKENS || read != total {
            return Err(format!(
                "read {rows_read} rows / {read} bytes, expected {} / {total}",
                shards * SHARD_TOKENS
            )
            .into());
        }
    }
    Ok(Round {
        store_w: mb(store_w),
        store_w_cpu,
        plain_w_sync: mb(plain_sync),
        plain_w_end: mb(plain_end),
        store_r,
        store_r_cpu,
        plain_r: mb(plain_r),
    })
}

fn run_in(out: &Path, root: &Path, shards: usize, reps: usize) -> Result<bool, BoxError> {
    // One shard's worth of f32 rows, reused (the writer encodes and checksums each time).
    let rows = Tensor::randn(0f32, 1.0, (SHARD_TOKENS, D_IN), &Device::Cpu)?;
    let total = (SHARD_TOKENS * D_IN * 2 * shards) as u64;
    println!(
        "  {shards} shards of {SHARD_TOKENS} × {D_IN} f16 ({:.0} MiB), {reps} rounds",
        total as f64 / (1 << 20) as f64
    );
    let mut rounds = Vec::with_capacity(reps);
    for r in 0..reps {
        let x = round(&rows, root, shards)?;
        println!(
            "  round {r}: write store {:.0} / plain {:.0} (sync per chunk) {:.0} (sync at end) MB/s; cold read store {:.0} (epoch 0) {:.0} (epoch 1) / plain {:.0} MB/s",
            x.store_w, x.plain_w_sync, x.plain_w_end, x.store_r[0], x.store_r[1], x.plain_r
        );
        rounds.push(x);
    }
    let med = |f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let (store_w, plain_w_sync, plain_w_end) = (
        med(|x| x.store_w),
        med(|x| x.plain_w_sync),
        med(|x| x.plain_w_end),
    );
    let (store_r0, store_r1, plain_r) = (
        med(|x| x.store_r[0]),
        med(|x| x.store_r[1]),
        med(|x| x.plain_r),
    );
    let store_w_cpu = med(|x| x.store_w_cpu);
    let (store_r0_cpu, store_r1_cpu) = (med(|x| x.store_r_cpu[0]), med(|x| x.store_r_cpu[1]));
    let plain_w = plain_w_sync.max(plain_w_end);
    let (wr, rr0, rr1) = (store_w / plain_w, store_r0 / plain_r, store_r1 / plain_r);
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

    println!(
        "  write (medians): store {store_w:.0} MB/s ({store_w_cpu:.2} CPU s), plain {plain_w:.0} MB/s → {wr:.2} (target ≥ {TARGET})"
    );
    println!(
        "  cold read (medians, shuffled batches of 4096): store epoch 0 {store_r0:.0} MB/s ({store_r0_cpu:.2} CPU s), epoch 1 {store_r1:.0} MB/s ({store_r1_cpu:.2} CPU s); plain {plain_r:.0} MB/s → {rr0:.2}, {rr1:.2} (target ≥ {TARGET})"
    );
    println!("  end to end: capture of a 12-layer d 768 random model at {e2e_tps:.0} tokens/s (the forward pass is the limit)");
    let body = json!({
        "what": "activation store: f16 shards of 65536 x 768 from f32 rows vs plain sequential file I/O on the same file system",
        "bytes": total,
        "shards": shards,
        "reps": reps,
        "buffer_rows": BUFFER_ROWS,
        "write": {"store_mb_s": store_w, "store_cpu_s": store_w_cpu, "plain_sync_per_chunk_mb_s": plain_w_sync, "plain_sync_at_end_mb_s": plain_w_end, "ratio_to_faster_plain": wr},
        "read_cold": {"store_epoch0_mb_s": store_r0, "store_epoch0_cpu_s": store_r0_cpu, "store_epoch1_mb_s": store_r1, "store_epoch1_cpu_s": store_r1_cpu, "plain_mb_s": plain_r, "ratio_epoch0": rr0, "ratio_epoch1": rr1},
        "end_to_end_tokens_per_s": e2e_tps,
        "targets": {"write_ge_0_8": wr >= TARGET, "read_epoch1_ge_0_8": rr1 >= TARGET, "read_epoch1_ge_0_5_issue24": rr1 >= 0.5},
    });
    write_report(out, "capture", body)?;
    Ok(true)
}

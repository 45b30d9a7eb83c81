//! `gist_tree`: the disk-backed gist tree against plain files, in one run.
//!
//! - Append throughput (MB/s, nodes/s) with fsync off and with fsync per commit, vs a plain
//!   sequential write of the same bytes in the same chunk sizes (target: ≥ 70% with fsync off;
//!   issue 24's: ≥ 40%), in `reps` alternating rounds starting from a clean page cache; medians.
//! - Random read latency p50/p99 by (level, index) over the tree, warm and cold (pages dropped
//!   with `posix_fadvise(DONTNEED)`, checked with `mincore`), vs reading the same record bytes
//!   from a plain memory map (target: within 2×).
//! - Open time: clean (index checkpoint) and worst-case recovery (no checkpoint, torn tail).
//!
//! Settings (`--set key=value`): `size_gib` (tree size, default 1), `reads` (samples per
//! latency measurement, default 20000), `fsync_mib` (data written in the fsync-per-commit run,
//! default 64), `reps` (append rounds, default 3). The tree is written under
//! `target/gist-bench/` and deleted afterwards.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::{Advice, Mmap};
use metarep_gist_tree::{
    ChildData, FsyncPolicy, GistDType, MeanPool, NodeRef, Producer, Provenance, Reader, Summarizer,
    SummaryBatch, TreeConfig, Writer, WriterOptions,
};
use rand::Rng;
use serde_json::json;

use super::disk::{cpu_secs, drop_cache, num, plain_write, user_cpu_secs, Sync};
use super::{median, write_report};
use crate::error::BoxError;

/// The `--set` keys this benchmark accepts.
pub const SETTINGS: &[&str] = &["size_gib", "reads", "fsync_mib", "reps"];

const BLOCK: u32 = 32;
const WIDTH: u32 = 256;
/// Tokens per commit (2048 blocks, about 1.7 MB of records).
const COMMIT_TOKENS: usize = 1 << 16;

/// A summariser that costs O(d) per node, so that the append benchmark measures the storage
/// engine rather than a compressor: a level-1 gist is its block's first token id scaled,
/// higher levels copy the first child.
struct CheapSummarizer;

impl Summarizer for CheapSummarizer {
    fn producer(&self) -> Producer {
        Producer { id: 99, version: 1 }
    }

    fn summarize(
        &mut self,
        batch: &SummaryBatch<'_>,
        out: &mut [f32],
    ) -> metarep_gist_tree::Result<()> {
        let (b, d) = (batch.block, batch.width);
        for (i, o) in out.chunks_exact_mut(d).enumerate() {
            match batch.children {
                ChildData::Tokens(t) => o.fill(t[i * b] as f32 * 1e-3),
                ChildData::Gists(g) => o.copy_from_slice(&g[i * b * d..i * b * d + d]),
            }
        }
        Ok(())
    }
}

fn config() -> TreeConfig {
    TreeConfig {
        block: BLOCK,
        width: WIDTH,
        dtype: GistDType::F16,
        segment_bytes: 256 << 20,
    }
}

/// Bytes of segment files and commit log under a tree directory.
fn tree_bytes(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            walk(&p)
                        } else if p.extension().is_some_and(|x| x == "seg")
                            || p.file_name().is_some_and(|n| n == "commits.log")
                        {
                            e.metadata().map(|m| m.len()).unwrap_or(0)
                        } else {
                            0
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for gen in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !gen.file_name().to_string_lossy().starts_with("gen-") {
            continue;
        }
        for level in std::fs::read_dir(gen.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(level.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.path().extension().is_some_and(|x| x == "seg") {
                    out.push(f.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// One round of the append comparison: the tree's run and the plain write's (wall s, CPU s).
type AppendRound = (AppendRun, (f64, f64));

struct AppendRun {
    secs: f64,
    cpu: f64,
    /// The part of `cpu` in user mode (the engine's own work, outside the kernel's writes).
    user_cpu: f64,
    bytes: u64,
    nodes: u64,
    commits: u64,
}

/// Appends `tokens` tokens (random ids) in commits of COMMIT_TOKENS.
fn append_tree(
    dir: &Path,
    tokens: u64,
    fsync: FsyncPolicy,
    summarizer: Box<dyn Summarizer + Send>,
) -> Result<AppendRun, BoxError> {
    let opts = WriterOptions {
        fsync,
        telemetry: false,
        ..WriterOptions::default()
    };
    let mut rng = metarep_core::rng::seeded(7);
    let batch: Vec<Vec<u32>> = (0..8)
        .map(|_| {
            (0..COMMIT_TOKENS)
                .map(|_| rng.random_range(0..50_000))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let (cpu0, user0) = (cpu_secs(), user_cpu_secs());
    let mut w = Writer::create(dir, config(), opts, summarizer)?;
    let mut done = 0u64;
    let mut commits = 0u64;
    let pb = metarep_core::progress::bar(tokens, "append");
    while done < tokens {
        let n = COMMIT_TOKENS.min((tokens - done) as usize);
        let t = &batch[commits as usize % batch.len()][..n];
        w.append(
            t,
            &Provenance::source(commits, done * 4, (done + n as u64) * 4),
        )?;
        w.commit()?;
        done += n as u64;
        commits += 1;
        pb.set_position(done);
    }
    let snap = w.snapshot()?;
    let nodes: u64 = (0..snap.levels() as u8).map(|l| snap.count(l)).sum();
    drop(snap);
    w.close()?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let user_cpu = user_cpu_secs() - user0;
    pb.finish_and_clear();
    Ok(AppendRun {
        secs,
        cpu,
        user_cpu,
        bytes: tree_bytes(dir),
        nodes,
        commits,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
}

fn latency(mut ns: Vec<f64>) -> Latency {
    ns.sort_by(f64::total_cmp);
    Latency {
        p50_us: percentile(&ns, 0.5) / 1e3,
        p99_us: percentile(&ns, 0.99) / 1e3,
    }
}

/// Random nodes, uniform over all nodes of the tree.
fn sample_nodes(counts: &[u64], n: usize, seed: u64) -> Vec<NodeRef> {
    let total: u64 = counts.iter().sum();
    let mut rng = metarep_core::rng::seeded(seed);
    (0..n)
        .map(|_| {
            let mut k = rng.random_range(0..total);
            for (l, c) in counts.iter().enumerate() {
                if k < *c {
                    return NodeRef::new(l as u8, k);
                }
                k -= c;
            }
            NodeRef::new(0, 0)
        })
        .collect()
}

/// Times tree reads (`get_raw` + copy of the record's data) of `nodes`; nanoseconds each.
fn time_tree_reads(
    dir: &Path,
    nodes: &[NodeRef],
    decode: bool,
    telemetry: bool,
) -> Result<Vec<f64>, BoxError> {
    let reader = Reader::open(dir, telemetry)?;
    let snap = reader.snapshot()?;
    let mut buf = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        let t = Instant::now();
        if decode {
            std::hint::black_box(snap.get(*n)?);
        } else {
            let raw = snap.get_raw(*n)?;
            buf.clear();
            buf.extend_from_slice(raw.data());
            std::hint::black_box(&buf);
        }
        out.push(t.elapsed().as_nanos() as f64);
    }
    Ok(out)
}

/// Times plain-mmap reads (copy of the same record bytes) at known locations; ns each.
fn time_plain_reads(locs: &[(usize, u64, usize)], files: &[PathBuf]) -> Result<Vec<f64>, BoxError> {
    let maps: Vec<Mmap> = files
        .iter()
        .map(|p| {
            // SAFETY: read-only map of a closed tree's file; nothing writes it during the run.
            let m = unsafe { Mmap::map(&File::open(p)?) }?;
            let _ = m.advise(Advice::Random);
            Ok(m)
        })
        .collect::<Result<_, BoxError>>()?;
    let mut buf = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(locs.len());
    for (f, off, len) in locs {
        let t = Instant::now();
        buf.clear();
        buf.extend_from_slice(&maps[*f][*off as usize..*off as usize + len]);
        std::hint::black_box(&buf);
        out.push(t.elapsed().as_nanos() as f64);
    }
    Ok(out)
}

/// Gets the page cache ready for a timed write of `bytes`: every dirty page written back (so
/// the write does not share the disk with an earlier one's writeback), then `bytes` written to
/// a scratch file that is deleted unsynced. In this VM memory the guest freed a while ago is
/// handed back to the host, and a write into it costs ×5–×10 the CPU of one into recently
/// freed pages; priming gives both sides of the comparison recently freed pages.
fn settle_and_prime(dir: &Path, bytes: u64) -> Result<(), BoxError> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // A plain write, untimed, deleted at once: its pages are freed just before the timed write.
    plain_write(&dir.join("prime.bin"), bytes, 1 << 20, Sync::Never)?;
    Ok(())
}

/// Runs the benchmark and writes `results/bench/gist_tree.json`.
pub fn run(out: &Path) -> Result<bool, BoxError> {
    let size_gib = num("size_gib", 1.0)?;
    let reads = num("reads", 20_000.0)? as usize;
    let fsync_mib = num("fsync_mib", 64.0)?;
    let reps = (num("reps", 3.0)? as usize).max(1);
    let root = PathBuf::from("target/gist-bench");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    let result = run_in(&root, size_gib, reads, fsync_mib, reps, out);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(
    root: &Path,
    size_gib: f64,
    reads: usize,
    fsync_mib: f64,
    reps: usize,
    out: &Path,
) -> Result<bool, BoxError> {
    // About 827 bytes of records per 32-token block (block + level-1 gist + higher gists).
    let bytes_per_token = 827.0 / BLOCK as f64;
    let tokens = (size_gib * (1u64 << 30) as f64 / bytes_per_token) as u64;
    let tree = root.join("tree");
    let plain = root.join("plain.bin");

    // Alternating rounds: the tree, then a plain write of the same bytes in the same chunk
    // size, each starting from the same page-cache state (`settle_and_prime`); medians. The
    // last round's tree stays for the rest of the benchmark.
    let expected = (size_gib * (1u64 << 30) as f64) as u64;
    let mut rounds: Vec<AppendRound> = Vec::with_capacity(reps);
    for r in 0..reps {
        if tree.exists() {
            std::fs::remove_dir_all(&tree)?;
        }
        settle_and_prime(root, 2 * expected)?;
        println!("  round {r}: append {tokens} tokens (fsync off) ...");
        let run = append_tree(&tree, tokens, FsyncPolicy::Off, Box::new(CheapSummarizer))?;
        settle_and_prime(root, 2 * run.bytes)?;
        let chunk = (run.bytes / run.commits.max(1)) as usize;
        let p = plain_write(&plain, run.bytes, chunk, Sync::Never)?;
        let mb = run.bytes as f64 / 1e6;
        println!(
            "  round {r}: tree {:.0} MB/s ({:.2} CPU s, {:.2} of them in user mode), plain write {:.0} MB/s ({:.2} CPU s)",
            mb / run.secs,
            run.cpu,
            run.user_cpu,
            mb / p.0,
            p.1
        );
        rounds.push((run, p));
    }
    let med = |f: &dyn Fn(&AppendRound) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let tree_mbs = med(&|(run, _)| run.bytes as f64 / 1e6 / run.secs);
    let plain_mbs = med(&|(run, p)| run.bytes as f64 / 1e6 / p.0);
    let tree_cpu = med(&|(run, _)| run.cpu);
    let tree_user_cpu = med(&|(run, _)| run.user_cpu);
    let plain_cpu = med(&|(_, p)| p.1);
    let nodes_s = med(&|(run, _)| run.nodes as f64 / run.secs);
    let append_ratio = tree_mbs / plain_mbs;
    let (run_off, _) = rounds.last().ok_or("no append round")?;
    let chunk = (run_off.bytes / run_off.commits.max(1)) as usize;
    println!(
        "  append, fsync off (medians of {reps}): {tree_mbs:.0} MB/s, {nodes_s:.0} nodes/s; plain write {plain_mbs:.0} MB/s; ratio {append_ratio:.2} (CPU s: tree {tree_cpu:.2}, {tree_user_cpu:.2} in user mode; plain {plain_cpu:.2})"
    );

    // fsync per commit on a smaller stream.
    let sync_tree = root.join("sync-tree");
    let sync_tokens = ((fsync_mib * 1e6 / bytes_per_token) as u64).min(tokens);
    let run_sync = append_tree(
        &sync_tree,
        sync_tokens,
        FsyncPolicy::EveryCommit,
        Box::new(CheapSummarizer),
    )?;
    let sync_chunk = (run_sync.bytes / run_sync.commits.max(1)) as usize;
    let plain_sync = plain_write(&plain, run_sync.bytes, sync_chunk, Sync::EachChunk)?.0;
    let sync_mbs = run_sync.bytes as f64 / 1e6 / run_sync.secs;
    let plain_sync_mbs = run_sync.bytes as f64 / 1e6 / plain_sync;
    std::fs::remove_dir_all(&sync_tree)?;
    println!(
        "  append, fsync per commit: {sync_mbs:.0} MB/s vs plain write + fdatasync per chunk {plain_sync_mbs:.0} MB/s"
    );

    // The mean-pooling summariser's cost, for reference (small stream).
    let mp_tree = root.join("meanpool-tree");
    let mp_tokens = (64e6 / bytes_per_token) as u64;
    let run_mp = append_tree(
        &mp_tree,
        mp_tokens.min(tokens),
        FsyncPolicy::Off,
        Box::new(MeanPool::new(WIDTH as usize, 0)?),
    )?;
    std::fs::remove_dir_all(&mp_tree)?;
    let mp_mbs = run_mp.bytes as f64 / 1e6 / run_mp.secs;

    // Open: clean (checkpoint), then worst-case recovery (no checkpoint, torn tail).
    let t = Instant::now();
    let (w, rep) = Writer::open(&tree, WriterOptions::default(), Box::new(CheapSummarizer))?;
    let open_clean = t.elapsed().as_secs_f64();
    let clean_used_checkpoint = rep.checkpoint_version.is_some();
    drop(w);
    let gen = tree.join(std::fs::read_to_string(tree.join("CURRENT"))?.trim());
    std::fs::remove_file(gen.join("index.ckpt"))?;
    let seg0 = segment_files(&tree)
        .into_iter()
        .rfind(|p| p.parent().is_some_and(|d| d.ends_with("L00")))
        .ok_or("no level-0 segment")?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg0)?
        .write_all(&[7u8; 100])?;
    let t = Instant::now();
    let (w, rep) = Writer::open(&tree, WriterOptions::default(), Box::new(CheapSummarizer))?;
    let open_recover = t.elapsed().as_secs_f64();
    let dropped = rep.dropped.iter().map(|d| d.bytes).sum::<u64>();
    w.close()?; // writes a fresh checkpoint
    println!(
        "  open {:.1} GiB: clean {open_clean:.3} s (checkpoint), recovery without checkpoint {open_recover:.3} s (cut {dropped} torn bytes)",
        run_off.bytes as f64 / (1u64 << 30) as f64
    );

    // Random reads.
    let (files, locs_of) = {
        let r = Reader::open(&tree, false)?;
        let s = r.snapshot()?;
        let counts: Vec<u64> = (0..s.levels() as u8).map(|l| s.count(l)).collect();
        let files = segment_files(&tree);
        let nodes = sample_nodes(&counts, 3 * reads, 11);
        let mut locs = Vec::with_capacity(nodes.len());
        for n in &nodes {
            let (path, off, len) = s.locate(*n)?;
            let f = files
                .iter()
                .position(|p| p.canonicalize().ok() == path.canonicalize().ok())
                .ok_or("segment not listed")?;
            locs.push((*n, (f, off, len)));
        }
        (files, locs)
    };
    let nodes: Vec<NodeRef> = locs_of.iter().map(|(n, _)| *n).collect();
    let locs: Vec<(usize, u64, usize)> = locs_of.iter().map(|(_, l)| *l).collect();
    let warm_set = &nodes[..reads];
    // Warm: everything touched once first.
    time_tree_reads(&tree, warm_set, false, true)?;
    time_plain_reads(&locs[..reads], &files)?;
    let warm_tree = latency(time_tree_reads(&tree, warm_set, false, true)?);
    let warm_tree_no_tel = latency(time_tree_reads(&tree, warm_set, false, false)?);
    let warm_tree_decoded = latency(time_tree_reads(&tree, warm_set, true, true)?);
    let warm_plain = latency(time_plain_reads(&locs[..reads], &files)?);
    // Cold: drop the pages, then read nodes not read before (disjoint samples for each side).
    let mut resident = 0.0f64;
    for f in &files {
        resident = resident.max(drop_cache(f)?);
    }
    let cold_tree = latency(time_tree_reads(
        &tree,
        &nodes[reads..2 * reads],
        false,
        true,
    )?);
    let mut resident_b = 0.0f64;
    for f in &files {
        resident_b = resident_b.max(drop_cache(f)?);
    }
    let cold_plain = latency(time_plain_reads(&locs[2 * reads..], &files)?);
    let cold_dropped = resident.max(resident_b) < 0.05;
    println!(
        "  random reads (n = {reads}), warm: tree p50 {:.2} µs p99 {:.2} µs (telemetry off: p50 {:.2}; decoded to f32: p50 {:.2} p99 {:.2}); plain mmap p50 {:.2} p99 {:.2}",
        warm_tree.p50_us, warm_tree.p99_us, warm_tree_no_tel.p50_us, warm_tree_decoded.p50_us, warm_tree_decoded.p99_us, warm_plain.p50_us, warm_plain.p99_us
    );
    println!(
        "  random reads, cold (pages resident after fadvise: {:.1}%): tree p50 {:.1} µs p99 {:.1} µs; plain mmap p50 {:.1} p99 {:.1}",
        100.0 * resident.max(resident_b),
        cold_tree.p50_us, cold_tree.p99_us, cold_plain.p50_us, cold_plain.p99_us
    );
    let warm_ratio = warm_tree.p50_us / warm_plain.p50_us;
    let cold_ratio = cold_tree.p50_us / cold_plain.p50_us;
    let pass_append = append_ratio >= 0.7;
    let pass_warm = warm_ratio <= 2.0;
    let pass_cold = cold_ratio <= 2.0;
    write_report(
        out,
        "gist_tree",
        json!({
            "what": "gist tree (block 32, width 256, f16) vs plain sequential write / plain mmap read of the same bytes; cheap O(d) summariser in the append runs",
            "tree_bytes": run_off.bytes,
            "tree_nodes": run_off.nodes,
            "tokens": tokens,
            "commits": run_off.commits,
            "append_fsync_off": {
                "rounds": reps,
                "tree_mb_s": tree_mbs,
                "tree_nodes_s": nodes_s,
                "plain_write_mb_s": plain_mbs,
                "tree_wall_s_per_round": rounds.iter().map(|(r, _)| r.secs).collect::<Vec<_>>(),
                "plain_write_wall_s_per_round": rounds.iter().map(|(_, p)| p.0).collect::<Vec<_>>(),
                "tree_cpu_s": tree_cpu,
                "tree_user_cpu_s": tree_user_cpu,
                "plain_write_cpu_s": plain_cpu,
                "chunk_bytes": chunk,
                "ratio": append_ratio,
                "target_ratio": 0.7,
                "pass": pass_append,
                "pass_issue24_ratio_0_4": append_ratio >= 0.4,
            },
            "append_fsync_per_commit": {
                "bytes": run_sync.bytes,
                "commits": run_sync.commits,
                "tree_mb_s": sync_mbs,
                "tree_nodes_s": run_sync.nodes as f64 / run_sync.secs,
                "plain_write_fdatasync_per_chunk_mb_s": plain_sync_mbs,
                "ratio": sync_mbs / plain_sync_mbs,
            },
            "append_mean_pool_fsync_off_mb_s": mp_mbs,
            "open_clean_s": open_clean,
            "open_clean_used_checkpoint": clean_used_checkpoint,
            "open_recovery_no_checkpoint_s": open_recover,
            "recovery_dropped_bytes": dropped,
            "reads": reads,
            "warm": {
                "tree_p50_us": warm_tree.p50_us, "tree_p99_us": warm_tree.p99_us,
                "tree_no_telemetry_p50_us": warm_tree_no_tel.p50_us, "tree_no_telemetry_p99_us": warm_tree_no_tel.p99_us,
                "tree_decoded_p50_us": warm_tree_decoded.p50_us, "tree_decoded_p99_us": warm_tree_decoded.p99_us,
                "plain_mmap_p50_us": warm_plain.p50_us, "plain_mmap_p99_us": warm_plain.p99_us,
                "p50_ratio": warm_ratio, "p99_ratio": warm_tree.p99_us / warm_plain.p99_us,
                "pass": pass_warm,
            },
            "cold": {
                "fadvise_dropped_pages": cold_dropped,
                "max_resident_fraction_after_fadvise": resident.max(resident_b),
                "tree_p50_us": cold_tree.p50_us, "tree_p99_us": cold_tree.p99_us,
                "plain_mmap_p50_us": cold_plain.p50_us, "plain_mmap_p99_us": cold_plain.p99_us,
                "p50_ratio": cold_ratio, "p99_ratio": cold_tree.p99_us / cold_plain.p99_us,
                "pass": pass_cold,
            },
            "size_gib_setting": size_gib,
        }),
    )?;
    Ok(pass_append && pass_warm && pass_cold)
}

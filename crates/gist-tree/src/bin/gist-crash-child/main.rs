//! The child process of the crash tests, run until the test kills it with SIGKILL:
//!
//! - `gist-crash-child write DIR SEED FSYNC [COMPACT_EVERY]` opens (recovering) or creates a tree
//!   and commits the seeded workload of `plan.rs` forever, printing `open V` after recovery and
//!   `committed V` after each commit returns (FSYNC: `off`, `commit` or `every:N`); it compacts
//!   after the plan's compacting commits and, with COMPACT_EVERY, after every COMPACT_EVERY-th.
//!   `GIST_WRITE_BUFFER=BYTES` in the environment sets `WriterOptions::write_buffer` (tiny
//!   buffers make even these small commits go through the write threads).
//! - `gist-crash-child read DIR` opens the tree read-only (with telemetry) again and again,
//!   reads every token and prints `read V` — a reader killed anywhere, telemetry writes
//!   included.

mod plan;

use std::io::Write;
use std::path::Path;

use metarep_gist_tree::{FsyncPolicy, MeanPool, Provenance, Reader, Result, Writer, WriterOptions};

fn write(dir: &Path, seed: u64, fsync: FsyncPolicy, compact_every: u64) -> Result<()> {
    let mut opts = WriterOptions {
        fsync,
        checkpoint_bytes: 16 << 10,
        telemetry: true,
        ..WriterOptions::default()
    };
    if let Ok(bytes) = std::env::var("GIST_WRITE_BUFFER") {
        opts.write_buffer = bytes.parse().map_err(|_| {
            metarep_gist_tree::Error::Invalid(format!(
                "GIST_WRITE_BUFFER={bytes}: not a byte count"
            ))
        })?;
    }
    let cfg = plan::config();
    let pool = || MeanPool::new(cfg.width as usize, plan::POOL_SEED);
    let mut w = if dir.join("tree.json").exists() {
        Writer::open(dir, opts, Box::new(pool()?))?.0
    } else {
        Writer::create(dir, cfg, opts, Box::new(pool()?))?
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "open {}", w.version());
    let _ = out.flush();
    loop {
        let v = w.version() + 1;
        let step = plan::step(seed, v, w.token_count());
        let len = w.token_count();
        w.append(
            &step.append,
            &Provenance::source(seed, len, len + step.append.len() as u64),
        )?;
        if let Some((start, t)) = &step.edit {
            w.edit(
                *start,
                t,
                &Provenance::source(seed, *start, *start + t.len() as u64),
            )?;
        }
        // Read something so that telemetry batches are written too.
        let snap = w.snapshot()?;
        if snap.token_count() > 0 {
            snap.tokens(0..1)?;
        }
        drop(snap);
        let got = w.commit()?;
        if step.compact || got.is_multiple_of(compact_every) {
            w.compact()?;
        }
        let _ = writeln!(out, "committed {got}");
        let _ = out.flush();
    }
}

fn read(dir: &Path) -> Result<()> {
    let mut out = std::io::stdout().lock();
    loop {
        let reader = Reader::open(dir, true)?;
        let snap = reader.snapshot()?;
        snap.tokens(0..snap.token_count())?;
        let _ = writeln!(out, "read {}", snap.version());
        let _ = out.flush();
    }
}

fn run(args: &[String]) -> Result<()> {
    let invalid = || metarep_gist_tree::Error::Invalid(USAGE.into());
    match args {
        [mode, dir] if mode == "read" => read(Path::new(dir)),
        [mode, dir, seed, fsync, rest @ ..] if mode == "write" && rest.len() <= 1 => {
            let seed = seed.parse().map_err(|_| invalid())?;
            let every = match rest {
                [n] => n.parse().ok().filter(|n| *n > 0).ok_or_else(invalid)?,
                _ => u64::MAX,
            };
            write(Path::new(dir), seed, FsyncPolicy::parse(fsync)?, every)
        }
        _ => Err(invalid()),
    }
}

const USAGE: &str =
    "usage: gist-crash-child write DIR SEED FSYNC [COMPACT_EVERY] | gist-crash-child read DIR";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("gist-crash-child: {e}");
        std::process::exit(1);
    }
}

//! The child process of the crash tests: opens (recovering) or creates a tree and commits the
//! seeded workload of `plan.rs` forever, printing `open V` after recovery and `committed V` after
//! each commit returns, until the test kills it with SIGKILL.
//!
//! Usage: `gist-crash-child DIR SEED FSYNC` (FSYNC: `off`, `commit` or `every:N`).

mod plan;

use std::io::Write;
use std::path::Path;

use metarep_gist_tree::{FsyncPolicy, MeanPool, Provenance, Result, Writer, WriterOptions};

fn run(dir: &Path, seed: u64, fsync: FsyncPolicy) -> Result<()> {
    let opts = WriterOptions {
        fsync,
        checkpoint_bytes: 16 << 10,
        telemetry: true,
        ..WriterOptions::default()
    };
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
        if step.compact {
            w.compact()?;
        }
        let _ = writeln!(out, "committed {got}");
        let _ = out.flush();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: gist-crash-child DIR SEED FSYNC");
        std::process::exit(2);
    }
    let seed = args[2].parse().unwrap_or(0);
    let result = FsyncPolicy::parse(&args[3]).and_then(|p| run(Path::new(&args[1]), seed, p));
    if let Err(e) = result {
        eprintln!("gist-crash-child: {e}");
        std::process::exit(1);
    }
}

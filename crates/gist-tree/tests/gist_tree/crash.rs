//! Crash tests: a child process (`gist-crash-child`) commits a seeded workload in a loop and is
//! killed with SIGKILL at random moments; after every kill the tree must open at exactly a
//! committed version — at least the last one the child acknowledged, at most the one in flight —
//! hold exactly that version's content, and pass `verify`. Read-only children are killed the
//! same way (they must never damage the tree), readers in this process read while a child
//! compacts after every commit, and commit logs cut back after a kill must be refused.
//!
//! `GIST_CRASH_KILLS=N` sets the number of writer kills (default 120) and
//! `GIST_READER_KILLS=N` the number of reader kills (default 100); a soak:
//! `GIST_CRASH_KILLS=500 GIST_READER_KILLS=500 cargo test --release -p metarep-gist-tree --test
//! gist_tree crash::` (`.ci/run` runs the readers' test with 500 kills).

use crate::common;
#[path = "../../src/bin/gist-crash-child/plan.rs"]
#[allow(dead_code)]
mod plan;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use metarep_gist_tree::{MeanPool, NodeData, NodeRef, Reader, Writer, WriterOptions};

/// The count in environment variable `var`, or `default`.
fn kills(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The model stream, advanced version by version.
struct Model {
    seed: u64,
    version: u64,
    tokens: Vec<u32>,
}

impl Model {
    /// The stream of run `seed` at `version`.
    fn at(seed: u64, version: u64) -> Model {
        let mut m = Model {
            seed,
            version: 0,
            tokens: Vec::new(),
        };
        m.advance_to(version);
        m
    }

    fn advance_to(&mut self, v: u64) {
        assert!(
            v >= self.version,
            "version went back from {} to {v}",
            self.version
        );
        while self.version < v {
            self.version += 1;
            let s = plan::step(self.seed, self.version, self.tokens.len() as u64);
            self.tokens.extend_from_slice(&s.append);
            if let Some((start, t)) = &s.edit {
                let s = *start as usize;
                self.tokens[s..s + t.len()].copy_from_slice(t);
            }
        }
    }
}

fn check_tree(dir: &std::path::Path, model: &Model, pool: &MeanPool) {
    let report = metarep_gist_tree::verify(dir).unwrap();
    assert!(report.ok(), "verify after kill: {:?}", report.problems);
    let reader = Reader::open(dir, false).unwrap();
    let snap = reader.snapshot().unwrap();
    assert_eq!(snap.version(), model.version);
    assert_eq!(snap.token_count(), model.tokens.len() as u64);
    assert_eq!(snap.tokens(0..snap.token_count()).unwrap(), model.tokens);
    let gists = common::expected_gists(&plan::config(), pool, &model.tokens);
    for (l, level) in gists.iter().enumerate().skip(1) {
        for (i, g) in level.iter().enumerate() {
            match snap.get(NodeRef::new(l as u8, i as u64)).unwrap().data {
                NodeData::Gist(got) => assert_eq!(&got, g, "gist {l}:{i} at v{}", model.version),
                NodeData::Tokens(_) => panic!("tokens at level {l}"),
            }
        }
    }
}

/// A temporary tree path (not created yet) and the plan's summariser.
struct Fixture {
    _dir: tempfile::TempDir,
    tree: std::path::PathBuf,
    pool: MeanPool,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        tree: dir.path().join("tree"),
        _dir: dir,
        pool: MeanPool::new(plan::config().width as usize, plan::POOL_SEED).unwrap(),
    }
}

/// Starts `gist-crash-child ARGS` with its stdout as lines.
fn spawn(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    spawn_with(args, &[])
}

/// [`spawn`] with environment variables `envs` set.
fn spawn_with(args: &[&str], envs: &[(&str, &str)]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gist-crash-child"))
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Waits for the child's next `committed V` line and returns V.
fn next_commit(lines: &mut Lines<BufReader<ChildStdout>>) -> u64 {
    let line = lines.next().unwrap().unwrap();
    line.strip_prefix("committed ")
        .or_else(|| line.strip_prefix("open "))
        .unwrap_or_else(|| panic!("unexpected child line {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn sigkill_at_random_moments_keeps_exactly_the_committed_prefix() {
    kill_writers_at_random_moments(42, kills("GIST_CRASH_KILLS", 120), &[]);
}

/// The same with 256-byte write buffers: each commit's records go through the write threads and
/// the committing thread side by side, so kills land between out-of-order buffer writes.
#[test]
fn sigkill_with_commits_split_across_write_threads_keeps_the_committed_prefix() {
    let n = kills("GIST_CRASH_KILLS", 120);
    kill_writers_at_random_moments(43, n, &[("GIST_WRITE_BUFFER", "256")]);
}

/// `n` rounds of: a writer child (with `envs`) commits the plan of `seed`, is killed at a random
/// moment, and the tree must hold exactly an acknowledged version or the one after it.
fn kill_writers_at_random_moments(seed: u64, n: usize, envs: &[(&str, &str)]) {
    let Fixture { tree, pool, .. } = &fixture();
    let mut rng = metarep_core::rng::seeded(seed);
    let mut model = Model::at(seed, 0);
    let mut acked = 0u64;
    let mut dropped_records = 0u64;
    for round in 0..n {
        let policy = ["off", "commit", "every:3"][round % 3];
        let args = ["write", tree.to_str().unwrap(), &seed.to_string(), policy];
        let (mut child, mut lines) = spawn_with(&args, envs);
        let open = next_commit(&mut lines);
        assert!(
            open >= acked,
            "round {round}: reopened at {open}, but {acked} was acknowledged"
        );
        // The version the child recovered to is committed: nothing below it may be lost later.
        acked = open;
        let wait_commits = rand::Rng::random_range(&mut rng, 0..6);
        for _ in 0..wait_commits {
            acked = next_commit(&mut lines);
        }
        // A random moment inside the next commits (not a synchronisation sleep).
        let us = rand::Rng::random_range(&mut rng, 0..3000);
        std::thread::sleep(Duration::from_micros(us));
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements written before the kill.
        for line in lines.map_while(Result::ok) {
            if let Some(v) = line.strip_prefix("committed ") {
                acked = v.parse().unwrap();
            }
        }
        let head = Reader::open(tree, false)
            .unwrap()
            .snapshot()
            .unwrap()
            .version();
        assert!(
            head == acked || head == acked + 1,
            "round {round}: head {head}, acknowledged {acked}"
        );
        model.advance_to(head);
        check_tree(tree, &model, pool);
        if round % 10 == 9 {
            // Recover in this process too and check the report is about uncommitted work only.
            let (w, report) =
                Writer::open(tree, WriterOptions::default(), Box::new(pool.clone())).unwrap();
            assert_eq!(report.version, head);
            dropped_records += report.dropped_records();
            drop(w);
            check_tree(tree, &model, pool);
        }
    }
    assert!(model.version > 0, "the child never committed");
    eprintln!(
        "{n} kills, final version {}, {} tokens, {dropped_records} uncommitted records dropped in parent recoveries",
        model.version,
        model.tokens.len()
    );
}

/// Builds the tree of run `seed` up to `version` in this process.
fn build_to(tree: &std::path::Path, seed: u64, version: u64, pool: &MeanPool) {
    let opts = WriterOptions {
        fsync: metarep_gist_tree::FsyncPolicy::Off,
        ..WriterOptions::default()
    };
    let mut w = if tree.join("tree.json").exists() {
        Writer::open(tree, opts, Box::new(pool.clone())).unwrap().0
    } else {
        Writer::create(tree, plan::config(), opts, Box::new(pool.clone())).unwrap()
    };
    while w.version() < version {
        let s = plan::step(seed, w.version() + 1, w.token_count());
        let len = w.token_count();
        let prov = metarep_gist_tree::Provenance::source(seed, len, len + s.append.len() as u64);
        w.append(&s.append, &prov).unwrap();
        if let Some((start, t)) = &s.edit {
            w.edit(*start, t, &prov).unwrap();
        }
        w.commit().unwrap();
    }
}

/// Read-only children (which write pins and telemetry) killed at random moments never damage
/// the tree: it keeps its content, `verify` finds nothing but (advisory) telemetry damage, and
/// the next writer repairs that.
#[test]
fn readers_killed_at_random_moments_never_damage_the_tree() {
    let Fixture { tree, pool, .. } = &fixture();
    let seed = 7;
    let mut rng = metarep_core::rng::seeded(seed);
    let mut model = Model::at(seed, 0);
    let n = kills("GIST_READER_KILLS", 100);
    let mut telemetry_damaged = 0;
    for round in 0..n {
        if round % 25 == 0 {
            // The data changes now and then; the writer also repairs telemetry.
            build_to(tree, seed, model.version + 5, pool);
            model.advance_to(model.version + 5);
        }
        let (mut child, mut lines) = spawn(&["read", tree.to_str().unwrap()]);
        if rand::Rng::random_bool(&mut rng, 0.5) {
            let _ = lines.next();
        }
        let us = rand::Rng::random_range(&mut rng, 0..3000);
        std::thread::sleep(Duration::from_micros(us));
        child.kill().unwrap();
        child.wait().unwrap();
        let report = metarep_gist_tree::verify(tree).unwrap();
        let (telemetry, other): (Vec<&String>, Vec<&String>) = report
            .problems
            .iter()
            .partition(|p| p.starts_with("telemetry damage"));
        assert!(other.is_empty(), "round {round}: {other:?}");
        telemetry_damaged += usize::from(!telemetry.is_empty());
        check_tree_data(tree, &model, pool);
    }
    build_to(tree, seed, model.version, pool);
    let report = metarep_gist_tree::verify(tree).unwrap();
    assert!(
        report.ok(),
        "after the writer's repair: {:?}",
        report.problems
    );
    eprintln!("{n} reader kills, {telemetry_damaged} left telemetry damage (repaired by writers)");
}

/// `check_tree` without requiring `verify` to be clean (telemetry damage is allowed).
fn check_tree_data(dir: &std::path::Path, model: &Model, pool: &MeanPool) {
    let reader = Reader::open(dir, true).unwrap();
    let snap = reader.snapshot().unwrap();
    assert_eq!(snap.version(), model.version);
    assert_eq!(snap.tokens(0..snap.token_count()).unwrap(), model.tokens);
    let gists = common::expected_gists(&plan::config(), pool, &model.tokens);
    let top = gists.len() - 1;
    if top >= 1 {
        assert_eq!(
            snap.gists(top as u8, 0..snap.count(top as u8)).unwrap(),
            gists[top].concat()
        );
    }
}

/// Readers in this process open, read and verify while a child commits and compacts after every
/// commit, replacing the generation and unlinking its files: no read or verify may fail, and
/// every read sees exactly a committed version's content.
#[test]
fn readers_keep_reading_while_another_process_compacts() {
    let Fixture { tree, pool, .. } = &fixture();
    let seed = 11;
    build_to(tree, seed, 3, pool);
    let (mut child, mut lines) = spawn(&["write", tree.to_str().unwrap(), "11", "off", "1"]);
    next_commit(&mut lines);
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let mut model = Model::at(seed, 0);
    let (mut reads, mut verifies) = (0, 0);
    let start = std::time::Instant::now();
    while reads < 200 || start.elapsed() < Duration::from_secs(2) {
        let reader = Reader::open(tree, false).unwrap();
        let snap = reader.snapshot().unwrap();
        let got = snap.tokens(0..snap.token_count()).unwrap();
        model.advance_to(snap.version());
        assert_eq!(got, model.tokens, "version {}", snap.version());
        reads += 1;
        if reads % 4 == 0 {
            let report = metarep_gist_tree::verify(tree).unwrap();
            assert!(
                report.ok(),
                "verify during compaction: {:?}",
                report.problems
            );
            verifies += 1;
        }
        if reads >= 2000 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drain.join().unwrap();
    eprintln!(
        "{reads} reads and {verifies} verifies up to version {} during compactions",
        model.version
    );
}

/// A commit log cut back by one entry after a kill: an acknowledged commit is then missing, and
/// the next writer must refuse (naming the evidence) instead of cutting its records; discarding
/// explicitly opens exactly the version before it.
#[test]
fn commit_log_cut_back_after_a_kill_is_refused_then_discarded() {
    let Fixture { tree, pool, .. } = &fixture();
    let seed = 3;
    let mut rng = metarep_core::rng::seeded(seed);
    // Cuts that hit an acknowledged commit (the refusal this test is about) are needed at least
    // half as many times as the planned rounds; how often a cut hits one depends on where the
    // kill lands, which a loaded machine shifts, so the rounds go on (up to 5×) until enough did.
    let rounds = kills("GIST_CRASH_KILLS", 120) / 10;
    let need = rounds.div_ceil(2);
    let mut refused = 0;
    let mut round = 0;
    while refused < need && round < 5 * rounds {
        round += 1;
        let (mut child, mut lines) = spawn(&["write", tree.to_str().unwrap(), "3", "off"]);
        next_commit(&mut lines);
        let mut acked = 0;
        for _ in 0..rand::Rng::random_range(&mut rng, 2..6) {
            acked = next_commit(&mut lines);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for line in lines.map_while(Result::ok) {
            if let Some(v) = line.strip_prefix("committed ") {
                acked = v.parse().unwrap();
            }
        }
        let gen = metarep_gist_tree::open::gen_dir(
            tree,
            metarep_gist_tree::open::read_current(tree).unwrap(),
        );
        let log = gen.join("commits.log");
        let bytes = std::fs::read(&log).unwrap();
        let parsed = metarep_gist_tree::codec::parse_log(&bytes).unwrap();
        let commits = parsed
            .items
            .iter()
            .filter(|(_, e)| matches!(e, metarep_gist_tree::codec::LogEntry::Commit(_)))
            .count();
        if commits < 2 {
            // A compaction just rewrote the log to one commit: cutting it leaves no version
            // at all (an open names the log as corrupt), and nothing to discard back to.
            continue;
        }
        let (last_at, last) = parsed.items.last().unwrap();
        let metarep_gist_tree::codec::LogEntry::Commit(c) = last else {
            panic!("round {round}: the log ends with a tag");
        };
        std::fs::write(&log, &bytes[..*last_at as usize]).unwrap();
        let opened = Writer::open(tree, WriterOptions::default(), Box::new(pool.clone()));
        if c.version <= acked {
            match opened {
                Err(metarep_gist_tree::Error::CommitsMissing { .. }) => refused += 1,
                other => panic!(
                    "round {round}: acknowledged version {} cut from the log, open gave {:?}",
                    c.version,
                    other.err()
                ),
            }
        } else {
            // A commit entry written but never acknowledged: cutting it is a crash before it.
            drop(opened);
        }
        let discard = WriterOptions {
            discard_uncommitted: true,
            ..WriterOptions::default()
        };
        let (w, report) = Writer::open(tree, discard, Box::new(pool.clone())).unwrap();
        assert_eq!(report.version, c.version - 1, "round {round}");
        drop(w);
        check_tree(tree, &Model::at(seed, c.version - 1), pool);
    }
    assert!(
        refused >= need,
        "only {refused} of {round} cuts hit an acknowledged commit (needed {need})"
    );
}

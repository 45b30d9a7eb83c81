//! Crash tests: a child process (`gist-crash-child`) commits a seeded workload in a loop and is
//! killed with SIGKILL at random moments; after every kill the tree must open at exactly a
//! committed version — at least the last one the child acknowledged, at most the one in flight —
//! hold exactly that version's content, and pass `verify`.
//!
//! `GIST_CRASH_KILLS=N` sets the number of kills (default 120); a soak run:
//! `GIST_CRASH_KILLS=5000 cargo test --release -p metarep-gist-tree --test crash`.

mod common;
#[path = "../src/bin/gist-crash-child/plan.rs"]
#[allow(dead_code)]
mod plan;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use metarep_gist_tree::{MeanPool, NodeData, NodeRef, Reader, Writer, WriterOptions};

fn kills() -> usize {
    std::env::var("GIST_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120)
}

/// The model stream, advanced version by version.
struct Model {
    seed: u64,
    version: u64,
    tokens: Vec<u32>,
}

impl Model {
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

#[test]
fn sigkill_at_random_moments_keeps_exactly_the_committed_prefix() {
    let exe = env!("CARGO_BIN_EXE_gist-crash-child");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let seed = 42;
    let cfg = plan::config();
    let pool = MeanPool::new(cfg.width as usize, plan::POOL_SEED).unwrap();
    let mut rng = metarep_core::rng::seeded(seed);
    let mut model = Model {
        seed,
        version: 0,
        tokens: Vec::new(),
    };
    let mut acked = 0u64;
    let mut dropped_records = 0u64;
    let n = kills();
    for round in 0..n {
        let policy = ["off", "commit", "every:3"][round % 3];
        let mut child = Command::new(exe)
            .arg(&tree)
            .arg(seed.to_string())
            .arg(policy)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let open: u64 = lines.next().unwrap().unwrap()["open ".len()..]
            .parse()
            .unwrap();
        assert!(
            open >= acked,
            "round {round}: reopened at {open}, but {acked} was acknowledged"
        );
        // The version the child recovered to is committed: nothing below it may be lost later.
        acked = open;
        let wait_commits = rand::Rng::random_range(&mut rng, 0..6);
        for _ in 0..wait_commits {
            let line = lines.next().unwrap().unwrap();
            acked = line["committed ".len()..].parse().unwrap();
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
        let head = Reader::open(&tree, false)
            .unwrap()
            .snapshot()
            .unwrap()
            .version();
        assert!(
            head == acked || head == acked + 1,
            "round {round}: head {head}, acknowledged {acked}"
        );
        model.advance_to(head);
        check_tree(&tree, &model, &pool);
        if round % 10 == 9 {
            // Recover in this process too and check the report is about uncommitted work only.
            let (w, report) =
                Writer::open(&tree, WriterOptions::default(), Box::new(pool.clone())).unwrap();
            assert_eq!(report.version, head);
            dropped_records += report.dropped_records();
            drop(w);
            check_tree(&tree, &model, &pool);
        }
    }
    assert!(model.version > 0, "the child never committed");
    eprintln!(
        "{n} kills, final version {}, {} tokens, {dropped_records} uncommitted records dropped in parent recoveries",
        model.version,
        model.tokens.len()
    );
}

//! Child processes run a few at a time: `reproduce all --jobs N` runs each experiment as its own
//! `xtask reproduce <id>`, so experiments that keep one core busy (the small models' training)
//! share the machine's cores. Each child's output is captured and handed back whole, in the
//! order the commands were given, once it and every command before it have finished.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use crate::error::BoxError;

/// Threads for each of `jobs` children running at once: the `threads` in force shared out, at
/// least one each. candle's thread pool spin-waits at every parallel op, so children that each
/// take every core slow one another: CI's quick checks two at a time, alone on a 2-core EPYC,
/// took 871 s with one thread each against 1 457 s with two each.
pub fn threads_per_child(threads: usize, jobs: usize) -> usize {
    (threads / jobs.max(1)).max(1)
}

/// Runs `commands`, at most `jobs` at a time, in their order. `done(i, output)` is called for
/// every command that ran, in index order. After a command that does not exit with a status in
/// `ok_codes` (or cannot be started) no further command is started; those already running
/// finish. Returns the indices that failed that way, with why.
pub fn run_ordered(
    commands: Vec<Command>,
    jobs: usize,
    ok_codes: &[i32],
    mut done: impl FnMut(usize, &Output),
) -> Vec<(usize, String)> {
    let n = commands.len();
    let ok = |o: &Output| o.status.code().is_some_and(|c| ok_codes.contains(&c));
    // Commands are taken in order, so the ones that ran are always a prefix of the list.
    let queue = Mutex::new(commands.into_iter().enumerate());
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, std::io::Result<Output>)>();
    let mut failed = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, n.max(1)) {
            let (tx, queue, stop) = (tx.clone(), &queue, &stop);
            s.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Some((i, mut command)) = queue.lock().ok().and_then(|mut q| q.next()) else {
                    return;
                };
                let output = command.output();
                if !matches!(&output, Ok(o) if ok(o)) {
                    stop.store(true, Ordering::SeqCst);
                }
                if tx.send((i, output)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut finished: Vec<Option<std::io::Result<Output>>> = (0..n).map(|_| None).collect();
        let mut shown = 0;
        for (i, output) in rx {
            finished[i] = Some(output);
            while let Some(result) = finished.get_mut(shown).and_then(Option::take) {
                match result {
                    Ok(output) => {
                        done(shown, &output);
                        if !ok(&output) {
                            failed.push((shown, format!("exited with {}", output.status)));
                        }
                    }
                    Err(e) => failed.push((shown, format!("could not be started: {e}"))),
                }
                shown += 1;
            }
        }
    });
    failed
}

/// Writes a child's captured stdout to ours and its stderr to ours.
pub fn relay(output: &Output) -> Result<(), BoxError> {
    use std::io::Write;
    std::io::stdout().write_all(&output.stdout)?;
    std::io::stdout().flush()?;
    std::io::stderr().write_all(&output.stderr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_share_the_threads_out_at_least_one_each() {
        assert_eq!(threads_per_child(2, 2), 1);
        assert_eq!(threads_per_child(16, 3), 5);
        assert_eq!(threads_per_child(8, 1), 8);
        assert_eq!(threads_per_child(1, 4), 1);
        assert_eq!(threads_per_child(4, 0), 4);
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn outputs_come_back_in_command_order_and_the_commands_overlap() {
        // The first command finishes last and only says "a" once the second has run beside it
        // (it gives up waiting after ≈ 5 s), so one at a time it would say "alone".
        let flag = std::env::temp_dir().join(format!("metarep-jobs-{}", std::process::id()));
        let _ = std::fs::remove_file(&flag);
        let f = flag.display();
        let commands = vec![
            sh(&format!(
                "for i in $(seq 500); do [ -f {f} ] && break; sleep 0.01; done; \
                 if [ -f {f} ]; then echo a; else echo alone; fi"
            )),
            sh(&format!("touch {f}; echo b")),
            sh("echo c"),
        ];
        let mut seen = Vec::new();
        let failed = run_ordered(commands, 2, &[0], |i, o| {
            seen.push((i, String::from_utf8_lossy(&o.stdout).trim().to_string()));
        });
        let _ = std::fs::remove_file(&flag);
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(
            seen,
            vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]
        );
    }

    #[test]
    fn a_failure_stops_new_commands_and_is_reported_with_its_index() {
        let commands = vec![
            sh("echo first; exit 1"),
            sh("exit 3"),
            sh("echo never"),
            sh("echo never"),
        ];
        let mut seen = Vec::new();
        let failed = run_ordered(commands, 1, &[0, 1], |i, o| {
            seen.push((i, String::from_utf8_lossy(&o.stdout).trim().to_string()));
        });
        // Exit 1 is accepted here (a failed check); exit 3 stops the run before index 2.
        assert_eq!(seen, vec![(0, "first".into()), (1, String::new())]);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 1);
        assert!(failed[0].1.contains('3'), "{}", failed[0].1);
    }

    #[test]
    fn a_command_that_cannot_start_is_reported() {
        let failed = run_ordered(
            vec![Command::new("/nonexistent/metarep-no-such-program")],
            2,
            &[0],
            |_, _| panic!("nothing ran"),
        );
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].1.contains("could not be started"),
            "{}",
            failed[0].1
        );
    }
}

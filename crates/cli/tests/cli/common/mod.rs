//! Shared by the CLI tests: run the `metarep` binary.

use std::process::Command;

/// Runs `metarep args…` (progress bars off); returns success, stdout and stderr.
pub fn metarep(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metarep"))
        .args(args)
        .env("METAREP_NO_PROGRESS", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

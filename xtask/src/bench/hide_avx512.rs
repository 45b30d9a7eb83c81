//! `cargo xtask bench NAME --hide-avx512`: the benchmark run again with the CPU's AVX-512 (and
//! AMX) hidden from every process in it — metarep's kernels, gemm's and the Python reference's
//! (ATen, MKL, oneDNN) all take their AVX2 paths. A stand-in, on an AVX-512 machine, for a
//! machine without AVX-512: same cores, caches and clocks, only the instruction set differs.
//!
//! The hiding is `xtask/cpuid/hide_avx512.c` (its comment says how and what it cannot hide),
//! compiled here with the system C compiler (`$CC`, else `cc`) and loaded with `LD_PRELOAD`;
//! it needs Linux's CPUID faulting, which the CPU (or VM) offers when `/proc/cpuinfo` lists
//! `cpuid_fault`. The benchmark's JSON records `avx512_hidden` and the hardware's own level.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::error::BoxError;

/// The LD_PRELOAD library's source.
const SOURCE: &str = include_str!("../../cpuid/hide_avx512.c");

/// Set in the rerun's environment: the benchmark checks that the hiding took.
pub const MARK: &str = "METAREP_AVX512_HIDDEN";

/// glibc's own AVX-512 string functions are chosen before the library loads; this tunable
/// excludes them.
const GLIBC_TUNABLE: &str = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD";

/// Whether this process runs under the hiding (set by [`rerun`]).
pub fn active() -> bool {
    std::env::var_os(MARK).is_some()
}

/// Errors unless the hiding took: inside a rerun, AVX-512 must be invisible to run-time
/// detection.
pub fn check_active() -> Result<(), BoxError> {
    #[cfg(target_arch = "x86_64")]
    if active() && std::arch::is_x86_feature_detected!("avx512f") {
        return Err(format!(
            "{MARK} is set but AVX-512F is still detected: the LD_PRELOAD library did not load"
        )
        .into());
    }
    Ok(())
}

/// Runs this xtask command again without `--hide-avx512`, under the hiding library; returns
/// the rerun's exit status (or failure, after printing why it could not start).
pub fn rerun() -> ExitCode {
    match try_rerun() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: --hide-avx512: {e}");
            ExitCode::FAILURE
        }
    }
}

fn try_rerun() -> Result<ExitCode, BoxError> {
    let flags = cpu_flags()?;
    if !flags.iter().any(|f| f == "cpuid_fault") {
        return Err(
            "this CPU or VM offers no CPUID faulting (`cpuid_fault` is not in \
                    /proc/cpuinfo's flags), so AVX-512 cannot be hidden here"
                .into(),
        );
    }
    if !flags.iter().any(|f| f == "avx512f") {
        return Err(
            "this CPU has no AVX-512 to hide: run the benchmark without --hide-avx512".into(),
        );
    }
    let exe = std::env::current_exe()?;
    let library = build_library(exe.parent().unwrap_or(Path::new(".")))?;
    let args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--hide-avx512")
        .collect();
    let preload = join_env("LD_PRELOAD", library.as_os_str(), " ");
    let tunables = join_env("GLIBC_TUNABLES", GLIBC_TUNABLE.as_ref(), ":");
    println!("  AVX-512 hidden by {} (CPUID faulting)", library.display());
    let status = Command::new(&exe)
        .args(args)
        .env("LD_PRELOAD", preload)
        .env("GLIBC_TUNABLES", tunables)
        .env(MARK, "1")
        .status()
        .map_err(|e| format!("cannot rerun {}: {e}", exe.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// The CPU's feature flags as the kernel lists them in `/proc/cpuinfo` (what the hardware
/// has, whatever CPUID tells a process).
pub fn cpu_flags() -> Result<Vec<String>, BoxError> {
    let info = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| format!("cannot read /proc/cpuinfo: {e}"))?;
    Ok(info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default())
}

/// Compiles the library into `dir/hide_avx512/` (next to the running xtask binary).
fn build_library(dir: &Path) -> Result<PathBuf, BoxError> {
    let dir = dir.join("hide_avx512");
    std::fs::create_dir_all(&dir)?;
    let source = dir.join("hide_avx512.c");
    let library = dir.join("hide_avx512.so");
    std::fs::write(&source, SOURCE)?;
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let out = Command::new(&cc)
        .args(["-O2", "-Wall", "-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .output()
        .map_err(|e| format!("cannot run the C compiler {cc:?} (set CC): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "compiling {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(library)
}

/// `value` joined before the current value of environment variable `key` with `sep`.
fn join_env(key: &str, value: &std::ffi::OsStr, sep: &str) -> OsString {
    let mut joined = value.to_os_string();
    if let Some(old) = std::env::var_os(key).filter(|v| !v.is_empty()) {
        joined.push(sep);
        joined.push(old);
    }
    joined
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Run by [`hidden_in_a_child_process`] in a child test process: prints what run-time
    /// detection sees.
    #[test]
    fn probe() {
        if std::env::var_os("METAREP_PROBE_AVX512").is_some() {
            println!(
                "probe avx512f={}",
                std::arch::is_x86_feature_detected!("avx512f")
            );
        }
    }

    /// A child process under the library detects AVX-512 exactly when the hardware has it and
    /// CPUID faulting is unavailable (the library then cannot hide it); without the library it
    /// detects what the hardware has.
    #[test]
    fn hidden_in_a_child_process() {
        let flags = cpu_flags().unwrap();
        let has = |f: &str| flags.iter().any(|x| x == f);
        let dir = tempfile::tempdir().unwrap();
        let library = build_library(dir.path()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let run = |preload: bool| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--exact", "bench::hide_avx512::tests::probe", "--nocapture"])
                .env("METAREP_PROBE_AVX512", "1");
            if preload {
                cmd.env("LD_PRELOAD", &library);
            }
            String::from_utf8(cmd.output().unwrap().stdout).unwrap()
        };
        let line = |detected: bool| format!("probe avx512f={detected}");
        assert!(run(false).contains(&line(has("avx512f"))));
        assert!(run(true).contains(&line(has("avx512f") && !has("cpuid_fault"))));
    }

    #[test]
    fn joins_an_existing_value_after_the_new_one() {
        let key = "METAREP_TEST_JOIN_ENV";
        assert_eq!(join_env(key, "a".as_ref(), ":"), "a");
        // SAFETY: this test alone uses this variable.
        unsafe { std::env::set_var(key, "b") };
        assert_eq!(join_env(key, "a".as_ref(), ":"), "a:b");
    }
}

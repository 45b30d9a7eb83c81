//! Benchmarks (`cargo xtask bench <name>`), each written to `results/bench/<name>.json`.
//!
//! One module per benchmark; [`BENCHES`] is the list `run` dispatches on.

mod capture;
mod disk;
mod forward;
mod gist_tree;
mod gpu;
pub mod hide_avx512;
mod lat_cg;
mod megacontext;
mod py_server;
mod real_forward;
mod sae;
mod sae_store;
mod second_order;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use crate::error::BoxError;

/// A registered benchmark: its name, what runs it and the `--set` keys it accepts.
type Bench = (
    &'static str,
    fn(&Path) -> Result<bool, BoxError>,
    &'static [&'static str],
);

/// Every benchmark, by name.
const BENCHES: &[Bench] = &[
    ("forward", forward::run, &[]),
    ("lat_cg", lat_cg::run, &[]),
    ("gist_tree", gist_tree::run, gist_tree::SETTINGS),
    ("capture", capture::run, capture::SETTINGS),
    ("sae", sae::run, &[]),
    ("second_order", second_order::run, second_order::SETTINGS),
    ("real_forward", real_forward::run, real_forward::SETTINGS),
    ("megacontext", megacontext::run, megacontext::SETTINGS),
    ("gpu", gpu::run, gpu::SETTINGS),
];

static SETTINGS: OnceLock<BTreeMap<String, String>> = OnceLock::new();

/// The value of `--set key=value` for the running benchmark, if given.
pub fn setting(key: &str) -> Option<&'static str> {
    SETTINGS.get()?.get(key).map(String::as_str)
}

/// Runs benchmark `name` with output root `out` and `key=value` settings.
pub fn run(name: &str, out: &Path, settings: &[String]) -> Result<bool, BoxError> {
    let known: Vec<&str> = BENCHES.iter().map(|(n, _, _)| *n).collect();
    let (_, f, keys) = BENCHES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| format!("unknown benchmark '{name}'; known: {}", known.join(", ")))?;
    hide_avx512::check_active()?;
    let settings = crate::device::take(settings)?;
    crate::device::check(&format!("benchmark '{name}'"), name == "gpu")?;
    let mut map = BTreeMap::new();
    for s in &settings {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("bad --set `{s}`: expected key=value"))?;
        if !keys.contains(&k) {
            return Err(format!("benchmark '{name}' has no setting `{k}`; known: {keys:?}").into());
        }
        map.insert(k.to_string(), v.to_string());
    }
    let _ = SETTINGS.set(map);
    f(out)
}

/// The median of `v` (the upper middle value for even lengths); `v` must be non-empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The smallest value of `v` (infinity when empty).
pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The median of the per-repetition ratios `a[i] / b[i]`.
pub fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    median(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>())
}

/// The 1-minute load average (Linux), to read timings on a shared machine against.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine the timings come from: CPU model (`/proc/cpuinfo`), the widest SIMD level the
/// CPU offers to runtime-dispatched kernels (gemm's, metarep-kernels'), the hardware's own
/// level (`/proc/cpuinfo`'s flags) and whether AVX-512 was hidden (`--hide-avx512`), and the
/// threads the CPU kernels use (candle's count: `RAYON_NUM_THREADS` or the available
/// parallelism).
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    serde_json::json!({
        "cpu_model": cpu,
        "simd": simd_level(),
        "simd_hardware": hardware_simd_level(),
        "avx512_hidden": hide_avx512::active(),
        "threads": candle_core::utils::get_num_threads(),
    })
}

/// `AVX512F`, `AVX2+FMA`, `AVX`, `NEON` or `baseline`.
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX512F";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "AVX2+FMA";
        }
        if std::arch::is_x86_feature_detected!("avx") {
            return "AVX";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return "NEON";
    }
    #[allow(unreachable_code)]
    "baseline"
}

/// `AVX512F`, `AVX2+FMA` or `AVX` from `/proc/cpuinfo`'s flags (what the hardware has, even
/// while `--hide-avx512` hides AVX-512 from CPUID); `unknown` without them.
fn hardware_simd_level() -> &'static str {
    let flags = hide_avx512::cpu_flags().unwrap_or_default();
    let has = |f: &str| flags.iter().any(|x| x == f);
    if has("avx512f") {
        "AVX512F"
    } else if has("avx2") && has("fma") {
        "AVX2+FMA"
    } else if has("avx") {
        "AVX"
    } else {
        "unknown"
    }
}

/// Median wall time in milliseconds of `f` over `reps` runs after one warm-up.
pub fn median_ms(
    reps: usize,
    mut f: impl FnMut() -> Result<(), BoxError>,
) -> Result<f64, BoxError> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&times))
}

/// Writes `results/bench/<name>.json`: `body` (a JSON object) plus the benchmark name, the
/// machine's thread count and [`machine`]; returns the path.
pub fn write_report(
    out: &Path,
    name: &str,
    mut body: serde_json::Value,
) -> Result<PathBuf, BoxError> {
    let dir = out.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    if let Some(obj) = body.as_object_mut() {
        obj.insert("benchmark".into(), name.into());
        obj.insert(
            "threads".into(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .into(),
        );
        obj.entry("machine").or_insert_with(machine);
    }
    metarep_core::fsutil::atomic_write(&path, serde_json::to_string_pretty(&body)?.as_bytes())?;
    println!("  wrote {}", path.display());
    Ok(path)
}

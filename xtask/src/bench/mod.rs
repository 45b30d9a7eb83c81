//! Benchmarks (`cargo xtask bench <name>`), each written to `results/bench/<name>.json`.
//!
//! One module per benchmark; [`BENCHES`] is the list `run` dispatches on.

mod capture;
mod disk;
mod forward;
mod gist_tree;
mod lat_cg;
mod sae;
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
    let mut map = BTreeMap::new();
    for s in settings {
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

/// Writes `results/bench/<name>.json`: `body` (a JSON object) plus the benchmark name and the
/// machine's thread count; returns the path.
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
    }
    metarep_core::fsutil::atomic_write(&path, serde_json::to_string_pretty(&body)?.as_bytes())?;
    println!("  wrote {}", path.display());
    Ok(path)
}

//! Benchmarks (`cargo xtask bench <name>`), each written to `results/bench/<name>.json`.
//!
//! One module per benchmark; [`BENCHES`] is the list `run` dispatches on.

mod lat_cg;
mod sae;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::BoxError;

/// A registered benchmark: its name and what runs it.
type Bench = (&'static str, fn(&Path) -> Result<bool, BoxError>);

/// Every benchmark, by name.
const BENCHES: &[Bench] = &[("lat_cg", lat_cg::run), ("sae", sae::run)];

/// Runs benchmark `name` with output root `out`.
pub fn run(name: &str, out: &Path) -> Result<bool, BoxError> {
    let known: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
    let (_, f) = BENCHES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| format!("unknown benchmark '{name}'; known: {}", known.join(", ")))?;
    f(out)
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
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
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

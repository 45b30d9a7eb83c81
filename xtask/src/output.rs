//! Writing a result directory: data (CSV), figures (SVG and PNG, style-checked),
//! `metrics.json`, `manifest.json`.

use std::path::{Path, PathBuf};

use metarep_core::manifest::RunManifest;
use metarep_core::metrics::FlatMetrics;
use metarep_eval::plot::{write_checked, Figure};
use metarep_eval::stats::Interval;
use metarep_eval::table::{Cell, Table};
use serde::Serialize;

use crate::error::BoxError;

/// An open result directory; `finish` writes the metrics and the manifest.
pub struct ResultDir {
    dir: PathBuf,
    manifest: RunManifest,
    /// Named numbers and booleans written to `metrics.json`.
    pub metrics: FlatMetrics,
}

impl ResultDir {
    /// Creates `dir` and starts the run manifest for `config` and `seeds`.
    pub fn start(dir: &Path, config: &impl Serialize, seeds: Vec<u64>) -> Result<Self, BoxError> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let manifest = RunManifest::start(config, seeds, "metarep", env!("CARGO_PKG_VERSION"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            metrics: FlatMetrics::new(),
        })
    }

    /// Writes `table` as `<name>.csv` and `<name>.md`.
    pub fn table(&self, name: &str, table: &Table) -> Result<(), BoxError> {
        table.write_csv(self.dir.join(format!("{name}.csv")))?;
        table.write_markdown(self.dir.join(format!("{name}.md")))?;
        Ok(())
    }

    /// Writes `plot` as `<name>.svg` and `<name>.png`; an error naming the figure and its
    /// problems if it fails the style check (the files are written first, to look at).
    pub fn plot(&self, name: &str, plot: &impl Figure) -> Result<(), BoxError> {
        Ok(write_checked(plot, self.dir.join(format!("{name}.svg")))?)
    }

    /// Records an extra manifest field (e.g. a model's or a dataset's hash).
    pub fn extra(&mut self, key: &str, value: &impl Serialize) -> Result<(), BoxError> {
        self.manifest.set_extra(key, value)?;
        Ok(())
    }

    /// Records `pass`, writes `metrics.json` and `manifest.json`; returns `pass`.
    pub fn finish(mut self, pass: bool) -> Result<bool, BoxError> {
        self.metrics.set_bool("pass", pass);
        self.metrics.write_json(&self.dir.join("metrics.json"))?;
        self.manifest.finish();
        self.manifest.write_json(&self.dir.join("manifest.json"))?;
        Ok(pass)
    }
}

/// A method label as a metric key: lower case, `++` → `pp`, runs of other characters → `_`
/// (`"GD++ (tuned η, γ)"` → `gdpp_tuned`).
pub fn metric_key(label: &str) -> String {
    label
        .to_lowercase()
        .replace("++", "pp")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// An interval as three table cells: estimate, low, high.
pub fn interval_cells(i: &Interval) -> [Cell; 3] {
    [Cell::Num(i.estimate), Cell::Num(i.low), Cell::Num(i.high)]
}

/// Records an interval as the metrics `<key>`, `<key>_low` and `<key>_high`.
pub fn set_interval(m: &mut FlatMetrics, key: &str, i: &Interval) {
    m.set_number(key, i.estimate);
    m.set_number(format!("{key}_low"), i.low);
    m.set_number(format!("{key}_high"), i.high);
}

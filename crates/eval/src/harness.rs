//! Multi-seed sweeps: run a measurement over seeds × settings, summarise as mean ± 95% CI
//! (Student t) and write a markdown + CSV table and an SVG plot.
//!
//! ```
//! use metarep_eval::harness::{Sweep, DEFAULT_SEEDS};
//! # fn main() -> metarep_eval::Result<()> {
//! let result = Sweep::new(&DEFAULT_SEEDS, &[1.0, 2.0, 4.0]).run(|seed, x| {
//!     Ok::<_, metarep_eval::Error>(vec![("x²".to_string(), x * x + seed as f64 * 0.01)])
//! })?;
//! let rows = result.summary(0.95)?;
//! assert_eq!(rows.len(), 3);
//! assert!(result.table(0.95)?.to_markdown().contains("seeds 0, 1, 2"));
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use crate::plot::{write_checked, LinePlot, Series, SeriesStyle};
use crate::stats::mean_ci;
use crate::table::{Cell, Table};
use crate::{Error, Result};

/// Seeds of an ordinary sweep.
pub const DEFAULT_SEEDS: [u64; 3] = [0, 1, 2];
/// Seeds of an ablation.
pub const ABLATION_SEEDS: [u64; 5] = [0, 1, 2, 3, 4];

/// A sweep over seeds and values of one setting `x`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// Seeds, each run independently.
    pub seeds: Vec<u64>,
    /// Values of the swept setting.
    pub xs: Vec<f64>,
}

/// One measured number.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Method or series name.
    pub method: String,
    /// Value of the swept setting.
    pub x: f64,
    /// Seed it was measured with.
    pub seed: u64,
    /// The measured value.
    pub value: f64,
}

/// Mean ± CI of one method at one setting.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Method name.
    pub method: String,
    /// Setting.
    pub x: f64,
    /// Mean over seeds.
    pub mean: f64,
    /// CI lower end.
    pub low: f64,
    /// CI upper end.
    pub high: f64,
    /// Number of seeds.
    pub n: usize,
}

/// Everything a sweep measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SweepResult {
    /// Seeds of the sweep, in order.
    pub seeds: Vec<u64>,
    /// All measurements.
    pub measurements: Vec<Measurement>,
}

impl Sweep {
    /// A sweep over `seeds` × `xs`.
    pub fn new(seeds: &[u64], xs: &[f64]) -> Self {
        Self {
            seeds: seeds.to_vec(),
            xs: xs.to_vec(),
        }
    }

    /// Calls `measure(seed, x)` for every pair; it returns `(method, value)` pairs. The closure
    /// may use any error type that this crate's [`Error`] converts into.
    pub fn run<E: From<Error>>(
        &self,
        mut measure: impl FnMut(u64, f64) -> std::result::Result<Vec<(String, f64)>, E>,
    ) -> std::result::Result<SweepResult, E> {
        if self.seeds.is_empty() || self.xs.is_empty() {
            return Err(
                Error::Invalid("a sweep needs at least one seed and one setting".into()).into(),
            );
        }
        let mut measurements = Vec::new();
        for &x in &self.xs {
            for &seed in &self.seeds {
                for (method, value) in measure(seed, x)? {
                    measurements.push(Measurement {
                        method,
                        x,
                        seed,
                        value,
                    });
                }
            }
        }
        Ok(SweepResult {
            seeds: self.seeds.clone(),
            measurements,
        })
    }
}

impl SweepResult {
    /// The measurements whose method name satisfies `keep` (e.g. to draw a reference as a
    /// note instead, or to split one sweep into two figures).
    pub fn select(&self, keep: impl Fn(&str) -> bool) -> SweepResult {
        SweepResult {
            seeds: self.seeds.clone(),
            measurements: self
                .measurements
                .iter()
                .filter(|m| keep(&m.method))
                .cloned()
                .collect(),
        }
    }

    /// Method names in first-seen order.
    pub fn methods(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in &self.measurements {
            if !out.contains(&m.method) {
                out.push(m.method.clone());
            }
        }
        out
    }

    /// Mean ± CI per (method, x), settings in first-seen order (measurements may come in any
    /// order); with a single seed the interval collapses to the value. A setting where some seed's
    /// value is not finite (a diverged run) keeps the plain mean (non-finite too) and gets NaN
    /// bounds instead of an interval.
    pub fn summary(&self, level: f64) -> Result<Vec<SummaryRow>> {
        let mut rows = Vec::new();
        for method in self.methods() {
            let mut xs: Vec<f64> = Vec::new();
            for m in self.measurements.iter().filter(|m| m.method == method) {
                if !xs.contains(&m.x) {
                    xs.push(m.x);
                }
            }
            for x in xs {
                let values: Vec<f64> = self
                    .measurements
                    .iter()
                    .filter(|m| m.method == method && m.x == x)
                    .map(|m| m.value)
                    .collect();
                let (mean, low, high) = if values.iter().any(|v| !v.is_finite()) {
                    let mean = values.iter().sum::<f64>() / values.len() as f64;
                    (mean, f64::NAN, f64::NAN)
                } else if values.len() >= 2 {
                    let ci = mean_ci(&values, level)?;
                    (ci.estimate, ci.low, ci.high)
                } else {
                    (values[0], values[0], values[0])
                };
                rows.push(SummaryRow {
                    method: method.clone(),
                    x,
                    mean,
                    low,
                    high,
                    n: values.len(),
                });
            }
        }
        Ok(rows)
    }

    /// The summary as a table; the markdown caption line names the seeds.
    pub fn table(&self, level: f64) -> Result<Table> {
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut t = Table::new(vec![
            "method".to_string(),
            "x".to_string(),
            "mean".to_string(),
            format!("ci{:.0}_low", level * 100.0),
            format!("ci{:.0}_high", level * 100.0),
            format!("n (seeds {})", seeds.join(", ")),
        ]);
        for r in self.summary(level)? {
            t.push_row(vec![
                Cell::from(r.method),
                Cell::from(r.x),
                Cell::from(r.mean),
                Cell::from(r.low),
                Cell::from(r.high),
                Cell::from(r.n as i64),
            ])?;
        }
        Ok(t)
    }

    /// Mean curves (solid) with shaded `level` interval bands per method, and a note saying so
    /// under the chart.
    pub fn plot(
        &self,
        title: &str,
        x_label: &str,
        y_label: &str,
        log_y: bool,
        level: f64,
    ) -> Result<LinePlot> {
        let rows = self.summary(level)?;
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut plot = LinePlot::new(title)
            .x_label(x_label)
            .y_label(y_label)
            .log_y(log_y)
            .note(format!(
                "lines: mean over seeds {}; shaded: {:.0}% confidence interval (Student t)",
                seeds.join(", "),
                level * 100.0
            ));
        for (i, method) in self.methods().into_iter().enumerate() {
            let mine: Vec<&SummaryRow> = rows.iter().filter(|r| r.method == method).collect();
            // A t-interval from few seeds can reach below zero: on a log axis the band leaves
            // those points out.
            plot = plot
                .series(Series {
                    name: method,
                    points: mine.iter().map(|r| (r.x, r.mean)).collect(),
                    style: SeriesStyle::Solid,
                    color: Some(i),
                })
                .band(mine.iter().map(|r| (r.x, r.low, r.high)).collect());
        }
        Ok(plot)
    }

    /// Writes `<name>.csv`, `<name>.md` and the figure titled `title` as `<name>.svg` and
    /// `<name>.png` into `dir`; an error if the figure fails the style check.
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
        title: &str,
        axes: (&str, &str),
        log_y: bool,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let table = self.table(0.95)?;
        table.write_csv(dir.join(format!("{name}.csv")))?;
        table.write_markdown(dir.join(format!("{name}.md")))?;
        let plot = self.plot(title, axes.0, axes.1, log_y, 0.95)?;
        write_checked(&plot, dir.join(format!("{name}.svg")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_with_a_non_finite_seed_keeps_its_mean_without_an_interval() {
        let measurements = [1.0, f64::INFINITY, 3.0]
            .iter()
            .enumerate()
            .map(|(seed, &value)| Measurement {
                method: "m".into(),
                x: 1.0,
                seed: seed as u64,
                value,
            })
            .collect();
        let result = SweepResult {
            seeds: vec![0, 1, 2],
            measurements,
        };
        let row = &result.summary(0.95).unwrap()[0];
        assert_eq!(row.mean, f64::INFINITY);
        assert!(row.low.is_nan() && row.high.is_nan());
        assert_eq!(row.n, 3);
    }

    #[test]
    fn summary_groups_measurements_recorded_seed_by_seed() {
        let mut r = SweepResult {
            seeds: vec![0, 1],
            measurements: vec![],
        };
        for seed in [0u64, 1] {
            for x in [1.0, 2.0] {
                r.measurements.push(Measurement {
                    method: "m".into(),
                    x,
                    seed,
                    value: x + seed as f64,
                });
            }
        }
        let rows = r.summary(0.95).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].x, rows[0].mean, rows[0].n), (1.0, 1.5, 2));
        assert_eq!((rows[1].x, rows[1].mean, rows[1].n), (2.0, 2.5, 2));
    }

    #[test]
    fn summary_matches_student_t_per_method_and_setting() {
        let sweep = Sweep::new(&ABLATION_SEEDS, &[1.0, 2.0]);
        let result = sweep
            .run(|seed, x| Ok::<_, Error>(vec![("a".into(), x + seed as f64), ("b".into(), -x)]))
            .unwrap();
        assert_eq!(result.measurements.len(), 2 * 5 * 2);
        let rows = result.summary(0.95).unwrap();
        let a1 = rows.iter().find(|r| r.method == "a" && r.x == 1.0).unwrap();
        let want = mean_ci(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.95).unwrap();
        assert_eq!(
            (a1.mean, a1.low, a1.high, a1.n),
            (want.estimate, want.low, want.high, 5)
        );
        let b2 = rows.iter().find(|r| r.method == "b" && r.x == 2.0).unwrap();
        assert_eq!((b2.low, b2.high), (-2.0, -2.0));
    }

    #[test]
    fn writes_table_and_figure() {
        let dir = tempfile::tempdir().unwrap();
        let result = Sweep::new(&DEFAULT_SEEDS, &[1.0, 2.0, 3.0])
            .run(|s, x| Ok::<_, Error>(vec![("m".into(), x * (1.0 + s as f64 * 0.1))]))
            .unwrap();
        result
            .write(
                dir.path(),
                "sweep",
                "loss by layers",
                ("layers", "loss"),
                false,
            )
            .unwrap();
        let md = std::fs::read_to_string(dir.path().join("sweep.md")).unwrap();
        assert!(md.contains("seeds 0, 1, 2"));
        assert!(std::fs::read_to_string(dir.path().join("sweep.svg"))
            .unwrap()
            .contains("<svg"));
    }

    #[test]
    fn log_plots_drop_non_positive_band_points() {
        let dir = tempfile::tempdir().unwrap();
        // Two seeds far apart: the lower CI end is negative.
        let result = Sweep::new(&[0, 1], &[1.0])
            .run(|s, _| Ok::<_, Error>(vec![("m".into(), if s == 0 { 0.01 } else { 1.0 })]))
            .unwrap();
        assert!(result.summary(0.95).unwrap()[0].low < 0.0);
        result
            .write(dir.path(), "log", "log y", ("x", "y"), true)
            .unwrap();
    }

    #[test]
    fn errors_propagate_and_empty_sweeps_are_rejected() {
        assert!(Sweep::new(&[], &[1.0])
            .run(|_, _| Ok::<_, Error>(vec![]))
            .is_err());
        let e = Sweep::new(&[0], &[1.0])
            .run(|_, _| Err(Error::Invalid("boom".into())))
            .unwrap_err();
        assert!(e.to_string().contains("boom"));
    }
}

//! Evaluation helpers for metarep: SVG line plots and CSV/markdown tables.
//!
//! This crate grows with the research lines (task generators, baselines, statistics, the
//! multi-seed harness); for now it holds what every result needs: a figure and a table.
//!
//! ```
//! use metarep_eval::plot::{LinePlot, Series, SeriesStyle};
//! use metarep_eval::table::{Cell, Table};
//!
//! # fn main() -> metarep_eval::Result<()> {
//! let dir = std::env::temp_dir().join("metarep-eval-doctest");
//! std::fs::create_dir_all(&dir).unwrap();
//! let points: Vec<(f64, f64)> = (0..10).map(|t| (t as f64, 0.5f64.powi(t))).collect();
//! LinePlot::new("error vs steps")
//!     .x_label("t")
//!     .y_label("error")
//!     .log_y(true)
//!     .series(Series { name: "CG".into(), points, style: SeriesStyle::Solid, color: None })
//!     .write_svg(dir.join("plot.svg"))?;
//! let mut table = Table::new(vec!["t", "error"]);
//! table.push_row(vec![Cell::from(1i64), Cell::from(0.5)])?;
//! assert!(table.to_markdown().contains("| t | error |"));
//! # Ok(())
//! # }
//! ```

pub mod baselines;
pub mod format;
pub mod harness;
pub mod metrics;
pub mod plot;
pub mod stats;
pub mod table;
pub mod tasks;

/// Errors of metarep-eval.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Drawing a figure failed.
    #[error("plot error: {0}")]
    Plot(String),
    /// An input was not valid.
    #[error("invalid input: {0}")]
    Invalid(String),
}

impl Error {
    /// An invalid value: `invalid {what}: {reason}`.
    pub fn invalid(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Invalid(format!("invalid {what}: {reason}"))
    }

    /// A shape mismatch: `shape mismatch for {what}: expected {expected}, got {got}`.
    pub fn shape(
        what: impl std::fmt::Display,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Display,
    ) -> Self {
        Error::Invalid(format!(
            "shape mismatch for {what}: expected {expected}, got {got}"
        ))
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Writes `text` to `path`, naming the path on failure.
pub(crate) fn write_text(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

//! metarep-eval: what every experiment is evaluated with, independent of any model crate.
//!
//! - [`tasks`]: in-context task generators, deterministic under a seed (linear and GLM
//!   regression, kernel regression, an agreement grammar with per-token latents, numeric-label
//!   text and arithmetic);
//! - [`baselines`]: predictors for in-context regression behind one trait (ridge oracle, least
//!   squares, GD, GD++, CG/PCG, Newton–Schulz, k-NN, ...);
//! - [`metrics`]: MSE, cosine, Spearman, AUROC; [`stats`]: mean and bootstrap intervals,
//!   permutation and Wilcoxon tests;
//! - [`harness`]: the multi-seed sweep with per-method summaries;
//! - [`corpus`]: real text documents in train / held-out splits (`cargo xtask fixtures corpus`);
//! - [`plot`] and [`table`]: SVG line plots and heat maps, CSV/markdown tables; [`format`](mod@format):
//!   number formatting.
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

#![warn(missing_docs)]

pub mod baselines;
pub mod corpus;
pub mod format;
pub mod harness;
pub mod metrics;
pub mod plot;
pub mod stats;
pub mod table;
pub mod tasks;

/// Seeded generators for the unit tests (the same ChaCha8 streams as `metarep_core::rng`).
#[cfg(test)]
mod testing {
    use rand::SeedableRng;

    /// A ChaCha8 generator seeded from `seed`.
    pub fn seeded(seed: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(seed)
    }
}

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

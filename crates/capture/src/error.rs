//! Errors of metarep-capture.

use std::path::PathBuf;

/// Everything that can go wrong while capturing or reading activations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store, shard or dataset file is missing, unreadable, corrupt or inconsistent.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An existing store was written with different settings than the ones asked for now.
    #[error("store {} was written with {key} = {stored}, not {requested}; use a new directory", path.display())]
    Mismatch {
        /// The store directory.
        path: PathBuf,
        /// The setting that differs.
        key: String,
        /// Its value in the store.
        stored: String,
        /// The value asked for.
        requested: String,
    },
    /// Any other invalid input, with a message naming the problem.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An error from metarep-model.
    #[error(transparent)]
    Model(#[from] metarep_model::Error),
    /// An error from metarep-core.
    #[error(transparent)]
    Core(#[from] metarep_core::Error),
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// A [`Error::File`] error.
    pub fn file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

//! The crate's error type and `Result` alias.

use std::path::PathBuf;

/// Every failure metarep-sae can report; each names the thing that went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// A tensor has the wrong shape or dtype.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        /// The tensor.
        what: String,
        /// What was expected.
        expected: String,
        /// What was found.
        got: String,
    },
    /// A data or SAE file is missing, unreadable or malformed.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Training cannot go on (e.g. the loss is no longer finite).
    #[error("training: {0}")]
    Training(String),
    /// Any other invalid input, with a message naming the problem.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An error from metarep-core (config, checkpoint, metrics files).
    #[error(transparent)]
    Core(#[from] metarep_core::Error),
    /// An error from a metarep kernel.
    #[error(transparent)]
    Kernel(#[from] metarep_kernels::Error),
    /// An error from metarep-capture (activation stores; boxed, it is large).
    #[error(transparent)]
    Capture(Box<metarep_capture::Error>),
    /// An error from metarep-model (the language model an SAE is spliced into).
    #[error(transparent)]
    Model(#[from] metarep_model::Error),
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<metarep_capture::Error> for Error {
    fn from(e: metarep_capture::Error) -> Self {
        Error::Capture(Box::new(e))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an [`Error::Shape`].
    pub fn shape(
        what: impl Into<String>,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.into(),
            got: got.into(),
        }
    }

    /// Builds an [`Error::File`].
    pub fn file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

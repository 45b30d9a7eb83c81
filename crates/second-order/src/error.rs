//! Errors of metarep-second-order.

use std::path::PathBuf;

/// Everything that can go wrong computing effects, principal components, sparse decompositions
/// or lexicons; each variant names the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input (wrong shape, index out of range, empty list), with a message naming it.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The model has a feature this crate cannot decompose exactly, named in the message.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A file-system operation failed on `path`.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// An error from metarep-model.
    #[error(transparent)]
    Model(#[from] metarep_model::Error),
    /// An error from metarep-testbeds (framing, tokenization), boxed: it is large.
    #[error(transparent)]
    Testbeds(Box<metarep_testbeds::Error>),
    /// An error from metarep-core (files).
    #[error(transparent)]
    Core(#[from] metarep_core::Error),
    /// An error from metarep-eval (tasks, tables).
    #[error(transparent)]
    Eval(#[from] metarep_eval::Error),
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// An [`Error::Io`] error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<metarep_testbeds::Error> for Error {
    fn from(e: metarep_testbeds::Error) -> Self {
        Error::Testbeds(Box::new(e))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

//! Error type of metarep-lat-cg.

/// Everything that can go wrong when building, running or checking a LAT.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor or matrix had the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        /// Which input was wrong.
        what: String,
        /// What was expected, in words.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A problem or construction parameter was out of its domain.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The parameter.
        what: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A named channel range is not part of the token layout.
    #[error("unknown channel '{0}' in the token layout")]
    UnknownChannel(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error from metarep-core (checkpoints, metrics, RNG helpers).
    #[error(transparent)]
    Core(#[from] metarep_core::Error),
    /// An error from a task generator or a reference solver (metarep-eval).
    #[error(transparent)]
    Eval(#[from] metarep_eval::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::Shape`].
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

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

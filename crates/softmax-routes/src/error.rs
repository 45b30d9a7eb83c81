//! Error type of metarep-softmax-routes.

/// Everything that can go wrong when building, running or measuring a softmax construction.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem, construction or experiment parameter was out of its domain.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The parameter.
        what: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A matrix or prompt had the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        /// Which input was wrong.
        what: String,
        /// What was expected, in words.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A run produced NaN or infinite outputs (out of the dtype's range; the message says why).
    #[error("non-finite {what}: {reason}")]
    NonFinite {
        /// What was non-finite.
        what: String,
        /// The likely cause.
        reason: String,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error from the generic forward pass or the LAT construction (metarep-lat-cg).
    #[error(transparent)]
    LatCg(#[from] metarep_lat_cg::Error),
    /// An error from a task generator, reference solver or statistic (metarep-eval).
    #[error(transparent)]
    Eval(#[from] metarep_eval::Error),
    /// An error from metarep-core (configs, RNG helpers).
    #[error(transparent)]
    Core(#[from] metarep_core::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

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
}

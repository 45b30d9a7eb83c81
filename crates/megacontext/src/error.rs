//! The crate's error type and `Result` alias.

/// Every failure metarep-megacontext can report; each names the thing that went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// An operation on the working context that would break its invariants (an entry that
    /// does not exist, an expansion past the budget, siblings that are not a whole family).
    #[error("working context: {0}")]
    Cover(String),
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
    /// Any other invalid input, with a message naming the problem.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An error from metarep-core (config, checkpoint, metrics files, the training loop).
    #[error(transparent)]
    Core(#[from] metarep_core::Error),
    /// An error from metarep-model (the frozen base model).
    #[error(transparent)]
    Model(#[from] metarep_model::Error),
    /// An error from the gist tree (boxed, it is large).
    #[error(transparent)]
    GistTree(Box<metarep_gist_tree::Error>),
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<metarep_gist_tree::Error> for Error {
    fn from(e: metarep_gist_tree::Error) -> Self {
        Error::GistTree(Box::new(e))
    }
}

impl Error {
    /// A [`Error::Shape`] error.
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

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

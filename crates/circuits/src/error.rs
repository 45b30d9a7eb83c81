//! Errors of metarep-circuits.

/// Everything that can go wrong in a circuit analysis.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid input (an index out of range, a shape mismatch, an empty set), with a message
    /// naming the problem.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An error from metarep-model.
    #[error(transparent)]
    Model(#[from] metarep_model::Error),
    /// An error from metarep-eval (statistics).
    #[error(transparent)]
    Eval(#[from] metarep_eval::Error),
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

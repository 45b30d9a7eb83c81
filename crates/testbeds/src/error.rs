//! Errors of metarep-testbeds.

/// Everything that can go wrong while building, training or scoring a testbed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid input, with a message naming the problem.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An error from metarep-model.
    #[error(transparent)]
    Model(#[from] metarep_model::Error),
    /// An error from metarep-eval (tasks, statistics).
    #[error(transparent)]
    Eval(#[from] metarep_eval::Error),
    /// An error from metarep-core.
    #[error(transparent)]
    Core(#[from] metarep_core::Error),
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

//! The error type of xtask's commands: any error, reported by its message.

/// Errors of xtask commands.
pub type BoxError = Box<dyn std::error::Error>;

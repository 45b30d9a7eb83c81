//! The crate-wide error type and `Result` alias.

use std::path::PathBuf;

/// Every failure metarep-core can report; each variant names the thing that went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed on `path`.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory the operation touched.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// JSON (de)serialization failed; `context` says what was being read or written.
    #[error("JSON error in {context}: {source}")]
    Json {
        /// What was being (de)serialized (usually a file path).
        context: String,
        /// The underlying serde_json error.
        #[source]
        source: serde_json::Error,
    },
    /// A TOML config could not be parsed or did not match the expected structure.
    #[error("TOML error in {origin}: {source}")]
    Toml {
        /// Where the TOML came from (a file path or `<string>`).
        origin: String,
        /// The underlying toml error.
        #[source]
        source: toml::de::Error,
    },
    /// A config file or override names a key the config struct does not have.
    #[error("unknown config key `{key}`")]
    UnknownConfigKey {
        /// The full dotted key path, e.g. `train.lr_typo`.
        key: String,
    },
    /// A `key.path=value` override (`--set` of the command-line tools) could not be applied,
    /// or set a value the config refuses.
    #[error("--set {text}: {reason}")]
    BadOverride {
        /// The override text as given.
        text: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A safetensors file could not be read or written.
    #[error("safetensors error on {}: {source}", path.display())]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// The underlying safetensors error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A checkpoint directory is missing, incomplete or corrupt.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A device could not be parsed or opened.
    #[error("device error: {0}")]
    Device(String),
    /// Any other invalid input, with a message naming the problem.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Json`] with a context string.
    pub fn json(context: impl std::fmt::Display, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.to_string(),
            source,
        }
    }
}

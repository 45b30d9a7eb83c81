//! The crate-wide error type and `Result` alias.

use std::path::PathBuf;

/// Everything that can go wrong loading, running or training a model; each variant names the
/// file, tensor, key, hook or id at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed on `path`.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, index, tokenizer) could not be parsed.
    #[error("JSON error in {context}: {source}")]
    Json {
        /// What was being read (usually a path).
        context: String,
        /// The underlying serde_json error.
        #[source]
        source: serde_json::Error,
    },
    /// A `config.json` key is missing or has a value this crate cannot use.
    #[error("config {}: key `{key}`: {reason}", path.display())]
    Config {
        /// The config file (or `<config>` for an in-memory one).
        path: PathBuf,
        /// The offending key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `config.json` names a `model_type` this crate does not implement.
    #[error("unsupported model_type `{model_type}` (supported: {supported})")]
    UnsupportedModelType {
        /// The `model_type` found.
        model_type: String,
        /// The supported values, comma separated.
        supported: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("missing tensor `{name}` in {source_desc}")]
    MissingTensor {
        /// The checkpoint tensor name.
        name: String,
        /// The checkpoint (directory or files).
        source_desc: String,
    },
    /// The checkpoint holds a tensor the architecture does not use.
    #[error("unexpected tensor `{name}` in {source_desc} (not part of this architecture)")]
    ExtraTensor {
        /// The checkpoint tensor name.
        name: String,
        /// The checkpoint (directory or files).
        source_desc: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },
    /// A token id is not below the vocabulary size.
    #[error(
        "token id {id} at [batch {batch}, pos {pos}] is out of range (vocabulary size {vocab})"
    )]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Its batch row.
        batch: usize,
        /// Its position.
        pos: usize,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A hook name does not parse, or names a hook this model does not have.
    #[error("unknown hook `{name}`: {reason}")]
    UnknownHook {
        /// The name as given.
        name: String,
        /// Why it is not a hook of this model.
        reason: String,
    },
    /// A hook returned a replacement of the wrong shape.
    #[error("hook {hook} returned shape {got:?}, expected {expected:?}")]
    HookShape {
        /// The hook point.
        hook: String,
        /// The activation's shape.
        expected: Vec<usize>,
        /// The replacement's shape.
        got: Vec<usize>,
    },
    /// A model is not in the local cache and the hub cannot or may not be reached.
    #[error("model `{id}` is not available offline: not found in the cache at {}{}", cache.display(), hint)]
    Offline {
        /// The hub id.
        id: String,
        /// The cache directory searched.
        cache: PathBuf,
        /// Extra context (e.g. the network error).
        hint: String,
    },
    /// Talking to the Hugging Face hub failed.
    #[error("hub error for `{id}` (cache {}): {reason}", cache.display())]
    Hub {
        /// The hub id.
        id: String,
        /// The cache directory.
        cache: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An input tensor has the wrong shape or dtype.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        /// Which input.
        what: String,
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
    },
    /// An input runs past the model's context length (`n_ctx`: HF `n_positions` /
    /// `max_position_embeddings`).
    #[error("{len} positions exceed the model's context length n_ctx = {n_ctx}")]
    ContextLength {
        /// Positions the input needs (earlier cached ones included).
        len: usize,
        /// The model's context length.
        n_ctx: usize,
    },
    /// A feature of a checkpoint or a request that this crate does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Any other invalid input, with a message naming the problem.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An error from candle.
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
    /// An error from metarep-core (checkpoints, metrics, RNG).
    #[error(transparent)]
    Core(#[from] metarep_core::Error),
    /// An error from a fused kernel of metarep-kernels.
    #[error(transparent)]
    Kernel(#[from] metarep_kernels::Error),
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
}

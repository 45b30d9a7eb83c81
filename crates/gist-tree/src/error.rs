//! The crate-wide error type and `Result` alias.

use std::path::PathBuf;

use crate::node::NodeRef;

/// Every failure the gist tree can report; each variant names the file, node or value at fault.
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
    /// An error from metarep-core (config files, atomic writes).
    #[error(transparent)]
    Core(#[from] metarep_core::Error),
    /// A file of the tree is damaged: a bad checksum, a bad header or an impossible value.
    #[error("corrupt {} at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged record or header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The commit log lacks versions that other evidence says were committed (it was cut back
    /// or replaced by an older copy); recovery would delete their records.
    #[error(
        "{}: committed versions are missing from the commit log ({evidence}); nothing was \
         changed. `verify` lists the damage; opening a writer with discard_uncommitted \
         (CLI: --discard-uncommitted) gives those versions up and cuts their records",
        path.display()
    )]
    CommitsMissing {
        /// The commit log.
        path: PathBuf,
        /// What says the versions were committed, each naming its file.
        evidence: String,
    },
    /// A segment file that committed data needs is missing.
    #[error("missing segment {}: committed data of level {level} lives there", path.display())]
    MissingSegment {
        /// The path where the segment should be.
        path: PathBuf,
        /// The level the segment belongs to.
        level: u8,
    },
    /// A file in the tree directory that this tree did not write (wrong magic, other tree id,
    /// unexpected name).
    #[error("foreign file {}: {reason}", path.display())]
    ForeignFile {
        /// The foreign file.
        path: PathBuf,
        /// Why it is not one of ours.
        reason: String,
    },
    /// The directory holds no gist tree.
    #[error("{} is not a gist tree (no tree.json); create one with `init`", path.display())]
    NotATree {
        /// The directory given.
        path: PathBuf,
    },
    /// `create` on a directory that already holds a tree.
    #[error("{} already holds a gist tree", path.display())]
    AlreadyExists {
        /// The directory given.
        path: PathBuf,
    },
    /// Another writer holds the tree's lock.
    #[error("{} is locked by another writer", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A node index or level outside the tree at this version.
    #[error("node {node} does not exist at version {version} (level has {count} nodes)")]
    NoSuchNode {
        /// The node asked for.
        node: NodeRef,
        /// The version read.
        version: u64,
        /// How many nodes the level has at that version.
        count: u64,
    },
    /// The node is hidden because it or an ancestor was pruned.
    #[error("node {node} is pruned (under pruned subtree {root})")]
    Pruned {
        /// The node asked for.
        node: NodeRef,
        /// The pruned subtree root that hides it.
        root: NodeRef,
    },
    /// The pruned subtree's records were reclaimed by compaction; it cannot be restored.
    #[error("subtree {root} was reclaimed by compaction and cannot be restored")]
    Reclaimed {
        /// The pruned root.
        root: NodeRef,
    },
    /// A version that was never committed or was reclaimed by compaction.
    #[error("version {version} is not readable (readable: {oldest}..={head})")]
    NoSuchVersion {
        /// The version asked for.
        version: u64,
        /// The oldest readable version.
        oldest: u64,
        /// The newest committed version.
        head: u64,
    },
    /// A summariser failed or returned the wrong shape.
    #[error("summariser {producer}: {reason}")]
    Summarizer {
        /// The producer id and version of the summariser.
        producer: String,
        /// What went wrong.
        reason: String,
    },
    /// Any other invalid argument, with a message naming the problem.
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

    /// Builds an [`Error::Corrupt`].
    pub fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

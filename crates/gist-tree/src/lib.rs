//! metarep-gist-tree: MegaContext's memory — an unbounded, append-only, B-ary tree over a token
//! stream, stored on disk crash-safely and versioned. Level 0 holds the raw token ids in blocks
//! of B (32 by default); level 1 one gist vector (f16/bf16/f32, width d) per block; level k one
//! gist per B level-(k−1) gists. Every node carries provenance (source, byte span, time, the
//! producer that made it) and layout tags.
//!
//! Storage: per-level append-only segment files of checksummed records, a commit log that makes
//! each commit visible atomically (a record is fully visible after a crash or not at all),
//! O(1) reads by `(level, index)` through memory maps and a copy-on-write in-memory index,
//! snapshot isolation for readers while one [`Writer`] commits, incremental edits that recompute
//! only the affected ancestors through a pluggable [`Summarizer`], soft pruning with restore,
//! compaction that honours pinned versions, batched access telemetry, and recovery that cuts
//! uncommitted tails and reports them. The byte layout is in `docs/storage.md`.
//!
//! ```
//! use metarep_gist_tree::{MeanPool, NodeRef, Provenance, TreeConfig, GistDType, Writer, WriterOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let cfg = TreeConfig { block: 4, width: 8, dtype: GistDType::F16, ..TreeConfig::default() };
//! let mut w = Writer::create(dir.path(), cfg, WriterOptions::default(), Box::new(MeanPool::new(8, 0)?))?;
//! w.append(&(0..20).collect::<Vec<u32>>(), &Provenance::source(7, 0, 80))?;
//! let v1 = w.commit()?;
//! let before = w.snapshot()?;
//! w.edit(5, &[99], &Provenance::source(7, 20, 24))?; // rewrites block 1 and its ancestors only
//! w.commit()?;
//! let after = w.snapshot()?;
//! assert_eq!(before.version(), v1);
//! assert_eq!(before.tokens(4..8)?, vec![4, 5, 6, 7]);
//! assert_eq!(after.tokens(4..8)?, vec![4, 99, 6, 7]);
//! assert_ne!(before.gist(NodeRef::new(1, 1))?, after.gist(NodeRef::new(1, 1))?);
//! assert_eq!(before.gist(NodeRef::new(1, 0))?, after.gist(NodeRef::new(1, 0))?);
//! assert_eq!(after.count(2), 1); // one level-2 gist over the first 16 tokens
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod background;
mod checkpoint;
pub mod codec;
pub mod compact;
pub mod config;
mod crc;
pub mod error;
mod evidence;
pub mod index;
pub mod log;
pub mod log_end;
pub mod node;
pub mod open;
mod pending;
pub mod prune;
pub mod segment;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod summarize;
pub mod telemetry;
pub mod verify;
pub mod writer;

pub use compact::CompactReport;
pub use config::{FsyncPolicy, GistDType, TreeConfig, TreeMeta, WriterOptions};
pub use error::{Error, Result};
pub use node::{LayoutTags, Node, NodeData, NodeRef, Producer, Provenance, MIXED_SOURCE};
pub use open::RecoveryReport;
pub use snapshot::{Piece, RawNode, Reader, Snapshot, WorkingItem};
pub use summarize::{ChildData, MeanPool, Summarizer, SummaryBatch};
pub use verify::{verify, VerifyReport};
pub use writer::Writer;

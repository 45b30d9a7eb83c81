//! metarep-capture: activations of a hooked model captured to disk and read back (the
//! activation store SAEs train from).
//!
//! - [`dataset`]: JSONL, plain-text and token-id datasets cut into fixed-length contexts;
//! - [`store`]: [`capture`] streams chosen hook activations into sharded safetensors stores
//!   (f32, f16 or bf16) with a `meta.json` per store; writes are atomic and an interrupted
//!   capture resumes without duplicating or losing tokens;
//! - [`reader`]: [`StoreReader`] streams shuffled batches across shards with bounded memory,
//!   deterministic under a seed, checking every shard's checksum.
//!
//! ```no_run
//! use std::path::Path;
//! use metarep_capture::{capture, CaptureSpec, StoreReader, TokenDataset};
//! use metarep_model::{HookPoint, HookedTransformer, LoadOptions};
//!
//! let model = HookedTransformer::from_dir(Path::new("gpt2"), &LoadOptions::default())?;
//! let data = TokenDataset::load(Path::new("corpus.jsonl"), model.text_encoder(), 128)?;
//! let spec = CaptureSpec {
//!     hooks: vec![HookPoint::ResidPost(6)],
//!     dtype: "f16".into(),
//!     shard_tokens: 65_536,
//!     batch_contexts: 8,
//!     model_name: "gpt2".into(),
//!     max_contexts: None,
//! };
//! let report = capture(&model, &data, Path::new("acts"), &spec, |_, _| {})?;
//! let mut reader = StoreReader::open(&report.stores[0], 0, 1 << 16)?;
//! while let Some(batch) = reader.next_batch(4096)? {
//!     assert_eq!(batch.dim(1)?, 768);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod codec;
pub mod dataset;
pub mod error;
pub mod reader;
pub mod store;

pub use dataset::TokenDataset;
pub use error::{Error, Result};
pub use reader::StoreReader;
pub use store::{
    capture, store_dir, CaptureReport, CaptureSpec, ShardInfo, StoreMeta, StoreWriter,
};

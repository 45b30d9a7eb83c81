//! metarep-capture: activations of a hooked model captured to disk and read back.
//!
//! - [`dataset`]: JSONL, plain-text and token-id datasets cut into fixed-length contexts;
//! - [`store`]: [`capture`] streams chosen hook activations into sharded safetensors stores
//!   (f32, f16 or bf16) with a `meta.json` per store; writes are atomic and an interrupted
//!   capture resumes without duplicating or losing tokens;
//! - [`reader`]: [`StoreReader`] streams shuffled batches across shards with bounded memory,
//!   deterministic under a seed, checking every shard's checksum;
//! - [`detectors`]: induction, previous-token, duplicate-token and prefix-matching scores of
//!   every attention head on repeated random tokens, loss per position;
//! - [`ablation`]: staged zero / mean / resample ablations of heads and neurons with loss,
//!   accuracy, entropy and logit-difference deltas, and scale sweeps (suppress to amplify);
//! - [`patching`]: activation patching clean → corrupted, per layer and position and per head;
//! - [`attribution`]: direct logit attribution of a chosen token to heads, MLP layers and
//!   neurons;
//! - [`tokenization`]: operand and answer token counts of arithmetic prompts, exact-answer
//!   accuracy and loss by tokenization class, stress grids over operand length and operation;
//! - [`induction`]: the induction-2l model's data and training;
//! - [`arith`]: the arith model's BPE tokenizer, data and training.
//!
//! ```no_run
//! use std::path::Path;
//! use metarep_capture::{capture, CaptureSpec, StoreReader, TokenDataset};
//! use metarep_model::{HookPoint, HookedTransformer, LoadOptions};
//!
//! let model = HookedTransformer::from_dir(Path::new("gpt2"), &LoadOptions::default())?;
//! let data = TokenDataset::load(Path::new("corpus.jsonl"), model.tokenizer(), 128)?;
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

pub mod ablation;
pub mod arith;
pub mod attribution;
mod codec;
pub mod dataset;
pub mod detectors;
pub mod error;
pub mod induction;
pub mod patching;
pub mod reader;
mod recipe;
pub mod store;
pub mod tokenization;

pub use dataset::TokenDataset;
pub use error::{Error, Result};
pub use reader::StoreReader;
pub use store::{
    capture, store_dir, CaptureReport, CaptureSpec, ShardInfo, StoreMeta, StoreWriter,
};

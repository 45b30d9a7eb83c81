//! The integration tests of `metarep-model`, one module per subject, built as one test
//! binary (one link instead of one per file).

mod analysis;
mod attention_scores;
mod common;
mod errors;
mod generate;
mod gguf;
mod minilm;
mod parity;
mod real_models;
mod run_embeddings;
mod run_from;
mod tokenizer;
mod train;

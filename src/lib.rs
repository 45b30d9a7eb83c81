//! metarep: transformer research in Rust, built on candle.
//!
//! This facade re-exports the workspace crates so that a project can depend on one crate:
//!
//! - [`core`]: device, dtype policy, seeded RNG, config + overrides, run manifest, metrics,
//!   checkpoints, the training run loop, progress bars, errors.
//! - [`eval`]: task generators, baselines, metrics, statistics, the multi-seed harness, plots
//!   (SVG) and tables (CSV, markdown).
//! - [`lat_cg`]: linear-attention transformers whose constructed weights run conjugate gradient.
//! - [`softmax_routes`]: softmax-attention transformers that solve kernel ridge regression in
//!   context (Route A, Route B, width–rank sketches).
//! - [`gist_tree`]: the crash-safe, versioned, disk-backed gist tree (MegaContext's memory).
//! - [`megacontext`]: MegaContext's learned half: the fixed-budget working context over the
//!   tree, GistNet and its ΔNLL training through a frozen base model, training-free baselines.
//! - [`model`]: hookable transformers (GPT-2, GPT-NeoX, Llama family, BERT) loading Hugging Face
//!   checkpoints, with TransformerLens hook points, caches, interventions, attribution, trainer.
//! - [`kernels`]: hot ops as candle CustomOps (sparse latent ops, top-k selection, fused AdamW).
//! - [`capture`]: activations to disk (sharded stores, shuffled reader).
//! - [`circuits`]: attention-head detectors, staged ablations, activation patching, direct
//!   logit attribution of answers.
//! - [`testbeds`]: models with known structure trained here (induction-2l, arith with its BPE
//!   tokenizer, grammar-lm), their task framing and tokenization diagnostics.
//! - [`sae`]: sparse autoencoders (ReLU + L1, TopK, BatchTopK, JumpReLU, Gated), losses, trainer,
//!   metrics, SAELens export/import, ground-truth systems.
//! - [`second_order`]: second-order effects of MLP neurons through later attention heads, exact
//!   read-out decompositions, per-neuron principal components, sparse text decompositions.
//!
//! ```
//! use metarep::lat_cg::reference::cg_bound;
//! assert!(cg_bound(100.0, 10) < 0.3);
//! ```

pub use metarep_capture as capture;
pub use metarep_circuits as circuits;
pub use metarep_core as core;
pub use metarep_eval as eval;
pub use metarep_gist_tree as gist_tree;
pub use metarep_kernels as kernels;
pub use metarep_lat_cg as lat_cg;
pub use metarep_megacontext as megacontext;
pub use metarep_model as model;
pub use metarep_sae as sae;
pub use metarep_second_order as second_order;
pub use metarep_softmax_routes as softmax_routes;
pub use metarep_testbeds as testbeds;

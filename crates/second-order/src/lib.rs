//! metarep-second-order: second-order neuron effects (Gandelsman, Efros & Steinhardt 2024,
//! "Interpreting the second-order effects of neurons in CLIP"), ported from CLIP to causal
//! language models.
//!
//! An MLP neuron writes into the residual stream at every position. Its *direct* effect is what
//! that write adds at the read-out position (the last prompt token); its *second-order* effect
//! is what the write adds by being moved there by later attention heads, with patterns and
//! norms held at their recorded values. Both are vectors in the final normalised space (what
//! the unembedding reads), so they can be compared with text directions:
//!
//! - [`effects`]: [`Readout`] runs the model once per batch and computes direct and
//!   second-order effects of many neurons at once, plus an exact decomposition of the
//!   normalised read-out stream ([`Decomposition`]) whose parts sum to the logits;
//!   [`naive_effect`] (ablation) and [`path_patched_effect`] (path patching) are the
//!   forward-pass references.
//! - [`pca`]: [`neuron_pc`], the principal direction of one neuron's effects over its
//!   top-`k` examples.
//! - [`omp`](mod@omp): [`omp()`](fn@omp), orthogonal matching pursuit of a direction over unit atoms.
//! - [`lexicon`]: [`Lexicon`], word and phrase atoms in the unembedding space (the dictionary
//!   for OMP); `fixtures/lexicon/math.txt` is a math-and-logic lexicon.
//!
//! Conventions: tensors are f32 outputs with shapes in each item's docs (`[batch, neurons,
//! d_model]` ...); bad input is an [`Error`] naming the problem, and model features the exact
//! decomposition cannot handle (post-norm BERT blocks; neurons of attention-only models) are
//! [`Error::Unsupported`].
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use metarep_model::{HookedTransformer, ModelConfig};
//! use metarep_second_order::{neuron_pc, Readout};
//!
//! # fn main() -> metarep_second_order::Result<()> {
//! let model = HookedTransformer::random(ModelConfig::gpt2_like(2, 16, 4, 20, 8), 0, DType::F32, &Device::Cpu)?;
//! let tokens = Tensor::new(&[[1u32, 2, 3, 4], [5, 6, 7, 8]], &Device::Cpu)?;
//! let readout = Readout::new(&model, &tokens, &[3, 3])?;
//!
//! // Second-order effects of three neurons of layer 0: [batch, neurons, d_model].
//! let effects = readout.second_order(0, &[0, 1, 2])?;
//! assert_eq!(effects.dims(), &[2, 3, 16]);
//!
//! // The decomposition's parts sum to the logits at the read-out positions.
//! let parts = readout.decompose()?;
//! assert_eq!(parts.logits(&model)?.dims(), &[2, 20]);
//!
//! // The principal direction of neuron 0's effects over the prompts.
//! let pc = neuron_pc(&effects.narrow(1, 0, 1)?.squeeze(1)?, 2)?;
//! assert_eq!(pc.direction.len(), 16);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod ablate;
pub mod analysis;
pub mod data;
pub mod direction;
pub mod effect_chunks;
pub mod effects;
pub mod error;
mod io;
pub mod lexicon;
pub mod null;
pub mod omp;
pub mod pca;
pub mod pipeline;
pub mod report;
pub mod run_files;
pub mod select;

pub use effects::{
    decomposition_gap, naive_effect, path_patched_effect, readout_stream, Decomposition,
    NeuronPaths, PathPatched, Readout,
};
pub use error::{Error, Result};
pub use lexicon::Lexicon;
pub use omp::{omp, Omp};
pub use pca::{neuron_pc, NeuronPc};
pub use pipeline::{Pipeline, PipelineConfig, Stage};
pub use run_files::RunFiles;

//! metarep-testbeds: small models with known structure, trained here, to test interpretability
//! methods on, with their tasks and task framing.
//!
//! - [`induction`]: induction-2l, a 2-layer attention-only model trained on random segments
//!   repeated at random places (induction heads by necessity);
//! - [`arith`]: the arith model, a 2-layer GPT-2-style model trained on arithmetic with a BPE
//!   tokenizer trained by `tokenizers`, so numbers split into one or several tokens;
//! - [`grammar_lm`]: a 3-layer model trained on an agreement grammar whose latents are known
//!   per token, the agreement measure and the latent-detection questions;
//! - [`text_regression`]: in-context linear regression written as text (`x: 0.42 -> y: 0.87`)
//!   with a digit-level tokenizer, a small model trained on every line's answer, and greedy
//!   numeric answers;
//! - [`byte_lm`]: a byte-level Llama trained on real text in minutes, returned frozen: the base
//!   LM of MegaContext's quick experiments;
//! - [`tokenization`]: framing of (prompt, answer) problems, exact-answer scoring, and
//!   accuracy by tokenization class and over stress grids of operand length and operation.
//!
//! All train with one recipe (f32 on the CPU, AdamW, warmup + cosine, clipping) through
//! [`metarep_model::train::LmTrainer`]; the trained models are checked in under `fixtures/`
//! by `cargo xtask fixtures NAME`.
//!
//! ```
//! use metarep_testbeds::induction::{InductionSpec, BOS};
//!
//! let spec = InductionSpec { batch: 4, ..InductionSpec::default() };
//! let tokens = spec.batch_tokens(0, 7)?; // step 0, seed 7: [BOS, r₁, s, r₂, s, r₃]
//! assert_eq!(tokens.dims(), &[4, spec.n_ctx + 1]);
//! assert!(tokens.to_vec2::<u32>()?.iter().all(|row| row[0] == BOS));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod arith;
pub mod byte_lm;
pub mod error;
pub mod grammar_lm;
pub mod induction;
mod recipe;
pub mod text_regression;
pub mod tokenization;

pub use error::{Error, Result};
pub use recipe::DecoderSpec;

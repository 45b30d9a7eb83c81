//! metarep-circuits: circuit analyses of a hooked transformer, on anything
//! [`metarep_model::HookedTransformer`] loads.
//!
//! - [`detectors`]: induction, previous-token, duplicate-token and prefix-matching scores of
//!   every attention head on repeated random tokens, loss per position;
//! - [`ablation`]: staged zero / mean / resample ablations of heads and neurons with loss,
//!   accuracy, entropy and logit-difference deltas, and scale sweeps (suppress to amplify);
//! - [`patching`]: activation patching clean → corrupted, per layer and position and per head;
//! - [`attribution`]: direct logit attribution of a chosen token to heads, MLP layers and
//!   neurons;
//! - [`ranking`]: components ranked by any of these scores;
//! - [`repeat_study`]: detectors, repeat losses with intervals, loss by position and the top
//!   induction heads zeroed cumulatively, in one call (for pretrained models too).
//!
//! The clean baseline of every comparison is [`metarep_model::predictions::metrics`].
//!
//! ```
//! use candle_core::{DType, Device};
//! use metarep_circuits::detectors::{head_scores, repeated_tokens};
//! use metarep_circuits::ranking::ranked_heads;
//! use metarep_model::{HookedTransformer, ModelConfig};
//!
//! let model = HookedTransformer::random(ModelConfig::gpt2_like(2, 16, 2, 20, 32), 0, DType::F32, &Device::Cpu)?;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! # use rand::SeedableRng;
//! let tokens = repeated_tokens(&mut rng, 4, 8, 20)?; // [BOS, s, s], |s| = 8
//! let scores = head_scores(&model, &tokens)?;
//! let (top, score) = ranked_heads(&scores.induction)[0];
//! assert!(top.layer() < Some(2) && (0.0..=1.0).contains(&score));
//! # Ok::<(), metarep_circuits::Error>(())
//! ```

#![warn(missing_docs)]

pub mod ablation;
pub mod attribution;
pub mod detectors;
pub mod error;
pub mod ioi;
pub mod patching;
pub mod path_patching;
pub mod ranking;
pub mod repeat_study;

pub use error::{Error, Result};

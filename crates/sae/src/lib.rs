//! metarep-sae: sparse autoencoders for interpretability — ReLU + L1, TopK, BatchTopK,
//! JumpReLU and Gated SAEs ([`Sae`], [`SaeConfig`]), their losses ([`loss`]), a trainer with
//! exact resume ([`train()`]), evaluation metrics ([`metrics`]), baselines ([`baselines`]),
//! SAELens-format export and import ([`saelens`]), CE loss recovered and KL with the SAE spliced
//! into a language model at its hook ([`splice`]), systems with exactly known latent state
//! to test them on ([`ground_truth`]), and, for an SAE on a model over real text, feature
//! dashboards ([`dashboard`]), the validation suite — purity, probe leakage, causal ε-sweeps —
//! ([`validation`]), the tokens a direction promotes through the unembedding ([`logit_lens`])
//! and the hook's activations as SAE rows ([`hook_rows`]).
//!
//! TopK-style SAEs run on the sparse kernels of metarep-kernels: the decoder forward and every
//! weight gradient touch only the `k` active latents of each row.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use metarep_core::train::RunControl;
//! use metarep_sae::{train, Architecture, Sae, SaeConfig, SaeTrainConfig, TensorSource};
//!
//! // 512 rows of 3-sparse combinations of 24 directions in R^16.
//! let x = metarep_sae::ground_truth::sparse_mixture(512, 16, 24, 3, 0)?;
//! let mut source = TensorSource::new(x, 0)?;
//! let config = SaeConfig::new(16, 2, Architecture::TopK { k: 3 })?;
//! let mut sae = Sae::new(config, 0, DType::F32, &Device::Cpu)?;
//! let cfg: SaeTrainConfig = metarep_core::parse_config(
//!     "seed = 0\nbatch = 64\nsteps = 40\nlr = 0.01\nwarmup = 5\nlog_every = 0\n",
//!     &[],
//! )?;
//! let report = train(&mut sae, &mut source, &cfg, RunControl::default())?;
//! assert!(report.final_loss.is_finite());
//! let eval = metarep_sae::metrics::evaluate(&sae, &mut source, &Default::default())?;
//! assert!(eval.l0 <= 3.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod baselines;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod fused;
pub mod ground_truth;
pub mod hook_rows;
pub mod latents;
pub mod logit_lens;
pub mod loss;
pub mod metrics;
pub mod sae;
pub mod saelens;
pub mod source;
pub mod splice;
pub mod ste;
pub mod train;
pub mod validation;

pub use config::{Architecture, DecoderNorm, InputNorm, SaeConfig, SaeSpec};
pub use error::{Error, Result};
pub use latents::Latents;
pub use loss::LossConfig;
pub use sae::Sae;
pub use source::{load_activations, ActivationSource, Batch, StoreSource, TensorSource};
pub use train::{train, SaeTrainConfig, SaeTrainReport, SaeTrainer};

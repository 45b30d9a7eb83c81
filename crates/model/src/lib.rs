//! metarep-model: hookable transformers that load real Hugging Face checkpoints — GPT-2,
//! GPT-NeoX / Pythia, the Llama family (Llama, Mistral, Qwen2) and BERT — with a hook at every
//! TransformerLens hook point (same names, same shapes), activation caches with
//! TransformerLens's residual-stream decompositions, ready-made interventions, exact direct
//! logit attribution, TransformerLens-style weight accessors and a small-model trainer.
//!
//! ```
//! use candle_core::{DType, Device};
//! use metarep_model::hooks::{HookPoint, HookSet};
//! use metarep_model::{HookedTransformer, Input, ModelConfig};
//!
//! # fn main() -> metarep_model::Result<()> {
//! // A random 2-layer GPT-2-style model (real checkpoints: HookedTransformer::from_pretrained).
//! let cfg = ModelConfig::gpt2_like(2, 32, 4, 50, 16);
//! let model = HookedTransformer::random(cfg, 0, DType::F32, &Device::Cpu)?;
//! let tokens = Input::from_ids(&[vec![1, 2, 3, 4]], &Device::Cpu)?;
//!
//! // Cache activations by TransformerLens name (glob patterns allowed).
//! let (logits, cache) = model.run_with_cache(tokens.clone(), "blocks.*.hook_resid_post")?;
//! assert_eq!(logits.dims(), &[1, 4, 50]);
//! assert_eq!(cache.get_name("blocks.1.hook_resid_post")?.dims(), &[1, 4, 32]);
//!
//! // Replace an activation: zero every head's output in layer 0.
//! let mut hooks = HookSet::new().add(HookPoint::Z(0), |_, z| Ok(Some(z.zeros_like()?)));
//! let ablated = model.run_with_hooks(tokens, &mut hooks)?;
//! assert_eq!(ablated.dims(), logits.dims());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod cache;
pub mod checkpoint_tensors;
pub mod component;
pub mod config;
pub mod dla;
pub mod error;
pub mod families;
mod frozen_matmul;
pub mod frozen_norm;
pub mod generate;
pub mod gguf;
pub mod hf_config;
pub mod hooks;
pub mod init;
pub mod input;
pub mod interventions;
pub mod loading;
pub mod memory;
pub mod model;
pub mod ops;
pub mod pooling;
pub mod predictions;
pub mod text;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use cache::{ActivationCache, Stack};
pub use component::Component;
pub use config::{Activation, Family, LmHead, ModelConfig, NormKind, RopeScaling, Rotary};
pub use error::{Error, Result};
pub use frozen_norm::FrozenNorm;
pub use hooks::{HookFilter, HookPoint, HookSet, Hooks, NoHooks};
pub use input::Input;
pub use loading::LoadOptions;
pub use model::{HookedTransformer, KvCache, RunTo};
pub use text::TextEncoder;
pub use tokenizer::Tokenizer;
pub use weights::Weights;

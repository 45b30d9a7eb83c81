//! MegaContext, the learned half: a fixed-budget **working context** over the gist tree
//! ([`working_context`]), **GistNet**, a learned compressor of B embeddings into one
//! ([`gistnet`]), the **ΔNLL@H** objective that scores a block's replacement by the loss of the
//! tokens after it ([`objective`]), GistNet's training through a frozen base model
//! ([`train`]), the comparison with training-free baselines ([`eval`]) and GistNet as the
//! gist tree's summariser ([`summarizer`]), reading long documents through a fixed slot
//! budget ([`stream`]), and the focus loop: **LensNet** ([`lensnet`]) scores expansions and
//! collapses of the working context, trained on counterfactual utilities ([`lens_train`]),
//! and an allocator with hysteresis applies them ([`focus`]).
//!
//! The base model is any decoder [`metarep_model::HookedTransformer`]: gists are vectors in
//! its embedding space, read through
//! [`metarep_model::HookedTransformer::run_embeddings`] at explicit positions.

mod encoder;
pub mod error;
pub mod eval;
pub mod focus;
pub mod generate;
pub mod gistnet;
pub mod gists;
pub mod lens_train;
pub mod lensnet;
pub mod objective;
pub mod sample_store;
pub mod stream;
pub mod summarizer;
pub mod train;
pub mod working_context;

pub use error::{Error, Result};
pub use focus::{Allocator, FocusConfig, FocusStats, RandomScorer, RecencyScorer, Scorer};
pub use gistnet::{GistNet, GistNetConfig, Skip};
pub use lens_train::{
    collect_samples, doc_samples, train_lensnet, LensDataConfig, LensTrainConfig,
};
pub use lensnet::{LensNet, LensNetConfig};
pub use objective::{nll_after_block, Replacement, WindowShape};
pub use stream::{stream_nll, Policy, StreamConfig, StreamLoss};
pub use summarizer::GistNetSummarizer;
pub use train::{train_gistnet, GistTrainConfig};
pub use working_context::{CoverConfig, PositionRule, Slot, WorkingContext};

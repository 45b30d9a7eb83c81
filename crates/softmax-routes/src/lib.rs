//! Softmax-attention transformers that solve kernel ridge regression (KRR) in context.
//!
//! [`construct`] assigns the weights of the generic forward pass ([`metarep_lat_cg::lat::Lat`] with
//! softmax heads) so that it runs conjugate gradient (CG) on `(K + λI) α = y`, two layers per
//! step: **Route A** realises the exponential kernel `exp(⟨Ux, Ux'⟩/τ)` exactly, undoing the
//! softmax normalisation through an attention sink, or keeping it as a row-sum preconditioner
//! (`docs/route_a_theorem.md`); **Route B** approximates the dot-product kernel with a small-logit
//! softmax head minus a uniform head (`docs/route_b_bound.md`). [`kernel`] holds the exponential
//! kernel and Route A's tasks; [`route_a`], [`route_b`] and [`width_rank`] the measurements behind
//! fig3, fig4 and fig5 (`docs/width_rank_theorem.md`); [`sweeps`] the knob sweeps and ablations,
//! run through metarep-eval's multi-seed harness; [`probe`] the linear probes of both routes' CG
//! state behind fig7.
//!
//! ```
//! use candle_core::{DType, Device};
//! use metarep_core::rng::seeded;
//! use metarep_lat_cg::mask::TokenLayout;
//! use metarep_softmax_routes::construct::{
//!     HeadSharing, MatVec, Preconditioning, SoftmaxCg, SoftmaxCgSpec,
//! };
//! use metarep_softmax_routes::kernel::{sample_exp_task, ExpTaskSpec};
//!
//! # fn main() -> metarep_softmax_routes::Result<()> {
//! let spec = ExpTaskSpec { n_support: 16, n_query: 4, dim: 2, width: 2, u_norm: 1.0, tau: 1.0,
//!                          lambda: 0.5, noise: 0.0, frequency: 1.0 };
//! let task = sample_exp_task(&mut seeded(0), &spec)?;
//! let model = SoftmaxCg::build(SoftmaxCgSpec {
//!     layout: TokenLayout::new(16, 4)?,
//!     input_dim: 2,
//!     lambda: task.lambda,
//!     steps: 16,
//!     matvec: MatVec::ExpKernel {
//!         kernel: task.kernel.clone(),
//!         sharing: HeadSharing::Shared,
//!         normalised: true,
//!         preconditioner: Preconditioning::None,
//!     },
//! }, &Device::Cpu)?;
//! let states = model.run(std::slice::from_ref(&task.prompt), DType::F64)?;
//! let f = model.predictions(states.last().unwrap())?;
//! let oracle = task.oracle()?.predictions;
//! assert!((f.row(0).transpose() - &oracle).norm() <= 1e-6 * oracle.norm());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod ablation;
pub mod construct;
pub mod error;
pub mod kernel;
pub mod probe;
pub mod route_a;
pub mod route_b;
pub mod sweeps;
pub mod width_rank;

pub use error::{Error, Result};

//! Linear-attention transformers (LATs) whose constructed weights run conjugate gradient.
//!
//! [`lat`] is a generic LAT forward pass (unnormalised multi-head linear attention with explicit
//! masks, gated token-wise MLP blocks, residuals; a head may instead be softmax or exponential,
//! which metarep-softmax-routes builds on). [`construct::cg`] assigns its weights so that
//! `t` layers perform exactly `t` steps of CG, or Jacobi-preconditioned CG, for kernel ridge
//! regression `(K + λI) α = y` with `K = ΦΦᵀ`; [`reference`](mod@reference) (re-exported from metarep-eval) is the
//! plain-f64 CG it is checked against. [`train`] and [`icl`] train LATs on in-context regression
//! (the von Oswald et al. setting) and, in [`glm`], on in-context logistic and Poisson
//! regression; [`probe`] and [`solver_probe`] read solver state (GD and CG
//! iterates, residuals, directions) out of any LAT's residual stream with linear probes.
//!
//! ```
//! use candle_core::Device;
//! use metarep_lat_cg::construct::cg::{CgLat, CgSpec};
//! use metarep_lat_cg::mask::TokenLayout;
//! use metarep_lat_cg::problem::{rbf_problem, RbfProblemSpec};
//! use metarep_lat_cg::reference::{pcg, Preconditioner};
//! use rand::SeedableRng;
//!
//! # fn main() -> metarep_lat_cg::Result<()> {
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let spec = RbfProblemSpec { n_support: 16, n_query: 4, dim: 3, features: 32, lengthscale: 1.0, noise: 0.0 };
//! let problem = rbf_problem(&mut rng, &spec, 0.1)?;
//! let dev = Device::Cpu;
//! let layout = TokenLayout::new(16, 4)?;
//! let model = CgLat::build(CgSpec { layout, features: 32, lambda: 0.1, preconditioner: Preconditioner::None, steps: 5 }, &dev)?;
//! let states = model.lat.forward_with_states(&model.embed(&[problem.clone()], &dev)?)?;
//! let lat = model.read_state(&states[model.state_index(5)?], 0)?;
//! let cg = pcg(&problem.system_matrix(), &problem.y, 5, Preconditioner::None)?;
//! assert!((lat.alpha - &cg.states[5].alpha).norm() <= 1e-9 * cg.states[5].alpha.norm());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod construct;
pub mod convergence;
pub mod error;
pub mod glm;
pub mod icl;
pub mod invariants;
pub mod lat;
pub mod mask;
pub mod probe;
pub mod solver_probe;
pub mod train;

/// Reference CG and PCG in f64 (from metarep-eval, where the baselines live).
pub use metarep_eval::baselines::cg as reference;
/// Kernel ridge problems (from metarep-eval, where the task generators live).
pub use metarep_eval::tasks::kernel as problem;

pub use error::{Error, Result};

//! In-context task generators, deterministic under a seed, each with a support/query split.

pub mod exact_kernel;
pub mod glm;
pub mod grammar;
pub mod kernel;
pub mod linear;
pub mod text;

//! Systems whose latent state is known exactly, for testing whether SAEs recover it (fig9).
//!
//! - [`systems`]: BFS and DFS traversals of random graphs (current node, visited set,
//!   frontier) and a stack machine (program counter, stack contents), as binary state features.
//! - [`mixing`]: observations that are a fixed random linear (optionally non-linear) mixture of
//!   the state features.
//! - [`recovery`]: mean max cosine similarity, matched-latent F1, causal edit tests.
//! - [`experiment`]: the whole fig9 run.
//! - [`sparse_mixture`]: plain sparse non-negative combinations of random directions (tests,
//!   examples).

pub mod experiment;
pub mod mixing;
pub mod recovery;
pub mod systems;

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::{derive_seed, seeded};
use rand::seq::index::sample;
use rand::Rng;

use crate::baselines::random_directions;
use crate::error::{Error, Result};

pub use experiment::{GroundTruthConfig, GroundTruthRow, NamedSae, Scores};
pub use mixing::{Mixing, MixingSpec};
pub use recovery::{causal_edits, matched_f1, max_cosines, CausalConfig, Readout};
pub use systems::{StateTrajectories, SystemSpec};

/// `rows` rows in `R^d`, each the sum of `active` of `features` random unit directions with
/// coefficients uniform in [0.5, 1.5] (f32 `[rows, d]`).
pub fn sparse_mixture(
    rows: usize,
    d: usize,
    features: usize,
    active: usize,
    seed: u64,
) -> Result<Tensor> {
    if active > features || d == 0 {
        return Err(Error::Config(format!(
            "cannot pick {active} of {features} features in R^{d}"
        )));
    }
    let dirs = random_directions(features, d, seed)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    let mut rng = seeded(derive_seed(seed, "sparse-mixture"));
    let mut out = vec![0f64; rows * d];
    for r in 0..rows {
        for i in sample(&mut rng, features, active) {
            let c = rng.random_range(0.5..1.5);
            for j in 0..d {
                out[r * d + j] += c * dirs[i][j];
            }
        }
    }
    Ok(Tensor::from_vec(out, (rows, d), &Device::Cpu)?.to_dtype(DType::F32)?)
}

//! Baselines that put a trained SAE's scores in context.
//!
//! - [`null_sae`]: an SAE of the same architecture and width that learned nothing — random
//!   unit decoder directions, the encoder tied to them, `b_dec` at the data mean. It cannot
//!   represent the identity (its directions are random and, for TopK, only `k` are used), so
//!   its reconstruction and feature-recovery scores are the floor a trained SAE must clear.
//! - [`random_directions`]: random unit vectors, the chance level of direction-matching
//!   scores such as the mean max cosine similarity.
//! - [`exact_sae`]: the ceiling — `2·d` ReLU latents `±e_i` with
//!   `ReLU(x) − ReLU(−x) = x`, so it reconstructs every input exactly (explained variance 1,
//!   CE loss recovered 1 when spliced into a model); a check of evaluation pipelines.

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::derive_seed;

use std::collections::HashMap;

use crate::config::{Architecture, DecoderNorm, SaeConfig};
use crate::error::{Error, Result};
use crate::sae::{unit_rows, Sae};

/// The untrained null SAE for data with column mean `data_mean` `[d_in]`, on its device.
pub fn null_sae(config: SaeConfig, data_mean: &Tensor, seed: u64) -> Result<Sae> {
    let mut config = config;
    config.decoder_norm = DecoderNorm::Unit;
    let sae = Sae::new(
        config,
        derive_seed(seed, "baseline/null"),
        DType::F32,
        data_mean.device(),
    )?;
    if data_mean.dims() != [config.d_in] {
        return Err(Error::shape(
            "data mean",
            format!("[{}]", config.d_in),
            format!("{:?}", data_mean.dims()),
        ));
    }
    sae.b_dec.set(&data_mean.to_dtype(DType::F32)?)?;
    Ok(sae)
}

/// `n` random unit vectors in `R^d` as rows `[n, d]` (f32).
pub fn random_directions(n: usize, d: usize, seed: u64) -> Result<Tensor> {
    let v = unit_rows(n, d, derive_seed(seed, "baseline/random-directions"))?;
    Ok(Tensor::from_vec(v, (n, d), &Device::Cpu)?.to_dtype(DType::F32)?)
}

/// A ReLU SAE with `2·d` latents `±e_i` (f32, CPU, no pre-encoder bias) that reconstructs
/// every input `[rows, d]` exactly: the ceiling of every reconstruction score.
pub fn exact_sae(d: usize) -> Result<Sae> {
    let mut config = SaeConfig::new(d, 2, Architecture::Relu)?;
    config.pre_encoder_bias = false;
    let eye = Tensor::eye(d, DType::F32, &Device::Cpu)?;
    let dirs = Tensor::cat(&[&eye, &eye.neg()?], 0)?;
    let tensors = HashMap::from([
        ("w_enc".to_string(), dirs.clone()),
        (
            "b_enc".to_string(),
            Tensor::zeros(2 * d, DType::F32, &Device::Cpu)?,
        ),
        ("w_dec".to_string(), dirs),
        (
            "b_dec".to_string(),
            Tensor::zeros(d, DType::F32, &Device::Cpu)?,
        ),
    ]);
    Sae::from_tensors(config, &tensors)
}

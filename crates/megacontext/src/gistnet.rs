//! GistNet: a learned compressor of B vectors in the base model's embedding space into one.
//!
//! The design (one net for every level: B token embeddings make a level-1 gist, B level-1
//! gists a level-2 gist):
//!
//! 1. the children `[n, B, d]` are layer-normed and projected to the net's width h, and a
//!    learned embedding of the child's place in the block (`[B, h]`) is added;
//! 2. a learned query slot `[h]` is appended as a (B+1)-th element;
//! 3. `layers` pre-norm transformer layers (bidirectional multi-head self-attention over the
//!    B+1 elements, then a GELU MLP of width `mlp`) read the block into the query slot;
//! 4. the query slot's final state is layer-normed and projected back to d, and added to a
//!    learned weighted sum of the children (weights `[B]`, the skip path).
//!
//! The output projection starts at zero and the skip weights at a training-free baseline
//! ([`Skip`]): the block's last child (default: the gist sits at the block's last position, and
//! keeping the last token is the strongest one-slot baseline measured in fig12) or the mean of
//! the children. An untrained GistNet is that baseline, and training moves it away only where
//! that lowers the loss. With d = 576 (SmolLM2-135M), h = 256, two layers and an MLP of 1 024 it
//! has ≈ 1.9 M parameters.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use metarep_core::checkpoint::load_checkpoint;
use serde::{Deserialize, Serialize};

use crate::encoder::{
    layer_norm, linear, norm, push_pair, save_params, set_params, zeros, Encoder, Init,
};
use crate::error::{Error, Result};

/// Where the skip path's weights over the children start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// All weight on the last child.
    #[default]
    Last,
    /// Weight 1/B on each child (mean pooling).
    Mean,
}

/// The shape of a GistNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GistNetConfig {
    /// Width of the base model's embeddings d (input and output).
    pub d_model: usize,
    /// Children per gist B.
    pub block: usize,
    /// Internal width h.
    pub width: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads (divides `width`).
    pub heads: usize,
    /// MLP hidden width.
    pub mlp: usize,
    /// Initial skip weights.
    #[serde(default)]
    pub skip: Skip,
}

impl GistNetConfig {
    /// h = 256, two layers of 4 heads, MLP 4h: ≈ 1.9 M parameters at d = 576.
    pub fn for_model(d_model: usize, block: usize) -> Self {
        GistNetConfig {
            d_model,
            block,
            width: 256,
            layers: 2,
            heads: 4,
            mlp: 1024,
            skip: Skip::Last,
        }
    }

    /// Errors unless every size is positive and `heads` divides `width`.
    pub fn validate(&self) -> Result<()> {
        let sizes = [self.d_model, self.block, self.width, self.heads, self.mlp];
        if sizes.contains(&0) || !self.width.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "GistNet sizes must be positive with heads dividing width: {self:?}"
            )));
        }
        Ok(())
    }

    /// Number of parameters.
    pub fn n_params(&self) -> usize {
        let (d, h, m) = (self.d_model, self.width, self.mlp);
        let layer = Encoder::layer_params(h, m);
        2 * d
            + (d * h + h)
            + self.block * h
            + h
            + self.layers * layer
            + 2 * h
            + (h * d + d)
            + self.block
    }
}

/// A GistNet (see the module docs). Parameters are candle [`Var`]s: train them through
/// [`GistNet::params`], or load a trained net with [`GistNet::load`].
#[derive(Debug, Clone)]
pub struct GistNet {
    config: GistNetConfig,
    ln_in: (Var, Var),
    proj_in: (Var, Var),
    place: Var,
    query: Var,
    mix: Var,
    encoder: Encoder,
    ln_out: (Var, Var),
    proj_out: (Var, Var),
}

impl GistNet {
    /// A fresh net: weights N(0, 0.02²) (seeded), biases 0, norms 1, output projection 0, skip
    /// weights as `config.skip` says.
    pub fn new(config: GistNetConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let (d, h, m, b) = (config.d_model, config.width, config.mlp, config.block);
        let mut init = Init::new(seed, "gistnet", device);
        let encoder = Encoder::new(h, config.layers, config.heads, m, &mut init)?;
        let mix: Vec<f32> = match config.skip {
            Skip::Last => (0..b).map(|i| f32::from(u8::from(i + 1 == b))).collect(),
            Skip::Mean => vec![1.0 / b as f32; b],
        };
        Ok(GistNet {
            mix: Var::from_tensor(&Tensor::from_vec(mix, b, device)?)?,
            config,
            ln_in: norm(d, device)?,
            proj_in: (init.normal(&[d, h])?, zeros(&[h], device)?),
            place: init.normal(&[b, h])?,
            query: init.normal(&[h])?,
            encoder,
            ln_out: norm(h, device)?,
            proj_out: (zeros(&[h, d], device)?, zeros(&[d], device)?),
        })
    }

    /// The config.
    pub fn config(&self) -> &GistNetConfig {
        &self.config
    }

    /// Every parameter with its name (the checkpoint's tensor names).
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        push_pair(&mut out, "ln_in", &self.ln_in);
        push_pair(&mut out, "proj_in", &self.proj_in);
        self.encoder.params(&mut out);
        push_pair(&mut out, "ln_out", &self.ln_out);
        push_pair(&mut out, "proj_out", &self.proj_out);
        out.push(("place".into(), self.place.clone()));
        out.push(("query".into(), self.query.clone()));
        out.push(("mix".into(), self.mix.clone()));
        out
    }

    /// One gist per row of `children` `[n, B, d]` → `[n, d]` (f32).
    pub fn forward(&self, children: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (n, b, d) = children.dims3().map_err(|_| self.bad_input(children))?;
        if b != c.block || d != c.d_model {
            return Err(self.bad_input(children));
        }
        let children = children.to_dtype(DType::F32)?;
        let h = c.width;
        let x = layer_norm(&children, &self.ln_in)?;
        let x = linear(&x, &self.proj_in)?.broadcast_add(self.place.as_tensor())?;
        let q = self
            .query
            .as_tensor()
            .reshape((1, 1, h))?
            .broadcast_as((n, 1, h))?;
        let s = self
            .encoder
            .forward(&Tensor::cat(&[&x, &q.contiguous()?], 1)?)?;
        let slot = s.narrow(1, b, 1)?.squeeze(1)?;
        let delta = linear(&layer_norm(&slot, &self.ln_out)?, &self.proj_out)?;
        let skip = self
            .mix
            .as_tensor()
            .reshape((1, 1, b))?
            .broadcast_as((n, 1, b))?
            .contiguous()?
            .matmul(&children)?
            .squeeze(1)?;
        Ok((skip + delta)?)
    }

    fn bad_input(&self, t: &Tensor) -> Error {
        Error::shape(
            "GistNet children",
            format!("[n, {}, {}]", self.config.block, self.config.d_model),
            format!("{:?}", t.dims()),
        )
    }

    /// Saves the parameters and config into the checkpoint directory `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_params(dir, &self.params(), &self.config)
    }

    /// Loads a net saved by [`GistNet::save`] (or a GistNet training checkpoint) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (tensors, config): (HashMap<String, Tensor>, GistNetConfig) =
            load_checkpoint(dir, device)?;
        let net = GistNet::new(config, 0, device)?;
        net.set(&tensors)?;
        Ok(net)
    }

    /// Overwrites every parameter with the tensor of its name in `tensors` (shapes must match).
    pub fn set(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        set_params(&self.params(), tensors, "GistNet")
    }
}

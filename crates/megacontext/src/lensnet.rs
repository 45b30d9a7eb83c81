//! LensNet: scores every entry of a working context for **expand** (replace a gist by its
//! children) and **collapse** (replace the family the entry starts by its parent), given the
//! query — the base model's last hidden state.
//!
//! The design: each entry is a vector in the base model's embedding space (a gist, or a raw
//! block's mean token embedding), layer-normed and projected to width h, plus a learned
//! embedding of its level and a projection of its geometry (log tokens from its span's end to
//! the query position, log span length). The query is layer-normed, projected to h and put in
//! front of the entries; `layers` bidirectional transformer layers read the set, and a head
//! maps each entry's final state to two scores `[expand, collapse]`.
//!
//! Scores are predicted **utilities**: the change in the next tokens' NLL (nats per token,
//! positive = the move lowers the loss) that the move would bring, up to a monotone map — the
//! ranking loss ([`crate::lens_train`]) makes score order follow utility order, with a no-op
//! anchored at 0, so a positive score means "better than doing nothing". With d = 576, h = 64,
//! two layers and an MLP of 256 it has ≈ 0.14 M parameters.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use metarep_core::checkpoint::load_checkpoint;
use serde::{Deserialize, Serialize};

use crate::encoder::{
    layer_norm, linear, norm, push_pair, save_params, set_params, zeros, Encoder, Init, Pair,
};
use crate::error::{Error, Result};

/// The shape of a LensNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LensNetConfig {
    /// Width of the base model's embeddings and hidden states d.
    pub d_model: usize,
    /// Internal width h.
    pub width: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads (divides `width`).
    pub heads: usize,
    /// MLP hidden width.
    pub mlp: usize,
    /// Highest entry level read (entries above it are errors).
    pub max_level: u8,
}

impl LensNetConfig {
    /// h = 64, two layers of 4 heads, MLP 4h.
    pub fn for_model(d_model: usize, max_level: u8) -> Self {
        LensNetConfig {
            d_model,
            width: 64,
            layers: 2,
            heads: 4,
            mlp: 256,
            max_level,
        }
    }

    /// Errors unless every size is positive and `heads` divides `width`.
    pub fn validate(&self) -> Result<()> {
        let sizes = [self.d_model, self.width, self.heads, self.mlp];
        if sizes.contains(&0) || !self.width.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "LensNet sizes must be positive with heads dividing width: {self:?}"
            )));
        }
        Ok(())
    }

    /// Number of parameters.
    pub fn n_params(&self) -> usize {
        let (d, h, m) = (self.d_model, self.width, self.mlp);
        let levels = usize::from(self.max_level) + 1;
        2 * (2 * d + d * h + h)
            + levels * h
            + (2 * h + h)
            + self.layers * Encoder::layer_params(h, m)
            + 2 * h
            + (2 * h + 2)
    }
}

/// What LensNet reads about one working context: `n` entries and the query.
#[derive(Debug, Clone)]
pub struct FocusInput {
    /// Entry vectors `[n, d_model]` (f32): a gist, or a raw block's mean token embedding.
    pub vectors: Tensor,
    /// Each entry's level.
    pub levels: Vec<u8>,
    /// Each entry's `[tokens from its span's end to the query position, span length]`.
    pub geometry: Vec<[f32; 2]>,
    /// The query `[d_model]` (f32): the base model's hidden state at the newest token.
    pub query: Tensor,
}

/// A LensNet (see the module docs).
#[derive(Debug, Clone)]
pub struct LensNet {
    config: LensNetConfig,
    ln_in: Pair,
    proj_in: Pair,
    ln_query: Pair,
    proj_query: Pair,
    level: Var,
    geometry: Pair,
    encoder: Encoder,
    ln_out: Pair,
    head: Pair,
}

impl LensNet {
    /// A fresh net: weights N(0, 0.02²) (seeded), biases 0, norms 1.
    pub fn new(config: LensNetConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let (d, h) = (config.d_model, config.width);
        let mut init = Init::new(seed, "lensnet", device);
        let encoder = Encoder::new(h, config.layers, config.heads, config.mlp, &mut init)?;
        Ok(LensNet {
            config,
            ln_in: norm(d, device)?,
            proj_in: (init.normal(&[d, h])?, zeros(&[h], device)?),
            ln_query: norm(d, device)?,
            proj_query: (init.normal(&[d, h])?, zeros(&[h], device)?),
            level: init.normal(&[usize::from(config.max_level) + 1, h])?,
            geometry: (init.normal(&[2, h])?, zeros(&[h], device)?),
            encoder,
            ln_out: norm(h, device)?,
            head: (init.normal(&[h, 2])?, zeros(&[2], device)?),
        })
    }

    /// The config.
    pub fn config(&self) -> &LensNetConfig {
        &self.config
    }

    /// Every parameter with its name (the checkpoint's tensor names).
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        push_pair(&mut out, "ln_in", &self.ln_in);
        push_pair(&mut out, "proj_in", &self.proj_in);
        push_pair(&mut out, "ln_query", &self.ln_query);
        push_pair(&mut out, "proj_query", &self.proj_query);
        out.push(("level".into(), self.level.clone()));
        push_pair(&mut out, "geometry", &self.geometry);
        self.encoder.params(&mut out);
        push_pair(&mut out, "ln_out", &self.ln_out);
        push_pair(&mut out, "head", &self.head);
        out
    }

    /// The scores `[n, 2]` (f32; column 0 expand, column 1 collapse) of `input`'s entries.
    pub fn forward(&self, input: &FocusInput) -> Result<Tensor> {
        let c = &self.config;
        let n = input.levels.len();
        let bad = |what: &str, want: String, got: String| {
            Err(Error::shape(format!("LensNet {what}"), want, got))
        };
        match input.vectors.dims() {
            [rows, d] if *rows == n && *d == c.d_model => {}
            got => {
                return bad(
                    "entry vectors",
                    format!("[{n}, {}]", c.d_model),
                    format!("{got:?}"),
                )
            }
        }
        if input.query.dims() != [c.d_model] {
            let got = format!("{:?}", input.query.dims());
            return bad("query", format!("[{}]", c.d_model), got);
        }
        if input.geometry.len() != n {
            let got = format!("{} rows", input.geometry.len());
            return bad("geometry", format!("{n} rows"), got);
        }
        if let Some(l) = input.levels.iter().find(|l| **l > c.max_level) {
            return Err(Error::Invalid(format!(
                "LensNet reads levels ≤ {}, got an entry of level {l}",
                c.max_level
            )));
        }
        let device = input.vectors.device();
        let levels = usize::from(c.max_level) + 1;
        let mut onehot = vec![0f32; n * levels];
        for (i, l) in input.levels.iter().enumerate() {
            onehot[i * levels + usize::from(*l)] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (n, levels), device)?;
        let geometry: Vec<f32> = input
            .geometry
            .iter()
            .flat_map(|g| g.map(|x| x.max(0.0).ln_1p() / 10.0))
            .collect();
        let geometry = Tensor::from_vec(geometry, (n, 2), device)?;
        let x = linear(
            &layer_norm(&input.vectors.to_dtype(DType::F32)?, &self.ln_in)?,
            &self.proj_in,
        )?;
        let x =
            ((x + onehot.matmul(self.level.as_tensor())?)? + linear(&geometry, &self.geometry)?)?;
        let q = input.query.to_dtype(DType::F32)?.unsqueeze(0)?;
        let q = linear(&layer_norm(&q, &self.ln_query)?, &self.proj_query)?;
        let s = self
            .encoder
            .forward(&Tensor::cat(&[&q, &x], 0)?.unsqueeze(0)?)?;
        let s = s.squeeze(0)?.narrow(0, 1, n)?;
        linear(&layer_norm(&s, &self.ln_out)?, &self.head)
    }

    /// Saves the parameters and config into the checkpoint directory `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_params(dir, &self.params(), &self.config)
    }

    /// Loads a net saved by [`LensNet::save`] (or a LensNet training checkpoint) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (tensors, config): (HashMap<String, Tensor>, LensNetConfig) =
            load_checkpoint(dir, device)?;
        let net = LensNet::new(config, 0, device)?;
        set_params(&net.params(), &tensors, "LensNet")?;
        Ok(net)
    }
}

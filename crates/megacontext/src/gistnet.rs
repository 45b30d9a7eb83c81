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

use candle_core::{DType, Device, Tensor, Var, D};
use metarep_core::checkpoint::{load_checkpoint, save_checkpoint};
use metarep_core::rng::{derive_seed, normal_vec, seeded};
use metarep_model::ops::softmax_last_dim;
use serde::{Deserialize, Serialize};

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
        let layer = 4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * m + m) + (m * h + h);
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

/// One transformer layer's parameters.
#[derive(Debug, Clone)]
struct Layer {
    ln1: (Var, Var),
    qkv: (Var, Var),
    out: (Var, Var),
    ln2: (Var, Var),
    up: (Var, Var),
    down: (Var, Var),
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
    layers: Vec<Layer>,
    ln_out: (Var, Var),
    proj_out: (Var, Var),
}

/// Layer-norm epsilon.
const EPS: f64 = 1e-5;

impl GistNet {
    /// A fresh net: weights N(0, 0.02²) (seeded), biases 0, norms 1, output projection 0, skip
    /// weights as `config.skip` says.
    pub fn new(config: GistNetConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let (d, h, m, b) = (config.d_model, config.width, config.mlp, config.block);
        let mut rng = seeded(derive_seed(seed, "gistnet"));
        let mut normal = |shape: &[usize]| -> Result<Var> {
            let n = shape.iter().product();
            let v: Vec<f32> = normal_vec(&mut rng, n, 0.0, 0.02)?
                .into_iter()
                .map(|x| x as f32)
                .collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, shape, device)?)?)
        };
        let zeros = |shape: &[usize]| Var::zeros(shape, DType::F32, device);
        let ones = |n: usize| Var::ones(n, DType::F32, device);
        let norm = || -> Result<(Var, Var)> { Ok((ones(h)?, zeros(&[h])?)) };
        let mut layers = Vec::with_capacity(config.layers);
        for _ in 0..config.layers {
            layers.push(Layer {
                ln1: norm()?,
                qkv: (normal(&[h, 3 * h])?, zeros(&[3 * h])?),
                out: (normal(&[h, h])?, zeros(&[h])?),
                ln2: norm()?,
                up: (normal(&[h, m])?, zeros(&[m])?),
                down: (normal(&[m, h])?, zeros(&[h])?),
            });
        }
        let mix: Vec<f32> = match config.skip {
            Skip::Last => (0..b).map(|i| f32::from(u8::from(i + 1 == b))).collect(),
            Skip::Mean => vec![1.0 / b as f32; b],
        };
        Ok(GistNet {
            mix: Var::from_tensor(&Tensor::from_vec(mix, b, device)?)?,
            config,
            ln_in: (ones(d)?, zeros(&[d])?),
            proj_in: (normal(&[d, h])?, zeros(&[h])?),
            place: normal(&[b, h])?,
            query: normal(&[h])?,
            layers,
            ln_out: norm()?,
            proj_out: (zeros(&[h, d])?, zeros(&[d])?),
        })
    }

    /// The config.
    pub fn config(&self) -> &GistNetConfig {
        &self.config
    }

    /// Every parameter with its name (the checkpoint's tensor names).
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        let mut pair = |name: &str, (w, b): &(Var, Var)| {
            out.push((format!("{name}.weight"), w.clone()));
            out.push((format!("{name}.bias"), b.clone()));
        };
        pair("ln_in", &self.ln_in);
        pair("proj_in", &self.proj_in);
        for (i, l) in self.layers.iter().enumerate() {
            pair(&format!("layers.{i}.ln1"), &l.ln1);
            pair(&format!("layers.{i}.qkv"), &l.qkv);
            pair(&format!("layers.{i}.out"), &l.out);
            pair(&format!("layers.{i}.ln2"), &l.ln2);
            pair(&format!("layers.{i}.up"), &l.up);
            pair(&format!("layers.{i}.down"), &l.down);
        }
        pair("ln_out", &self.ln_out);
        pair("proj_out", &self.proj_out);
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
        let mut s = Tensor::cat(&[&x, &q.contiguous()?], 1)?;
        for l in &self.layers {
            s = (&s + self.attention(&layer_norm(&s, &l.ln1)?, l)?)?;
            let up = linear(&layer_norm(&s, &l.ln2)?, &l.up)?.gelu_erf()?;
            s = (&s + linear(&up, &l.down)?)?;
        }
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

    /// Bidirectional multi-head self-attention of `x` `[n, B+1, h]`.
    fn attention(&self, x: &Tensor, l: &Layer) -> Result<Tensor> {
        let (n, t, h) = x.dims3()?;
        let heads = self.config.heads;
        let dh = h / heads;
        let qkv = linear(x, &l.qkv)?.reshape((n, t, 3, heads, dh))?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? / (dh as f64).sqrt())?;
        let z = softmax_last_dim(&scores)?.matmul(&v)?;
        let z = z.transpose(1, 2)?.contiguous()?.reshape((n, t, h))?;
        linear(&z, &l.out)
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
        let tensors: Vec<(String, Tensor)> = self
            .params()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        Ok(save_checkpoint(dir, &tensors, &self.config)?)
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
        for (name, var) in self.params() {
            let t = tensors
                .get(&name)
                .ok_or_else(|| Error::Invalid(format!("GistNet tensor `{name}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(Error::shape(
                    format!("GistNet tensor `{name}`"),
                    format!("{:?}", var.dims()),
                    format!("{:?}", t.dims()),
                ));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}

/// `x W + b` over the last dim of `x` `[.., in]` with `W: [in, out]`.
fn linear(x: &Tensor, (w, b): &(Var, Var)) -> Result<Tensor> {
    let dims = x.dims();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x
        .reshape((rows, dims[dims.len() - 1]))?
        .matmul(w.as_tensor())?
        .broadcast_add(b.as_tensor())?;
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(w.dim(1)?);
    Ok(y.reshape(out)?)
}

/// Layer norm over the last dim with weight and bias.
fn layer_norm(x: &Tensor, (w, b): &(Var, Var)) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + EPS)?.sqrt()?)?;
    Ok(normed
        .broadcast_mul(w.as_tensor())?
        .broadcast_add(b.as_tensor())?)
}

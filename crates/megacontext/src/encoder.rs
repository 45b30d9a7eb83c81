//! The small bidirectional transformer encoder GistNet and LensNet share: `layers` pre-norm
//! layers of multi-head self-attention over a set of elements, then a GELU MLP, with plain
//! `x W + b` projections and layer norms as free functions.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use metarep_core::checkpoint::save_checkpoint;
use metarep_core::rng::{derive_seed, normal_vec, seeded};
use metarep_model::ops::softmax_last_dim;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{Error, Result};

/// A projection's weight `[in, out]` and bias `[out]`, or a layer norm's weight and bias.
pub(crate) type Pair = (Var, Var);

/// Layer-norm epsilon.
const EPS: f64 = 1e-5;

/// One encoder layer's parameters.
#[derive(Debug, Clone)]
struct Layer {
    ln1: Pair,
    qkv: Pair,
    out: Pair,
    ln2: Pair,
    up: Pair,
    down: Pair,
}

/// `layers` pre-norm self-attention + MLP layers of width h.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    heads: usize,
    layers: Vec<Layer>,
}

impl Encoder {
    /// Fresh layers: weights from `normal(shape)`, biases 0, norms 1.
    pub(crate) fn new(
        width: usize,
        layers: usize,
        heads: usize,
        mlp: usize,
        init: &mut Init,
    ) -> Result<Self> {
        let device = &init.device.clone();
        let (h, m) = (width, mlp);
        let mut out = Vec::with_capacity(layers);
        for _ in 0..layers {
            out.push(Layer {
                ln1: norm(h, device)?,
                qkv: (init.normal(&[h, 3 * h])?, zeros(&[3 * h], device)?),
                out: (init.normal(&[h, h])?, zeros(&[h], device)?),
                ln2: norm(h, device)?,
                up: (init.normal(&[h, m])?, zeros(&[m], device)?),
                down: (init.normal(&[m, h])?, zeros(&[h], device)?),
            });
        }
        Ok(Encoder { heads, layers: out })
    }

    /// Parameters per layer for width h and MLP width m.
    pub(crate) fn layer_params(h: usize, m: usize) -> usize {
        4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * m + m) + (m * h + h)
    }

    /// Appends every parameter as `layers.{i}.{ln1,qkv,out,ln2,up,down}.{weight,bias}`.
    pub(crate) fn params(&self, out: &mut Vec<(String, Var)>) {
        for (i, l) in self.layers.iter().enumerate() {
            for (name, p) in [
                ("ln1", &l.ln1),
                ("qkv", &l.qkv),
                ("out", &l.out),
                ("ln2", &l.ln2),
                ("up", &l.up),
                ("down", &l.down),
            ] {
                push_pair(out, &format!("layers.{i}.{name}"), p);
            }
        }
    }

    /// The encoded set `[n, t, h]` → `[n, t, h]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut s = x.clone();
        for l in &self.layers {
            s = (&s + self.attention(&layer_norm(&s, &l.ln1)?, l)?)?;
            let up = linear(&layer_norm(&s, &l.ln2)?, &l.up)?.gelu_erf()?;
            s = (&s + linear(&up, &l.down)?)?;
        }
        Ok(s)
    }

    /// Bidirectional multi-head self-attention of `x` `[n, t, h]`.
    fn attention(&self, x: &Tensor, l: &Layer) -> Result<Tensor> {
        let (n, t, h) = x.dims3()?;
        let heads = self.heads;
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
}

/// Seeded N(0, 0.02²) initial weights on a device.
pub(crate) struct Init {
    rng: ChaCha8Rng,
    device: Device,
}

impl Init {
    /// Draws from the stream `label` of `seed`.
    pub(crate) fn new(seed: u64, label: &str, device: &Device) -> Self {
        Init {
            rng: seeded(derive_seed(seed, label)),
            device: device.clone(),
        }
    }

    /// A fresh f32 variable of `shape`, entries N(0, 0.02²).
    pub(crate) fn normal(&mut self, shape: &[usize]) -> Result<Var> {
        let n = shape.iter().product();
        let v: Vec<f32> = normal_vec(&mut self.rng, n, 0.0, 0.02)?
            .into_iter()
            .map(|x| x as f32)
            .collect();
        Ok(Var::from_tensor(&Tensor::from_vec(
            v,
            shape,
            &self.device,
        )?)?)
    }
}

/// Overwrites every variable of `params` with the tensor of its name in `tensors` (shapes must
/// match); `what` names the net in errors.
pub(crate) fn set_params(
    params: &[(String, Var)],
    tensors: &HashMap<String, Tensor>,
    what: &str,
) -> Result<()> {
    for (name, var) in params {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("{what} tensor `{name}` is missing")))?;
        if t.dims() != var.dims() {
            return Err(Error::shape(
                format!("{what} tensor `{name}`"),
                format!("{:?}", var.dims()),
                format!("{:?}", t.dims()),
            ));
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// Saves `params` and `config` into the checkpoint directory `dir`.
pub(crate) fn save_params(
    dir: &Path,
    params: &[(String, Var)],
    config: &impl Serialize,
) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    Ok(save_checkpoint(dir, &tensors, config)?)
}

/// Appends `{name}.weight` and `{name}.bias`.
pub(crate) fn push_pair(out: &mut Vec<(String, Var)>, name: &str, (w, b): &Pair) {
    out.push((format!("{name}.weight"), w.clone()));
    out.push((format!("{name}.bias"), b.clone()));
}

/// A zero f32 variable of `shape`.
pub(crate) fn zeros(shape: &[usize], device: &Device) -> Result<Var> {
    Ok(Var::zeros(shape, DType::F32, device)?)
}

/// A layer norm of width `n` at the identity (weight 1, bias 0).
pub(crate) fn norm(n: usize, device: &Device) -> Result<Pair> {
    Ok((Var::ones(n, DType::F32, device)?, zeros(&[n], device)?))
}

/// `x W + b` over the last dim of `x` `[.., in]` with `W: [in, out]`.
pub(crate) fn linear(x: &Tensor, (w, b): &Pair) -> Result<Tensor> {
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
pub(crate) fn layer_norm(x: &Tensor, (w, b): &Pair) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + EPS)?.sqrt()?)?;
    Ok(normed
        .broadcast_mul(w.as_tensor())?
        .broadcast_add(b.as_tensor())?)
}

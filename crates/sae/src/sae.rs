//! The sparse autoencoder: parameters, encoding for each architecture, decoding, and the
//! training forward pass.
//!
//! Shapes: inputs `[batch, d_in]`; `w_enc` and `w_dec` are both `[d_sae, d_in]` (row `i` is
//! latent `i`'s encoder direction, resp. decoder direction — SAELens's `W_enc` is the
//! transpose of `w_enc`, its `W_dec` equals `w_dec`); `b_enc` `[d_sae]`, `b_dec` `[d_in]`.
//!
//! With the pre-encoder bias the encoder sees `x − b_dec`. TopK-style encoders select their
//! latents on a detached tiled product ([`topk_of_product`]) and then compute the selected
//! pre-activations exactly with [`gather_dot`], so that every gradient of the step is sparse
//! ([`gather_dot`], [`gather_vector`], [`sparse_decode`] and their backward kernels). Dense
//! encoders write the bias as `c = b_enc − w_enc·b_dec` so that the input itself needs no
//! gradient, and run through [`linear_encode`], whose backward skips `∂/∂x` (a full extra
//! matmul that candle's generic matmul backward would form).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use metarep_core::rng::{derive_seed, normal_vec, seeded};
use metarep_kernels::{
    batch_topk, column_sums, gather_dot, gather_vector, linear_encode, normalize_rows_,
    sparse_decode, topk_of_product, topk_per_row,
};

use crate::config::{Architecture, DecoderNorm, InputNorm, SaeConfig};
use crate::error::{Error, Result};
use crate::latents::Latents;
use crate::ste;

/// Decoder row norm at initialisation when rows are free (Anthropic, April 2024 update).
pub const FOLDED_INIT_NORM: f64 = 0.1;

/// A sparse autoencoder (see the module docs for shapes).
#[derive(Debug, Clone)]
pub struct Sae {
    /// What it is.
    pub config: SaeConfig,
    /// Encoder directions `[d_sae, d_in]` (shared by both paths of a gated SAE).
    pub w_enc: Var,
    /// Encoder bias `[d_sae]` (the gate bias `b_gate` of a gated SAE).
    pub b_enc: Var,
    /// Decoder directions `[d_sae, d_in]`.
    pub w_dec: Var,
    /// Decoder bias `[d_in]` (also subtracted from the input with the pre-encoder bias).
    pub b_dec: Var,
    /// JumpReLU: `ln θ` per latent `[d_sae]`.
    pub log_threshold: Option<Var>,
    /// Gated: magnitude-path log-scale `r_mag` `[d_sae]`.
    pub r_mag: Option<Var>,
    /// Gated: magnitude-path bias `b_mag` `[d_sae]`.
    pub b_mag: Option<Var>,
    /// BatchTopK: the global threshold used at inference (running average of the smallest
    /// selected activation during training).
    pub batch_threshold: f64,
    /// [`InputNorm::ExpectedNorm`]: the input scale `s` (1 otherwise).
    pub input_scale: f64,
}

/// Everything the losses need from one training forward pass (normalised input space).
#[derive(Debug, Clone)]
pub struct ForwardPass {
    /// The (normalised) input, which is the reconstruction target `[batch, d_in]`.
    pub x: Tensor,
    /// Latent codes.
    pub latents: Latents,
    /// Reconstruction `[batch, d_in]`.
    pub recon: Tensor,
    /// Gated: `Σ_i ReLU(π_gate,i)·‖d_i‖`, mean over rows (the gate's L1).
    pub gate_l1: Option<Tensor>,
    /// Gated: `‖ReLU(π_gate)·W_dec + b_dec − x‖²` (detached decoder), mean over rows.
    pub gate_aux: Option<Tensor>,
    /// JumpReLU: `Σ_i H(z_i − θ_i)` (straight-through in θ), mean over rows.
    pub l0: Option<Tensor>,
    /// TopK/BatchTopK with dead latents: the auxiliary-K reconstruction of the residual.
    pub aux_k: Option<Tensor>,
    /// BatchTopK: the smallest selected activation of this batch.
    pub batch_min: Option<f64>,
}

/// Options of a training forward pass.
#[derive(Debug, Clone, Default)]
pub struct TrainForward<'a> {
    /// Compute the architecture's sparsity terms (gate L1 and aux, L0).
    pub sparsity: bool,
    /// Auxiliary-K: `(k_aux, dead mask [d_sae])`.
    pub aux_k: Option<(usize, &'a [bool])>,
}

impl Sae {
    /// A fresh SAE: decoder rows in random directions (unit norm, or [`FOLDED_INIT_NORM`] when
    /// folded), the encoder tied to the decoder, zero biases, `r_mag = b_mag = 0`, thresholds at
    /// their initial value.
    pub fn new(config: SaeConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        config.validate()?;
        let (n, d) = (config.d_sae, config.d_in);
        let norm = match config.decoder_norm {
            DecoderNorm::Unit => 1.0,
            DecoderNorm::Folded => FOLDED_INIT_NORM,
        };
        let dirs: Vec<f64> = unit_rows(n, d, derive_seed(seed, "sae/init"))?
            .into_iter()
            .map(|v| v * norm)
            .collect();
        let dec = Tensor::from_vec(dirs, (n, d), device)?.to_dtype(dtype)?;
        let zeros = |len: usize| Tensor::zeros(len, dtype, device);
        let var = |t: Tensor| Var::from_tensor(&t);
        let (log_threshold, r_mag, b_mag) = match config.architecture {
            Architecture::JumpRelu { init_threshold, .. } => {
                (Some(var((zeros(n)? + init_threshold.ln())?)?), None, None)
            }
            Architecture::Gated => (None, Some(var(zeros(n)?)?), Some(var(zeros(n)?)?)),
            _ => (None, None, None),
        };
        Ok(Self {
            config,
            w_enc: var(dec.copy()?)?,
            b_enc: var(zeros(n)?)?,
            w_dec: var(dec)?,
            b_dec: var(zeros(d)?)?,
            log_threshold,
            r_mag,
            b_mag,
            batch_threshold: 0.0,
            input_scale: 1.0,
        })
    }

    /// The trainable parameters by name, in a fixed order (`w_enc`, `b_enc`, `w_dec`, `b_dec`,
    /// then `log_threshold` or `r_mag`, `b_mag` where present).
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut p = vec![
            ("w_enc".to_string(), self.w_enc.clone()),
            ("b_enc".to_string(), self.b_enc.clone()),
            ("w_dec".to_string(), self.w_dec.clone()),
            ("b_dec".to_string(), self.b_dec.clone()),
        ];
        for (name, v) in [
            ("log_threshold", &self.log_threshold),
            ("r_mag", &self.r_mag),
            ("b_mag", &self.b_mag),
        ] {
            if let Some(v) = v {
                p.push((name.to_string(), v.clone()));
            }
        }
        p
    }

    /// Builds an SAE of `config` from named tensors (the names of [`Sae::params`]); missing or
    /// mis-shaped tensors are errors naming them.
    pub fn from_tensors(config: SaeConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let sae = Self::new(config, 0, DType::F32, &Device::Cpu)?;
        for (name, var) in sae.params() {
            let t = tensors
                .get(&name)
                .ok_or_else(|| Error::Invalid(format!("SAE tensor `{name}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(Error::shape(
                    format!("SAE tensor `{name}`"),
                    format!("{:?}", var.dims()),
                    format!("{:?}", t.dims()),
                ));
            }
            var.set(
                &t.to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?
                    .copy()?,
            )?;
        }
        Ok(sae)
    }

    /// A copy of this SAE with every parameter on `device` (thresholds and scales kept).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let moved = |v: &Var| -> Result<Var> { Ok(Var::from_tensor(&v.to_device(device)?)?) };
        let opt = |v: &Option<Var>| v.as_ref().map(moved).transpose();
        Ok(Self {
            config: self.config,
            w_enc: moved(&self.w_enc)?,
            b_enc: moved(&self.b_enc)?,
            w_dec: moved(&self.w_dec)?,
            b_dec: moved(&self.b_dec)?,
            log_threshold: opt(&self.log_threshold)?,
            r_mag: opt(&self.r_mag)?,
            b_mag: opt(&self.b_mag)?,
            batch_threshold: self.batch_threshold,
            input_scale: self.input_scale,
        })
    }

    /// `θ = exp(log_threshold)` of a JumpReLU SAE.
    pub fn threshold(&self) -> Result<Option<Tensor>> {
        Ok(match &self.log_threshold {
            Some(l) => Some(l.as_tensor().exp()?),
            None => None,
        })
    }

    /// Decoder row norms `[d_sae]`.
    pub fn decoder_norms(&self) -> Result<Tensor> {
        Ok(self.w_dec.as_tensor().sqr()?.sum(1)?.sqrt()?)
    }

    /// After an optimiser step: renormalise decoder rows when they are kept at unit norm.
    pub fn after_step(&self) -> Result<()> {
        if self.config.decoder_norm == DecoderNorm::Unit {
            normalize_rows_(self.w_dec.as_tensor())?;
        }
        Ok(())
    }

    /// Checks an input batch `[batch, d_in]`.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        match x.dims() {
            &[_, d] if d == self.config.d_in => Ok(()),
            dims => Err(Error::shape(
                "SAE input",
                format!("[batch, {}]", self.config.d_in),
                format!("{dims:?}"),
            )),
        }
    }

    /// Scales raw inputs as the config says (on the SAE's device and in its dtype); returns
    /// them and, for per-row scaling, the per-row factors `[batch, 1]` needed to undo it.
    pub fn normalize_input(&self, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        self.check_input(x)?;
        let x = x
            .to_device(self.w_dec.device())?
            .to_dtype(self.w_dec.dtype())?;
        Ok(match self.config.input_norm {
            InputNorm::None => (x, None),
            InputNorm::ExpectedNorm => ((x * self.input_scale)?, None),
            InputNorm::PerRow => {
                let norms = x
                    .sqr()?
                    .sum_keepdim(1)?
                    .sqrt()?
                    .clamp(1e-12, f64::INFINITY)?;
                let factor = (norms.recip()? * (self.config.d_in as f64).sqrt())?;
                (x.broadcast_mul(&factor)?, Some(factor))
            }
        })
    }

    /// Undoes [`Sae::normalize_input`] on a reconstruction.
    pub fn denormalize(&self, recon: &Tensor, factor: Option<&Tensor>) -> Result<Tensor> {
        Ok(match (self.config.input_norm, factor) {
            (InputNorm::ExpectedNorm, _) => (recon / self.input_scale)?,
            (InputNorm::PerRow, Some(f)) => recon.broadcast_div(f)?,
            _ => recon.clone(),
        })
    }

    /// Latent codes of raw inputs `x` `[batch, d_in]` (sparse for TopK, dense otherwise).
    pub fn encode(&self, x: &Tensor) -> Result<Latents> {
        let (xn, _) = self.normalize_input(x)?;
        self.encode_normalized(&xn)
    }

    /// Latent codes of already normalised inputs, off the autograd graph.
    pub fn encode_normalized(&self, xn: &Tensor) -> Result<Latents> {
        let v = self.view(false)?;
        Ok(match self.config.architecture {
            Architecture::TopK { k } => v.topk_codes(xn, k, None)?.0,
            Architecture::BatchTopK { .. } => {
                let pre = v.dense_pre(xn)?;
                let theta = Tensor::full(self.batch_threshold, self.config.d_sae, xn.device())?
                    .to_dtype(pre.dtype())?;
                Latents::Dense(ste::jump_relu(&pre.relu()?, &theta, 1.0)?)
            }
            _ => v.dense_codes(xn, false)?.latents,
        })
    }

    /// Reconstruction (raw input scale) of latent codes; `factor` from [`Sae::normalize_input`].
    pub fn decode(&self, latents: &Latents, factor: Option<&Tensor>) -> Result<Tensor> {
        let recon = self.view(false)?.decode(latents)?;
        self.denormalize(&recon, factor)
    }

    /// Raw-scale reconstruction of raw inputs.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        let (xn, factor) = self.normalize_input(x)?;
        let latents = self.encode_normalized(&xn)?;
        self.decode(&latents, factor.as_ref())
    }

    /// The training forward pass on normalised inputs `x` (gradients reach every parameter).
    pub fn forward(&self, x: &Tensor, opts: &TrainForward) -> Result<ForwardPass> {
        self.check_input(x)?;
        let x = x.detach();
        let v = self.view(true)?;
        match self.config.architecture {
            Architecture::TopK { k } => {
                let (latents, aux) = v.topk_codes(&x, k, opts.aux_k)?;
                let recon = v.decode(&latents)?;
                let aux_k = match aux {
                    Some((aux, scale)) => Some((v.aux_loss(&x, &recon, &aux)? * scale)?),
                    None => None,
                };
                Ok(ForwardPass::new(x, latents, recon, aux_k))
            }
            Architecture::BatchTopK { k } => v.batch_topk_pass(&x, k, opts.aux_k),
            _ => {
                let mut pass = v.dense_codes(&x, opts.sparsity)?;
                pass.recon = v.decode(&pass.latents)?;
                Ok(pass)
            }
        }
    }

    /// The parameter tensors of one pass: tracked (training) or detached (inference).
    fn view(&self, track: bool) -> Result<View> {
        let t = |v: &Var| {
            if track {
                v.as_tensor().clone()
            } else {
                v.as_tensor().detach()
            }
        };
        Ok(View {
            config: self.config,
            w_enc: t(&self.w_enc),
            b_enc: t(&self.b_enc),
            w_dec: t(&self.w_dec),
            b_dec: t(&self.b_dec),
            theta: match &self.log_threshold {
                Some(l) => Some(t(l).exp()?),
                None => None,
            },
            r_mag: self.r_mag.as_ref().map(t),
            b_mag: self.b_mag.as_ref().map(t),
        })
    }
}

impl ForwardPass {
    /// A pass with no sparsity terms.
    pub(crate) fn new(x: Tensor, latents: Latents, recon: Tensor, aux_k: Option<Tensor>) -> Self {
        Self {
            x,
            latents,
            recon,
            gate_l1: None,
            gate_aux: None,
            l0: None,
            aux_k,
            batch_min: None,
        }
    }
}

/// The parameter tensors one forward pass reads.
struct View {
    config: SaeConfig,
    w_enc: Tensor,
    b_enc: Tensor,
    w_dec: Tensor,
    b_dec: Tensor,
    theta: Option<Tensor>,
    r_mag: Option<Tensor>,
    b_mag: Option<Tensor>,
}

impl View {
    /// Reconstruction in the normalised space: `f · W_dec + b_dec`.
    fn decode(&self, latents: &Latents) -> Result<Tensor> {
        let out = match latents {
            Latents::Dense(f) => f.matmul(&self.w_dec)?,
            Latents::Sparse { indices, values } => sparse_decode(indices, values, &self.w_dec)?,
        };
        Ok(out.broadcast_add(&self.b_dec)?)
    }

    /// The input the encoder sees: `x − b_dec` with the pre-encoder bias.
    fn encoder_input(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.config.pre_encoder_bias {
            x.broadcast_sub(&self.b_dec)?
        } else {
            x.clone()
        })
    }

    /// Sparse codes at `indices`: `ReLU(⟨x − b_dec, w_enc,i⟩ + b_enc,i)`.
    fn sparse_code(&self, xc: &Tensor, indices: &Tensor) -> Result<Latents> {
        let pre = (gather_dot(indices, xc, &self.w_enc)? + gather_vector(indices, &self.b_enc)?)?;
        Ok(Latents::Sparse {
            indices: indices.clone(),
            values: pre.relu()?,
        })
    }

    /// `b_enc` where `dead`, `-inf` elsewhere (the offset that restricts a top-k to dead
    /// latents), with the number of dead latents.
    fn dead_offset(&self, dead: &[bool]) -> Result<(Tensor, usize)> {
        let b = self.b_enc.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if b.len() != dead.len() {
            return Err(Error::shape(
                "dead-latent mask",
                format!("{} entries", b.len()),
                format!("{}", dead.len()),
            ));
        }
        let off: Vec<f64> = b
            .iter()
            .zip(dead)
            .map(|(&v, &d)| if d { v } else { f64::NEG_INFINITY })
            .collect();
        let n_dead = dead.iter().filter(|&&d| d).count();
        Ok((
            Tensor::from_vec(off, b.len(), self.b_enc.device())?.to_dtype(self.b_enc.dtype())?,
            n_dead,
        ))
    }

    /// TopK codes, plus with `aux = (k_aux, dead)` the auxiliary codes (top `k_aux` dead
    /// latents) and the aux-loss scale `min(n_dead / k_aux, 1)`.
    fn topk_codes(
        &self,
        x: &Tensor,
        k: usize,
        aux: Option<(usize, &[bool])>,
    ) -> Result<(Latents, Option<(Latents, f64)>)> {
        let xc = self.encoder_input(x)?;
        let bias = self.b_enc.detach();
        let dead = match aux {
            Some((k_aux, dead)) if k_aux > 0 => {
                let (off, n_dead) = self.dead_offset(dead)?;
                (n_dead > 0).then_some((off, n_dead, k_aux))
            }
            _ => None,
        };
        let mut requests = vec![(k, Some(&bias))];
        if let Some((off, n_dead, k_aux)) = &dead {
            requests.push(((*k_aux).min(*n_dead), Some(off)));
        }
        let sels = topk_of_product(&xc.detach(), &self.w_enc.detach(), &requests)?;
        let main = self.sparse_code(&xc, &sels[0].indices)?;
        let aux = match dead {
            Some((_, n_dead, k_aux)) => Some((
                self.sparse_code(&xc, &sels[1].indices)?,
                (n_dead as f64 / k_aux as f64).min(1.0),
            )),
            None => None,
        };
        Ok((main, aux))
    }

    /// BatchTopK training pass: the `k · batch` largest positive pre-activations of the batch.
    fn batch_topk_pass(
        &self,
        x: &Tensor,
        k: usize,
        aux: Option<(usize, &[bool])>,
    ) -> Result<ForwardPass> {
        let xc = self.encoder_input(x)?;
        let pre = xc.detach().matmul(&self.w_enc.detach().t()?)?;
        let (sel, min) = batch_topk(&pre, k * x.dim(0)?, Some(&self.b_enc.detach()))?;
        let latents = self.sparse_code(&xc, &sel.indices)?;
        let recon = self.decode(&latents)?;
        let mut aux_k = None;
        if let Some((k_aux, dead)) = aux.filter(|a| a.0 > 0) {
            let (off, n_dead) = self.dead_offset(dead)?;
            if n_dead > 0 {
                let s = topk_per_row(&pre, k_aux.min(n_dead), Some(&off))?;
                let codes = self.sparse_code(&xc, &s.indices)?;
                let scale = (n_dead as f64 / k_aux as f64).min(1.0);
                aux_k = Some((self.aux_loss(x, &recon, &codes)? * scale)?);
            }
        }
        let mut pass = ForwardPass::new(x.clone(), latents, recon, aux_k);
        pass.batch_min = (min > 0.0).then_some(min);
        Ok(pass)
    }

    /// `‖decode_no_bias(aux) − (x − recon)‖²`, mean over rows (the residual is detached).
    fn aux_loss(&self, x: &Tensor, recon: &Tensor, aux: &Latents) -> Result<Tensor> {
        let residual = (x - recon.detach())?;
        let Latents::Sparse { indices, values } = aux else {
            return Err(Error::Invalid("auxiliary codes must be sparse".into()));
        };
        let e_hat = sparse_decode(indices, values, &self.w_dec)?;
        Ok((e_hat - residual)?.sqr()?.sum(1)?.mean_all()?)
    }

    /// `W_enc·x + c` with `c = b − W_enc·b_dec` under the pre-encoder bias (so `x` needs no
    /// gradient), through [`linear_encode`].
    fn dense_pre(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.encoder_bias(&self.b_enc)?;
        Ok(linear_encode(x, &self.w_enc, &c, false)?)
    }

    /// `b − W_enc·b_dec` with the pre-encoder bias, else `b`.
    fn encoder_bias(&self, b: &Tensor) -> Result<Tensor> {
        Ok(if self.config.pre_encoder_bias {
            let wb = self.w_enc.matmul(&self.b_dec.unsqueeze(1)?)?.squeeze(1)?;
            (b - wb)?
        } else {
            b.clone()
        })
    }

    /// Dense codes of ReLU, JumpReLU and Gated SAEs (and their sparsity terms when asked).
    fn dense_codes(&self, x: &Tensor, sparsity: bool) -> Result<ForwardPass> {
        let rows = x.dim(0)?.max(1) as f64;
        let mut pass = ForwardPass::new(x.clone(), Latents::Dense(x.clone()), x.clone(), None);
        match self.config.architecture {
            Architecture::Relu => {
                let c = self.encoder_bias(&self.b_enc)?;
                pass.latents = Latents::Dense(linear_encode(x, &self.w_enc, &c, true)?);
            }
            Architecture::JumpRelu { bandwidth, .. } => {
                let pre = self.dense_pre(x)?;
                let theta = self
                    .theta
                    .as_ref()
                    .ok_or_else(|| missing("log_threshold"))?;
                if sparsity {
                    pass.l0 = Some((ste::step(&pre, theta, bandwidth)?.sum_all()? / rows)?);
                }
                pass.latents = Latents::Dense(ste::jump_relu(&pre, theta, bandwidth)?);
            }
            Architecture::Gated => {
                let r = self.r_mag.as_ref().ok_or_else(|| missing("r_mag"))?;
                let b_mag = self.b_mag.as_ref().ok_or_else(|| missing("b_mag"))?;
                let zero = self.b_enc.zeros_like()?;
                // s = W_enc (x − b_dec); π_gate = s + b_gate; magnitude = ReLU(e^r ⊙ s + b_mag).
                let s = linear_encode(x, &self.w_enc, &self.encoder_bias(&zero)?, false)?;
                let pi = s.broadcast_add(&self.b_enc)?;
                let gate = pi.detach().gt(0.0)?.to_dtype(x.dtype())?;
                let mag = s.broadcast_mul(&r.exp()?)?.broadcast_add(b_mag)?.relu()?;
                if sparsity {
                    let pi_act = pi.relu()?;
                    let norms = self.w_dec.sqr()?.sum(1)?.sqrt()?;
                    pass.gate_l1 = Some((column_sums(&pi_act)?.mul(&norms)?.sum_all()? / rows)?);
                    let via_gate = pi_act
                        .matmul(&self.w_dec.detach())?
                        .broadcast_add(&self.b_dec.detach())?;
                    pass.gate_aux = Some((via_gate - x)?.sqr()?.sum(D::Minus1)?.mean_all()?);
                }
                pass.latents = Latents::Dense((gate * mag)?);
            }
            Architecture::TopK { .. } | Architecture::BatchTopK { .. } => {
                return Err(Error::Invalid("dense codes asked of a TopK SAE".into()))
            }
        }
        Ok(pass)
    }
}

fn missing(name: &str) -> Error {
    Error::Invalid(format!(
        "SAE parameter `{name}` is missing for its architecture"
    ))
}

/// `n · d` values: `n` rows of Gaussian directions scaled to unit norm, drawn from `seed`.
pub(crate) fn unit_rows(n: usize, d: usize, seed: u64) -> Result<Vec<f64>> {
    let mut v = normal_vec(&mut seeded(seed), n * d, 0.0, 1.0)?;
    for row in v.chunks_mut(d.max(1)) {
        let len = row.iter().map(|a| a * a).sum::<f64>().sqrt();
        row.iter_mut()
            .for_each(|a| *a /= len.max(f64::MIN_POSITIVE));
    }
    Ok(v)
}

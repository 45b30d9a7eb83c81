//! The training objective: a weighted sum of terms, each switched on by a non-zero coefficient
//! (or the presence of its table in the config).
//!
//! | term | config | definition (means over rows unless said) |
//! |---|---|---|
//! | reconstruction | `reconstruction` (1) | `‖x̂ − x‖²` in the normalised input space |
//! | L1 | `l1` (0), `l1_warmup` | `Σ_i f_i` (× `‖d_i‖` when decoder norms are folded); Gated: on `ReLU(π_gate)` |
//! | L0 | `l0` (0), JumpReLU only | `Σ_i H(z_i − θ_i)`, straight-through in θ |
//! | gate auxiliary | `gate_aux` (1), Gated only | `‖ReLU(π_gate)·W_dec + b_dec − x‖²` with a frozen decoder |
//! | auxiliary-K | `[aux_k]` `k_aux`, `coeff` | dead latents' top-`k_aux` codes reconstruct the residual `x − x̂` (Gao et al. 2024) |
//! | decorrelation | `[decorrelation]` `coeff`, `rows` | mean squared cosine between the activation columns of distinct live latents over the first `rows` rows |
//! | probe | `[probe]` `coeff`, `classes` | cross-entropy of a linear probe on the latents against the batch's labels |
//! | temporal | `[temporal]` `coeff` | `‖f_t − f_{t+1}‖²` over consecutive positions of each window (batches of windows ≥ 2) |

use candle_core::{DType, Device, Tensor, Var, D};
use metarep_core::rng::{derive_seed, normal_vec, seeded};
use metarep_kernels::{column_sums, gather_vector, sparse_decode, to_dense, INACTIVE};
use serde::{Deserialize, Serialize};

use crate::config::{Architecture, DecoderNorm};
use crate::error::{Error, Result};
use crate::latents::Latents;
use crate::sae::{ForwardPass, Sae};
use crate::source::Batch;

/// Coefficients and options of every loss term (see the module table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Reconstruction coefficient.
    pub reconstruction: f64,
    /// L1 coefficient.
    pub l1: f64,
    /// Steps over which the L1 and L0 coefficients ramp up linearly from 0.
    pub l1_warmup: usize,
    /// L0 coefficient (JumpReLU).
    pub l0: f64,
    /// Gated auxiliary reconstruction coefficient.
    pub gate_aux: f64,
    /// Auxiliary-K loss for dead latents.
    pub aux_k: Option<AuxK>,
    /// Decorrelation penalty on latent activations.
    pub decorrelation: Option<Decorrelation>,
    /// Probe-guided loss.
    pub probe: Option<ProbeLoss>,
    /// Temporal smoothness.
    pub temporal: Option<Temporal>,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            reconstruction: 1.0,
            l1: 0.0,
            l1_warmup: 0,
            l0: 0.0,
            gate_aux: 1.0,
            aux_k: None,
            decorrelation: None,
            probe: None,
            temporal: None,
        }
    }
}

/// Auxiliary-K settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuxK {
    /// Dead latents used per row (Gao et al.: `d_in / 2`).
    pub k_aux: usize,
    /// Coefficient (Gao et al.: 1/32).
    pub coeff: f64,
}

/// Decorrelation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decorrelation {
    /// Coefficient.
    pub coeff: f64,
    /// Rows of the batch it is computed on (cost `rows² · d_sae`).
    pub rows: usize,
}

/// Probe-guided loss settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeLoss {
    /// Coefficient.
    pub coeff: f64,
    /// Number of label classes.
    pub classes: usize,
}

/// Temporal smoothness settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Temporal {
    /// Coefficient.
    pub coeff: f64,
}

impl LossConfig {
    /// The factor on the L1 and L0 coefficients at `step`: rising linearly from `1/l1_warmup`
    /// to 1 over the warm-up, then 1.
    pub fn sparsity_ramp(&self, step: usize) -> f64 {
        if self.l1_warmup == 0 {
            1.0
        } else {
            ((step + 1) as f64 / self.l1_warmup as f64).min(1.0)
        }
    }

    /// Errors naming a term that does not fit the architecture.
    pub fn validate(&self, arch: &Architecture) -> Result<()> {
        if self.l0 > 0.0 && !matches!(arch, Architecture::JumpRelu { .. }) {
            return Err(Error::Config(format!(
                "loss.l0 needs a jumprelu SAE (an L0 count has no gradient for {})",
                arch.name()
            )));
        }
        if self.aux_k.is_some()
            && !matches!(
                arch,
                Architecture::TopK { .. } | Architecture::BatchTopK { .. }
            )
        {
            return Err(Error::Config(format!(
                "loss.aux_k needs a topk or batchtopk SAE, not {}",
                arch.name()
            )));
        }
        if matches!(self.probe, Some(p) if p.classes < 2) {
            return Err(Error::Config("loss.probe.classes must be ≥ 2".into()));
        }
        if matches!(self.decorrelation, Some(d) if d.rows < 2) {
            return Err(Error::Config("loss.decorrelation.rows must be ≥ 2".into()));
        }
        for (name, v) in [
            ("reconstruction", self.reconstruction),
            ("l1", self.l1),
            ("l0", self.l0),
            ("gate_aux", self.gate_aux),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!(
                    "loss.{name} must be finite and ≥ 0, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// Whether the architecture's sparsity terms (L1 of a gated gate, L0) must be computed.
    pub fn wants_sparsity(&self) -> bool {
        self.l1 > 0.0 || self.l0 > 0.0 || self.gate_aux > 0.0
    }
}

/// The linear probe of the probe-guided loss: `logits = f · w + b`.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `[d_sae, classes]`.
    pub w: Var,
    /// `[classes]`.
    pub b: Var,
}

impl Probe {
    /// Small random weights (`N(0, 0.01²)`), zero bias.
    pub fn new(d_sae: usize, classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = seeded(derive_seed(seed, "probe/init"));
        let w = normal_vec(&mut rng, d_sae * classes, 0.0, 0.01)?;
        Ok(Self {
            w: Var::from_tensor(
                &Tensor::from_vec(w, (d_sae, classes), device)?.to_dtype(DType::F32)?,
            )?,
            b: Var::from_tensor(&Tensor::zeros(classes, DType::F32, device)?)?,
        })
    }

    /// Its parameters, named `probe.w`, `probe.b`.
    pub fn params(&self) -> Vec<(String, Var)> {
        vec![
            ("probe.w".to_string(), self.w.clone()),
            ("probe.b".to_string(), self.b.clone()),
        ]
    }

    /// Logits `[batch, classes]` of latent codes.
    pub fn logits(&self, latents: &Latents) -> Result<Tensor> {
        let out = match latents {
            Latents::Dense(f) => f.matmul(self.w.as_tensor())?,
            Latents::Sparse { indices, values } => {
                sparse_decode(indices, values, self.w.as_tensor())?
            }
        };
        Ok(out.broadcast_add(self.b.as_tensor())?)
    }

    /// Fraction of rows whose arg-max logit is the label.
    pub fn accuracy(&self, latents: &Latents, labels: &Tensor) -> Result<f64> {
        let pred = self.logits(&latents.detach())?.argmax(D::Minus1)?;
        let hit = pred
            .eq(&labels.to_dtype(DType::U32)?)?
            .to_dtype(DType::F64)?;
        Ok(hit.mean_all()?.to_scalar::<f64>()?)
    }
}

/// The total loss and its named parts (unweighted values, for logging).
#[derive(Debug, Clone)]
pub struct LossValue {
    /// The weighted sum (a scalar tensor on the graph).
    pub total: Tensor,
    /// `(name, value)` of each active term before weighting.
    pub parts: Vec<(String, f64)>,
}

/// Assembles the loss of one forward pass (`step` drives the sparsity warm-up).
pub fn total_loss(
    sae: &Sae,
    pass: &ForwardPass,
    batch: &Batch,
    cfg: &LossConfig,
    probe: Option<&Probe>,
    step: usize,
) -> Result<LossValue> {
    let mut parts = Vec::new();
    let mut total = Tensor::zeros((), pass.x.dtype(), pass.x.device())?;
    let mut add = |name: &str, coeff: f64, term: &Tensor| -> Result<()> {
        let v = term.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        parts.push((name.to_string(), v));
        total = (&total + (term * coeff)?)?;
        Ok(())
    };
    let recon = (&pass.recon - &pass.x)?.sqr()?.sum(D::Minus1)?.mean_all()?;
    add("reconstruction", cfg.reconstruction, &recon)?;
    let ramp = cfg.sparsity_ramp(step);
    if cfg.l1 > 0.0 {
        let l1 = match &pass.gate_l1 {
            Some(g) => g.clone(),
            None => l1_of(sae, &pass.latents)?,
        };
        add("l1", cfg.l1 * ramp, &l1)?;
    }
    if let (true, Some(l0)) = (cfg.l0 > 0.0, &pass.l0) {
        add("l0", cfg.l0 * ramp, l0)?;
    }
    if let (true, Some(g)) = (cfg.gate_aux > 0.0, &pass.gate_aux) {
        add("gate_aux", cfg.gate_aux, g)?;
    }
    if let (Some(a), Some(aux)) = (cfg.aux_k, &pass.aux_k) {
        add("aux_k", a.coeff, aux)?;
    }
    if let Some(d) = cfg.decorrelation {
        add(
            "decorrelation",
            d.coeff,
            &decorrelation(&pass.latents, d.rows, sae.config.d_sae)?,
        )?;
    }
    if let Some(p) = cfg.probe {
        let probe = probe.ok_or_else(|| Error::Invalid("probe loss without a probe".into()))?;
        let labels = batch
            .labels
            .as_ref()
            .ok_or_else(|| Error::Invalid("loss.probe needs labels with the activations".into()))?;
        add(
            "probe",
            p.coeff,
            &cross_entropy(&probe.logits(&pass.latents)?, labels)?,
        )?;
    }
    if let Some(t) = cfg.temporal {
        add("temporal", t.coeff, &temporal(&pass.latents, batch.window)?)?;
    }
    Ok(LossValue { total, parts })
}

/// `Σ_i f_i` (× `‖d_i‖` when decoder norms are folded), mean over rows. Codes are ≥ 0 for
/// every architecture, so this is their L1 norm.
pub fn l1_of(sae: &Sae, latents: &Latents) -> Result<Tensor> {
    let rows = latents.batch()?.max(1) as f64;
    let folded = sae.config.decoder_norm == DecoderNorm::Folded;
    let sum = match latents {
        Latents::Dense(f) if folded => column_sums(f)?.mul(&sae.decoder_norms()?)?.sum_all()?,
        Latents::Dense(f) => column_sums(f)?.sum_all()?,
        Latents::Sparse { indices, values } if folded => {
            (values * gather_vector(indices, &sae.decoder_norms()?)?)?.sum_all()?
        }
        Latents::Sparse { values, .. } => values.sum_all()?,
    };
    Ok((sum / rows)?)
}

/// The codes of the first `rows` rows as a dense `[rows, d_sae]` tensor on the graph.
fn dense_rows(latents: &Latents, rows: usize, d_sae: usize) -> Result<Tensor> {
    Ok(match latents.rows(0, rows)? {
        Latents::Dense(f) => f,
        Latents::Sparse { indices, values } => to_dense(&indices, &values, d_sae)?,
    })
}

/// Mean squared cosine similarity between the activation columns (over the first `rows`
/// rows) of distinct live latents: `(‖ẐẐᵀ‖²_F − Σ_i ‖ẑ_i‖⁴) / (L(L−1))` with `Ẑ` the
/// column-normalised codes and `L` the live columns — computed from the `rows × rows` Gram
/// matrix, so its cost is `rows² · d_sae`, not `d_sae²`.
pub fn decorrelation(latents: &Latents, rows: usize, d_sae: usize) -> Result<Tensor> {
    let rows = rows.min(latents.batch()?);
    let z = dense_rows(latents, rows, d_sae)?;
    let col_sq = z.sqr()?.sum(0)?;
    let live = col_sq
        .detach()
        .gt(0.0)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    let zn = z.broadcast_div(&(col_sq + 1e-12)?.sqrt()?)?;
    let gram = zn.matmul(&zn.t()?)?;
    let diag = zn.sqr()?.sum(0)?.sqr()?.sum_all()?;
    let pairs = (live * (live - 1.0)).max(1.0);
    Ok(((gram.sqr()?.sum_all()? - diag)? / pairs)?)
}

/// Mean cross-entropy of `logits` `[batch, classes]` against integer `labels` `[batch]`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    if labels.dims() != [b] {
        return Err(Error::shape(
            "probe labels",
            format!("[{b}]"),
            format!("{:?}", labels.dims()),
        ));
    }
    let labels = labels.to_dtype(DType::U32)?;
    let max_label = labels.max(0)?.to_scalar::<u32>()?;
    if max_label as usize >= c {
        return Err(Error::Invalid(format!(
            "label {max_label} out of range for {c} probe classes"
        )));
    }
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let picked = shifted.gather(&labels.unsqueeze(1)?, 1)?;
    Ok((lse - picked)?.mean_all()?)
}

/// `‖f_t − f_{t+1}‖²` averaged over consecutive rows within windows of `window` rows.
pub fn temporal(latents: &Latents, window: usize) -> Result<Tensor> {
    if window < 2 {
        return Err(Error::Invalid(
            "loss.temporal needs batches of consecutive positions (window ≥ 2)".into(),
        ));
    }
    let b = latents.batch()?;
    let a: Vec<u32> = (0..b.saturating_sub(1) as u32)
        .filter(|&r| !(r as usize + 1).is_multiple_of(window))
        .collect();
    if a.is_empty() {
        return Err(Error::Invalid(
            "loss.temporal: no consecutive pair in the batch".into(),
        ));
    }
    let device = match latents {
        Latents::Dense(f) => f.device().clone(),
        Latents::Sparse { values, .. } => values.device().clone(),
    };
    let pairs = a.len() as f64;
    let next: Vec<u32> = a.iter().map(|r| r + 1).collect();
    let (ai, bi) = (
        Tensor::from_vec(a.clone(), a.len(), &device)?,
        Tensor::from_vec(next.clone(), a.len(), &device)?,
    );
    Ok(match latents {
        Latents::Dense(f) => {
            ((f.index_select(&ai, 0)? - f.index_select(&bi, 0)?)?
                .sqr()?
                .sum_all()?
                / pairs)?
        }
        Latents::Sparse { indices, values } => {
            // ‖u − v‖² = ‖u‖² + ‖v‖² − 2⟨u, v⟩, ⟨u, v⟩ from matching latent indices.
            let k = indices.dim(1)?;
            let idx = indices.to_vec2::<u32>()?;
            let mut m = vec![0f32; a.len() * k * k];
            for (p, (&r, &s)) in a.iter().zip(&next).enumerate() {
                for (j, &i) in idx[r as usize].iter().enumerate() {
                    for (jj, &ii) in idx[s as usize].iter().enumerate() {
                        if i != INACTIVE && i == ii {
                            m[(p * k + j) * k + jj] = 1.0;
                        }
                    }
                }
            }
            let m = Tensor::from_vec(m, (a.len(), k, k), &device)?.to_dtype(values.dtype())?;
            let (u, v) = (values.index_select(&ai, 0)?, values.index_select(&bi, 0)?);
            let dot = u
                .unsqueeze(2)?
                .broadcast_mul(&m)?
                .sum(1)?
                .mul(&v)?
                .sum_all()?;
            let norms = (u.sqr()?.sum_all()? + v.sqr()?.sum_all()?)?;
            ((norms - (dot * 2.0)?)? / pairs)?
        }
    })
}

//! Evaluation metrics of an SAE on a set of activations: MSE, explained variance, L0, L1, dead
//! and dense latent fractions, and the histogram of log10 feature densities.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::latents::Latents;
use crate::sae::Sae;
use crate::source::ActivationSource;

/// Settings of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Rows per batch.
    pub batch: usize,
    /// Stop after this many rows (`None`: one full epoch).
    pub max_rows: Option<usize>,
    /// A latent firing on more than this fraction of rows counts as dense.
    pub dense_threshold: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            batch: 1024,
            max_rows: None,
            dense_threshold: 0.1,
        }
    }
}

impl EvalConfig {
    /// Errors naming the first invalid field.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Config("evaluation batch must be ≥ 1, got 0".into()));
        }
        if self.max_rows == Some(0) {
            return Err(Error::Config(
                "max_rows must be ≥ 1 (leave it unset to evaluate one full epoch), got 0".into(),
            ));
        }
        Ok(())
    }
}

/// Histogram of `log10(firing frequency)` over the latents that fired at least once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DensityHistogram {
    /// Bin edges in log10 units (`counts[i]` covers `[edges[i], edges[i + 1])`; the last bin
    /// includes 0 = always on).
    pub edges: Vec<f64>,
    /// Latents per bin.
    pub counts: Vec<u64>,
    /// Latents that never fired (density 0, log10 = −∞).
    pub never: u64,
}

impl DensityHistogram {
    /// Bins of width 0.5 from `lo` (≤ −0.5) to 0; lower densities fall in the first bin.
    pub fn from_densities(densities: &[f64], lo: f64) -> Self {
        let bins = ((-lo) / 0.5).ceil().max(1.0) as usize;
        let edges: Vec<f64> = (0..=bins)
            .map(|i| -(bins as f64) * 0.5 + i as f64 * 0.5)
            .collect();
        let mut counts = vec![0u64; bins];
        let mut never = 0;
        for &d in densities {
            if d <= 0.0 {
                never += 1;
                continue;
            }
            let b = ((d.log10() - edges[0]) / 0.5)
                .floor()
                .clamp(0.0, (bins - 1) as f64) as usize;
            counts[b] += 1;
        }
        Self {
            edges,
            counts,
            never,
        }
    }
}

/// Metrics of an SAE on a set of activations (raw input scale).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Rows evaluated.
    pub rows: usize,
    /// Mean squared error per element.
    pub mse: f64,
    /// `1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`.
    pub explained_variance: f64,
    /// Mean active latents per row.
    pub l0: f64,
    /// Mean summed latent activation per row.
    pub l1: f64,
    /// Fraction of latents that never fired.
    pub dead_fraction: f64,
    /// Fraction of latents firing on more than `dense_threshold` of rows.
    pub dense_fraction: f64,
    /// Histogram of log10 densities.
    pub density: DensityHistogram,
}

/// Sums for explained variance over batches: squared error, rows, per-column sums, Σ‖x‖².
#[derive(Debug, Clone, Default)]
pub struct VarianceSums {
    sse: f64,
    rows: usize,
    col: Vec<f64>,
    sq: f64,
}

impl VarianceSums {
    /// Adds a batch of inputs `x` and reconstructions `recon` `[rows, d]`.
    pub fn add(&mut self, x: &Tensor, recon: &Tensor) -> Result<()> {
        let x = x.detach().to_dtype(DType::F64)?;
        let r = recon.detach().to_dtype(DType::F64)?;
        self.sse += (&x - &r)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        self.sq += x.sqr()?.sum_all()?.to_scalar::<f64>()?;
        let col = x.sum(0)?.to_vec1::<f64>()?;
        if self.col.is_empty() {
            self.col = vec![0.0; col.len()];
        }
        self.col.iter_mut().zip(col).for_each(|(a, b)| *a += b);
        self.rows += x.dim(0)?;
        Ok(())
    }

    /// Mean squared error per element.
    pub fn mse(&self) -> f64 {
        self.sse / (self.rows * self.col.len()).max(1) as f64
    }

    /// `1 − SSE / SST` (NaN when the inputs have no variance).
    pub fn explained_variance(&self) -> f64 {
        let n = self.rows.max(1) as f64;
        let mean_sq: f64 = self.col.iter().map(|c| c * c).sum::<f64>() / n;
        let sst = self.sq - mean_sq;
        if sst > 0.0 {
            1.0 - self.sse / sst
        } else {
            f64::NAN
        }
    }
}

/// Evaluates `sae` on one epoch of `source` (or its first `max_rows` rows).
pub fn evaluate(
    sae: &Sae,
    source: &mut dyn ActivationSource,
    cfg: &EvalConfig,
) -> Result<EvalReport> {
    cfg.validate()?;
    if source.d_in() != sae.config.d_in {
        return Err(Error::shape(
            "evaluation activations",
            format!("d_in = {}", sae.config.d_in),
            format!("d_in = {}", source.d_in()),
        ));
    }
    let n = sae.config.d_sae;
    let mut sums = VarianceSums::default();
    let (mut l0, mut l1) = (0.0, 0.0);
    let mut fired = vec![0u64; n];
    source.start_epoch(0)?;
    let mut left = cfg.max_rows.unwrap_or(usize::MAX);
    while left > 0 {
        let Some(batch) = source.next_batch(cfg.batch)? else {
            break;
        };
        let rows = batch.x.dim(0)?.min(left);
        left -= rows;
        let x = batch.x.narrow(0, 0, rows)?.to_device(sae.w_dec.device())?;
        let (xn, factor) = sae.normalize_input(&x)?;
        let latents = sae.encode_normalized(&xn)?;
        let recon = sae.decode(&latents, factor.as_ref())?;
        sums.add(&x, &recon)?;
        let (b0, b1) = latents.l0_l1()?;
        l0 += b0 * rows as f64;
        l1 += b1 * rows as f64;
        accumulate(&mut fired, &latents, n)?;
    }
    if sums.rows == 0 {
        return Err(Error::Invalid("evaluation source yielded no rows".into()));
    }
    let rows = sums.rows as f64;
    let densities: Vec<f64> = fired.iter().map(|&c| c as f64 / rows).collect();
    Ok(EvalReport {
        rows: sums.rows,
        mse: sums.mse(),
        explained_variance: sums.explained_variance(),
        l0: l0 / rows,
        l1: l1 / rows,
        dead_fraction: densities.iter().filter(|&&d| d == 0.0).count() as f64 / n as f64,
        dense_fraction: densities
            .iter()
            .filter(|&&d| d > cfg.dense_threshold)
            .count() as f64
            / n as f64,
        density: DensityHistogram::from_densities(&densities, -8.0),
    })
}

fn accumulate(fired: &mut [u64], latents: &Latents, n: usize) -> Result<()> {
    for (f, c) in fired.iter_mut().zip(latents.fire_counts(n)?) {
        *f += c;
    }
    Ok(())
}

//! Latent codes of a batch: dense `[batch, d_sae]`, or sparse as the indices and values of the
//! active latents of each row (`[batch, slots]`, padding slots hold
//! [`metarep_kernels::INACTIVE`]).

use candle_core::{DType, Tensor};
use metarep_kernels::INACTIVE;

use crate::error::Result;

/// A batch of latent activations.
#[derive(Debug, Clone)]
pub enum Latents {
    /// `[batch, d_sae]`.
    Dense(Tensor),
    /// Active latents only: `indices` `[batch, slots]` u32 and `values` `[batch, slots]`.
    Sparse {
        /// Latent of each slot (`INACTIVE` for padding).
        indices: Tensor,
        /// Activation of each slot (0 for padding).
        values: Tensor,
    },
}

impl Latents {
    /// Rows in the batch.
    pub fn batch(&self) -> Result<usize> {
        Ok(match self {
            Latents::Dense(t) => t.dim(0)?,
            Latents::Sparse { values, .. } => values.dim(0)?,
        })
    }

    /// The same codes cut off from the autograd graph.
    pub fn detach(&self) -> Self {
        match self {
            Latents::Dense(t) => Latents::Dense(t.detach()),
            Latents::Sparse { indices, values } => Latents::Sparse {
                indices: indices.clone(),
                values: values.detach(),
            },
        }
    }

    /// Rows `start..start + len`.
    pub fn rows(&self, start: usize, len: usize) -> Result<Self> {
        Ok(match self {
            Latents::Dense(t) => Latents::Dense(t.narrow(0, start, len)?),
            Latents::Sparse { indices, values } => Latents::Sparse {
                indices: indices.narrow(0, start, len)?,
                values: values.narrow(0, start, len)?,
            },
        })
    }

    /// Dense `[batch, d_sae]` copy in the codes' dtype, off the graph (for inspection and
    /// metrics).
    pub fn to_dense(&self, d_sae: usize) -> Result<Tensor> {
        match self {
            Latents::Dense(t) => Ok(t.detach()),
            Latents::Sparse { indices, values } => {
                let (b, k) = indices.dims2()?;
                let idx = indices.flatten_all()?.to_vec1::<u32>()?;
                let val = values
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                let mut out = vec![0f64; b * d_sae];
                for (p, (&i, &v)) in idx.iter().zip(&val).enumerate() {
                    if i != INACTIVE {
                        out[(p / k.max(1)) * d_sae + i as usize] += v;
                    }
                }
                Ok(Tensor::from_vec(out, (b, d_sae), values.device())?.to_dtype(values.dtype())?)
            }
        }
    }

    /// For every latent, the number of rows where it is active (> 0).
    pub fn fire_counts(&self, d_sae: usize) -> Result<Vec<u64>> {
        let mut counts = vec![0u64; d_sae];
        match self {
            Latents::Dense(t) => counts = metarep_kernels::count_positive(&t.detach())?,
            Latents::Sparse { indices, values } => {
                let idx = indices.flatten_all()?.to_vec1::<u32>()?;
                let val = values
                    .detach()
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                for (&i, &v) in idx.iter().zip(&val) {
                    if i != INACTIVE && v > 0.0 {
                        counts[i as usize] += 1;
                    }
                }
            }
        }
        Ok(counts)
    }

    /// Mean over rows of the number of active latents (L0) and of their summed absolute
    /// activation (L1).
    pub fn l0_l1(&self) -> Result<(f64, f64)> {
        let (t, b) = match self {
            Latents::Dense(t) => (t.detach(), t.dim(0)?),
            Latents::Sparse { values, .. } => (values.detach(), values.dim(0)?),
        };
        let t = t.to_dtype(DType::F64)?;
        let l0 = t
            .gt(0.0)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        let l1 = t.abs()?.sum_all()?.to_scalar::<f64>()?;
        let b = b.max(1) as f64;
        Ok((l0 / b, l1 / b))
    }
}

//! Optimisation pieces every metarep trainer shares: AdamW with checkpointable moments, a
//! linear-warmup + cosine-decay schedule and global-norm gradient clipping.
//!
//! Parameters are candle [`Var`]s, named so that a checkpoint can store them and the optimiser's
//! moments side by side (`{name}`, `adam.m.{name}`, `adam.v.{name}`).
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use metarep_core::optim::{clip_grad_norm, gradients, AdamW, WarmupCosine};
//!
//! let w = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu)?)?;
//! let params = vec![("w".to_string(), w.clone())];
//! let mut opt = AdamW::new(&params, 0.0)?;
//! let schedule = WarmupCosine { lr: 0.1, warmup: 2, steps: 10 };
//! for step in 0..10 {
//!     let loss = w.as_tensor().sqr()?.sum_all()?;
//!     let grads = gradients(&loss, &params)?;
//!     let (grads, _norm) = clip_grad_norm(&grads, 1.0)?;
//!     opt.step(&params, &grads, schedule.lr_at(step))?;
//! }
//! assert!(w.as_tensor().sqr()?.sum_all()?.to_scalar::<f32>()? < 5.0);
//! # Ok::<(), metarep_core::Error>(())
//! ```

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Linear warmup to `lr` over `warmup` steps, then cosine decay to 0 at `steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Total steps (the end of the decay).
    pub steps: usize,
}

impl WarmupCosine {
    /// Learning rate at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        0.5 * self.lr * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The gradient of `loss` for each of `params`, in order; an error names a parameter without one.
pub fn gradients(loss: &Tensor, params: &[(String, Var)]) -> Result<Vec<Tensor>> {
    let store = loss.backward()?;
    params
        .iter()
        .map(|(name, p)| {
            store
                .get(p.as_tensor())
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("no gradient for parameter {name}")))
        })
        .collect()
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (0 = off); returns the
/// (possibly scaled) gradients and the norm before clipping.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<(Vec<Tensor>, f64)> {
    let mut sq = 0.0;
    for g in grads {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / norm;
        let scaled = grads
            .iter()
            .map(|g| g * scale)
            .collect::<candle_core::Result<Vec<_>>>()?;
        return Ok((scaled, norm));
    }
    Ok((grads.to_vec(), norm))
}

/// AdamW (decoupled weight decay) with its moments kept as tensors so they can be checkpointed.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// `β₁`.
    pub beta1: f64,
    /// `β₂`.
    pub beta2: f64,
    /// `ε`.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// First moments, one per parameter.
    pub m: Vec<Tensor>,
    /// Second moments, one per parameter.
    pub v: Vec<Tensor>,
    /// Steps taken.
    pub t: usize,
}

impl AdamW {
    /// Zero moments for `params` (β = (0.9, 0.999), ε = 1e-8).
    pub fn new(params: &[(String, Var)], weight_decay: f64) -> Result<Self> {
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        Ok(Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            m: params
                .iter()
                .map(|(_, p)| zeros(p))
                .collect::<candle_core::Result<_>>()?,
            v: params
                .iter()
                .map(|(_, p)| zeros(p))
                .collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }

    /// One update with gradients `grads` (same order as `params`) and learning rate `lr`.
    pub fn step(&mut self, params: &[(String, Var)], grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != params.len() || self.m.len() != params.len() {
            return Err(Error::Invalid(format!(
                "AdamW: {} parameters, {} gradients, {} moments",
                params.len(),
                grads.len(),
                self.m.len()
            )));
        }
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let (c1, c2) = (1.0 - b1.powi(self.t as i32), 1.0 - b2.powi(self.t as i32));
        for (i, ((_, p), g)) in params.iter().zip(grads).enumerate() {
            // Detached: the moments must not keep each step's autograd graph alive.
            let g = g.detach();
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?.detach();
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?.detach();
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + self.eps)?)?;
            let decayed = (p.as_tensor().detach() * (1.0 - lr * self.weight_decay))?;
            p.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Parameters and moments as named tensors for a checkpoint (`{name}`, `adam.m.{name}`,
    /// `adam.v.{name}`); the step count goes in the checkpoint's JSON state.
    pub fn checkpoint_tensors(&self, params: &[(String, Var)]) -> Vec<(String, Tensor)> {
        let mut tensors = Vec::with_capacity(3 * params.len());
        for (i, (name, p)) in params.iter().enumerate() {
            tensors.push((name.clone(), p.as_tensor().clone()));
            tensors.push((format!("adam.m.{name}"), self.m[i].clone()));
            tensors.push((format!("adam.v.{name}"), self.v[i].clone()));
        }
        tensors
    }

    /// Restores parameters and moments written by [`AdamW::checkpoint_tensors`]; `t` is the
    /// saved step count. A missing or mis-shaped tensor is an error naming it.
    pub fn restore(
        &mut self,
        params: &[(String, Var)],
        tensors: &HashMap<String, Tensor>,
        t: usize,
    ) -> Result<()> {
        let get = |name: &str, like: &Tensor| -> Result<Tensor> {
            let found = tensors
                .get(name)
                .ok_or_else(|| Error::Invalid(format!("checkpoint has no tensor {name}")))?;
            if found.dims() != like.dims() {
                return Err(Error::Invalid(format!(
                    "checkpoint tensor {name} has shape {:?}, expected {:?}",
                    found.dims(),
                    like.dims()
                )));
            }
            Ok(found.to_dtype(like.dtype())?.to_device(like.device())?)
        };
        for (i, (name, p)) in params.iter().enumerate() {
            // A copy: `Var::set` refuses a tensor that shares the variable's own storage.
            p.set(&get(name, p.as_tensor())?.copy()?)?;
            self.m[i] = get(&format!("adam.m.{name}"), p.as_tensor())?;
            self.v[i] = get(&format!("adam.v.{name}"), p.as_tensor())?;
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_linearly_then_decays_to_zero() {
        let s = WarmupCosine {
            lr: 1.0,
            warmup: 4,
            steps: 14,
        };
        assert_eq!(s.lr_at(0), 0.25);
        assert_eq!(s.lr_at(3), 1.0);
        assert!((s.lr_at(9) - 0.5).abs() < 1e-12);
        assert!(s.lr_at(14).abs() < 1e-12);
        assert!(s.lr_at(100).abs() < 1e-12);
    }

    #[test]
    fn first_adam_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        // After one step the bias-corrected update is g / (|g| + ε) = sign(g).
        let w = Var::from_tensor(&Tensor::new(&[1.0f64, -3.0], &Device::Cpu).unwrap()).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let mut opt = AdamW::new(&params, 0.0).unwrap();
        let g = Tensor::new(&[0.5f64, -2.0], &Device::Cpu).unwrap();
        opt.step(&params, &[g], 0.1).unwrap();
        let v = w.as_tensor().to_vec1::<f64>().unwrap();
        assert!(
            (v[0] - 0.9).abs() < 1e-6 && (v[1] + 2.9).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn clipping_rescales_to_the_max_norm_and_reports_the_original() {
        let g = vec![Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap()];
        let (c, norm) = clip_grad_norm(&g, 1.0).unwrap();
        assert_eq!(norm, 5.0);
        let v = c[0].to_vec1::<f64>().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-12 && (v[1] - 0.8).abs() < 1e-12);
        let (same, _) = clip_grad_norm(&g, 0.0).unwrap();
        assert_eq!(same[0].to_vec1::<f64>().unwrap(), vec![3.0, 4.0]);
    }

    #[test]
    fn restore_names_a_missing_or_misshaped_tensor() {
        let w = Var::from_tensor(&Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let params = vec![("w".to_string(), w)];
        let mut opt = AdamW::new(&params, 0.0).unwrap();
        let mut saved: HashMap<_, _> = opt.checkpoint_tensors(&params).into_iter().collect();
        saved.remove("adam.v.w");
        let err = opt.restore(&params, &saved, 1).unwrap_err().to_string();
        assert!(err.contains("adam.v.w"), "{err}");
        saved.insert(
            "adam.v.w".into(),
            Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = opt.restore(&params, &saved, 1).unwrap_err().to_string();
        assert!(err.contains("adam.v.w") && err.contains("[4]"), "{err}");
    }
}

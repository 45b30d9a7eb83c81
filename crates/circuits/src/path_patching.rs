//! Path patching (Wang et al. 2022, "Interpretability in the wild"): how much of the clean
//! logit difference one head's clean output restores through one path only.
//!
//! The corrupted prompts run with the sender head's `hook_z` taken from the clean run, while
//! every attention head and MLP layer between the sender and the receiver is frozen at its
//! corrupted value, so the sender's change reaches the receiver directly and by no other route:
//!
//! - [`Receiver::Logits`]: the receiver is the final residual stream (the final norm is
//!   recomputed, as in a plain pass); the score is the sender's direct effect.
//! - [`Receiver::Queries`]: the receiver is the query input of some heads of a later layer. A
//!   first run records their `hook_q` under the frozen patch; a second, plain corrupted run
//!   takes only those queries from it.
//!
//! Scores are normalised as in [`crate::patching`]: `(patched − corrupted) / (clean −
//! corrupted)` of the mean logit difference at the last position. Every run starts at the first
//! block it patches, from the corrupted run's residual stream there.

use std::collections::HashSet;

use candle_core::Tensor;
use metarep_model::hooks::CacheHooks;
use metarep_model::interventions::{Intervention, Interventions};
use metarep_model::{ActivationCache, HookPoint, HookedTransformer, RunTo};

use crate::error::{Error, Result};
use crate::patching::{cached_logit_diff, logit_diff_from, PatchSet};

/// Where a sender head's effect is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receiver {
    /// The logits, through the residual stream alone.
    Logits,
    /// The queries of `heads` of `layer` (which must come after the sender's).
    Queries {
        /// The receivers' layer.
        layer: usize,
        /// The receiving heads.
        heads: Vec<usize>,
    },
}

/// A patch set with the activations path patching reuses: each layer's clean `hook_z`, and
/// each layer's corrupted `hook_z` and `hook_mlp_out` (the frozen values).
pub struct PathPatcher<'a> {
    model: &'a HookedTransformer,
    set: &'a PatchSet,
    clean_z: Vec<Tensor>,
    corrupted_z: Vec<Tensor>,
    /// Each layer's corrupted `hook_resid_pre`: runs start at the first patched block.
    corrupted_resid: Vec<Tensor>,
    corrupted_mlp: Vec<Tensor>,
    clean: f64,
    corrupted: f64,
}

impl<'a> PathPatcher<'a> {
    /// Runs the clean and corrupted prompts of `set` once each and keeps what the patches use.
    pub fn new(model: &'a HookedTransformer, set: &'a PatchSet) -> Result<Self> {
        set.dims()?;
        let cfg = model.config();
        if !cfg.causal {
            return Err(Error::Invalid(
                "path patching reads the last position of a causal model".into(),
            ));
        }
        let z: Vec<HookPoint> = (0..cfg.n_layers).map(HookPoint::Z).collect();
        let (clean, clean_cache) = cached_logit_diff(model, &set.clean, z.clone(), set)?;
        let mut frozen = z.clone();
        frozen.extend((0..cfg.n_layers).map(HookPoint::ResidPre));
        if cfg.has_mlp() {
            frozen.extend((0..cfg.n_layers).map(HookPoint::MlpOut));
        }
        let (corrupted, corrupted_cache) = cached_logit_diff(model, &set.corrupted, frozen, set)?;
        let take =
            |cache: &ActivationCache, p: HookPoint| -> Result<Tensor> { Ok(cache.get(p)?.clone()) };
        let clean_z = z
            .iter()
            .map(|&p| take(&clean_cache, p))
            .collect::<Result<_>>()?;
        let corrupted_z = z
            .iter()
            .map(|&p| take(&corrupted_cache, p))
            .collect::<Result<_>>()?;
        let corrupted_resid = (0..cfg.n_layers)
            .map(|l| take(&corrupted_cache, HookPoint::ResidPre(l)))
            .collect::<Result<_>>()?;
        let corrupted_mlp = if cfg.has_mlp() {
            (0..cfg.n_layers)
                .map(|l| take(&corrupted_cache, HookPoint::MlpOut(l)))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        if (clean - corrupted).abs() < 1e-9 {
            return Err(Error::Invalid(
                "clean and corrupted prompts give the same logit difference: nothing to patch"
                    .into(),
            ));
        }
        Ok(PathPatcher {
            model,
            set,
            clean_z,
            corrupted_z,
            corrupted_resid,
            corrupted_mlp,
            clean,
            corrupted,
        })
    }

    /// Mean logit difference on the clean and on the corrupted prompts.
    pub fn logit_diffs(&self) -> (f64, f64) {
        (self.clean, self.corrupted)
    }

    /// The share of the clean logit difference that head `(layer, head)`'s clean output
    /// restores through `receiver` alone.
    pub fn score(&self, sender: (usize, usize), receiver: &Receiver) -> Result<f64> {
        let cfg = self.model.config();
        let (layer, head) = sender;
        if layer >= cfg.n_layers || head >= cfg.n_heads {
            return Err(Error::Invalid(format!(
                "path patching: sender L{layer}H{head} is not a head of a model with {} layers × {} heads",
                cfg.n_layers, cfg.n_heads
            )));
        }
        let until = match receiver {
            Receiver::Logits => cfg.n_layers,
            Receiver::Queries { layer: r, heads } => {
                if *r <= layer || *r >= cfg.n_layers {
                    return Err(Error::Invalid(format!(
                        "path patching: receiver layer {r} must come after the sender's layer {layer} and be below {}",
                        cfg.n_layers
                    )));
                }
                if heads.is_empty() || heads.iter().any(|&h| h >= cfg.n_heads) {
                    return Err(Error::Invalid(format!(
                        "path patching: receiver heads {heads:?} must be a non-empty list below {}",
                        cfg.n_heads
                    )));
                }
                *r
            }
        };
        let frozen = self.frozen(sender, until);
        let resid = |l: usize| &self.corrupted_resid[l];
        let patched = match receiver {
            Receiver::Logits => logit_diff_from(
                self.model,
                resid(layer),
                layer,
                self.set,
                &mut Interventions::new(frozen),
            )?,
            Receiver::Queries { layer: r, heads } => {
                let q = HookPoint::Q(*r);
                let mut hooks = (
                    Interventions::new(frozen),
                    CacheHooks::new(HashSet::from([q])),
                );
                self.model
                    .run_from(resid(layer), layer, &mut hooks, RunTo::Layer(r + 1))?;
                let source = hooks.1.acts.remove(&q).ok_or_else(|| {
                    Error::Invalid(format!("path patching: the run recorded no {q}"))
                })?;
                let patch = Intervention::patch(q, source).at_channels(heads);
                logit_diff_from(
                    self.model,
                    resid(*r),
                    *r,
                    self.set,
                    &mut Interventions::new(vec![patch]),
                )?
            }
        };
        Ok((patched - self.corrupted) / (self.clean - self.corrupted))
    }

    /// The sender's clean `hook_z` and every head and MLP output from the sender's layer up to
    /// (not including) `until` frozen at its corrupted value.
    fn frozen(&self, (layer, head): (usize, usize), until: usize) -> Vec<Intervention> {
        let mut ivs = vec![
            Intervention::patch(HookPoint::Z(layer), self.clean_z[layer].clone())
                .at_channels(&[head]),
        ];
        for l in layer + 1..until {
            ivs.push(Intervention::patch(
                HookPoint::Z(l),
                self.corrupted_z[l].clone(),
            ));
        }
        for (l, out) in self
            .corrupted_mlp
            .iter()
            .enumerate()
            .take(until)
            .skip(layer)
        {
            ivs.push(Intervention::patch(HookPoint::MlpOut(l), out.clone()));
        }
        ivs
    }
}

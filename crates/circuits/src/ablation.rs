//! Staged ablations: a config names heads and neurons and how to ablate them (zero, mean over
//! a reference set, resample from it); stages run alone or cumulatively, and each reports how
//! the model's predictions change on an evaluation set.
//!
//! Per stage, over the evaluated positions: loss delta (mean next-token cross-entropy),
//! accuracy delta (argmax = target), entropy delta of the output distribution, and — when the
//! evaluation set names an alternative token per position — the mean logit difference
//! `logit[target] − logit[alternative]` and its delta.
//!
//! ```toml
//! cumulative = false
//! [[stages]]
//! name = "top induction head"
//! kind = "zero"            # zero | mean | resample
//! heads = [[1, 3]]         # (layer, head)
//! neurons = []             # (layer, neuron)
//! ```

use candle_core::Tensor;
use metarep_model::interventions::{mean_activation, Intervention, Interventions};
use metarep_model::predictions::{metrics, EvalSet, Metrics};
use metarep_model::{ActivationCache, HookFilter, HookPoint, HookedTransformer, Input, NoHooks};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How ablated components are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AblationKind {
    /// By zero.
    Zero,
    /// By their mean over the reference set (batch and positions).
    Mean,
    /// By their value on the reference set's sequences (same shape as the evaluation set).
    Resample,
}

/// One stage: components and how to ablate them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Label in reports.
    pub name: String,
    /// Ablation kind.
    pub kind: AblationKind,
    /// Attention heads `(layer, head)` (ablated at `hook_z`).
    #[serde(default)]
    pub heads: Vec<(usize, usize)>,
    /// MLP neurons `(layer, neuron)` (ablated at `mlp.hook_post`).
    #[serde(default)]
    pub neurons: Vec<(usize, usize)>,
}

/// A staged ablation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationConfig {
    /// Each stage adds to the ones before it (else each runs alone).
    #[serde(default)]
    pub cumulative: bool,
    /// The stages, in order.
    pub stages: Vec<Stage>,
}

/// One stage's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    /// The stage's name.
    pub name: String,
    /// Components ablated in this run (all earlier stages' too when cumulative).
    pub components: usize,
    /// Metrics with the ablation.
    pub ablated: Metrics,
    /// Ablated minus clean, per metric.
    pub delta: Metrics,
}

/// Clean metrics and one report per stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AblationReport {
    /// Without any ablation.
    pub clean: Metrics,
    /// Per stage.
    pub stages: Vec<StageReport>,
}

impl AblationConfig {
    /// Checks every layer, head and neuron index against the model's shape; an error names the
    /// stage and the index.
    pub fn validate(&self, model: &HookedTransformer) -> Result<()> {
        let cfg = model.config();
        if self.stages.is_empty() {
            return Err(Error::Invalid("ablation config has no stages".into()));
        }
        for s in &self.stages {
            for &(l, h) in &s.heads {
                if l >= cfg.n_layers || h >= cfg.n_heads {
                    return Err(Error::Invalid(format!(
                        "stage `{}`: head ({l}, {h}) out of range (the model has {} layers of {} heads)",
                        s.name, cfg.n_layers, cfg.n_heads
                    )));
                }
            }
            for &(l, n) in &s.neurons {
                if cfg.attn_only || l >= cfg.n_layers || n >= cfg.d_mlp {
                    return Err(Error::Invalid(format!(
                        "stage `{}`: neuron ({l}, {n}) out of range (the model has {} layers of {} MLP neurons)",
                        s.name,
                        cfg.n_layers,
                        if cfg.attn_only { 0 } else { cfg.d_mlp }
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Runs `config` on `eval`; `reference` `[batch', n]` supplies means (mean) or replacement
/// activations (resample: same shape as `eval.tokens`).
pub fn run_ablations(
    model: &HookedTransformer,
    config: &AblationConfig,
    eval: &EvalSet,
    reference: Option<&Tensor>,
) -> Result<AblationReport> {
    config.validate(model)?;
    let clean = metrics(model, eval, &mut NoHooks)?;
    let needs_ref = config.stages.iter().any(|s| s.kind != AblationKind::Zero);
    let reference_cache = match (needs_ref, reference) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::Invalid(
                "mean and resample ablations need a reference set".into(),
            ))
        }
        (true, Some(r)) => {
            if config
                .stages
                .iter()
                .any(|s| s.kind == AblationKind::Resample)
                && r.dims() != eval.tokens.dims()
            {
                return Err(Error::Invalid(format!(
                    "resampling needs reference tokens shaped like the evaluation set ({:?}), got {:?}",
                    eval.tokens.dims(),
                    r.dims()
                )));
            }
            let cfg = model.config();
            let mut names: Vec<String> =
                (0..cfg.n_layers).map(|l| HookPoint::Z(l).name()).collect();
            if !cfg.attn_only {
                names.extend((0..cfg.n_layers).map(|l| HookPoint::MlpPost(l).name()));
            }
            let input = r.narrow(1, 0, r.dim(1)? - 1)?;
            Some(
                model
                    .run_with_cache(Input::new(input), HookFilter::patterns(&names))?
                    .1,
            )
        }
    };
    let mut active: Vec<Intervention> = Vec::new();
    let mut stages = Vec::new();
    for s in &config.stages {
        if !config.cumulative {
            active.clear();
        }
        let rc = reference_cache.as_ref();
        for &(l, h) in &s.heads {
            let z = HookPoint::Z(l);
            active.push(match s.kind {
                AblationKind::Zero => Intervention::zero_heads(l, &[h]),
                AblationKind::Mean => {
                    Intervention::mean_heads(l, &[h], mean_activation(reference_at(rc, z)?, true)?)
                }
                AblationKind::Resample => {
                    Intervention::resample_heads(l, &[h], reference_at(rc, z)?.clone())
                }
            });
        }
        for &(l, n) in &s.neurons {
            let post = HookPoint::MlpPost(l);
            active.push(match s.kind {
                AblationKind::Zero => Intervention::zero_neurons(l, &[n]),
                AblationKind::Mean => Intervention::mean_neurons(
                    l,
                    &[n],
                    mean_activation(reference_at(rc, post)?, true)?,
                ),
                AblationKind::Resample => {
                    Intervention::resample_neurons(l, &[n], reference_at(rc, post)?.clone())
                }
            });
        }
        let mut hooks = Interventions::new(active.clone());
        let ablated = metrics(model, eval, &mut hooks)?;
        stages.push(StageReport {
            name: s.name.clone(),
            components: active.len(),
            ablated,
            delta: Metrics {
                loss: ablated.loss - clean.loss,
                accuracy: ablated.accuracy - clean.accuracy,
                entropy: ablated.entropy - clean.entropy,
                logit_diff: ablated.logit_diff - clean.logit_diff,
            },
        });
    }
    Ok(AblationReport { clean, stages })
}

/// The reference run's activation at `point`.
fn reference_at(cache: Option<&ActivationCache>, point: HookPoint) -> Result<&Tensor> {
    let cache = cache.ok_or_else(|| Error::Invalid("no reference activations".into()))?;
    Ok(cache.get(point)?)
}

/// Metrics with the `heads` and `neurons` all scaled by each of `factors` (0 suppresses, 1 is
/// the clean model, > 1 amplifies): one [`Metrics`] per factor, in order.
pub fn scale_sweep(
    model: &HookedTransformer,
    eval: &EvalSet,
    heads: &[(usize, usize)],
    neurons: &[(usize, usize)],
    factors: &[f64],
) -> Result<Vec<Metrics>> {
    let probe = AblationConfig {
        cumulative: false,
        stages: vec![Stage {
            name: "scale sweep".into(),
            kind: AblationKind::Zero,
            heads: heads.to_vec(),
            neurons: neurons.to_vec(),
        }],
    };
    probe.validate(model)?;
    factors
        .iter()
        .map(|&f| {
            if !f.is_finite() {
                return Err(Error::Invalid(format!("scale factor {f} is not finite")));
            }
            let list = heads
                .iter()
                .map(|&(l, h)| Intervention::scale_heads(l, &[h], f))
                .chain(
                    neurons
                        .iter()
                        .map(|&(l, n)| Intervention::scale_neurons(l, &[n], f)),
                )
                .collect();
            Ok(metrics(model, eval, &mut Interventions::new(list))?)
        })
        .collect()
}

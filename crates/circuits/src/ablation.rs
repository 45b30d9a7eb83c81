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
//! kind = "zero"                # zero | mean | resample
//! components = ["L1H3", "L0N7"] # heads L{layer}H{head}, MLP neurons L{layer}N{neuron}
//! ```

use candle_core::Tensor;
use metarep_model::interventions::{mean_activation, Intervention, Interventions};
use metarep_model::predictions::{metrics, EvalSet, Metrics};
use metarep_model::{
    ActivationCache, Component, HookFilter, HookPoint, HookedTransformer, Input, NoHooks,
};
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
    /// The components ablated: attention heads (at `hook_z`) and MLP neurons (at
    /// `mlp.hook_post`).
    pub components: Vec<Component>,
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
    /// One stage per component, each ablated alone by `kind` (stages named by the component).
    pub fn each_alone(components: &[Component], kind: AblationKind) -> Self {
        AblationConfig {
            cumulative: false,
            stages: components
                .iter()
                .map(|&c| Stage {
                    name: c.to_string(),
                    kind,
                    components: vec![c],
                })
                .collect(),
        }
    }

    /// Checks every component exists in the model and is a head or a neuron; an error names
    /// the stage and the component.
    pub fn validate(&self, model: &HookedTransformer) -> Result<()> {
        if self.stages.is_empty() {
            return Err(Error::Invalid("ablation config has no stages".into()));
        }
        for s in &self.stages {
            check_ablatable(&s.name, &s.components, model)?;
        }
        Ok(())
    }
}

/// Checks `components` are heads or neurons of `model`; errors name `what` and the component.
fn check_ablatable(what: &str, components: &[Component], model: &HookedTransformer) -> Result<()> {
    for c in components {
        if !matches!(c, Component::Head { .. } | Component::Neuron { .. }) {
            return Err(Error::Invalid(format!(
                "stage `{what}`: {c} cannot be ablated here (heads L{{l}}H{{h}} and neurons \
                 L{{l}}N{{n}} can)"
            )));
        }
        c.check(model.config())
            .map_err(|e| Error::Invalid(format!("stage `{what}`: {e}")))?;
    }
    Ok(())
}

impl AblationReport {
    /// Stage indices from the largest loss increase down (ties keep stage order).
    pub fn by_loss_increase(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.stages.len()).collect();
        order.sort_by(|&a, &b| {
            self.stages[b]
                .delta
                .loss
                .total_cmp(&self.stages[a].delta.loss)
        });
        order
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
        for &c in &s.components {
            active.push(ablation(c, s.kind, rc)?);
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

/// The intervention that ablates head or neuron `c` by `kind`.
fn ablation(
    c: Component,
    kind: AblationKind,
    reference: Option<&ActivationCache>,
) -> Result<Intervention> {
    Ok(match (c, kind) {
        (Component::Head { layer, head }, AblationKind::Zero) => {
            Intervention::zero_heads(layer, &[head])
        }
        (Component::Head { layer, head }, AblationKind::Mean) => {
            let z = reference_at(reference, HookPoint::Z(layer))?;
            Intervention::mean_heads(layer, &[head], mean_activation(z, true)?)
        }
        (Component::Head { layer, head }, AblationKind::Resample) => {
            let z = reference_at(reference, HookPoint::Z(layer))?;
            Intervention::resample_heads(layer, &[head], z.clone())
        }
        (Component::Neuron { layer, neuron }, AblationKind::Zero) => {
            Intervention::zero_neurons(layer, &[neuron])
        }
        (Component::Neuron { layer, neuron }, AblationKind::Mean) => {
            let post = reference_at(reference, HookPoint::MlpPost(layer))?;
            Intervention::mean_neurons(layer, &[neuron], mean_activation(post, true)?)
        }
        (Component::Neuron { layer, neuron }, AblationKind::Resample) => {
            let post = reference_at(reference, HookPoint::MlpPost(layer))?;
            Intervention::resample_neurons(layer, &[neuron], post.clone())
        }
        (other, _) => return Err(Error::Invalid(format!("{other} cannot be ablated"))),
    })
}

/// The reference run's activation at `point`.
fn reference_at(cache: Option<&ActivationCache>, point: HookPoint) -> Result<&Tensor> {
    let cache = cache.ok_or_else(|| Error::Invalid("no reference activations".into()))?;
    Ok(cache.get(point)?)
}

/// Metrics with the heads and neurons among `components` all scaled by each of `factors` (0
/// suppresses, 1 is the clean model, > 1 amplifies): one [`Metrics`] per factor, in order.
pub fn scale_sweep(
    model: &HookedTransformer,
    eval: &EvalSet,
    components: &[Component],
    factors: &[f64],
) -> Result<Vec<Metrics>> {
    check_ablatable("scale sweep", components, model)?;
    factors
        .iter()
        .map(|&f| {
            if !f.is_finite() {
                return Err(Error::Invalid(format!("scale factor {f} is not finite")));
            }
            let list = components
                .iter()
                .filter_map(|&c| match c {
                    Component::Head { layer, head } => {
                        Some(Intervention::scale_heads(layer, &[head], f))
                    }
                    Component::Neuron { layer, neuron } => {
                        Some(Intervention::scale_neurons(layer, &[neuron], f))
                    }
                    _ => None,
                })
                .collect();
            Ok(metrics(model, eval, &mut Interventions::new(list))?)
        })
        .collect()
}

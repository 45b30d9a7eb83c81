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

use std::collections::HashMap;

use candle_core::Tensor;
use metarep_model::hooks::CacheHooks;
use metarep_model::interventions::{mean_activation, Intervention, Interventions};
use metarep_model::predictions::{metrics, metrics_from, EvalSet, Metrics};
use metarep_model::{ActivationCache, Component, HookFilter, HookPoint, HookedTransformer, Input};
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
/// activations (resample: same shape as `eval.tokens`). A stage reruns the pass only from the
/// first block it ablates in, starting from the clean pass's residual stream there (kept up to
/// 512 MiB), so each-alone ablations of every head and neuron cost far less than a pass each.
pub fn run_ablations(
    model: &HookedTransformer,
    config: &AblationConfig,
    eval: &EvalSet,
    reference: Option<&Tensor>,
) -> Result<AblationReport> {
    config.validate(model)?;
    let starts = stage_starts(config);
    let (clean, resume) = ResumePoints::clean_pass(model, eval, &starts)?;
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
    let mut means = HashMap::new();
    let mut stages = Vec::new();
    for (s, &start) in config.stages.iter().zip(&starts) {
        if !config.cumulative {
            active.clear();
        }
        let rc = reference_cache.as_ref();
        for &c in &s.components {
            active.push(ablation(c, s.kind, rc, &mut means)?);
        }
        let mut hooks = Interventions::new(active.clone());
        let ablated = match start.and_then(|l| resume.before(l)) {
            Some((l, resid)) => metrics_from(model, eval, resid, l, &mut hooks)?,
            None => metrics(model, eval, &mut hooks)?,
        };
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

/// The first block each stage's run ablates something in (`None`: nothing ablated), counting
/// the earlier stages' components when the stages are cumulative.
fn stage_starts(config: &AblationConfig) -> Vec<Option<usize>> {
    let mut first: Option<usize> = None;
    config
        .stages
        .iter()
        .map(|s| {
            let own = s.components.iter().filter_map(Component::layer).min();
            first = match config.cumulative {
                true => first.into_iter().chain(own).min(),
                false => own,
            };
            first
        })
        .collect()
}

/// The clean pass's residual stream entering chosen blocks, so that a stage whose ablations
/// all sit in block `l` or later reruns only the blocks from the nearest kept one at or before
/// `l` (TransformerLens's `start_at_layer`): in a 30-layer model, an ablation in block 20 costs
/// a third of a pass. At most [`RESUME_BUDGET`] bytes of residual streams are kept (evenly
/// spaced among the stages' first blocks); stages with no kept block before them run whole.
struct ResumePoints {
    /// `(block, residual stream entering it [batch, n − 1, d_model])`, blocks ascending.
    kept: Vec<(usize, Tensor)>,
}

/// The most bytes of residual streams [`run_ablations`] keeps from the clean pass.
const RESUME_BUDGET: usize = 512 << 20;

impl ResumePoints {
    /// The clean metrics of `model` on `eval`, and, from the same pass, the residual streams
    /// entering the blocks of `starts` (block 0 saves nothing and is not kept).
    fn clean_pass(
        model: &HookedTransformer,
        eval: &EvalSet,
        starts: &[Option<usize>],
    ) -> Result<(Metrics, Self)> {
        let (b, n) = eval.tokens.dims2()?;
        let bytes =
            b * n.saturating_sub(1) * model.config().d_model * model.dtype().size_in_bytes();
        let blocks = kept_blocks(starts, bytes, RESUME_BUDGET);
        let mut cache = CacheHooks::new(blocks.iter().map(|&l| HookPoint::ResidPre(l)).collect());
        let clean = metrics(model, eval, &mut cache)?;
        let kept = blocks
            .into_iter()
            .filter_map(|l| Some((l, cache.acts.remove(&HookPoint::ResidPre(l))?)))
            .collect();
        Ok((clean, ResumePoints { kept }))
    }

    /// The latest kept block at or before `layer`, with its residual stream.
    fn before(&self, layer: usize) -> Option<(usize, &Tensor)> {
        self.kept
            .iter()
            .rev()
            .find(|(l, _)| *l <= layer)
            .map(|(l, t)| (*l, t))
    }
}

/// Which of the stages' first blocks (`starts`; block 0 saves nothing) to keep a residual
/// stream of `bytes` for within `budget` bytes: all of them, or every k-th from the lowest.
fn kept_blocks(starts: &[Option<usize>], bytes: usize, budget: usize) -> Vec<usize> {
    let mut blocks: Vec<usize> = starts
        .iter()
        .flatten()
        .copied()
        .filter(|&l| l > 0)
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    let fits = budget / bytes.max(1);
    if fits == 0 {
        return Vec::new();
    }
    let step = blocks.len().div_ceil(fits).max(1);
    blocks.into_iter().step_by(step).collect()
}

/// The intervention that ablates head or neuron `c` by `kind`; `means` keeps each hook's mean
/// over the reference set once computed (one per layer, shared by its heads or neurons).
fn ablation(
    c: Component,
    kind: AblationKind,
    reference: Option<&ActivationCache>,
    means: &mut HashMap<HookPoint, Tensor>,
) -> Result<Intervention> {
    let mut mean_at = |point: HookPoint| -> Result<Tensor> {
        if let Some(m) = means.get(&point) {
            return Ok(m.clone());
        }
        let m = mean_activation(reference_at(reference, point)?, true)?;
        means.insert(point, m.clone());
        Ok(m)
    };
    Ok(match (c, kind) {
        (Component::Head { layer, head }, AblationKind::Zero) => {
            Intervention::zero_heads(layer, &[head])
        }
        (Component::Head { layer, head }, AblationKind::Mean) => {
            Intervention::mean_heads(layer, &[head], mean_at(HookPoint::Z(layer))?)
        }
        (Component::Head { layer, head }, AblationKind::Resample) => {
            let z = reference_at(reference, HookPoint::Z(layer))?;
            Intervention::resample_heads(layer, &[head], z.clone())
        }
        (Component::Neuron { layer, neuron }, AblationKind::Zero) => {
            Intervention::zero_neurons(layer, &[neuron])
        }
        (Component::Neuron { layer, neuron }, AblationKind::Mean) => {
            Intervention::mean_neurons(layer, &[neuron], mean_at(HookPoint::MlpPost(layer))?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_blocks_fit_the_budget_evenly_and_skip_block_zero() {
        let starts = [Some(3), None, Some(0), Some(1), Some(3), Some(7), Some(5)];
        assert_eq!(kept_blocks(&starts, 10, 1000), vec![1, 3, 5, 7]);
        assert_eq!(kept_blocks(&starts, 10, 40), vec![1, 3, 5, 7]);
        assert_eq!(kept_blocks(&starts, 10, 39), vec![1, 5]);
        assert_eq!(kept_blocks(&starts, 10, 10), vec![1]);
        assert_eq!(kept_blocks(&starts, 10, 9), Vec::<usize>::new());
        assert_eq!(kept_blocks(&[None, Some(0)], 10, 1000), Vec::<usize>::new());
    }

    #[test]
    fn cumulative_stages_start_at_the_first_block_of_everything_ablated_so_far() {
        let stage = |cs: &[&str]| Stage {
            name: cs.join(" "),
            kind: AblationKind::Zero,
            components: cs.iter().map(|c| c.parse().unwrap()).collect(),
        };
        let stages = vec![
            stage(&["L2H0"]),
            stage(&["L3N1", "L1H0"]),
            stage(&[]),
            stage(&["L4H1"]),
        ];
        let mut config = AblationConfig {
            cumulative: false,
            stages,
        };
        assert_eq!(stage_starts(&config), vec![Some(2), Some(1), None, Some(4)]);
        config.cumulative = true;
        assert_eq!(
            stage_starts(&config),
            vec![Some(2), Some(1), Some(1), Some(1)]
        );
    }
}

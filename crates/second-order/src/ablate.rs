//! Stage 8, ablations, each reported as the change of the mean correctness score and of the
//! first-answer-token accuracy (argmax at the read-out) over all prompts:
//!
//! - `mean-ablate neurons`: every selected neuron's activation replaced by its mean over real
//!   prompt positions, in the model (all its effects go: direct, second-order and higher);
//! - `mean-ablate random neurons`: the control, as many neurons of the same layers drawn at
//!   random from the unselected ones (each layer keeps its count), mean over
//!   [`Controls::draws`] draws with the spread of the accuracy change;
//! - in the final normalised stream, each selected neuron's second-order effect `e` is edited
//!   (`μ` its mean over prompts, `c = e − μ`, `v` its PC direction, `t` the unit OMP text
//!   reconstruction of `v`):
//!   `remove all effects` (`e → μ`), `remove significant` (`e → μ` only where ‖c‖ is above the
//!   neuron's shuffled-prompt null threshold, see [`crate::null`]), `remove insignificant` (only
//!   where it is not), `rank-1` (`e → μ + (c·v) v`), `text` (`e → μ + (c·v) t`).
//!
//! The edits act on the recorded stream at the read-out, so they change only the first answer
//! token's prediction; the task accuracy here is first-answer-token accuracy. File:
//! `ablations.json`.

use std::path::Path;

use candle_core::{DType, Tensor, D};
use metarep_core::rng::{derive_seed, seeded};
use metarep_model::interventions::{Action, Intervention, Interventions};
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input};
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::analysis::NeuronAnalysis;
use crate::data::Representations;
use crate::effect_chunks::{EffectIndex, LayerEffects};
use crate::effects::readout_stream;
use crate::error::{Error, Result};
use crate::select::{real_positions, take_rows};

/// One ablation's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationResult {
    /// What was done.
    pub name: String,
    /// Mean correctness score after it.
    pub score: f64,
    /// Change from clean.
    pub delta_score: f64,
    /// Mean over prompts of |score change| (the mean change cancels for centred edits).
    pub mean_abs_score_change: f64,
    /// First-answer-token accuracy after it.
    pub accuracy: f64,
    /// Change from clean.
    pub delta_accuracy: f64,
    /// Draws averaged (1 except for random controls).
    #[serde(default = "one")]
    pub draws: usize,
    /// Standard deviation of `delta_accuracy` over the draws (0 for one draw).
    #[serde(default)]
    pub delta_accuracy_sd: f64,
    /// Each draw's accuracy change (empty for one draw).
    #[serde(default)]
    pub per_draw_delta_accuracy: Vec<f64>,
}

fn one() -> usize {
    1
}

/// The random-neuron control of the ablations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controls {
    /// Draws of random neurons (0: no control).
    pub draws: usize,
    /// Seed of the draws.
    pub seed: u64,
}

/// Sums over prompts: correctness score, first-token hits, |score change from clean|.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    score: f64,
    hits: f64,
    abs_change: f64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.score += o.score;
        self.hits += o.hits;
        self.abs_change += o.abs_change;
    }

    fn scaled(self, f: f64) -> Tally {
        Tally {
            score: self.score * f,
            hits: self.hits * f,
            abs_change: self.abs_change * f,
        }
    }
}

/// The [`Tally`] of final streams `[b, d]` for prompts `idx`.
type Measure<'a> = dyn Fn(&Tensor, &[usize]) -> Result<Tally> + 'a;

/// The representation-space edits, in report order.
const EDITS: [&str; 5] = [
    "remove all effects",
    "remove significant",
    "remove insignificant",
    "rank-1",
    "text",
];

/// Runs every ablation over `reps` in chunks of the effect store.
pub fn ablations(
    model: &HookedTransformer,
    reps: &Representations,
    direction: &Tensor,
    index: &EffectIndex,
    analyses: &[NeuronAnalysis],
    dir: &Path,
    controls: Controls,
) -> Result<Vec<AblationResult>> {
    let cfg = model.config();
    let w_u = model
        .w_u()
        .ok_or_else(|| Error::Unsupported("a model without an unembedding".into()))?
        .to_dtype(DType::F32)?;
    let b_u = model.b_u()?.to_dtype(DType::F32)?;
    let n = reps.len();
    let clean_scores = crate::direction::scores(&reps.final_normed, direction)?;
    let measure = |finals: &Tensor, idx: &[usize]| -> Result<Tally> {
        let scores = finals
            .matmul(&direction.unsqueeze(1)?)?
            .squeeze(1)?
            .to_vec1::<f32>()?;
        let pred = finals
            .matmul(&w_u)?
            .broadcast_add(&b_u)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        let hits = idx
            .iter()
            .zip(&pred)
            .filter(|(&i, &p)| reps.answer_first[i] == p)
            .count();
        Ok(Tally {
            score: scores.iter().map(|&x| x as f64).sum(),
            hits: hits as f64,
            abs_change: idx
                .iter()
                .zip(&scores)
                .map(|(&i, &x)| (x as f64 - clean_scores[i] as f64).abs())
                .sum(),
        })
    };
    // Per stored layer: means, directions, text directions and thresholds in slot order.
    let mut per_layer = Vec::new();
    for layer in &index.layers {
        let find = |neuron: usize| {
            analyses
                .iter()
                .find(|a| a.layer == layer.layer && a.neuron == neuron)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "no analysis of neuron {neuron} of layer {}",
                        layer.layer
                    ))
                })
        };
        let an = layer
            .neurons
            .iter()
            .map(|&k| find(k))
            .collect::<Result<Vec<_>>>()?;
        let stack = |f: &dyn Fn(&NeuronAnalysis) -> Vec<f32>| -> Result<Tensor> {
            let rows: Vec<f32> = an.iter().flat_map(|a| f(a)).collect();
            Ok(Tensor::from_vec(
                rows,
                (an.len(), cfg.d_model),
                model.device(),
            )?)
        };
        per_layer.push((
            layer.layer,
            stack(&|a| a.pc.mean.clone())?,
            stack(&|a| a.pc.direction.clone())?,
            stack(&|a| a.text_direction.clone())?,
            Tensor::from_vec(
                an.iter().map(|a| a.null_threshold).collect::<Vec<_>>(),
                an.len(),
                model.device(),
            )?,
        ));
    }
    let mut clean = Tally::default();
    let mut edited = [Tally::default(); EDITS.len()];
    for c in 0..index.chunks() {
        let idx: Vec<usize> = (c * index.chunk..((c + 1) * index.chunk).min(n)).collect();
        let finals = take_rows(&reps.final_normed, &idx)?;
        clean.add(measure(&finals, &idx)?);
        let mut deltas = vec![finals.zeros_like()?; EDITS.len()];
        for (layer, mu, v, t, thr) in &per_layer {
            let e = index
                .read_chunk(dir, *layer, c)?
                .to_device(model.device())?; // [b, k, d]
            let centred = e.broadcast_sub(&mu.unsqueeze(0)?)?;
            let proj = centred
                .broadcast_mul(&v.unsqueeze(0)?)?
                .sum_keepdim(D::Minus1)?; // [b, k, 1]
            let sig = centred
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .broadcast_gt(&thr.reshape((1, thr.dim(0)?, 1))?)?
                .to_dtype(DType::F32)?;
            let rank1 = proj.broadcast_mul(&v.unsqueeze(0)?)?;
            let text = proj.broadcast_mul(&t.unsqueeze(0)?)?;
            let removed = [
                centred.clone(),
                centred.broadcast_mul(&sig)?,
                centred.broadcast_mul(&(1.0 - &sig)?)?,
                (&centred - rank1)?,
                (&centred - text)?,
            ];
            for (d, r) in deltas.iter_mut().zip(removed) {
                *d = (&*d - r.sum(1)?)?;
            }
        }
        for (k, d) in deltas.iter().enumerate() {
            edited[k].add(measure(&(&finals + d)?, &idx)?);
        }
    }
    let nf = n as f64;
    let result = |name: &str, t: Tally| AblationResult {
        name: name.into(),
        score: t.score / nf,
        delta_score: (t.score - clean.score) / nf,
        mean_abs_score_change: t.abs_change / nf,
        accuracy: t.hits / nf,
        delta_accuracy: (t.hits - clean.hits) / nf,
        draws: 1,
        delta_accuracy_sd: 0.0,
        per_draw_delta_accuracy: Vec::new(),
    };
    let layers: Vec<usize> = index.layers.iter().map(|e| e.layer).collect();
    let means = layer_means(model, reps, &layers, index.chunk)?;
    let mut out = vec![result("clean", clean)];
    out.push(result(
        "mean-ablate neurons",
        mean_ablate(model, reps, index.chunk, &index.layers, &means, &measure)?,
    ));
    if controls.draws > 0 {
        let mut sum = Tally::default();
        let mut deltas = Vec::with_capacity(controls.draws);
        for draw in 0..controls.draws {
            let random = random_neurons(&index.layers, cfg.d_mlp, controls.seed, draw)?;
            let t = mean_ablate(model, reps, index.chunk, &random, &means, &measure)?;
            deltas.push((t.hits - clean.hits) / nf);
            sum.add(t);
        }
        let k = controls.draws as f64;
        let mean_delta = deltas.iter().sum::<f64>() / k;
        let var = deltas.iter().map(|d| (d - mean_delta).powi(2)).sum::<f64>() / (k - 1.0).max(1.0);
        out.push(AblationResult {
            draws: controls.draws,
            delta_accuracy_sd: var.sqrt(),
            per_draw_delta_accuracy: deltas,
            ..result("mean-ablate random neurons", sum.scaled(1.0 / k))
        });
    }
    for (k, name) in EDITS.iter().enumerate() {
        out.push(result(name, edited[k]));
    }
    Ok(out)
}

/// Draw `draw` of the control: for each stored layer, as many neurons as it stores, drawn
/// without replacement from the layer's other `d_mlp − stored` neurons.
fn random_neurons(
    stored: &[LayerEffects],
    d_mlp: usize,
    seed: u64,
    draw: usize,
) -> Result<Vec<LayerEffects>> {
    let mut rng = seeded(derive_seed(seed, &format!("random-neurons/{draw}")));
    stored
        .iter()
        .map(|e| {
            let others: Vec<usize> = (0..d_mlp).filter(|k| !e.neurons.contains(k)).collect();
            if others.len() < e.neurons.len() {
                return Err(Error::Invalid(format!(
                    "layer {} has {} unselected neurons, fewer than the {} the control draws",
                    e.layer,
                    others.len(),
                    e.neurons.len()
                )));
            }
            let mut neurons: Vec<usize> = others
                .choose_multiple(&mut rng, e.neurons.len())
                .copied()
                .collect();
            neurons.sort_unstable();
            Ok(LayerEffects {
                layer: e.layer,
                neurons,
            })
        })
        .collect()
}

/// Mean `mlp.hook_post` `[d_mlp]` of each of `layers` over every prompt's real positions,
/// `chunk` prompts per forward pass.
fn layer_means(
    model: &HookedTransformer,
    reps: &Representations,
    layers: &[usize],
    chunk: usize,
) -> Result<Vec<(usize, Tensor)>> {
    let all: Vec<usize> = (0..reps.len()).collect();
    let points: Vec<HookPoint> = layers.iter().map(|&l| HookPoint::MlpPost(l)).collect();
    let mut sums: Vec<Option<Tensor>> = vec![None; layers.len()];
    let mut count = 0.0f64;
    for idx in all.chunks(chunk.max(1)) {
        let tokens = take_rows(&reps.tokens, idx)?;
        let pos: Vec<usize> = idx.iter().map(|&i| reps.positions[i]).collect();
        let mask = real_positions(&pos, tokens.dim(1)?, model.device())?;
        count += mask.sum_all()?.to_scalar::<f32>()? as f64;
        let (_, cache) =
            model.run_with_cache(Input::new(tokens), HookFilter::Points(points.clone()))?;
        for (s, &l) in sums.iter_mut().zip(layers) {
            let part = cache
                .get(HookPoint::MlpPost(l))?
                .to_dtype(DType::F32)?
                .broadcast_mul(&mask)?
                .sum((0, 1))?;
            *s = Some(match s.take() {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
    }
    layers
        .iter()
        .zip(sums)
        .map(|(&l, s)| {
            let s = s.ok_or_else(|| Error::Invalid("no prompts to average".into()))?;
            Ok((l, (s / count.max(1.0))?))
        })
        .collect()
}

/// The tally with the neurons of `ablated` mean-ablated in the model (`means`: each layer's
/// mean activations from [`layer_means`]), `chunk` prompts per forward pass.
fn mean_ablate(
    model: &HookedTransformer,
    reps: &Representations,
    chunk: usize,
    ablated: &[LayerEffects],
    means: &[(usize, Tensor)],
    measure: &Measure,
) -> Result<Tally> {
    let list = ablated
        .iter()
        .map(|e| {
            let mean = means
                .iter()
                .find(|(l, _)| *l == e.layer)
                .map(|(_, m)| m.clone())
                .ok_or_else(|| {
                    Error::Invalid(format!("no mean activations of layer {}", e.layer))
                })?;
            Ok(
                Intervention::new(HookPoint::MlpPost(e.layer), Action::Replace(mean))
                    .at_channels(&e.neurons),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<usize> = (0..reps.len()).collect();
    let mut total = Tally::default();
    for idx in all.chunks(chunk.max(1)) {
        let tokens = take_rows(&reps.tokens, idx)?;
        let pos: Vec<usize> = idx.iter().map(|&i| reps.positions[i]).collect();
        let finals = readout_stream(model, &tokens, &pos, &mut Interventions::new(list.clone()))?;
        total.add(measure(&finals, idx)?);
    }
    Ok(total)
}

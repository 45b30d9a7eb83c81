//! Stages 3 and 4: which MLP layers and neurons to study.
//!
//! **Layer selection**: each MLP layer's output (`hook_mlp_out`) is replaced by its mean over
//! the validation prompts' real positions, one layer at a time, and the change of the mean
//! correctness score on the validation split is recorded; the layers that move it most (by
//! absolute change) are kept. Only layers followed by at least one attention layer can have
//! second-order effects, so the last layer is measured but never selected.
//!
//! **Neuron ranking**: within the selected layers, every neuron gets three ranks over the
//! training prompts — mean |activation| and variance of `mlp.hook_post` over real positions,
//! and the mean |direct effect| on the correctness score at the read-out — and the mean of the
//! three ranks orders them; the first `top` are kept. Files: `layers.json`, `neurons.json`.

use candle_core::{DType, Device, Tensor};
use metarep_model::interventions::{Action, Intervention, Interventions};
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input};
use serde::{Deserialize, Serialize};

use crate::data::Representations;
use crate::effects::{readout_stream, Readout};
use crate::error::{Error, Result};

/// One layer's mean-ablation result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerEffect {
    /// MLP layer.
    pub layer: usize,
    /// Mean correctness score change on the validation split (ablated − clean).
    pub delta_score: f64,
    /// Whether a later attention layer exists (a second-order path).
    pub has_later_attention: bool,
}

/// Stage 3's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSelection {
    /// Every MLP layer.
    pub layers: Vec<LayerEffect>,
    /// The kept layers, most influential first.
    pub selected: Vec<usize>,
}

/// One ranked neuron.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeuronStats {
    /// MLP layer.
    pub layer: usize,
    /// Neuron index.
    pub neuron: usize,
    /// Mean |activation| over real prompt positions.
    pub mean_abs: f64,
    /// Variance of the activation over real prompt positions.
    pub variance: f64,
    /// Mean |direct effect on the correctness score| at the read-out.
    pub direct: f64,
    /// Mean of the three ranks (0 = largest).
    pub combined_rank: f64,
}

/// Stage 4's output: every neuron of the selected layers, best first, and the kept ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeuronSelection {
    /// All ranked neurons, best first.
    pub ranked: Vec<NeuronStats>,
    /// The kept `(layer, neuron)`s, best first.
    pub selected: Vec<(usize, usize)>,
}

/// Rows `idx` of `t`.
pub(crate) fn take_rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let ids = Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        idx.len(),
        t.device(),
    )?;
    Ok(t.index_select(&ids, 0)?)
}

/// `[b, n, 1]` f32 on `device`: 1 at each prompt's real positions (`≤` its read-out position).
pub(crate) fn real_positions(positions: &[usize], n: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = positions
        .iter()
        .flat_map(|&q| (0..n).map(move |p| f32::from(u8::from(p <= q))))
        .collect();
    Ok(Tensor::from_vec(m, (positions.len(), n, 1), device)?)
}

/// Mean of `act: [b, n, k]` over real positions `[k]`.
pub(crate) fn masked_mean(act: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let act = act.to_dtype(DType::F32)?;
    let count = mask.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((act.broadcast_mul(mask)?.sum((0, 1))? / count)?)
}

/// Stage 3: mean-ablates each MLP layer on the validation split; keeps the `top` layers with
/// a later attention layer that move the correctness score most.
pub fn select_layers(
    model: &HookedTransformer,
    reps: &Representations,
    direction: &Tensor,
    top: usize,
) -> Result<LayerSelection> {
    let cfg = model.config();
    if !cfg.has_mlp() {
        return Err(Error::Unsupported(
            "layer selection in an attention-only model".into(),
        ));
    }
    let val = reps.split(true);
    if val.is_empty() {
        return Err(Error::Invalid("the validation split is empty".into()));
    }
    let tokens = take_rows(&reps.tokens, &val)?;
    let positions: Vec<usize> = val.iter().map(|&i| reps.positions[i]).collect();
    let mask = real_positions(&positions, tokens.dim(1)?, model.device())?;
    let names: Vec<HookPoint> = (0..cfg.n_layers).map(HookPoint::MlpOut).collect();
    let (_, cache) = model.run_with_cache(Input::new(tokens.clone()), HookFilter::Points(names))?;
    let clean = take_rows(&reps.final_normed, &val)?;
    let score = |normed: &Tensor| -> Result<f64> {
        Ok(normed
            .matmul(&direction.unsqueeze(1)?)?
            .mean_all()?
            .to_scalar::<f32>()? as f64)
    };
    let clean_score = score(&clean)?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let mean = masked_mean(cache.get(HookPoint::MlpOut(l))?, &mask)?;
        let mut hooks = Interventions::new(vec![Intervention::new(
            HookPoint::MlpOut(l),
            Action::Replace(mean),
        )]);
        let normed = readout_stream(model, &tokens, &positions, &mut hooks)?;
        layers.push(LayerEffect {
            layer: l,
            delta_score: score(&normed)? - clean_score,
            has_later_attention: l + 1 < cfg.n_layers,
        });
    }
    let mut order: Vec<&LayerEffect> = layers.iter().filter(|e| e.has_later_attention).collect();
    order.sort_by(|a, b| b.delta_score.abs().total_cmp(&a.delta_score.abs()));
    let selected = order.iter().take(top).map(|e| e.layer).collect();
    Ok(LayerSelection { layers, selected })
}

/// Ranks of `values` (0 = largest).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut r = vec![0.0; values.len()];
    for (rank, &i) in order.iter().enumerate() {
        r[i] = rank as f64;
    }
    r
}

/// Stage 4: ranks every neuron of `layers` over the training split (in batches of `batch`
/// prompts) and keeps the `top`.
pub fn rank_neurons(
    model: &HookedTransformer,
    reps: &Representations,
    direction: &Tensor,
    layers: &[usize],
    top: usize,
    batch: usize,
) -> Result<NeuronSelection> {
    let cfg = model.config();
    let train = reps.split(false);
    if train.is_empty() || layers.is_empty() {
        return Err(Error::Invalid(
            "neuron ranking needs training problems and layers".into(),
        ));
    }
    let k = cfg.d_mlp;
    let zeros = || vec![0.0f64; layers.len() * k];
    let (mut sum, mut sum_sq, mut sum_abs, mut direct) = (zeros(), zeros(), zeros(), zeros());
    let mut count = 0.0f64;
    for chunk in train.chunks(batch.max(1)) {
        let tokens = take_rows(&reps.tokens, chunk)?;
        let positions: Vec<usize> = chunk.iter().map(|&i| reps.positions[i]).collect();
        let mask = real_positions(&positions, tokens.dim(1)?, model.device())?;
        count += mask.sum_all()?.to_scalar::<f32>()? as f64;
        let readout = Readout::new(model, &tokens, &positions)?;
        let all: Vec<usize> = (0..k).collect();
        let points: Vec<HookPoint> = layers.iter().map(|&l| HookPoint::MlpPost(l)).collect();
        let (_, cache) =
            model.run_with_cache(Input::new(tokens.clone()), HookFilter::Points(points))?;
        for (j, &l) in layers.iter().enumerate() {
            let post = cache.get(HookPoint::MlpPost(l))?.to_dtype(DType::F32)?;
            let m = post.broadcast_mul(&mask)?;
            let add = |acc: &mut [f64], t: Tensor| -> Result<()> {
                for (a, v) in acc[j * k..(j + 1) * k].iter_mut().zip(t.to_vec1::<f32>()?) {
                    *a += v as f64;
                }
                Ok(())
            };
            add(&mut sum, m.sum((0, 1))?)?;
            add(&mut sum_sq, m.sqr()?.sum((0, 1))?)?;
            add(&mut sum_abs, m.abs()?.sum((0, 1))?)?;
            // Direct effects on the score: [b, k, d] · direction → [b, k].
            let d = readout
                .direct(l, &all)?
                .broadcast_matmul(&direction.unsqueeze(1)?)?;
            add(&mut direct, d.squeeze(2)?.abs()?.sum(0)?)?;
        }
    }
    let n = train.len() as f64;
    let mean_abs: Vec<f64> = sum_abs.iter().map(|s| s / count).collect();
    let variance: Vec<f64> = sum
        .iter()
        .zip(&sum_sq)
        .map(|(s, q)| q / count - (s / count).powi(2))
        .collect();
    let direct: Vec<f64> = direct.iter().map(|s| s / n).collect();
    let (r1, r2, r3) = (ranks(&mean_abs), ranks(&variance), ranks(&direct));
    let mut ranked: Vec<NeuronStats> = (0..layers.len() * k)
        .map(|i| NeuronStats {
            layer: layers[i / k],
            neuron: i % k,
            mean_abs: mean_abs[i],
            variance: variance[i],
            direct: direct[i],
            combined_rank: (r1[i] + r2[i] + r3[i]) / 3.0,
        })
        .collect();
    ranked.sort_by(|a, b| a.combined_rank.total_cmp(&b.combined_rank));
    let selected = ranked
        .iter()
        .take(top)
        .map(|s| (s.layer, s.neuron))
        .collect();
    Ok(NeuronSelection { ranked, selected })
}

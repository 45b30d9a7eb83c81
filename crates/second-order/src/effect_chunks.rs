//! Stage 5 on disk: second-order effects of the selected neurons, computed one batch of
//! prompts at a time (one forward pass each) and written per layer and chunk as safetensors,
//! `effects/L{layer}-{chunk:05}.safetensors` with `effects` `[chunk, neurons of the layer,
//! d_model]` (f16 or f32), `scores` `[chunk, neurons]` f32 (projections on the correctness
//! direction) and `null_effects` (same shape as `effects`: the effects on the same prompts with
//! their tokens shuffled, the null of [`crate::null`]). The full `[examples × neurons ×
//! d_model]` tensor never exists in memory; an interrupted run keeps its finished chunks and
//! resumes after them. `effects/index.json` lists layers, neurons and chunks, and the total
//! second-order mass (Σ‖effect‖ over the first chunk's prompts) of every neuron of every layer,
//! for the layer-concentration statistic; those path matrices are built one block of neurons at
//! a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use metarep_model::HookedTransformer;
use serde::{Deserialize, Serialize};

use crate::data::Representations;
use crate::effects::{NeuronPaths, Readout};
use crate::error::{Error, Result};
use crate::io::{read_tensors, write_json, write_tensors};
use crate::null::shuffle_prompts;
use crate::select::take_rows;

/// One layer's stored neurons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerEffects {
    /// MLP layer.
    pub layer: usize,
    /// Its selected neurons, in stored order.
    pub neurons: Vec<usize>,
}

/// `effects/index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectIndex {
    /// Stored dtype: `f16` or `f32`.
    pub dtype: String,
    /// Prompts per chunk.
    pub chunk: usize,
    /// Prompts in all.
    pub examples: usize,
    /// Stored layers.
    pub layers: Vec<LayerEffects>,
    /// Per MLP layer: Σ over the first chunk's prompts and all its neurons of ‖second-order
    /// effect‖ (an estimate from one chunk: every neuron's paths are costly for wide models).
    pub mass_per_layer: Vec<f64>,
    /// Same, restricted to the selected neurons, per layer (same prompts).
    pub selected_mass_per_layer: Vec<f64>,
}

/// The file of `layer`'s chunk `c` under `dir/effects`.
pub fn chunk_path(dir: &Path, layer: usize, c: usize) -> PathBuf {
    dir.join("effects")
        .join(format!("L{layer}-{c:05}.safetensors"))
}

/// Groups `(layer, neuron)`s by layer, in layer order.
pub fn by_layer(selected: &[(usize, usize)]) -> Vec<LayerEffects> {
    let mut layers: Vec<LayerEffects> = Vec::new();
    let mut sorted = selected.to_vec();
    sorted.sort();
    for (l, n) in sorted {
        match layers.last_mut() {
            Some(e) if e.layer == l => e.neurons.push(n),
            _ => layers.push(LayerEffects {
                layer: l,
                neurons: vec![n],
            }),
        }
    }
    layers
}

/// How effects are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOptions {
    /// Prompts per forward pass and per file.
    pub chunk: usize,
    /// `F16` or `F32`.
    pub dtype: DType,
    /// Seed of the shuffled prompts of the null.
    pub null_seed: u64,
}

/// Computes and writes the effects of `selected` over every prompt of `reps` into
/// `dir/effects`; `progress(done, total)` after each chunk.
pub fn write_effects(
    model: &HookedTransformer,
    reps: &Representations,
    selected: &[(usize, usize)],
    direction: &Tensor,
    dir: &Path,
    opts: ChunkOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<EffectIndex> {
    let ChunkOptions {
        chunk,
        dtype,
        null_seed,
    } = opts;
    let dtype_name = match dtype {
        DType::F16 => "f16",
        DType::F32 => "f32",
        other => {
            return Err(Error::Invalid(format!(
                "effects are stored as f16 or f32, not {other:?}"
            )))
        }
    };
    let chunk = chunk.max(1);
    let cfg = model.config();
    let layers = by_layer(selected);
    std::fs::create_dir_all(dir.join("effects")).map_err(|e| Error::io(dir, e))?;
    let paths = layers
        .iter()
        .map(|e| NeuronPaths::new(model, e.layer, &e.neurons))
        .collect::<Result<Vec<_>>>()?;
    let mut mass = vec![0.0f64; cfg.n_layers];
    let mut selected_mass = vec![0.0f64; cfg.n_layers];
    let n = reps.len();
    let chunks = n.div_ceil(chunk);
    for c in 0..chunks {
        let idx: Vec<usize> = (c * chunk..((c + 1) * chunk).min(n)).collect();
        let tokens = take_rows(&reps.tokens, &idx)?;
        let positions: Vec<usize> = idx.iter().map(|&i| reps.positions[i]).collect();
        let readout = Readout::new(model, &tokens, &positions)?;
        if c == 0 {
            layer_masses(model, &readout, &mut mass)?;
        }
        let pending = layers
            .iter()
            .any(|e| !chunk_path(dir, e.layer, c).is_file());
        let null_readout = if pending {
            let shuffled = shuffle_prompts(&tokens, &positions, null_seed, idx[0])?;
            Some(Readout::new(model, &shuffled, &positions)?)
        } else {
            None
        };
        for (e, p) in layers.iter().zip(&paths) {
            let path = chunk_path(dir, e.layer, c);
            let effects = readout.second_order_paths(p)?;
            if c == 0 {
                selected_mass[e.layer] += total_norm(&effects)?;
            }
            let Some(null_readout) = null_readout.as_ref().filter(|_| !path.is_file()) else {
                continue; // Written by an interrupted earlier run.
            };
            let scores = effects
                .broadcast_matmul(&direction.unsqueeze(1)?)?
                .squeeze(2)?;
            let null = null_readout.second_order_paths(p)?;
            write_tensors(
                &path,
                &HashMap::from([
                    ("effects".to_string(), effects.to_dtype(dtype)?),
                    ("scores".to_string(), scores),
                    ("null_effects".to_string(), null.to_dtype(dtype)?),
                ]),
            )?;
        }
        progress(c + 1, chunks);
    }
    let index = EffectIndex {
        dtype: dtype_name.into(),
        chunk,
        examples: n,
        layers,
        mass_per_layer: mass,
        selected_mass_per_layer: selected_mass,
    };
    write_json(&dir.join("effects").join("index.json"), &index)?;
    Ok(index)
}

/// Σ over prompts and neurons of ‖effect‖ for `effects: [b, k, d]`.
fn total_norm(effects: &Tensor) -> Result<f64> {
    Ok(effects
        .sqr()?
        .sum(2)?
        .sqrt()?
        .sum_all()?
        .to_scalar::<f32>()? as f64)
}

/// Adds to `mass[l]` the total second-order mass of every neuron of every layer with a later
/// attention layer on `readout`'s prompts, building path matrices one block of neurons at a
/// time (a block's paths are dropped before the next is built).
fn layer_masses(model: &HookedTransformer, readout: &Readout, mass: &mut [f64]) -> Result<()> {
    const BLOCK: usize = 256;
    let cfg = model.config();
    for (l, m) in mass
        .iter_mut()
        .enumerate()
        .take(cfg.n_layers.saturating_sub(1))
    {
        for start in (0..cfg.d_mlp).step_by(BLOCK) {
            let block: Vec<usize> = (start..(start + BLOCK).min(cfg.d_mlp)).collect();
            let paths = NeuronPaths::new(model, l, &block)?;
            *m += total_norm(&readout.second_order_paths(&paths)?)?;
        }
    }
    Ok(())
}

impl EffectIndex {
    /// Chunks per layer.
    pub fn chunks(&self) -> usize {
        self.examples.div_ceil(self.chunk)
    }

    /// Effects `[examples, d_model]` f32 of the stored neurons `slots` of `layer` (indices into
    /// that layer's `neurons`), read chunk by chunk.
    pub fn read(&self, dir: &Path, layer: usize, slots: &[usize]) -> Result<Vec<Tensor>> {
        self.read_tensor(dir, layer, slots, "effects")
    }

    /// The null's effects (on the shuffled prompts), as [`EffectIndex::read`].
    pub fn read_null(&self, dir: &Path, layer: usize, slots: &[usize]) -> Result<Vec<Tensor>> {
        self.read_tensor(dir, layer, slots, "null_effects")
    }

    /// The stored tensor `key` of `slots`, per slot `[examples, d_model]` f32 on the CPU.
    fn read_tensor(
        &self,
        dir: &Path,
        layer: usize,
        slots: &[usize],
        key: &str,
    ) -> Result<Vec<Tensor>> {
        let stored = self
            .layers
            .iter()
            .find(|e| e.layer == layer)
            .ok_or_else(|| Error::Invalid(format!("no stored effects for layer {layer}")))?;
        if let Some(s) = slots.iter().find(|&&s| s >= stored.neurons.len()) {
            return Err(Error::Invalid(format!(
                "layer {layer} stores {} neurons, no slot {s}",
                stored.neurons.len()
            )));
        }
        let mut parts: Vec<Vec<Tensor>> = vec![Vec::with_capacity(self.chunks()); slots.len()];
        for c in 0..self.chunks() {
            let [effects] = read_tensors(&chunk_path(dir, layer, c), [key], &Device::Cpu)?;
            for (k, &s) in slots.iter().enumerate() {
                parts[k].push(effects.narrow(1, s, 1)?.squeeze(1)?.to_dtype(DType::F32)?);
            }
        }
        parts.iter().map(|p| Ok(Tensor::cat(p, 0)?)).collect()
    }

    /// All stored effects of `layer` for the prompts of chunk `c`, `[chunk, neurons, d_model]`
    /// f32 on the CPU.
    pub fn read_chunk(&self, dir: &Path, layer: usize, c: usize) -> Result<Tensor> {
        let [effects] = read_tensors(&chunk_path(dir, layer, c), ["effects"], &Device::Cpu)?;
        Ok(effects.to_dtype(DType::F32)?)
    }
}

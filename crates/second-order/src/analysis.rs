//! Stages 6 and 7 per neuron: the first principal component of its stored effects over its
//! top-`k` prompts ([`neuron_pc`]), then that direction written as a sparse combination of
//! lexicon atoms by orthogonal matching pursuit ([`omp()`](crate::omp::omp)), and the fraction
//! of prompts on which its effect is significant against the shuffled-prompt null
//! ([`crate::null`]). File:
//! `neurons_pca.json`, one [`NeuronAnalysis`] per selected neuron.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::effect_chunks::EffectIndex;
use crate::error::Result;
use crate::lexicon::Lexicon;
use crate::null::{centred_norms, significance};
use crate::omp::omp;
use crate::pca::{neuron_pc, NeuronPc};

/// One neuron's principal component and text decomposition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeuronAnalysis {
    /// MLP layer.
    pub layer: usize,
    /// Neuron.
    pub neuron: usize,
    /// Principal component of its effects (with every prompt's centred norm and the
    /// significance threshold).
    pub pc: NeuronPc,
    /// Lexicon entries and OMP coefficients, largest |coefficient| first.
    pub text: Vec<(String, f64)>,
    /// Cosine between the PC direction and its OMP reconstruction.
    pub text_cosine: f64,
    /// The OMP reconstruction, unit-normalised `[d_model]`.
    pub text_direction: Vec<f32>,
    /// Fraction of prompts on which the neuron's effect is significant: its centred norm is
    /// above [`null_threshold`](Self::null_threshold) (about 0.05 when the effect ignores the
    /// prompt's structure; see [`crate::null`]).
    pub significant_fraction: f64,
    /// The 95th percentile of the centred norms on the shuffled prompts of the null.
    pub null_threshold: f32,
    /// Share of Σ‖centred effect‖² carried by the top-`k` prompts.
    pub top_k_mass: f64,
}

/// Analyses every stored neuron: PCA over the top `k` prompts, OMP with `m` atoms.
pub fn analyse(
    index: &EffectIndex,
    dir: &Path,
    lexicon: &Lexicon,
    k: usize,
    m: usize,
) -> Result<Vec<NeuronAnalysis>> {
    let mut out = Vec::new();
    for layer in &index.layers {
        let slots: Vec<usize> = (0..layer.neurons.len()).collect();
        // Groups of 16 neurons at a time bound the memory to 16 × [examples, d_model].
        for group in slots.chunks(16) {
            let effects = index.read(dir, layer.layer, group)?;
            let nulls = index.read_null(dir, layer.layer, group)?;
            for ((&slot, e), null) in group.iter().zip(&effects).zip(&nulls) {
                let pc = neuron_pc(e, k)?;
                let (null_threshold, significant_fraction) =
                    significance(&pc.norms, &centred_norms(null, &pc.mean)?)?;
                let fit = omp(&pc.direction, &lexicon.atoms, m)?;
                let recon = lexicon
                    .atoms
                    .index_select(
                        &candle_core::Tensor::from_vec(
                            fit.atoms.iter().map(|&a| a as u32).collect::<Vec<_>>(),
                            fit.atoms.len(),
                            lexicon.atoms.device(),
                        )?,
                        0,
                    )?
                    .to_dtype(candle_core::DType::F64)?
                    .t()?
                    .matmul(&candle_core::Tensor::from_vec(
                        fit.coefficients.clone(),
                        (fit.coefficients.len(), 1),
                        lexicon.atoms.device(),
                    )?)?
                    .squeeze(1)?
                    .to_vec1::<f64>()?;
                let norm = recon.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-30);
                let mut text: Vec<(String, f64)> = fit
                    .atoms
                    .iter()
                    .zip(&fit.coefficients)
                    .map(|(&a, &c)| (lexicon.entries[a].clone(), c))
                    .collect();
                text.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
                let total: f64 = pc.norms.iter().map(|&x| (x as f64).powi(2)).sum();
                let mut sorted: Vec<f64> = pc.norms.iter().map(|&x| x as f64).collect();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let kk = k.min(sorted.len());
                let top: f64 = sorted[..kk].iter().map(|x| x * x).sum();
                out.push(NeuronAnalysis {
                    layer: layer.layer,
                    neuron: layer.neurons[slot],
                    significant_fraction,
                    null_threshold,
                    top_k_mass: if total > 0.0 { top / total } else { 0.0 },
                    text,
                    text_cosine: fit.cosine,
                    text_direction: recon.iter().map(|&x| (x / norm) as f32).collect(),
                    pc,
                });
            }
        }
    }
    Ok(out)
}

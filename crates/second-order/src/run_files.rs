//! Everything a finished second-order run holds, read back from its run directory.

use std::path::Path;

use candle_core::Device;

use crate::ablate::AblationResult;
use crate::analysis::NeuronAnalysis;
use crate::data::Representations;
use crate::direction::Directions;
use crate::effect_chunks::EffectIndex;
use crate::error::Result;
use crate::io::read_json;
use crate::select::{LayerSelection, NeuronSelection};

/// Everything a finished run holds, read back from its directory.
pub struct RunFiles {
    /// Stage 1.
    pub reps: Representations,
    /// Stage 2.
    pub directions: Directions,
    /// Stage 3.
    pub layers: LayerSelection,
    /// Stage 4.
    pub neurons: NeuronSelection,
    /// Stage 5.
    pub index: EffectIndex,
    /// Stages 6–7.
    pub analyses: Vec<NeuronAnalysis>,
    /// Stage 8.
    pub ablations: Vec<AblationResult>,
}

impl RunFiles {
    /// Reads every stage's output from `dir` (tensors on the CPU, for reports).
    pub fn load(dir: &Path) -> Result<Self> {
        Ok(RunFiles {
            reps: Representations::load(dir, &Device::Cpu)?,
            directions: Directions::load(dir, &Device::Cpu)?,
            layers: read_json(&dir.join("layers.json"))?,
            neurons: read_json(&dir.join("neurons.json"))?,
            index: read_json(&dir.join("effects/index.json"))?,
            analyses: read_json(&dir.join("neurons_pca.json"))?,
            ablations: read_json(&dir.join("ablations.json"))?,
        })
    }
}

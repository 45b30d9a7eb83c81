//! LensNet's training states saved to disk, so that a long collection (each state measures
//! its candidate moves with a forward pass of the base model each) can stop and resume document by
//! document.
//!
//! The format is a `metarep_core` checkpoint directory: tensors `{i}.vectors` `[n_i, d_model]`
//! and `{i}.query` `[d_model]` (f32) for state `i`, and in `state.json` the rest of each state
//! with the caller's key (what the states were measured from: model, net, document, config).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use metarep_core::checkpoint::{load_checkpoint, save_checkpoint_map, STATE_FILE};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::focus::Candidate;
use crate::lens_train::LensSample;
use crate::lensnet::FocusInput;

/// `state.json` of a saved collection.
#[derive(Serialize, Deserialize)]
struct Saved {
    key: String,
    states: Vec<SavedState>,
}

/// A state without its tensors.
#[derive(Serialize, Deserialize)]
struct SavedState {
    levels: Vec<u8>,
    geometry: Vec<[f32; 2]>,
    candidates: Vec<Candidate>,
    utilities: Vec<f32>,
    /// Absent from saves made before states measured a draw of their moves.
    #[serde(default)]
    unmeasured: Vec<Candidate>,
    free: i64,
    budget: usize,
}

/// Saves `samples` into the directory `dir` (replacing what is there) under `key`.
pub fn save_samples(dir: &Path, samples: &[LensSample], key: &str) -> Result<()> {
    let mut tensors = HashMap::new();
    let mut states = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        tensors.insert(format!("{i}.vectors"), s.input.vectors.clone());
        tensors.insert(format!("{i}.query"), s.input.query.clone());
        states.push(SavedState {
            levels: s.input.levels.clone(),
            geometry: s.input.geometry.clone(),
            candidates: s.candidates.clone(),
            utilities: s.utilities.clone(),
            unmeasured: s.unmeasured.clone(),
            free: s.free,
            budget: s.budget,
        });
    }
    let saved = Saved {
        key: key.to_string(),
        states,
    };
    Ok(save_checkpoint_map(dir, &tensors, &saved)?)
}

/// The states saved in `dir` under `key`, onto `device`; `None` when nothing is saved there or
/// it was saved under another key. A damaged save is an error naming it.
pub fn load_samples(dir: &Path, key: &str, device: &Device) -> Result<Option<Vec<LensSample>>> {
    let state_path = dir.join(STATE_FILE);
    if !state_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_path)
        .map_err(|e| Error::Invalid(format!("reading {}: {e}", state_path.display())))?;
    let saved_key: KeyOnly = serde_json::from_str(&text).map_err(|e| {
        Error::Invalid(format!("{} is not saved states: {e}", state_path.display()))
    })?;
    if saved_key.key != key {
        return Ok(None);
    }
    let (mut tensors, saved): (HashMap<String, Tensor>, Saved) = load_checkpoint(dir, device)?;
    let mut take = |name: String| {
        tensors.remove(&name).ok_or_else(|| {
            Error::Invalid(format!(
                "saved states in {}: no tensor {name}",
                dir.display()
            ))
        })
    };
    let mut out = Vec::with_capacity(saved.states.len());
    for (i, s) in saved.states.into_iter().enumerate() {
        let input = FocusInput {
            vectors: take(format!("{i}.vectors"))?,
            levels: s.levels,
            geometry: s.geometry,
            query: take(format!("{i}.query"))?,
        };
        out.push(LensSample {
            input,
            candidates: s.candidates,
            utilities: s.utilities,
            unmeasured: s.unmeasured,
            free: s.free,
            budget: s.budget,
        });
    }
    Ok(Some(out))
}

/// The key of a saved `state.json`, read before its tensors.
#[derive(Deserialize)]
struct KeyOnly {
    key: String,
}

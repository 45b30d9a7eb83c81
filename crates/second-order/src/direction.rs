//! Stage 2, the correctness direction: the difference of the mean final normalised residual
//! (after `ln_final`, where the effects live) between correct and incorrect training problems,
//! unit-normalised. A problem's *correctness score* is its final normalised residual's
//! projection on it. As a sanity alternative, the logit-difference direction: the mean over
//! training problems of `W_U[:, t] − mean_v W_U[:, v]` for each problem's first answer token
//! `t` (the direction that raises the correct first token against the average token),
//! unit-normalised. Saved as `direction.safetensors` (`correctness`, `logit_diff`, `[d_model]`)
//! and `direction.json` (counts and mean scores).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use metarep_model::HookedTransformer;
use serde::{Deserialize, Serialize};

use crate::data::Representations;
use crate::error::{Error, Result};
use crate::io::{read_json, read_tensors, write_json, write_tensors};
use crate::select::take_rows;

/// The two directions `[d_model]` f32 and what they were computed from.
#[derive(Debug, Clone)]
pub struct Directions {
    /// Unit correctness direction.
    pub correctness: Tensor,
    /// Unit logit-difference direction.
    pub logit_diff: Tensor,
    /// Summary.
    pub info: DirectionInfo,
}

/// Counts and scores behind the directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionInfo {
    /// Correct training problems.
    pub correct: usize,
    /// Incorrect training problems.
    pub incorrect: usize,
    /// Norm of the mean difference before normalising.
    pub raw_norm: f64,
    /// Cosine between the two directions.
    pub cosine_with_logit_diff: f64,
    /// Mean correctness score of correct / incorrect validation problems.
    pub validation_scores: (f64, f64),
}

fn unit(v: &Tensor, what: &str) -> Result<(Tensor, f64)> {
    let norm = v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    if norm < 1e-12 || !norm.is_finite() {
        return Err(Error::Invalid(format!("the {what} direction is zero")));
    }
    Ok(((v / norm)?, norm))
}

/// Scores `[N]`: each row of `final_normed: [N, d]` projected on `direction: [d]`.
pub fn scores(final_normed: &Tensor, direction: &Tensor) -> Result<Vec<f32>> {
    Ok(final_normed
        .to_dtype(DType::F32)?
        .matmul(&direction.unsqueeze(1)?)?
        .squeeze(1)?
        .to_vec1::<f32>()?)
}

/// Computes both directions from the training split of `reps`.
pub fn directions(model: &HookedTransformer, reps: &Representations) -> Result<Directions> {
    let train = reps.split(false);
    let (good, bad): (Vec<usize>, Vec<usize>) =
        train.iter().partition(|&&i| reps.transcripts[i].correct);
    if good.is_empty() || bad.is_empty() {
        return Err(Error::Invalid(format!(
            "the correctness direction needs correct and incorrect training problems (got {} and {})",
            good.len(),
            bad.len()
        )));
    }
    let mean =
        |idx: &[usize]| -> Result<Tensor> { Ok(take_rows(&reps.final_normed, idx)?.mean(0)?) };
    let (correctness, raw_norm) = unit(&(mean(&good)? - mean(&bad)?)?, "correctness")?;
    let w_u = model
        .w_u()
        .ok_or_else(|| Error::Unsupported("a model without an unembedding".into()))?
        .to_dtype(DType::F32)?;
    let centred = w_u.broadcast_sub(&w_u.mean_keepdim(D::Minus1)?)?; // [d, vocab]
    let firsts: Vec<u32> = train.iter().map(|&i| reps.answer_first[i]).collect();
    let ids = Tensor::from_vec(firsts.clone(), firsts.len(), centred.device())?;
    let (logit_diff, _) = unit(
        &centred.t()?.contiguous()?.index_select(&ids, 0)?.mean(0)?,
        "logit-difference",
    )?;
    let cosine = (&correctness * &logit_diff)?
        .sum_all()?
        .to_scalar::<f32>()? as f64;
    let val = reps.split(true);
    let s = scores(&reps.final_normed, &correctness)?;
    let mean_of = |keep: bool| {
        let v: Vec<f64> = val
            .iter()
            .filter(|&&i| reps.transcripts[i].correct == keep)
            .map(|&i| s[i] as f64)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    Ok(Directions {
        correctness,
        logit_diff,
        info: DirectionInfo {
            correct: good.len(),
            incorrect: bad.len(),
            raw_norm,
            cosine_with_logit_diff: cosine,
            validation_scores: (mean_of(true), mean_of(false)),
        },
    })
}

impl Directions {
    /// Writes `direction.safetensors` and `direction.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_tensors(
            &dir.join("direction.safetensors"),
            &HashMap::from([
                ("correctness".to_string(), self.correctness.clone()),
                ("logit_diff".to_string(), self.logit_diff.clone()),
            ]),
        )?;
        write_json(&dir.join("direction.json"), &self.info)
    }

    /// Reads what [`Directions::save`] wrote, its tensors onto `device` (the model's).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let [correctness, logit_diff] = read_tensors(
            &dir.join("direction.safetensors"),
            ["correctness", "logit_diff"],
            device,
        )?;
        Ok(Directions {
            correctness,
            logit_diff,
            info: read_json(&dir.join("direction.json"))?,
        })
    }
}

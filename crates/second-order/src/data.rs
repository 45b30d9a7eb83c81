//! Stage 1, evaluation and representations: run the model on a problem set, record every
//! problem's transcript (greedy completion, correctness) and the final normalised residual
//! stream at the read-out position (the last prompt token): the final norm's output, what the
//! unembedding reads (`ln_final.hook_normalized` of a LayerNorm model; for an RMSNorm model that
//! times the norm's weight, as TransformerLens hooks RMSNorm before its weight).
//!
//! Files (in a run directory): `eval.jsonl`, one [`Transcript`] per line; `eval.safetensors`
//! with `tokens` `[N, n]` u32 (prompts right-padded), `positions` `[N]` u32 (read-out
//! positions), `answer_first` `[N]` u32 (each answer's first token), `final` `[N, d_model]`
//! f32.
//!
//! A problem is correct when greedy decoding from its prompt produces exactly the answer's
//! tokens and then the end token (when the framing has one). Every fifth problem (index ≡ 0
//! mod 5) is in the validation split, the rest in the training split.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use metarep_model::ops::rows_at;
use metarep_model::{HookedTransformer, Input, NoHooks, RunTo, Tokenizer};
use metarep_testbeds::tokenization::{frame, prompt_batch, Framed, Framing};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{read_jsonl, read_tensors, write_jsonl, write_tensors};

/// One problem: a prompt and the answer text that should follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    /// The prompt, e.g. `"12 + 7 ="`.
    pub prompt: String,
    /// The answer as it follows the prompt, e.g. `" 19"`.
    pub answer: String,
}

/// Reads GSM8K-style JSONL problems (`{"prompt": ..., "answer": ...}` per line); an error names
/// the line.
pub fn load_problems(path: &Path) -> Result<Vec<Problem>> {
    let problems: Vec<Problem> = read_jsonl(path)?;
    if problems.is_empty() {
        return Err(Error::Invalid(format!("{}: no problems", path.display())));
    }
    Ok(problems)
}

/// One evaluated problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// The prompt.
    pub prompt: String,
    /// The expected answer.
    pub answer: String,
    /// What greedy decoding produced (as many tokens as the answer and the end token).
    pub completion: String,
    /// The completion is exactly the answer.
    pub correct: bool,
    /// In the validation split.
    pub validation: bool,
}

/// The evaluation of a problem set: transcripts and read-out representations.
#[derive(Debug, Clone)]
pub struct Representations {
    /// Per problem.
    pub transcripts: Vec<Transcript>,
    /// Prompts `[N, n]` u32, right-padded.
    pub tokens: Tensor,
    /// Read-out position of each prompt (its last token).
    pub positions: Vec<usize>,
    /// First token of each answer.
    pub answer_first: Vec<u32>,
    /// The final norm's output (what the unembedding reads) at the read-out positions
    /// `[N, d_model]` f32.
    pub final_normed: Tensor,
}

/// Frames every problem with `framing` (see `metarep_testbeds::tokenization::frame`).
pub fn frame_all(
    tokenizer: &Tokenizer,
    problems: &[Problem],
    framing: &Framing,
) -> Result<Vec<Framed>> {
    problems
        .iter()
        .map(|p| Ok(frame(tokenizer, &p.prompt, &p.answer, framing)?))
        .collect()
}

/// Greedy completion of each prompt for as many steps as its answer is scored, batched; the
/// first step's forward pass also gives the final normalised stream at each prompt's last
/// position, returned as `[batch, d_model]` f32.
fn greedy(
    model: &HookedTransformer,
    framed: &[Framed],
    pad: u32,
) -> Result<(Vec<Vec<u32>>, Tensor)> {
    let (tokens, positions) = prompt_batch(framed, pad)?;
    let hidden = model.run(&Input::new(tokens), &mut NoHooks, RunTo::Hidden)?;
    let finals = rows_at(&hidden, &positions)?;
    let first = model
        .unembed(&finals.unsqueeze(1)?)?
        .squeeze(1)?
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?;
    let finals = finals.to_dtype(DType::F32)?;
    let mut seqs: Vec<Vec<u32>> = framed
        .iter()
        .zip(first)
        .map(|(f, t)| [&f.ids[..f.answer_start], &[t]].concat())
        .collect();
    let steps = framed.iter().map(|f| f.scored).max().unwrap_or(0);
    for step in 1..steps {
        let n = seqs.iter().map(Vec::len).max().unwrap_or(1);
        let rows: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| {
                let mut r = s.clone();
                r.resize(n, pad);
                r
            })
            .collect();
        let next = model
            .forward(Input::from_ids(&rows, model.device())?)?
            .argmax(D::Minus1)?
            .to_vec2::<u32>()?;
        for (r, f) in framed.iter().enumerate() {
            if step < f.scored {
                let at = seqs[r].len() - 1;
                seqs[r].push(next[r][at]);
            }
        }
    }
    let completions = seqs
        .into_iter()
        .zip(framed)
        .map(|(s, f)| s[f.answer_start..].to_vec())
        .collect();
    Ok((completions, finals))
}

/// Runs stage 1 on `problems` in batches of `batch`.
pub fn evaluate(
    model: &HookedTransformer,
    problems: &[Problem],
    framing: &Framing,
    batch: usize,
) -> Result<Representations> {
    let tokenizer = model
        .tokenizer()
        .ok_or_else(|| Error::Invalid("the model has no tokenizer.json".into()))?;
    if problems.is_empty() {
        return Err(Error::Invalid("no problems to evaluate".into()));
    }
    let framed = frame_all(tokenizer, problems, framing)?;
    let n_ctx = model.config().n_ctx;
    if let Some(i) = framed.iter().position(|f| f.ids.len() - 1 > n_ctx) {
        return Err(Error::Invalid(format!(
            "problem {i} ({:?}) takes {} tokens, above the model's context of {n_ctx}",
            problems[i].prompt,
            framed[i].ids.len() - 1
        )));
    }
    let mut transcripts = Vec::with_capacity(problems.len());
    let mut finals = Vec::new();
    for (c, chunk) in framed.chunks(batch.max(1)).enumerate() {
        let (completions, chunk_finals) = greedy(model, chunk, framing.pad)?;
        finals.push(chunk_finals);
        for (k, (f, done)) in chunk.iter().zip(&completions).enumerate() {
            let i = c * batch.max(1) + k;
            transcripts.push(Transcript {
                prompt: problems[i].prompt.clone(),
                answer: problems[i].answer.clone(),
                completion: tokenizer.decode(done, true)?,
                correct: done[..] == f.ids[f.answer_start..f.answer_start + f.scored],
                validation: i.is_multiple_of(5),
            });
        }
    }
    let (tokens, positions) = prompt_batch(&framed, framing.pad)?;
    Ok(Representations {
        transcripts,
        tokens,
        positions,
        answer_first: framed.iter().map(|f| f.ids[f.answer_start]).collect(),
        final_normed: Tensor::cat(&finals, 0)?,
    })
}

impl Representations {
    /// Problems in the evaluation.
    pub fn len(&self) -> usize {
        self.transcripts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.transcripts.is_empty()
    }

    /// Indices of the validation (`true`) or training (`false`) split.
    pub fn split(&self, validation: bool) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.transcripts[i].validation == validation)
            .collect()
    }

    /// Fraction answered correctly.
    pub fn accuracy(&self) -> f64 {
        self.transcripts.iter().filter(|t| t.correct).count() as f64 / self.len().max(1) as f64
    }

    /// Writes `eval.jsonl` and `eval.safetensors` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_jsonl(&dir.join("eval.jsonl"), &self.transcripts)?;
        let dev = &Device::Cpu;
        let u32s = |v: Vec<u32>| Tensor::from_vec(v.clone(), v.len(), dev);
        let tensors = HashMap::from([
            ("tokens".to_string(), self.tokens.clone()),
            (
                "positions".to_string(),
                u32s(self.positions.iter().map(|&p| p as u32).collect())?,
            ),
            ("answer_first".to_string(), u32s(self.answer_first.clone())?),
            ("final".to_string(), self.final_normed.clone()),
        ]);
        write_tensors(&dir.join("eval.safetensors"), &tensors)
    }

    /// Reads what [`Representations::save`] wrote, its tensors onto `device` (the model's).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let transcripts: Vec<Transcript> = read_jsonl(&dir.join("eval.jsonl"))?;
        let path = dir.join("eval.safetensors");
        let [tokens, positions, answer_first, final_normed] = read_tensors(
            &path,
            ["tokens", "positions", "answer_first", "final"],
            device,
        )?;
        let positions: Vec<usize> = positions
            .to_vec1::<u32>()?
            .into_iter()
            .map(|p| p as usize)
            .collect();
        let answer_first = answer_first.to_vec1::<u32>()?;
        if [
            positions.len(),
            answer_first.len(),
            tokens.dim(0)?,
            final_normed.dim(0)?,
        ]
        .iter()
        .any(|&k| k != transcripts.len())
        {
            return Err(Error::Invalid(format!(
                "{}: {} transcripts but tensors for a different number of problems",
                path.display(),
                transcripts.len()
            )));
        }
        Ok(Representations {
            transcripts,
            tokens,
            positions,
            answer_first,
            final_normed,
        })
    }
}

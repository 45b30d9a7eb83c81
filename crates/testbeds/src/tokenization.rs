//! Tokenization diagnostics for arithmetic prompts: how many tokens each operand and the answer
//! take, whether the model answers each prompt exactly, and accuracy and loss split by
//! tokenization class (both operands single-token vs any multi-token) and over stress grids
//! of operand length and operation.
//!
//! Works with any tokenizer that reports character offsets: a token belongs to an operand (or
//! the answer) when its offsets overlap the operand's characters. A prompt is answered
//! correctly when the argmax prediction is right at every answer token and at the end token
//! (greedy decoding would produce exactly the answer).

use candle_core::{DType, Device, Tensor, D};
use metarep_eval::stats::{bootstrap_ci, BootstrapMethod, Interval};
use metarep_eval::tasks::text::{ArithmeticProblem, ArithmeticSuite, Op, Tier};
use metarep_model::ops::log_softmax_last_dim;
use metarep_model::predictions::EvalSet;
use metarep_model::{HookedTransformer, Hooks, Input, RunTo, Tokenizer};
use rand::Rng;
use serde::Serialize;

use crate::error::{Error, Result};

/// Special tokens around each problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Prepended before the prompt.
    pub bos: Option<u32>,
    /// Appended after the answer (and predicted: part of the score).
    pub eos: Option<u32>,
    /// Right padding in batches.
    pub pad: u32,
}

/// A prompt and its answer as framed token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    /// `[bos] prompt answer [eos]`.
    pub ids: Vec<u32>,
    /// Index in `ids` of the first answer token (≥ 1).
    pub answer_start: usize,
    /// Predictions that are scored: the answer tokens, plus the end token when framed.
    pub scored: usize,
    /// Tokens of the answer (the end token excluded).
    pub answer_tokens: usize,
    /// Byte offsets in `prompt + answer` of the text's tokens (`ids` without the framing).
    pub offsets: Vec<(usize, usize)>,
}

impl AsRef<Framed> for Framed {
    fn as_ref(&self) -> &Framed {
        self
    }
}

/// One arithmetic problem as token ids, with its operands' token counts.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedProblem {
    /// The problem.
    pub problem: ArithmeticProblem,
    /// Its framed ids.
    pub framed: Framed,
    /// Tokens of the left and the right operand.
    pub operand_tokens: [usize; 2],
}

impl AsRef<Framed> for TokenizedProblem {
    fn as_ref(&self) -> &Framed {
        &self.framed
    }
}

/// Whether both operands are single tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenClass {
    /// Both operands are one token each.
    Single,
    /// At least one operand takes several tokens.
    Multi,
}

impl TokenizedProblem {
    /// The problem's tokenization class.
    pub fn class(&self) -> TokenClass {
        if self.operand_tokens == [1, 1] {
            TokenClass::Single
        } else {
            TokenClass::Multi
        }
    }
}

/// Tokens whose byte offsets overlap `span`.
fn tokens_in(offsets: &[(usize, usize)], span: (usize, usize)) -> usize {
    offsets
        .iter()
        .filter(|&&(s, e)| s < span.1 && e > span.0)
        .count()
}

/// Tokenizes `prompt + answer` as one text and frames it; an error names the text when a token
/// straddles the prompt and the answer or the answer has no token.
pub fn frame(
    tokenizer: &Tokenizer,
    prompt: &str,
    answer: &str,
    framing: &Framing,
) -> Result<Framed> {
    let text = format!("{prompt}{answer}");
    let enc = tokenizer.encode(&text, false)?;
    let first_answer = enc
        .offsets
        .iter()
        .position(|&(s, _)| s >= prompt.len())
        .ok_or_else(|| Error::Invalid(format!("{text:?}: the answer has no token of its own")))?;
    if first_answer > 0 && enc.offsets[first_answer - 1].1 > prompt.len() {
        return Err(Error::Invalid(format!(
            "{text:?}: a token spans the end of the prompt, so the answer cannot be scored alone"
        )));
    }
    let mut ids = Vec::with_capacity(enc.ids.len() + 2);
    ids.extend(framing.bos);
    let answer_start = ids.len() + first_answer;
    if answer_start == 0 {
        return Err(Error::Invalid(format!(
            "{text:?}: nothing precedes the answer (add a beginning-of-sequence token)"
        )));
    }
    ids.extend_from_slice(&enc.ids);
    ids.extend(framing.eos);
    let answer_tokens = enc.ids.len() - first_answer;
    Ok(Framed {
        ids,
        answer_start,
        scored: answer_tokens + usize::from(framing.eos.is_some()),
        answer_tokens,
        offsets: enc.offsets,
    })
}

/// Frames `problem` and counts the tokens of each operand.
pub fn tokenize_problem(
    tokenizer: &Tokenizer,
    problem: &ArithmeticProblem,
    framing: &Framing,
) -> Result<TokenizedProblem> {
    tokenize_problem_after(tokenizer, "", problem, framing)
}

/// [`tokenize_problem`] with `prefix` (e.g. [`few_shot_prefix`]) written before the prompt;
/// operands are counted in the problem's own prompt.
pub fn tokenize_problem_after(
    tokenizer: &Tokenizer,
    prefix: &str,
    problem: &ArithmeticProblem,
    framing: &Framing,
) -> Result<TokenizedProblem> {
    let prompt = format!("{prefix}{}", problem.text.prompt);
    let framed = frame(tokenizer, &prompt, &problem.text.answer, framing)?;
    let span_of = |needle: &str, from: usize| -> Result<(usize, usize)> {
        prompt[from..]
            .find(needle)
            .map(|i| (from + i, from + i + needle.len()))
            .ok_or_else(|| Error::Invalid(format!("operand {needle} not found in {prompt:?}")))
    };
    let a = span_of(&problem.a.to_string(), prefix.len())?;
    let b = span_of(&problem.b.to_string(), a.1)?;
    Ok(TokenizedProblem {
        problem: problem.clone(),
        operand_tokens: [tokens_in(&framed.offsets, a), tokens_in(&framed.offsets, b)],
        framed,
    })
}

/// Solved problems, one per line (`"12 + 7 = 19\n"`): a few-shot prefix.
pub fn few_shot_prefix(examples: &[ArithmeticProblem]) -> String {
    examples
        .iter()
        .map(|p| format!("{}{}\n", p.text.prompt, p.text.answer))
        .collect()
}

/// [`tokenize_problem`] on each problem.
pub fn tokenize_all(
    tokenizer: &Tokenizer,
    problems: &[ArithmeticProblem],
    framing: &Framing,
) -> Result<Vec<TokenizedProblem>> {
    tokenize_all_after(tokenizer, "", problems, framing)
}

/// [`tokenize_problem_after`] on each problem, with one shared prefix.
pub fn tokenize_all_after(
    tokenizer: &Tokenizer,
    prefix: &str,
    problems: &[ArithmeticProblem],
    framing: &Framing,
) -> Result<Vec<TokenizedProblem>> {
    problems
        .iter()
        .map(|p| tokenize_problem_after(tokenizer, prefix, p, framing))
        .collect()
}

/// Right-pads `problems` with `pad` into tokens `[batch, n]` (u32) and the mask `[batch, n − 1]`
/// (f32, 1 on the scored predictions: position `p` predicts token `p + 1`).
pub fn padded<T: AsRef<Framed>>(problems: &[T], pad: u32) -> Result<(Tensor, Tensor)> {
    let rows: Vec<(Vec<u32>, Vec<f32>)> = problems
        .iter()
        .map(|p| {
            let p = p.as_ref();
            let scored = p.answer_start - 1..p.answer_start - 1 + p.scored;
            let mask = (0..p.ids.len() - 1)
                .map(|i| f32::from(u8::from(scored.contains(&i))))
                .collect();
            (p.ids.clone(), mask)
        })
        .collect();
    pad_masked(&rows, pad)
}

/// Right-pads rows of `(ids, mask)` (the mask over the `ids.len() − 1` predictions) with `pad`
/// into tokens `[batch, n]` (u32) and the mask `[batch, n − 1]` (f32, 0 on the padding).
pub fn pad_masked(rows: &[(Vec<u32>, Vec<f32>)], pad: u32) -> Result<(Tensor, Tensor)> {
    let n = rows
        .iter()
        .map(|(ids, _)| ids.len())
        .max()
        .ok_or_else(|| Error::Invalid("no problems to pad".into()))?;
    if let Some((ids, mask)) = rows
        .iter()
        .find(|(ids, mask)| ids.is_empty() || mask.len() + 1 != ids.len())
    {
        return Err(Error::Invalid(format!(
            "a row of {} tokens with a mask over {} predictions",
            ids.len(),
            mask.len()
        )));
    }
    let mut tokens = Vec::with_capacity(rows.len() * n);
    let mut masks = Vec::with_capacity(rows.len() * (n - 1));
    for (ids, mask) in rows {
        tokens.extend_from_slice(ids);
        tokens.extend(std::iter::repeat_n(pad, n - ids.len()));
        masks.extend_from_slice(mask);
        masks.extend(std::iter::repeat_n(0.0, n - ids.len()));
    }
    let dev = &Device::Cpu;
    Ok((
        Tensor::from_vec(tokens, (rows.len(), n), dev)?,
        Tensor::from_vec(masks, (rows.len(), n - 1), dev)?,
    ))
}

/// The prompts alone (each cut before its answer), right-padded with `pad` into `[batch, n]`
/// u32, and each prompt's last position (where the first answer token is predicted).
pub fn prompt_batch<T: AsRef<Framed>>(problems: &[T], pad: u32) -> Result<(Tensor, Vec<usize>)> {
    let n = problems
        .iter()
        .map(|p| p.as_ref().answer_start)
        .max()
        .ok_or_else(|| Error::Invalid("no prompts to batch".into()))?;
    let mut ids = Vec::with_capacity(problems.len() * n);
    for p in problems {
        let p = p.as_ref();
        ids.extend_from_slice(&p.ids[..p.answer_start]);
        ids.extend(std::iter::repeat_n(pad, n - p.answer_start));
    }
    Ok((
        Tensor::from_vec(ids, (problems.len(), n), &Device::Cpu)?,
        problems
            .iter()
            .map(|p| p.as_ref().answer_start - 1)
            .collect(),
    ))
}

/// The problems as an [`EvalSet`] whose mask counts the scored predictions (for staged
/// ablations and scale sweeps).
pub fn eval_set<T: AsRef<Framed>>(problems: &[T], pad: u32) -> Result<EvalSet> {
    let (tokens, mask) = padded(problems, pad)?;
    Ok(EvalSet {
        tokens,
        mask: Some(mask),
        alternative: None,
    })
}

/// How the model does on one problem.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProblemScore {
    /// Every scored prediction is the argmax.
    pub correct: bool,
    /// Mean cross-entropy over the scored predictions (nats).
    pub loss: f64,
}

/// Scores every problem under `hooks`, `batch` problems per forward pass.
pub fn score_problems<T: AsRef<Framed>, H: Hooks>(
    model: &HookedTransformer,
    problems: &[T],
    pad: u32,
    batch: usize,
    hooks: &mut H,
) -> Result<Vec<ProblemScore>> {
    let n_ctx = model.config().n_ctx;
    if let Some((i, p)) = problems
        .iter()
        .map(AsRef::as_ref)
        .enumerate()
        .find(|(_, p)| p.ids.len() - 1 > n_ctx)
    {
        return Err(Error::Invalid(format!(
            "problem {i} takes {} tokens, above the model's context of {n_ctx}",
            p.ids.len() - 1
        )));
    }
    let mut out = Vec::with_capacity(problems.len());
    for chunk in problems.chunks(batch.max(1)) {
        let (tokens, mask) = padded(chunk, pad)?;
        let tokens = tokens.to_device(model.device())?;
        let n = tokens.dim(1)?;
        let d = model.config().d_model;
        // Only the scored predictions are unembedded: rows of the flattened `[batch · (n − 1)]`.
        let mask = mask.to_vec2::<f32>()?;
        let picked: Vec<u32> = (0..chunk.len() * (n - 1))
            .filter(|&i| mask[i / (n - 1)][i % (n - 1)] > 0.0)
            .map(|i| i as u32)
            .collect();
        let index = Tensor::new(picked.as_slice(), tokens.device())?;
        let hidden = model
            .run(
                &Input::new(tokens.narrow(1, 0, n - 1)?),
                hooks,
                RunTo::Hidden,
            )?
            .reshape(((), d))?
            .index_select(&index, 0)?;
        let targets = tokens
            .narrow(1, 1, n - 1)?
            .flatten_all()?
            .index_select(&index, 0)?
            .contiguous()?;
        let logits = model
            .unembed(&hidden.unsqueeze(0)?)?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        let nll = log_softmax_last_dim(&logits)?
            .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?
            .neg()?
            .to_vec1::<f32>()?;
        let hit = logits.argmax(D::Minus1)?.eq(&targets)?.to_vec1::<u8>()?;
        let mut scores = vec![(false, 0.0f64); chunk.len()];
        for ((&i, h), l) in picked.iter().zip(&hit).zip(&nll) {
            let r = &mut scores[i as usize / (n - 1)];
            r.0 |= *h == 0;
            r.1 += f64::from(*l);
        }
        for (r, (wrong, loss)) in scores.into_iter().enumerate() {
            out.push(ProblemScore {
                correct: !wrong,
                loss: loss / chunk[r].as_ref().scored as f64,
            });
        }
    }
    Ok(out)
}

/// Accuracy and loss of a group of problems, with 95% bootstrap intervals over problems
/// (NaN bounds for fewer than 2 problems).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GroupSummary {
    /// Problems in the group.
    pub count: usize,
    /// Exact-answer accuracy.
    pub accuracy: Interval,
    /// Mean answer loss (nats per scored token).
    pub loss: Interval,
}

/// Summarises `scores` with `resamples` bootstrap resamples.
pub fn summarize(
    scores: &[ProblemScore],
    resamples: usize,
    rng: &mut impl Rng,
) -> Result<GroupSummary> {
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let mut ci = |xs: Vec<f64>| -> Result<Interval> {
        if xs.len() < 2 {
            return Ok(Interval {
                estimate: if xs.is_empty() { f64::NAN } else { xs[0] },
                low: f64::NAN,
                high: f64::NAN,
                level: 0.95,
            });
        }
        Ok(bootstrap_ci(
            &xs,
            mean,
            0.95,
            resamples,
            BootstrapMethod::Percentile,
            rng,
        )?)
    };
    Ok(GroupSummary {
        count: scores.len(),
        accuracy: ci(scores
            .iter()
            .map(|s| f64::from(u8::from(s.correct)))
            .collect())?,
        loss: ci(scores.iter().map(|s| s.loss).collect())?,
    })
}

/// Summaries of the single-token and the multi-token problems.
pub fn by_class(
    problems: &[TokenizedProblem],
    scores: &[ProblemScore],
    resamples: usize,
    rng: &mut impl Rng,
) -> Result<Vec<(TokenClass, GroupSummary)>> {
    if problems.len() != scores.len() {
        return Err(Error::Invalid(format!(
            "{} problems but {} scores",
            problems.len(),
            scores.len()
        )));
    }
    [TokenClass::Single, TokenClass::Multi]
        .into_iter()
        .map(|class| {
            let group: Vec<ProblemScore> = problems
                .iter()
                .zip(scores)
                .filter(|(p, _)| p.class() == class)
                .map(|(_, s)| *s)
                .collect();
            Ok((class, summarize(&group, resamples, rng)?))
        })
        .collect()
}

/// [`summarize`] per operation, in [`Op::ALL`] order.
pub fn by_op(
    problems: &[TokenizedProblem],
    scores: &[ProblemScore],
    resamples: usize,
    rng: &mut impl Rng,
) -> Result<Vec<(Op, GroupSummary)>> {
    if problems.len() != scores.len() {
        return Err(Error::Invalid(format!(
            "{} problems but {} scores",
            problems.len(),
            scores.len()
        )));
    }
    Op::ALL
        .into_iter()
        .map(|op| {
            let group: Vec<ProblemScore> = problems
                .iter()
                .zip(scores)
                .filter(|(p, _)| p.problem.op == op)
                .map(|(_, s)| *s)
                .collect();
            Ok((op, summarize(&group, resamples, rng)?))
        })
        .collect()
}

/// One cell of a stress grid: an operation at one operand length.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StressCell {
    /// The operation.
    pub op: Op,
    /// Digits of both operands.
    pub digits: u32,
    /// Accuracy and loss.
    pub summary: GroupSummary,
    /// Mean tokens per operand.
    pub operand_tokens: f64,
    /// Mean answer tokens.
    pub answer_tokens: f64,
}

/// A stress grid: for every operation and every operand length in `digits` (exactly that many
/// digits on both sides), `per_cell` fresh problems scored.
pub struct StressGrid<'a> {
    /// The model under test.
    pub model: &'a HookedTransformer,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// How problems are framed.
    pub framing: Framing,
    /// Problems per cell.
    pub per_cell: usize,
    /// Solved problems of the same cell written before every prompt of the cell (0: none).
    pub shots: usize,
    /// Bootstrap resamples.
    pub resamples: usize,
}

impl StressGrid<'_> {
    /// Runs the grid, cells in `ops`-major order.
    pub fn run(&self, ops: &[Op], digits: &[u32], rng: &mut impl Rng) -> Result<Vec<StressCell>> {
        let mut cells = Vec::with_capacity(ops.len() * digits.len());
        for &op in ops {
            for &d in digits {
                let suite = ArithmeticSuite {
                    tier: Tier::Exact { digits: d },
                    ops: vec![op],
                };
                let prefix = few_shot_prefix(&suite.sample(rng, self.shots)?);
                let problems = tokenize_all_after(
                    self.tokenizer,
                    &prefix,
                    &suite.sample(rng, self.per_cell)?,
                    &self.framing,
                )?;
                let mut hooks = metarep_model::NoHooks;
                let scores =
                    score_problems(self.model, &problems, self.framing.pad, 256, &mut hooks)?;
                let mean = |f: &dyn Fn(&TokenizedProblem) -> f64| {
                    problems.iter().map(f).sum::<f64>() / problems.len() as f64
                };
                cells.push(StressCell {
                    op,
                    digits: d,
                    summary: summarize(&scores, self.resamples, rng)?,
                    operand_tokens: mean(&|p| {
                        0.5 * (p.operand_tokens[0] + p.operand_tokens[1]) as f64
                    }),
                    answer_tokens: mean(&|p| p.framed.answer_tokens as f64),
                });
            }
        }
        Ok(cells)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_masked_pads_tokens_and_zeroes_the_mask_on_padding() {
        let rows = vec![(vec![1, 2, 3], vec![0.0, 1.0]), (vec![4, 5], vec![1.0])];
        let (tokens, mask) = pad_masked(&rows, 9).unwrap();
        assert_eq!(tokens.to_vec2::<u32>().unwrap(), [[1, 2, 3], [4, 5, 9]]);
        assert_eq!(mask.to_vec2::<f32>().unwrap(), [[0.0, 1.0], [1.0, 0.0]]);
        assert!(pad_masked(&[(vec![1, 2], vec![1.0, 1.0])], 0).is_err());
        assert!(pad_masked(&[], 0).is_err());
    }
}

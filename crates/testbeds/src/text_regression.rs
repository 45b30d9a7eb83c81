//! The text-regression testbed: in-context linear regression written as text
//! (`metarep_eval::tasks::text::NumericPromptSpec`, `x: 0.42 -> y: 0.87` per line), a digit-level
//! tokenizer, and a small GPT-2-style model trained with next-token loss on the answers.
//!
//! The tokenizer drops whitespace and gives every digit, `-` and `.` a token of its own, and
//! `x:`, `->`, `y:` one each, so a number with `k` digits always takes `k + 1` tokens (`k + 2`
//! when negative) and the model sees the same pieces as the regression baselines see numbers.
//! A training sequence is `<|endoftext|>` and `n + 1` lines, the last one the query with its
//! answer; the loss counts every line's answer tokens, so each answer is an in-context
//! prediction from the lines before it (0 to `n` examples), as in Garg et al. (2022).
//! [`greedy_numbers`] decodes a model's answer until the number is complete.

use std::collections::BTreeMap;

use candle_core::D;
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::RunReport;
use metarep_eval::tasks::linear::{LinearTaskSpec, RegressionTask, Spectrum};
use metarep_eval::tasks::text::{NumericPromptSpec, TextExample};
use metarep_model::train::LmBatch;
use metarep_model::{HookedTransformer, Input, KvCache, NoHooks, Tokenizer};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::AddedToken;

use crate::error::{Error, Result};
use crate::recipe::DecoderSpec;
use crate::tokenization::pad_masked;

/// The tokenizer's vocabulary in id order: the sequence boundary (also padding), the unknown
/// token, the three template pieces, the sign, the decimal point and the ten digits.
pub const VOCAB: [&str; 17] = [
    crate::arith::EOT,
    "<unk>",
    "x:",
    "->",
    "y:",
    "-",
    ".",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
];
/// Id of `<|endoftext|>`: opens every sequence and pads batches.
pub const EOT_ID: u32 = 0;
/// Id of `y:`, the token before every answer.
pub const Y_ID: u32 = 4;
/// Id of `-`.
pub const MINUS_ID: u32 = 5;
/// Id of `.`.
pub const DOT_ID: u32 = 6;
/// Id of `0` (the digits follow in order).
pub const ZERO_ID: u32 = 7;

/// Whether `id` can be part of a number (a digit, `-` or `.`).
pub fn is_number_token(id: u32) -> bool {
    id == MINUS_ID || id == DOT_ID || (ZERO_ID..ZERO_ID + 10).contains(&id)
}

/// The digit-level tokenizer of [`VOCAB`]: whitespace dropped, digits split one per token,
/// decoding concatenates the pieces.
pub fn digit_tokenizer() -> Result<Tokenizer> {
    let model = WordLevel::builder()
        .vocab(
            VOCAB
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), i as u32))
                .collect(),
        )
        .unk_token(VOCAB[1].to_string())
        .build()
        .map_err(|e| Error::Invalid(format!("building the digit tokenizer: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(Sequence::new(vec![
        WhitespaceSplit.into(),
        Digits::new(true).into(),
    ])));
    inner.with_decoder(Some(Fuse::new()));
    inner
        .add_special_tokens([AddedToken::from(crate::arith::EOT, true)])
        .map_err(|e| Error::Invalid(format!("adding the digit tokenizer's boundary: {e}")))?;
    Ok(Tokenizer::from_inner(inner))
}

/// The task family, and the decoder with its training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextRegressionSpec {
    /// Input features `d` (`x ~ N(0, I_d)`, `w ~ N(0, I_d / d)`).
    pub dim: usize,
    /// Decimals printed for inputs and labels.
    pub decimals: usize,
    /// Label noise `σ` of the examples.
    pub noise: f64,
    /// Examples before the query in a training sequence (every answer is scored, so the model
    /// is trained at 0 to `n_train` examples).
    pub n_train: usize,
    /// The decoder (`n_ctx` must hold a sequence of `n_train + 1` lines) and its training.
    pub decoder: DecoderSpec,
}

impl TextRegressionSpec {
    /// The same settings with the decoder's seed `seed`.
    pub fn with_seed(&self, seed: u64) -> Self {
        let mut spec = self.clone();
        spec.decoder.seed = seed;
        spec
    }

    /// Prompts with `n` examples before the query (one query per task).
    pub fn prompt_spec(&self, n: usize) -> NumericPromptSpec {
        NumericPromptSpec {
            task: LinearTaskSpec {
                dim: self.dim,
                n_support: n,
                n_query: 1,
                spectrum: Spectrum::PowerLaw { kappa: 1.0 },
                noise: self.noise,
            },
            decimals: self.decimals,
        }
    }

    /// Checks the settings (sizes ≥ 1, at least one decimal, finite noise ≥ 0, the decoder's).
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("dim", self.dim),
            ("decimals", self.decimals),
            ("n_train", self.n_train),
        ];
        if let Some((key, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Invalid(format!(
                "text regression: {key} must be ≥ 1"
            )));
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(Error::Invalid(format!(
                "text regression: noise must be finite and ≥ 0, got {}",
                self.noise
            )));
        }
        self.decoder.validate()
    }

    /// `count` tasks with `n` examples, each with its one prompt.
    pub fn prompts(
        &self,
        n: usize,
        count: usize,
        rng: &mut impl Rng,
    ) -> Result<Vec<(RegressionTask, TextExample)>> {
        let spec = self.prompt_spec(n);
        (0..count)
            .map(|_| {
                let (task, mut examples) = spec.sample(rng)?;
                let example = examples
                    .pop()
                    .ok_or_else(|| Error::Invalid("a task without a query".into()))?;
                Ok((task, example))
            })
            .collect()
    }

    /// The batch of step `step`: `batch` sequences of `n_train + 1` answered lines, the loss
    /// on every answer token.
    pub fn batch(&self, tokenizer: &Tokenizer, step: usize, seed: u64) -> Result<LmBatch> {
        let mut rng = seeded(derive_seed(seed, &format!("text-regression/step{step}")));
        let rows = self
            .prompts(self.n_train, self.decoder.batch, &mut rng)?
            .into_iter()
            .map(|(_, e)| {
                let ids = sequence_ids(tokenizer, &format!("{}{}", e.prompt, e.answer))?;
                let mask = answer_mask(&ids);
                Ok((ids, mask))
            })
            .collect::<Result<Vec<_>>>()?;
        let (tokens, mask) = pad_masked(&rows, EOT_ID)?;
        let n = tokens.dim(1)?;
        if n > self.decoder.n_ctx + 1 {
            return Err(Error::Invalid(format!(
                "text regression: a training sequence takes {} tokens, above n_ctx {} (raise n_ctx)",
                n - 1,
                self.decoder.n_ctx
            )));
        }
        Ok(LmBatch::next_token(&tokens)?.with_loss_mask(mask))
    }

    /// Trains the model (f32, CPU) and returns it with the digit tokenizer attached.
    pub fn train(&self) -> Result<(HookedTransformer, RunReport)> {
        self.validate()?;
        let tokenizer = digit_tokenizer()?;
        let (model, report) = self
            .decoder
            .train(VOCAB.len(), |step, seed| self.batch(&tokenizer, step, seed))?;
        Ok((model.with_tokenizer(tokenizer), report))
    }
}

/// `<|endoftext|>` followed by the ids of `text`.
pub fn sequence_ids(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let mut ids = vec![EOT_ID];
    ids.extend(tokenizer.encode(text, false)?.ids);
    Ok(ids)
}

/// The loss mask of `ids` over its `len − 1` predictions: 1 where the next token belongs to an
/// answer (a number token whose nearest non-number token before it is `y:`).
pub fn answer_mask(ids: &[u32]) -> Vec<f32> {
    let mut in_answer = false;
    ids.iter()
        .skip(1)
        .zip(ids)
        .map(|(&next, &prev)| {
            if !is_number_token(prev) {
                in_answer = prev == Y_ID;
            }
            f32::from(u8::from(in_answer && is_number_token(next)))
        })
        .collect()
}

/// Where a greedy number stands.
#[derive(Debug, Clone, Copy, Default)]
struct NumberState {
    tokens: usize,
    dot: bool,
    decimals: usize,
    done: bool,
}

impl NumberState {
    /// Takes `id` (true) or refuses it and stops (a token that is no part of a number); stops
    /// after `decimals` digits past the point or `max_tokens` tokens.
    fn push(&mut self, id: u32, decimals: usize, max_tokens: usize) -> bool {
        if !is_number_token(id) {
            self.done = true;
            return false;
        }
        self.tokens += 1;
        if id == DOT_ID {
            self.dot = true;
        } else if self.dot && id != MINUS_ID {
            self.decimals += 1;
        }
        self.done = self.decimals >= decimals || self.tokens >= max_tokens;
        true
    }
}

/// Greedy answers to `prompts` (ids ending right before the answer, e.g. with `y:`): each
/// continues while it writes number tokens, until `decimals` digits follow the point or it has
/// written `max_tokens`; the answer excludes a token that is no part of a number. Prompts of
/// one length are decoded together, `batch` at a time, with a key/value cache (the prompt runs
/// once, then one position per step).
pub fn greedy_numbers(
    model: &HookedTransformer,
    prompts: &[Vec<u32>],
    decimals: usize,
    max_tokens: usize,
    batch: usize,
) -> Result<Vec<Vec<u32>>> {
    let n_ctx = model.config().n_ctx;
    if let Some(p) = prompts.iter().find(|p| p.is_empty() || p.len() > n_ctx) {
        return Err(Error::Invalid(format!(
            "a prompt of {} tokens (the model takes 1 to {n_ctx})",
            p.len()
        )));
    }
    let mut by_length: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_length.entry(p.len()).or_default().push(i);
    }
    let mut answers = vec![Vec::new(); prompts.len()];
    for group in by_length.values() {
        for chunk in group.chunks(batch.max(1)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            let mut input = Input::from_ids(&rows, model.device())?;
            let mut cache = KvCache::new(model);
            let mut state = vec![NumberState::default(); chunk.len()];
            while state.iter().any(|s| !s.done) && cache.len() < n_ctx {
                let logits = model.run_cached(&input, &mut cache, &mut NoHooks)?;
                let last = logits.dim(1)? - 1;
                let next = logits
                    .narrow(1, last, 1)?
                    .squeeze(1)?
                    .argmax(D::Minus1)?
                    .to_vec1::<u32>()?;
                for ((s, &id), &i) in state.iter_mut().zip(&next).zip(chunk) {
                    if !s.done && s.push(id, decimals, max_tokens) {
                        answers[i].push(id);
                    }
                }
                let step: Vec<Vec<u32>> = next.iter().map(|&id| vec![id]).collect();
                input = Input::from_ids(&step, model.device())?;
            }
        }
    }
    Ok(answers)
}

/// A model's answer to one prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelAnswer {
    /// The answer's tokens.
    pub tokens: Vec<u32>,
    /// The answer as text.
    pub text: String,
    /// The number read from it (`extract_number`), if any.
    pub value: Option<f64>,
}

/// The model's greedy answers to `examples` (see [`greedy_numbers`]); the model must carry the
/// digit tokenizer.
pub fn answer(
    model: &HookedTransformer,
    examples: &[TextExample],
    decimals: usize,
    batch: usize,
) -> Result<Vec<ModelAnswer>> {
    let tokenizer = model
        .tokenizer()
        .ok_or_else(|| Error::Invalid("the model carries no tokenizer".into()))?;
    let prompts = examples
        .iter()
        .map(|e| sequence_ids(tokenizer, &e.prompt))
        .collect::<Result<Vec<_>>>()?;
    // Sign, up to four integer digits, the point and the decimals.
    let max_tokens = decimals + 6;
    greedy_numbers(model, &prompts, decimals, max_tokens, batch)?
        .into_iter()
        .map(|tokens| {
            let text = tokenizer.decode(&tokens, true)?;
            Ok(ModelAnswer {
                value: metarep_eval::tasks::text::extract_number(&text),
                text,
                tokens,
            })
        })
        .collect()
}

/// The tokens of a number printed with `decimals` decimals as in the prompts (`-0.00` as
/// `0.00`), e.g. to compare a decoded answer with a baseline's rounded one.
pub fn number_tokens(tokenizer: &Tokenizer, value: f64, decimals: usize) -> Result<Vec<u32>> {
    let text = metarep_eval::tasks::text::format_number(value, decimals);
    Ok(tokenizer.encode(&text, false)?.ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn spec() -> TextRegressionSpec {
        TextRegressionSpec {
            dim: 1,
            decimals: 2,
            noise: 0.0,
            n_train: 4,
            decoder: DecoderSpec {
                layers: 1,
                d_model: 16,
                heads: 2,
                n_ctx: 80,
                steps: 2,
                batch: 3,
                lr: 1e-3,
                warmup: 1,
                seed: 0,
            },
        }
    }

    #[test]
    fn numbers_take_one_token_per_character_and_decode_back() {
        let tok = digit_tokenizer().unwrap();
        assert_eq!(tok.vocab_size(), VOCAB.len());
        let enc = tok.encode("x: -1.30 0.05 -> y: 12.07\n", false).unwrap();
        let pieces: Vec<&str> = enc.ids.iter().map(|&i| VOCAB[i as usize]).collect();
        assert_eq!(
            pieces,
            [
                "x:", "-", "1", ".", "3", "0", "0", ".", "0", "5", "->", "y:", "1", "2", ".", "0",
                "7"
            ]
        );
        assert_eq!(tok.decode(&enc.ids[12..], true).unwrap(), "12.07");
        assert_eq!(number_tokens(&tok, 0.049, 2).unwrap(), enc.ids[6..10]);
        let zero = [ZERO_ID, DOT_ID, ZERO_ID, ZERO_ID];
        assert_eq!(number_tokens(&tok, -0.001, 2).unwrap(), zero);
        // Anything outside the template is unknown, not silently dropped.
        assert_eq!(tok.encode("z", false).unwrap().ids, [1]);
    }

    #[test]
    fn the_mask_scores_every_answer_token_and_nothing_else() {
        let tok = digit_tokenizer().unwrap();
        let ids = sequence_ids(&tok, "x: 0.50 -> y: -1.00\nx: 2.00 -> y: 4.00").unwrap();
        let mask = answer_mask(&ids);
        assert_eq!(mask.len(), ids.len() - 1);
        let scored: String = ids[1..]
            .iter()
            .zip(&mask)
            .filter(|(_, &m)| m > 0.0)
            .map(|(&i, _)| VOCAB[i as usize])
            .collect();
        assert_eq!(scored, "-1.004.00");
    }

    #[test]
    fn batches_are_deterministic_masked_and_fit_the_context() {
        let s = spec();
        let tok = digit_tokenizer().unwrap();
        let a = s.batch(&tok, 3, 9).unwrap();
        let b = s.batch(&tok, 3, 9).unwrap();
        assert_eq!(
            a.tokens.to_vec2::<u32>().unwrap(),
            b.tokens.to_vec2::<u32>().unwrap()
        );
        let mask = a.loss_mask.as_ref().unwrap().to_vec2::<f32>().unwrap();
        let targets = a.targets.to_vec2::<u32>().unwrap();
        for (row, m) in targets.iter().zip(&mask) {
            // 5 answers of 4 or 5 tokens (2 decimals, |y| < 10 almost surely).
            let scored = m.iter().filter(|&&v| v > 0.0).count();
            assert!((20..=27).contains(&scored), "{scored}");
            assert!(row
                .iter()
                .zip(m)
                .all(|(&t, &v)| v == 0.0 || is_number_token(t)));
        }
        let mut small = s;
        small.decoder.n_ctx = 20;
        assert!(small
            .batch(&tok, 0, 0)
            .unwrap_err()
            .to_string()
            .contains("raise n_ctx"));
    }

    #[test]
    fn greedy_numbers_stop_at_the_decimals_or_a_non_number_token() {
        let mut st = NumberState::default();
        for id in [MINUS_ID, ZERO_ID + 1, DOT_ID, ZERO_ID] {
            assert!(st.push(id, 2, 8));
            assert!(!st.done);
        }
        assert!(st.push(ZERO_ID + 3, 2, 8) && st.done);
        let mut st = NumberState::default();
        assert!(!st.push(Y_ID, 2, 8) && st.done);
        let mut st = NumberState::default();
        assert!(st.push(ZERO_ID, 2, 1) && st.done);
    }

    #[test]
    fn a_trained_model_answers_with_numbers_of_the_printed_form() {
        let mut s = spec();
        s.decoder.steps = 30;
        s.decoder.lr = 3e-3;
        let (model, report) = s.train().unwrap();
        assert!(report.final_loss < report.first_loss);
        let examples: Vec<TextExample> = s
            .prompts(3, 5, &mut seeded(1))
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        let answers = answer(&model, &examples, 2, 2).unwrap();
        assert_eq!(answers.len(), 5);
        // The cached, length-grouped decoding gives each prompt what it gets alone, and what
        // the uncached forward pass predicts.
        assert_eq!(answer(&model, &examples, 2, 1).unwrap(), answers);
        let tok = model.tokenizer().unwrap();
        for (e, a) in examples.iter().zip(&answers) {
            let mut ids = sequence_ids(tok, &e.prompt).unwrap();
            for &t in &a.tokens {
                let logits = model
                    .forward(Input::from_ids(&[ids.clone()], &Device::Cpu).unwrap())
                    .unwrap();
                let row = logits.get(0).unwrap().get(ids.len() - 1).unwrap();
                assert_eq!(row.argmax(0).unwrap().to_scalar::<u32>().unwrap(), t);
                ids.push(t);
            }
        }
        for a in &answers {
            assert!(a.tokens.len() <= 8 && a.tokens.iter().all(|&t| is_number_token(t)));
            assert_eq!(a.text.len(), a.tokens.len());
        }
        let mut invalid = s.clone();
        invalid.decoder.heads = 3;
        assert!(invalid
            .validate()
            .unwrap_err()
            .to_string()
            .contains("heads 3"));
        invalid.decoder.heads = 2;
        invalid.noise = -1.0;
        assert!(invalid
            .validate()
            .unwrap_err()
            .to_string()
            .contains("noise"));
    }
}

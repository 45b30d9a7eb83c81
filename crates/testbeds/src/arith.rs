//! The `arith` model: a small GPT-2-style transformer trained on the tiered arithmetic suite
//! (`metarep_eval::tasks::text`), with a BPE tokenizer trained by `tokenizers` on that corpus so
//! that numbers split into single- and multi-token pieces as in real LMs.
//!
//! A training sequence is `<|endoftext|> a ∘ b = c <|endoftext|>` (tokens), right-padded with
//! `<|endoftext|>`; the loss counts only the answer tokens and the closing `<|endoftext|>`, so
//! a prompt is answered correctly when every answer token and the end are predicted (greedy
//! decoding). The tokenizer splits on spaces (`Metaspace`, `▁` marks a word start) and learns
//! merges of digits, so frequent numbers become one token and rare ones several. Training is
//! stopped early on purpose (see [`ArithSpec::steps`]): the fixture must be sometimes wrong.

use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::RunReport;
use metarep_eval::tasks::text::{ArithmeticSuite, Op, Tier};
use metarep_model::predictions::PromptPair;
use metarep_model::train::LmBatch;
use metarep_model::{HookedTransformer, ModelConfig, Tokenizer};
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::AddedToken;

use crate::error::{Error, Result};
use crate::recipe::{default_warmup, train_fixture};
use crate::tokenization::{padded, tokenize_all, Framing, TokenClass, TokenizedProblem};

/// The tokenizer's one special token: beginning, end and padding of every sequence.
pub const EOT: &str = "<|endoftext|>";

/// Model shape, tokenizer and training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArithSpec {
    /// In-distribution operands have 1..=`max_digits` digits.
    pub max_digits: u32,
    /// Operations trained on.
    pub ops: Vec<Op>,
    /// BPE vocabulary size (the special token and the character alphabet included).
    pub vocab: usize,
    /// Problems in the tokenizer's training corpus.
    pub corpus: usize,
    /// Seed of the tokenizer corpus (shared by every model seed).
    pub corpus_seed: u64,
    /// Transformer blocks.
    pub layers: usize,
    /// Residual width.
    pub d_model: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Context length.
    pub n_ctx: usize,
    /// Training steps (few enough that the model stays sometimes wrong: the default 3000 leave
    /// seed 0 at about 70% exact answers in distribution).
    pub steps: usize,
    /// Problems per step.
    pub batch: usize,
    /// Peak learning rate (warmup then cosine decay).
    pub lr: f64,
    /// Seed of the weights and the training problems.
    pub seed: u64,
}

impl Default for ArithSpec {
    fn default() -> Self {
        Self {
            max_digits: 2,
            ops: Op::ALL.to_vec(),
            vocab: 96,
            corpus: 20_000,
            corpus_seed: 0,
            layers: 2,
            d_model: 128,
            heads: 4,
            n_ctx: 32,
            steps: 3000,
            batch: 64,
            lr: 1e-3,
            seed: 0,
        }
    }
}

impl ArithSpec {
    /// The in-distribution tier of the suite.
    pub fn suite(&self) -> ArithmeticSuite {
        ArithmeticSuite {
            tier: Tier::InDistribution {
                max_digits: self.max_digits,
            },
            ops: self.ops.clone(),
        }
    }

    /// Trains the BPE tokenizer on `corpus` in-distribution problems (prompt and answer).
    pub fn train_tokenizer(&self) -> Result<Tokenizer> {
        if self.vocab < 16 {
            return Err(Error::Invalid(format!(
                "arith spec: vocab {} is below the character alphabet (≥ 16)",
                self.vocab
            )));
        }
        let mut rng = seeded(derive_seed(self.corpus_seed, "arith/tokenizer-corpus"));
        let texts: Vec<String> = self
            .suite()
            .sample(&mut rng, self.corpus)?
            .into_iter()
            .map(|p| format!("{}{}", p.text.prompt, p.text.answer))
            .collect();
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        let meta = Metaspace::new('▁', PrependScheme::Always, true);
        inner.with_pre_tokenizer(Some(meta.clone()));
        inner.with_decoder(Some(meta));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(self.vocab)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOT, true)])
            .build()
            .into();
        inner
            .train(&mut trainer, texts.iter())
            .map_err(|e| Error::Invalid(format!("training the arith tokenizer: {e}")))?;
        Ok(Tokenizer::from_inner(inner))
    }

    /// The model configuration for a tokenizer of `vocab` ids.
    pub fn model_config(&self, vocab: usize) -> ModelConfig {
        ModelConfig::gpt2_like(self.layers, self.d_model, self.heads, vocab, self.n_ctx)
    }

    /// The training batch of one step: `<|endoftext|>`-framed problems padded to the longest,
    /// the loss on answer tokens and the closing `<|endoftext|>`.
    pub fn batch(&self, tokenizer: &Tokenizer, step: usize, seed: u64) -> Result<LmBatch> {
        let mut rng = seeded(derive_seed(seed, &format!("arith/step{step}")));
        let problems = self.suite().sample(&mut rng, self.batch)?;
        let framing = framing(tokenizer)?;
        let framed = tokenize_all(tokenizer, &problems, &framing)?;
        let (tokens, mask) = padded(&framed, framing.pad)?;
        let n = tokens.dim(1)?;
        if n > self.n_ctx + 1 {
            return Err(Error::Invalid(format!(
                "arith spec: a training problem takes {} tokens, above n_ctx {} (raise n_ctx)",
                n - 1,
                self.n_ctx
            )));
        }
        Ok(LmBatch::next_token(&tokens)?.with_loss_mask(mask))
    }

    /// Trains the model (f32, CPU) with `tokenizer` and returns it with the tokenizer attached.
    pub fn train(&self, tokenizer: &Tokenizer) -> Result<(HookedTransformer, RunReport)> {
        let cfg = self.model_config(tokenizer.vocab_size());
        let warmup = default_warmup(self.steps);
        let (model, report) =
            train_fixture(cfg, self.seed, self.steps, self.lr, warmup, |step, seed| {
                self.batch(tokenizer, step, seed)
            })?;
        Ok((model.with_tokenizer(tokenizer.clone()), report))
    }
}

/// The arith model's framing: [`EOT`] opens and closes every problem and pads batches.
pub fn framing(tokenizer: &Tokenizer) -> Result<Framing> {
    let eot = tokenizer
        .token_to_id(EOT)
        .ok_or_else(|| Error::Invalid(format!("the tokenizer has no `{EOT}` token")))?;
    Ok(Framing {
        bos: Some(eot),
        eos: Some(eot),
        pad: eot,
    })
}

/// Patching pairs from additions with single-token operands, `[EOT, a, +, b, =]`: each
/// paired with the next such addition whose answer starts with another token (the
/// alternative); additions without such a partner are left out.
pub fn addition_pairs(problems: &[TokenizedProblem]) -> Vec<PromptPair> {
    let adds: Vec<&TokenizedProblem> = problems
        .iter()
        .filter(|p| {
            p.problem.op == Op::Add && p.class() == TokenClass::Single && p.framed.answer_start == 5
        })
        .collect();
    let mut pairs = Vec::new();
    for (i, p) in adds.iter().enumerate() {
        if let Some(q) = adds
            .iter()
            .cycle()
            .skip(i + 1)
            .take(adds.len())
            .find(|q| q.framed.ids[5] != p.framed.ids[5])
        {
            pairs.push(PromptPair {
                clean: p.framed.ids[..5].to_vec(),
                corrupted: q.framed.ids[..5].to_vec(),
                answer: p.framed.ids[5],
                alternative: q.framed.ids[5],
            });
        }
    }
    pairs
}

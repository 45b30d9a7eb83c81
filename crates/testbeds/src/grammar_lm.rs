//! The grammar-lm testbed: a small GPT-2-style language model trained on the agreement grammar
//! of [`metarep_eval::tasks::grammar`], whose generating latents (subject number, relative
//! clause, tense, attractor, verb position) are known per token. fig10 trains SAEs on its
//! residual stream and asks whether any latent detects a grammar latent.
//!
//! - [`train_lm`]: the model, trained by the fixture recipe on grammar samples drawn from
//!   `(seed, step)`;
//! - [`agreement`]: how often the model prefers the right-number verb where the main verb comes
//!   next (all cases, and with an attractor in between);
//! - [`LatentQuestions`]: each grammar latent as a detection question over held-out tokens, and
//!   the best single-direction AUROC a set of scores (SAE latents, random directions, residual
//!   coordinates) achieves on it.

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::RunReport;
use metarep_eval::metrics::aurocs;
use metarep_eval::tasks::grammar::{
    GrammarSpec, Sample, ATTRACTOR, DOMAINS, PAST, SUBJECT_PLURAL, VERB_NEXT,
};
use metarep_model::ops::softmax_last_dim;
use metarep_model::train::LmBatch;
use metarep_model::{HookedTransformer, Input, ModelConfig, NoHooks};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::recipe::train_fixture;

/// The language model and how it is trained.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmSpec {
    /// Load the checked-in `fixtures/grammar-lm` instead of training (the settings below
    /// must then match the fixture's).
    pub fixture: bool,
    /// Layers.
    pub layers: usize,
    /// Residual width.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Context length (tokens per sequence).
    pub n_ctx: usize,
    /// Training steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
}

impl LmSpec {
    /// The model configuration for `grammar`'s vocabulary.
    pub fn model_config(&self, grammar: &GrammarSpec) -> ModelConfig {
        ModelConfig::gpt2_like(
            self.layers,
            self.d_model,
            self.heads,
            grammar.vocab(),
            self.n_ctx,
        )
    }
}

/// Trains the language model of `lm` on `grammar` (batches depend only on `(step, seed)`).
pub fn train_lm(
    grammar: &GrammarSpec,
    lm: &LmSpec,
    seed: u64,
) -> Result<(HookedTransformer, RunReport)> {
    let (batch, len) = (lm.batch, lm.n_ctx + 1);
    let source = |step: usize, seed: u64| -> Result<LmBatch> {
        let mut rng = seeded(derive_seed(seed, &format!("fig10/lm/step{step}")));
        let samples = grammar.samples(&mut rng, batch, len)?;
        Ok(LmBatch::next_token(&tokens_tensor(&samples)?)?)
    };
    let cfg = lm.model_config(grammar);
    train_fixture(cfg, seed, lm.steps, lm.lr, lm.warmup, source)
}

/// `[n, len]` u32 token ids of `samples` (all of one length).
pub fn tokens_tensor(samples: &[Sample]) -> Result<Tensor> {
    let len = samples.first().map_or(0, |s| s.tokens.len());
    if let Some(s) = samples.iter().find(|s| s.tokens.len() != len) {
        return Err(Error::Invalid(format!(
            "samples of different lengths ({} and {len} tokens)",
            s.tokens.len()
        )));
    }
    let flat: Vec<u32> = samples.iter().flat_map(|s| s.tokens.clone()).collect();
    Ok(Tensor::from_vec(flat, (samples.len(), len), &Device::Cpu)?)
}

/// Agreement of a model's next-token distribution where the main verb comes next in the
/// present tense.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// Fraction of such positions where the correct-number verbs get more probability than the
    /// wrong-number ones.
    pub all: f64,
    /// The same over the positions with an attractor between subject and verb.
    pub attractor: f64,
    /// Positions with an attractor.
    pub attractor_cases: usize,
}

/// [`Agreement`] of `model` on `samples` of `grammar`.
pub fn agreement(
    model: &HookedTransformer,
    grammar: &GrammarSpec,
    samples: &[Sample],
) -> Result<Agreement> {
    let logits = model.run_with_hooks(Input::new(tokens_tensor(samples)?), &mut NoHooks)?;
    let probs = softmax_last_dim(&logits)?.to_vec3::<f32>()?;
    let (sing, plur) = (grammar.present_verbs(false), grammar.present_verbs(true));
    let (mut right, mut n, mut right_attr, mut n_attr) = (0usize, 0usize, 0usize, 0usize);
    for (s, p) in samples.iter().zip(&probs) {
        for (t, l) in s.labels.iter().enumerate() {
            if !l[VERB_NEXT] || l[PAST] {
                continue;
            }
            let mass = |ids: &[u32]| ids.iter().map(|&i| p[t][i as usize]).sum::<f32>();
            let (good, bad) = if l[SUBJECT_PLURAL] {
                (&plur, &sing)
            } else {
                (&sing, &plur)
            };
            let ok = mass(good) > mass(bad);
            n += 1;
            right += usize::from(ok);
            if l[ATTRACTOR] {
                n_attr += 1;
                right_attr += usize::from(ok);
            }
        }
    }
    Ok(Agreement {
        all: right as f64 / n.max(1) as f64,
        attractor: right_attr as f64 / n_attr.max(1) as f64,
        attractor_cases: n_attr,
    })
}

/// The grammar latents as detection questions: per latent, the held-out token rows it is
/// asked on (its [`DOMAINS`] entry; `None` = every row) and the labels there.
#[derive(Debug, Clone)]
pub struct LatentQuestions {
    rows: Vec<Option<Vec<usize>>>,
    labels: Vec<Vec<bool>>,
}

impl LatentQuestions {
    /// The questions over the tokens of `samples`, row-major (sample, position).
    pub fn new(samples: &[Sample]) -> Self {
        let flat: Vec<[bool; 6]> = samples.iter().flat_map(|s| s.labels.clone()).collect();
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for (j, domain) in DOMAINS.iter().enumerate() {
            let keep: Vec<usize> = (0..flat.len())
                .filter(|&r| domain.is_none_or(|d| flat[r][d]))
                .collect();
            labels.push(keep.iter().map(|&r| flat[r][j]).collect());
            rows.push(domain.map(|_| keep));
        }
        Self { rows, labels }
    }

    /// Best AUROC per latent over the columns of `scores` (`[rows, n]`, rows as in
    /// [`LatentQuestions::new`]); with `signed`, a column's negation counts too (directions
    /// have no sign; SAE latents do). A constant column scores 0.5.
    pub fn best(&self, scores: &Tensor, signed: bool) -> Result<Vec<f64>> {
        let cols = scores
            .t()?
            .contiguous()?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let everywhere: Vec<usize> = (0..self.labels.len())
            .filter(|&j| self.rows[j].is_none())
            .collect();
        let sets: Vec<&[bool]> = everywhere
            .iter()
            .map(|&j| self.labels[j].as_slice())
            .collect();
        let mut best = vec![0.5f64; self.labels.len()];
        let mut keep =
            |j: usize, a: f64| best[j] = best[j].max(if signed { a.max(1.0 - a) } else { a });
        for col in &cols {
            if col.iter().all(|&v| v == col[0]) {
                continue;
            }
            for (&j, a) in everywhere.iter().zip(aurocs(col, &sets)?) {
                keep(j, a);
            }
            for (j, rows) in self.rows.iter().enumerate() {
                if let Some(rows) = rows {
                    let sub: Vec<f64> = rows.iter().map(|&r| col[r]).collect();
                    keep(j, aurocs(&sub, &[&self.labels[j]])?[0]);
                }
            }
        }
        Ok(best)
    }
}

//! Text generation with a key/value cache: the prompt runs once, then one position per step
//! ([`HookedTransformer::run_cached`]); greedy decoding or seeded sampling (temperature, top-k,
//! top-p); stop tokens; a callback per new token (for streaming). Hooks apply at every step and
//! see the positions that step computes (the whole prompt first, then one position at a time).
//!
//! ```
//! use candle_core::{DType, Device};
//! use metarep_model::generate::{GenerateOptions, Sampling};
//! use metarep_model::{HookedTransformer, ModelConfig, NoHooks};
//!
//! # fn main() -> metarep_model::Result<()> {
//! let model = HookedTransformer::random(ModelConfig::gpt2_like(2, 16, 2, 20, 32), 0, DType::F32, &Device::Cpu)?;
//! let opts = GenerateOptions { max_new_tokens: 5, ..GenerateOptions::default() };
//! let new = model.generate(&[1, 2, 3], &opts, &mut NoHooks, |_| Ok(()))?;
//! assert_eq!(new.len(), 5);
//! # Ok(())
//! # }
//! ```

use candle_core::DType;
use metarep_core::rng::seeded;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::input::Input;
use crate::model::{HookedTransformer, KvCache};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first of equals).
    Greedy,
    /// A draw from the distribution at `temperature`, restricted to the `top_k` most likely
    /// tokens and then to the smallest set holding `top_p` of the probability, from a generator
    /// seeded by `seed`.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Keep only this many most likely tokens.
        top_k: Option<usize>,
        /// Keep the smallest most-likely set with at least this probability (in `(0, 1]`).
        top_p: Option<f64>,
        /// Seed of the draws.
        seed: u64,
    },
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Generation stops after emitting any of these (it is included in the output).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    /// 32 greedy tokens, no stop tokens.
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
        }
    }
}

impl Sampling {
    /// Checks the parameters; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = *self
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::Invalid(format!(
                    "temperature must be finite and > 0, got {temperature}"
                )));
            }
            if top_k == Some(0) {
                return Err(Error::Invalid("top_k must be ≥ 1".into()));
            }
            if let Some(p) = top_p {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(Error::Invalid(format!("top_p must be in (0, 1], got {p}")));
                }
            }
        }
        Ok(())
    }
}

/// Picks tokens from logits as a [`Sampling`] says, drawing from its own seeded generator.
#[derive(Debug, Clone)]
pub struct Chooser {
    sampling: Sampling,
    rng: ChaCha8Rng,
}

impl Chooser {
    /// A chooser for `sampling` (seeded by its seed; greedy choice draws nothing).
    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Chooser {
            sampling,
            rng: seeded(seed),
        }
    }

    /// The next token for `logits` `[vocab]`.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits) as u32,
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
                ..
            } => sample(logits, temperature, top_k, top_p, self.rng.random::<f64>()) as u32,
        }
    }
}

/// The index of the largest value (the first of equals; NaN never wins).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Draws a token from `logits` at `temperature` restricted by `top_k` and `top_p`, with the
/// uniform number `u` in `[0, 1)`.
pub fn sample(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    u: f64,
) -> usize {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = top_k {
        order.truncate(k.max(1));
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = top_p {
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .position(|&p| {
                mass += p;
                mass >= top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut acc = 0.0;
    for (&i, &p) in order.iter().zip(&probs) {
        acc += p;
        if u < acc {
            return i;
        }
    }
    *order.last().unwrap_or(&0)
}

impl HookedTransformer {
    /// Continues `prompt` by up to `opts.max_new_tokens` tokens (see the module docs), calling
    /// `on_token` with each as it is chosen; returns the new tokens.
    pub fn generate<H: Hooks>(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        hooks: &mut H,
        mut on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::Invalid("generation needs a non-empty prompt".into()));
        }
        opts.sampling.validate()?;
        let mut chooser = Chooser::new(opts.sampling);
        let mut cache = KvCache::new(self);
        let mut next: Vec<u32> = prompt.to_vec();
        let mut out = Vec::with_capacity(opts.max_new_tokens);
        while out.len() < opts.max_new_tokens {
            let input = Input::from_ids(&[next], self.device())?;
            let logits = self.run_cached(&input, &mut cache, hooks)?;
            let last = logits.dim(1)? - 1;
            let row = logits
                .get(0)?
                .get(last)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            let token = chooser.choose(&row);
            out.push(token);
            on_token(token)?;
            if opts.stop_tokens.contains(&token) {
                break;
            }
            next = vec![token];
        }
        Ok(out)
    }
}

//! A dashboard page for an SAE at a hook of a language model, over token contexts.

use candle_core::{DType, Device, Tensor};
use metarep_model::hooks::HookPoint;
use metarep_model::{HookedTransformer, Input};

use super::collect::{choose_latents, DashboardCollector, Histogram};
use super::html::{DashboardPage, ExampleView, LatentCard};
use crate::error::Result;
use crate::hook_rows::{context_length, hook_rows};
use crate::logit_lens::{LogitLens, TokenEffect};
use crate::sae::Sae;

/// Settings of [`build_dashboard`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DashboardSettings {
    /// Latents shown by activation mass (sum of activations over the data), heaviest first.
    pub top_latents: usize,
    /// Further latents drawn at random among those that fired.
    pub random_latents: usize,
    /// Top contexts shown per latent.
    pub examples: usize,
    /// Tokens shown before each context's strongest activation.
    pub before: usize,
    /// Tokens shown after it.
    pub after: usize,
    /// Histogram bins.
    pub bins: usize,
    /// Promoted and suppressed tokens listed per latent.
    pub logit_tokens: usize,
    /// Positions at the start of each context left out (e.g. 1 for an attention-sink first
    /// token, whose residual norm dwarfs the rest).
    pub skip_positions: usize,
    /// Contexts per forward pass.
    pub batch: usize,
    /// Seed of the random latents.
    pub seed: u64,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            top_latents: 8,
            random_latents: 4,
            examples: 8,
            before: 12,
            after: 4,
            bins: 30,
            logit_tokens: 8,
            skip_positions: 1,
            batch: 8,
            seed: 0,
        }
    }
}

/// The dashboard of `sae` at `point` of `model` over `contexts` (token ids, all of one length
/// greater than `skip_positions`): latents chosen by [`choose_latents`] from their activation
/// mass, each with its top contexts, activation histogram and the tokens its decoder direction
/// promotes and suppresses (through the final norm's scale and `W_U`). Tokens are shown as the
/// model's tokenizer decodes them (ids without one).
pub fn build_dashboard(
    model: &HookedTransformer,
    sae: &Sae,
    point: HookPoint,
    contexts: &[Vec<u32>],
    settings: &DashboardSettings,
) -> Result<DashboardPage> {
    point.check_available(model.config())?;
    let len = context_length(contexts, settings.skip_positions, "dashboard")?;
    let d_sae = sae.config.d_sae;
    let batches: Vec<&[Vec<u32>]> = contexts.chunks(settings.batch.max(1)).collect();
    let mut acts = Vec::with_capacity(batches.len());
    let mut mass = vec![0f64; d_sae];
    for chunk in &batches {
        let input = Input::from_ids(chunk, model.device())?;
        let rows = hook_rows(
            model,
            point,
            &input,
            settings.skip_positions,
            sae.config.d_in,
        )?;
        let sums = sae
            .encode(&rows)?
            .to_dense(d_sae)?
            .sum(0)?
            .to_dtype(DType::F64)?;
        for (m, s) in mass.iter_mut().zip(sums.to_vec1::<f64>()?) {
            *m += s;
        }
        acts.push(rows);
    }
    let latents = choose_latents(
        &mass,
        settings.top_latents,
        settings.random_latents,
        settings.seed,
    )?;
    let columns = Tensor::new(
        latents.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    let mut collector = DashboardCollector::new(
        latents.clone(),
        settings.examples,
        settings.before,
        settings.after,
    )?;
    let shown = len - settings.skip_positions;
    for (b, (chunk, rows)) in batches.iter().zip(&acts).enumerate() {
        let chosen = sae
            .encode(rows)?
            .to_dense(d_sae)?
            .to_device(&Device::Cpu)?
            .index_select(&columns, 1)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let per_context = shown * latents.len();
        for (c, context) in chunk.iter().enumerate() {
            let id = b * settings.batch.max(1) + c;
            let values = &chosen[c * per_context..(c + 1) * per_context];
            collector.observe(id, &context[settings.skip_positions..], values)?;
        }
    }
    let effects = LogitLens::of(model)?;
    let decode = |ids: &[u32]| -> Vec<String> {
        match model.tokenizer() {
            Some(t) => ids
                .iter()
                .map(|&id| t.decode(&[id], false).unwrap_or_else(|_| format!("#{id}")))
                .collect(),
            None => ids.iter().map(|id| format!("#{id}")).collect(),
        }
    };
    let w_dec = sae.w_dec.as_tensor().to_device(&Device::Cpu)?;
    let mut cards = Vec::with_capacity(latents.len());
    for (rank, record) in collector.finish().into_iter().enumerate() {
        let (promoted, suppressed) = match &effects {
            Some(lens) => lens.effects(&w_dec.get(record.latent)?, settings.logit_tokens)?,
            None => (Vec::new(), Vec::new()),
        };
        let named = |list: Vec<TokenEffect>| {
            list.into_iter()
                .map(|e| (decode(&[e.token]).remove(0), e.effect))
                .collect()
        };
        cards.push(LatentCard {
            latent: record.latent,
            label: if rank < settings.top_latents.min(latents.len()) {
                format!("top {} by activation mass", rank + 1)
            } else {
                "random among latents that fired".into()
            },
            density: record.density(),
            histogram: Histogram::of(&record.values, settings.bins),
            promoted: named(promoted),
            suppressed: named(suppressed),
            examples: record
                .top
                .iter()
                .map(|e| ExampleView {
                    tokens: decode(&e.tokens),
                    activations: e.activations.clone(),
                })
                .collect(),
        });
    }
    Ok(DashboardPage {
        title: format!("SAE at {} ({} latents)", point.name(), d_sae),
        notes: vec![format!(
            "{} contexts of {len} tokens (first {} left out); latents: {} by activation mass, \
             {} random; top {} contexts each, {} tokens before and {} after the peak; logit \
             effects through the final norm's scale and W_U",
            contexts.len(),
            settings.skip_positions,
            settings.top_latents,
            settings.random_latents,
            settings.examples,
            settings.before,
            settings.after
        )],
        cards,
    })
}

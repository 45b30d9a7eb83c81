//! The SAE validation suite, run on a model over token contexts: does a latent mean one thing,
//! does the code keep what the activation holds, and does writing a latent's direction do what
//! its decoder says?
//!
//! - **Purity** ([`purity`]): the share of a latent's top activations that carry one label (a
//!   token, or a [`TokenClass`]), next to the label's base rate and the excess over it, for the
//!   checked latents and for random directions of the residual stream (the baseline).
//! - **Probe leakage** ([`probe`]): for each token class, a logistic probe on the raw
//!   activations and the same probe on the SAE's codes; a held-out balanced-accuracy gap above
//!   [`ValidationSettings::leak_points`] percentage points is flagged.
//! - **Causal ε-sweeps** ([`steering`]): add `ε · a_max · d_i` (the latent's decoder direction
//!   at its largest observed activation) at the hook and measure the lift of the tokens `d_i`
//!   promotes through the unembedding; counted monotone when the lift rises with every step
//!   of `ε`. Random directions of the same size are the baseline.

pub mod labels;
pub mod probe;
pub mod purity;
pub mod steering;

use candle_core::{DType, Device, Tensor};
use metarep_model::hooks::HookPoint;
use metarep_model::{HookedTransformer, Input};
use serde::Serialize;

pub use labels::TokenClass;
pub use probe::{probe_accuracy, ProbeSettings};
pub use purity::{top_positions, PositionLabels, Purity};
pub use steering::{epsilon_sweep, strictly_increasing};

use crate::dashboard::choose_latents;
use crate::error::{Error, Result};
use crate::hook_rows::{context_length, hook_rows};
use crate::logit_lens::LogitLens;
use crate::sae::Sae;

/// Settings of [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationSettings {
    /// Latents checked by activation mass, heaviest first.
    pub top_latents: usize,
    /// Further latents drawn at random among those that fired.
    pub random_latents: usize,
    /// Random residual directions checked as the baseline.
    pub random_directions: usize,
    /// Top activations per direction for purity.
    pub top_n: usize,
    /// Rows the probes use (the first three quarters train, the rest test).
    pub probe_rows: usize,
    /// Probe optimiser.
    pub probe: ProbeSettings,
    /// A probe gap above this many accuracy points is flagged.
    pub leak_points: f64,
    /// Contexts each ε-sweep runs on, and their first tokens it keeps.
    pub sweep_contexts: usize,
    /// Tokens of each sweep context (its first ones).
    pub sweep_len: usize,
    /// The ε values, ascending (multiples of the latent's largest observed activation).
    pub eps: Vec<f64>,
    /// Promoted tokens whose logits an ε-sweep follows.
    pub promoted_tokens: usize,
    /// Positions left out at the start of each context (1: an attention-sink first token).
    pub skip_positions: usize,
    /// Contexts per forward pass.
    pub batch: usize,
    /// Seed of the random latents and directions.
    pub seed: u64,
}

impl Default for ValidationSettings {
    fn default() -> Self {
        Self {
            top_latents: 8,
            random_latents: 8,
            random_directions: 8,
            top_n: 20,
            probe_rows: 8000,
            probe: ProbeSettings::default(),
            leak_points: 5.0,
            sweep_contexts: 2,
            sweep_len: 32,
            eps: vec![-1.0, -0.5, 0.0, 0.5, 1.0, 2.0],
            promoted_tokens: 8,
            skip_positions: 1,
            batch: 8,
            seed: 0,
        }
    }
}

/// Purity and ε-sweep of one direction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectionCheck {
    /// `latent N` or `random N`.
    pub direction: String,
    /// Its purity (`None` if it never fired).
    pub purity: Option<Purity>,
    /// The promoted tokens' logit lift at each ε.
    pub sweep: Vec<f64>,
    /// Whether the lift rises with every step of ε.
    pub monotone: bool,
}

/// The probe-leakage check of one token class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeLeak {
    /// The class ([`TokenClass::name`]).
    pub class: String,
    /// Its share of the test rows.
    pub base_rate: f64,
    /// Held-out balanced accuracy of the probe on the raw activations.
    pub raw_accuracy: f64,
    /// ... on the SAE's codes.
    pub code_accuracy: f64,
    /// `100 · (raw − code)` accuracy points.
    pub gap_points: f64,
    /// Whether `|gap_points|` exceeds the setting's `leak_points`.
    pub flagged: bool,
}

/// Everything [`validate`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    /// The hook.
    pub hook: String,
    /// Positions the purity and probe checks saw.
    pub positions: usize,
    /// The ε values of the sweeps.
    pub eps: Vec<f64>,
    /// The SAE's latents.
    pub latents: Vec<DirectionCheck>,
    /// Random residual directions (baseline).
    pub random: Vec<DirectionCheck>,
    /// One per token class.
    pub probes: Vec<ProbeLeak>,
}

impl ValidationReport {
    /// Mean purity excess over the base rate ([`Purity::excess`]) of `checks`.
    pub fn mean_purity(checks: &[DirectionCheck]) -> f64 {
        let v: Vec<f64> = checks
            .iter()
            .filter_map(|c| c.purity.as_ref().map(|p| p.excess))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }

    /// How many of `checks` have a monotone ε-sweep.
    pub fn monotone(checks: &[DirectionCheck]) -> usize {
        checks.iter().filter(|c| c.monotone).count()
    }
}

/// Runs the validation suite for `sae` at `point` of `model` over `contexts` (token ids, one
/// length greater than `skip_positions`).
pub fn validate(
    model: &HookedTransformer,
    sae: &Sae,
    point: HookPoint,
    contexts: &[Vec<u32>],
    settings: &ValidationSettings,
) -> Result<ValidationReport> {
    point.check_available(model.config())?;
    let skip = settings.skip_positions;
    let len = context_length(contexts, skip, "validation")?;
    if settings.eps.windows(2).any(|w| w[1] <= w[0]) || settings.eps.len() < 2 {
        return Err(Error::Invalid(format!(
            "validation eps must be ≥ 2 ascending values, got {:?}",
            settings.eps
        )));
    }
    let d_sae = sae.config.d_sae;
    let mut rows = Vec::new();
    for chunk in contexts.chunks(settings.batch.max(1)) {
        let input = Input::from_ids(chunk, model.device())?;
        rows.push(hook_rows(model, point, &input, skip, sae.config.d_in)?);
    }
    let rows = Tensor::cat(&rows, 0)?;
    let codes = sae.encode(&rows)?.to_dense(d_sae)?.to_dtype(DType::F32)?;
    let mass: Vec<f64> = codes.sum(0)?.to_dtype(DType::F64)?.to_vec1()?;
    let latents = choose_latents(
        &mass,
        settings.top_latents,
        settings.random_latents,
        settings.seed,
    )?;
    let tokenizer = model.tokenizer();
    let labels = PositionLabels::new(
        contexts
            .iter()
            .flat_map(|c| c[skip..].iter().copied())
            .collect(),
        |id| match tokenizer {
            Some(t) => t.decode(&[id], false).unwrap_or_default(),
            None => String::new(),
        },
    );
    let lens = LogitLens::of(model)?.ok_or_else(|| {
        Error::Invalid("validation: the model has no unembedding for ε-sweeps".into())
    })?;
    let keep = settings.sweep_len.clamp(skip + 1, len);
    let sweep_contexts: Vec<Vec<u32>> = contexts
        [..settings.sweep_contexts.clamp(1, contexts.len())]
        .iter()
        .map(|c| c[..keep].to_vec())
        .collect();
    let sweep_contexts = &sweep_contexts;
    let w_dec = sae
        .w_dec
        .as_tensor()
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    let mut checked = Vec::new();
    let mut sizes = Vec::new();
    for &latent in &latents {
        let column: Vec<f32> = codes.narrow(1, latent, 1)?.flatten_all()?.to_vec1()?;
        let a_max = column.iter().copied().fold(0f32, f32::max) as f64;
        let unit = sae
            .denormalize(&w_dec.get(latent)?.unsqueeze(0)?, None)?
            .squeeze(0)?;
        let direction = (unit * a_max)?;
        sizes.push(direction.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64);
        checked.push(check_direction(
            model,
            &lens,
            point,
            sweep_contexts,
            &labels,
            &column,
            &direction,
            format!("latent {latent}"),
            settings,
        )?);
    }
    // Random unit directions scaled to the latents' mean size.
    let size = sizes.iter().sum::<f64>() / sizes.len().max(1) as f64;
    let mut rng = metarep_core::rng::seeded(metarep_core::rng::derive_seed(
        settings.seed,
        "random directions",
    ));
    let mut random = Vec::new();
    for r in 0..settings.random_directions {
        let v = metarep_core::rng::normal_vec(&mut rng, sae.config.d_in, 0.0, 1.0)?;
        let v = Tensor::from_vec(v, sae.config.d_in, &Device::Cpu)?.to_dtype(DType::F32)?;
        let v = (&v / v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64)?;
        let projection: Vec<f32> = rows.matmul(&v.unsqueeze(1)?)?.flatten_all()?.to_vec1()?;
        random.push(check_direction(
            model,
            &lens,
            point,
            sweep_contexts,
            &labels,
            &projection,
            &(v * size)?,
            format!("random {r}"),
            settings,
        )?);
    }
    let probes = probe_leaks(&rows, &codes, &labels, settings)?;
    Ok(ValidationReport {
        hook: point.name(),
        positions: labels.len(),
        eps: settings.eps.clone(),
        latents: checked,
        random,
        probes,
    })
}

/// Purity of `activations`' top positions and the ε-sweep of `direction`.
#[allow(clippy::too_many_arguments)]
fn check_direction(
    model: &HookedTransformer,
    lens: &LogitLens,
    point: HookPoint,
    contexts: &[Vec<u32>],
    labels: &PositionLabels,
    activations: &[f32],
    direction: &Tensor,
    name: String,
    settings: &ValidationSettings,
) -> Result<DirectionCheck> {
    let purity = labels.purity(&top_positions(activations, settings.top_n));
    let (promoted, _) = lens.effects(direction, settings.promoted_tokens)?;
    let promoted: Vec<u32> = promoted.iter().map(|e| e.token).collect();
    let sweep = epsilon_sweep(
        model,
        point,
        contexts,
        settings.skip_positions,
        direction,
        &promoted,
        &settings.eps,
    )?;
    Ok(DirectionCheck {
        direction: name,
        purity,
        monotone: strictly_increasing(&sweep),
        sweep,
    })
}

/// The probe-leakage check of every token class on the first `probe_rows` rows.
fn probe_leaks(
    rows: &Tensor,
    codes: &Tensor,
    labels: &PositionLabels,
    settings: &ValidationSettings,
) -> Result<Vec<ProbeLeak>> {
    let n = rows.dim(0)?.min(settings.probe_rows);
    let train = n * 3 / 4;
    if train == 0 || train == n {
        return Err(Error::Invalid(format!(
            "validation probes: {n} rows are too few to split into train and test"
        )));
    }
    let split = |x: &Tensor| -> Result<(Tensor, Tensor)> {
        Ok((x.narrow(0, 0, train)?, x.narrow(0, train, n - train)?))
    };
    let ((raw_tr, raw_te), (code_tr, code_te)) = (split(rows)?, split(codes)?);
    let mut out = Vec::new();
    for class in TokenClass::ALL {
        let y: Vec<bool> = (0..n).map(|i| labels.holds(i, class)).collect();
        let (y_tr, y_te) = y.split_at(train);
        let raw = probe_accuracy(&raw_tr, y_tr, &raw_te, y_te, &settings.probe)?;
        let code = probe_accuracy(&code_tr, y_tr, &code_te, y_te, &settings.probe)?;
        let gap = 100.0 * (raw - code);
        out.push(ProbeLeak {
            class: class.name().into(),
            base_rate: y_te.iter().filter(|&&b| b).count() as f64 / y_te.len() as f64,
            raw_accuracy: raw,
            code_accuracy: code,
            gap_points: gap,
            flagged: gap.abs() > settings.leak_points,
        });
    }
    Ok(out)
}

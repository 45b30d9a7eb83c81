//! Training an SAE from an [`ActivationSource`]: forward and backward through candle's autograd,
//! or through a hand-written step of `metarep-kernels` where one computes the loss
//! ([`crate::fused::FusedStep`]: ReLU + L1, TopK and BatchTopK with auxiliary-K, on the CPU);
//! AdamW (state and checkpoint format of [`metarep_core::optim::AdamW`], update by the fused
//! kernel [`adamw_update`]) with linear warmup and cosine decay, optional gradient clipping,
//! dead-latent tracking (tokens since each latent last fired) feeding the auxiliary-K loss and
//! optional resampling, input-scale estimation and `b_dec` initialisation from the data; the run
//! loop of [`metarep_core::train`] does the rest (checkpoints with exact resume, the JSONL
//! metrics log, progress bar).
//!
//! Exact resume: a checkpoint stores the parameters, Adam moments and step count, the dead-latent
//! counters, the data position (epoch, batches into it), the BatchTopK threshold and the input
//! scale; each epoch's order depends only on the source's seed, and every kernel sums in a fixed
//! order, so a resumed run reproduces the uninterrupted one bit for bit.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use metarep_core::optim::{clip_grad_norm, gradients, AdamW, WarmupCosine};
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::{run, Checkpoint, Plan, RunControl, StepContext, StepOutput, TrainStep};
use metarep_kernels::{adamw_update, AdamStep};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{Architecture, InputNorm};
use crate::error::{Error, Result};
use crate::fused::{FusedStep, StepResult};
use crate::loss::{total_loss, LossConfig, Probe};
use crate::metrics::VarianceSums;
use crate::sae::{ForwardPass, Sae, TrainForward};
use crate::source::{ActivationSource, Batch};

/// Optimisation and bookkeeping settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeTrainConfig {
    /// Seed of everything random in training (resampling, probe init).
    pub seed: u64,
    /// Rows per batch.
    pub batch: usize,
    /// Optimisation steps (epochs follow from the data size).
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps (then cosine decay to 0 at `steps`).
    pub warmup: usize,
    /// Decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[serde(default)]
    pub clip: f64,
    /// Loss terms.
    #[serde(default)]
    pub loss: LossConfig,
    /// A latent that has not fired for this many tokens is dead.
    #[serde(default = "default_dead_window")]
    pub dead_window: u64,
    /// Resampling of dead latents.
    #[serde(default)]
    pub resample: Option<Resample>,
    /// Initialise `b_dec` to the mean of the first batch (else zeros).
    #[serde(default = "yes")]
    pub b_dec_init_mean: bool,
    /// Batches used to estimate the input scale ([`InputNorm::ExpectedNorm`]).
    #[serde(default = "default_norm_batches")]
    pub norm_batches: usize,
    /// BatchTopK: rate of the running average of the smallest selected activation.
    #[serde(default = "default_threshold_lr")]
    pub threshold_lr: f64,
    /// Checkpoint every this many steps (0 = only at the end, when writing to a directory).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Log a metrics line every this many steps (0 = never).
    #[serde(default = "default_log_every")]
    pub log_every: usize,
}

fn yes() -> bool {
    true
}
fn default_dead_window() -> u64 {
    10_000_000
}
fn default_norm_batches() -> usize {
    10
}
fn default_threshold_lr() -> f64 {
    0.01
}
fn default_log_every() -> usize {
    50
}

/// Resampling of dead latents (Bricken et al. 2023, simplified): dead latents are pointed at
/// inputs drawn with probability ∝ their squared reconstruction loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resample {
    /// Resample every this many steps.
    pub every: usize,
    /// Do not resample at or after this step.
    pub until: usize,
    /// New encoder rows get this fraction of the mean live encoder-row norm.
    pub encoder_scale: f64,
}

impl SaeTrainConfig {
    /// The learning-rate schedule.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            lr: self.lr,
            warmup: self.warmup,
            steps: self.steps,
        }
    }

    /// Errors naming the first invalid field (for an SAE of `arch`).
    pub fn validate(&self, arch: &Architecture) -> Result<()> {
        if self.batch == 0 || self.steps == 0 {
            return Err(Error::Config("batch and steps must be ≥ 1".into()));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Config(format!("lr must be > 0, got {}", self.lr)));
        }
        if matches!(self.resample, Some(r) if r.every == 0) {
            return Err(Error::Config("resample.every must be ≥ 1".into()));
        }
        self.loss.validate(arch)
    }
}

/// Summary of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeTrainReport {
    /// Step the run started from.
    pub start_step: usize,
    /// Step it stopped at.
    pub steps: usize,
    /// Tokens (rows) seen in total.
    pub tokens: u64,
    /// Loss of the last batch.
    pub final_loss: f64,
    /// Fraction of latents dead at the end.
    pub dead_fraction: f64,
    /// Latents resampled in this run.
    pub resampled: usize,
    /// Wall time of this run in seconds.
    pub seconds: f64,
}

/// The JSON state of an SAE checkpoint (the run loop adds the step and the config).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    epoch: u64,
    batch_in_epoch: usize,
    tokens: u64,
    adam_t: usize,
    batch_threshold: f64,
    input_scale: f64,
}

/// Name of the dead-latent counters in a checkpoint.
const TRACKER: &str = "tracker.since_fired";

/// Data position of a run.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    epoch: u64,
    batch_in_epoch: usize,
    tokens: u64,
}

/// The optimisation state of a run: parameters (the SAE's and the probe's), AdamW moments and
/// the dead-latent counters. [`train`] drives it over a source; [`SaeTrainer::step`] is one step
/// on one batch (benchmarks, custom loops).
#[derive(Debug)]
pub struct SaeTrainer {
    /// Training settings.
    pub cfg: SaeTrainConfig,
    /// The probe of the probe-guided loss, when it is on.
    pub probe: Option<Probe>,
    /// SAE and probe parameters, in checkpoint order.
    pub params: Vec<(String, Var)>,
    /// AdamW state (moments, step count).
    pub adam: AdamW,
    /// Tokens since each latent last fired.
    pub since_fired: Vec<u64>,
    /// The hand-written step of this SAE and loss (set by [`SaeTrainer::new`] when
    /// [`FusedStep::for_sae`] has one; its buffers are reused across steps). `None` runs the
    /// forward pass and loss through candle's autograd, as every other SAE does.
    pub fused: Option<FusedStep>,
}

/// What one step produced.
#[derive(Debug)]
pub struct StepOutcome {
    /// The forward pass (normalised space).
    pub pass: ForwardPass,
    /// Total loss.
    pub loss: f64,
    /// Named unweighted loss terms.
    pub parts: Vec<(String, f64)>,
    /// Gradient norm before clipping (NaN when clipping is off).
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

impl SaeTrainer {
    /// Fresh optimiser state for `sae` (checks `cfg` against its architecture).
    pub fn new(sae: &Sae, cfg: &SaeTrainConfig) -> Result<Self> {
        cfg.validate(&sae.config.architecture)?;
        let device = sae.w_dec.device().clone();
        let probe = match cfg.loss.probe {
            Some(p) => Some(Probe::new(sae.config.d_sae, p.classes, cfg.seed, &device)?),
            None => None,
        };
        let mut params = sae.params();
        if let Some(p) = &probe {
            params.extend(p.params());
        }
        let adam = AdamW::new(&params, cfg.weight_decay)?;
        Ok(Self {
            cfg: cfg.clone(),
            probe,
            params,
            adam,
            since_fired: vec![0; sae.config.d_sae],
            fused: FusedStep::for_sae(sae, &cfg.loss),
        })
    }

    /// Latents that have not fired for `dead_window` tokens.
    pub fn dead_mask(&self) -> Vec<bool> {
        self.since_fired
            .iter()
            .map(|&s| s >= self.cfg.dead_window)
            .collect()
    }

    /// Fraction of dead latents.
    pub fn dead_fraction(&self) -> f64 {
        dead_fraction(&self.since_fired, self.cfg.dead_window)
    }

    /// One optimisation step on a batch of raw activations at schedule step `step`: forward,
    /// loss, backward, (clipping), fused AdamW, decoder renormalisation, BatchTopK threshold and
    /// dead-latent counters.
    pub fn step(&mut self, sae: &mut Sae, batch: &Batch, step: usize) -> Result<StepOutcome> {
        let rows = batch.x.dim(0)?;
        let (x, _) = sae.normalize_input(&batch.x)?;
        let dead = self.dead_mask();
        let (pass, value, parts, grads, fired) = match self.fused.as_mut() {
            Some(fused) => fused.run(sae, x, &self.cfg.loss, step, &dead)?,
            None => self.autograd_step(sae, x, batch, step, &dead)?,
        };
        if !value.is_finite() {
            return Err(Error::Training(format!(
                "loss became {value} at step {step}"
            )));
        }
        let (grads, grad_norm) = if self.cfg.clip > 0.0 {
            clip_grad_norm(&grads, self.cfg.clip)?
        } else {
            (grads, f64::NAN)
        };
        let lr = self.cfg.schedule().lr_at(step);
        fused_adam_step(&mut self.adam, &self.params, &grads, lr)?;
        sae.after_step()?;
        if let Some(min) = pass.batch_min {
            let r = self.cfg.threshold_lr;
            sae.batch_threshold = (1.0 - r) * sae.batch_threshold + r * min;
        }
        for (s, &f) in self.since_fired.iter_mut().zip(&fired) {
            *s = if f > 0 { 0 } else { *s + rows as u64 };
        }
        Ok(StepOutcome {
            pass,
            loss: value,
            parts,
            grad_norm,
            lr,
        })
    }

    /// Forward, loss and gradients through candle's autograd.
    fn autograd_step(
        &self,
        sae: &Sae,
        x: Tensor,
        batch: &Batch,
        step: usize,
        dead: &[bool],
    ) -> Result<StepResult> {
        let opts = TrainForward {
            sparsity: self.cfg.loss.wants_sparsity(),
            aux_k: self.cfg.loss.aux_k.map(|a| (a.k_aux, dead)),
        };
        let pass = sae.forward(&x, &opts)?;
        let loss = total_loss(sae, &pass, batch, &self.cfg.loss, self.probe.as_ref(), step)?;
        let value = loss.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = gradients(&loss.total, &self.params)?;
        let fired = pass.latents.fire_counts(sae.config.d_sae)?;
        Ok((pass, value, loss.parts, grads, fired))
    }
}

/// Trains `sae` (and a probe, when the probe loss is on) on `source`. A resumed run must use
/// the same SAE and training config (or set [`RunControl::accept_config_change`]).
pub fn train(
    sae: &mut Sae,
    source: &mut dyn ActivationSource,
    cfg: &SaeTrainConfig,
    control: RunControl,
) -> Result<SaeTrainReport> {
    if source.d_in() != sae.config.d_in {
        return Err(Error::shape(
            "training activations",
            format!("d_in = {}", sae.config.d_in),
            format!("d_in = {}", source.d_in()),
        ));
    }
    let plan = Plan {
        checkpoint_every: cfg.checkpoint_every,
        log_every: cfg.log_every,
        ..Plan::new(cfg.steps, cfg.schedule())
    };
    let config = serde_json::json!({ "sae": sae.config, "train": cfg });
    let mut steps = SaeSteps {
        trainer: SaeTrainer::new(sae, cfg)?,
        sae,
        source,
        pos: Position::default(),
        tokens_at_start: 0,
        resampled: 0,
        clock: std::time::Instant::now(),
    };
    let report = run(&mut steps, &plan, &config, control)?;
    Ok(SaeTrainReport {
        start_step: report.start_step,
        steps: report.steps,
        tokens: steps.pos.tokens,
        final_loss: report.final_loss,
        dead_fraction: steps.trainer.dead_fraction(),
        resampled: steps.resampled,
        seconds: report.seconds,
    })
}

/// One SAE run: the optimisation state, the SAE, the data and where the run is in it.
struct SaeSteps<'a> {
    trainer: SaeTrainer,
    sae: &'a mut Sae,
    source: &'a mut dyn ActivationSource,
    pos: Position,
    tokens_at_start: u64,
    resampled: usize,
    clock: std::time::Instant,
}

impl TrainStep for SaeSteps<'_> {
    type Error = Error;

    fn step(&mut self, ctx: &StepContext) -> Result<StepOutput> {
        let cfg = &self.trainer.cfg;
        let batch = next_batch(self.source, cfg.batch, &mut self.pos)?;
        let out = self.trainer.step(self.sae, &batch, ctx.step)?;
        self.pos.tokens += batch.x.dim(0)? as u64;
        if let Some(r) = self.trainer.cfg.resample {
            let done = ctx.step + 1;
            if done.is_multiple_of(r.every) && done < r.until {
                self.resampled += resample_dead(
                    self.sae,
                    &mut self.trainer,
                    &out.pass.x,
                    &out.pass.recon,
                    r,
                    ctx.step,
                )?;
            }
        }
        let mut output = StepOutput::loss(out.loss);
        if ctx.logged {
            let secs = self.clock.elapsed().as_secs_f64().max(1e-9);
            let rate = (self.pos.tokens - self.tokens_at_start) as f64 / secs;
            output.fields = log_record(&self.trainer, &out, &batch, self.pos, rate)?;
        }
        Ok(output)
    }

    fn checkpoint(&self) -> Result<Checkpoint> {
        let t = &self.trainer;
        let mut tensors = t.adam.checkpoint_tensors(&t.params);
        let tracker: Vec<f64> = t.since_fired.iter().map(|&v| v as f64).collect();
        tensors.push((
            TRACKER.to_string(),
            Tensor::from_vec(tracker, t.since_fired.len(), &Device::Cpu)?,
        ));
        let state = CheckpointState {
            epoch: self.pos.epoch,
            batch_in_epoch: self.pos.batch_in_epoch,
            tokens: self.pos.tokens,
            adam_t: t.adam.t,
            batch_threshold: self.sae.batch_threshold,
            input_scale: self.sae.input_scale,
        };
        Ok(Checkpoint::new(tensors, state)?)
    }

    fn restore(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        state: serde_json::Value,
    ) -> Result<()> {
        let state: CheckpointState = serde_json::from_value(state)
            .map_err(|e| Error::Invalid(format!("SAE checkpoint state: {e}")))?;
        let t = &mut self.trainer;
        t.adam.restore(&t.params, tensors, state.adam_t)?;
        let tracker = tensors
            .get(TRACKER)
            .ok_or_else(|| Error::Invalid(format!("checkpoint has no tensor {TRACKER}")))?;
        t.since_fired = tracker
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .iter()
            .map(|&v| v as u64)
            .collect();
        self.sae.batch_threshold = state.batch_threshold;
        self.sae.input_scale = state.input_scale;
        self.pos = Position {
            epoch: state.epoch,
            batch_in_epoch: state.batch_in_epoch,
            tokens: state.tokens,
        };
        self.tokens_at_start = state.tokens;
        self.source.start_epoch(self.pos.epoch)?;
        self.source.skip(self.pos.batch_in_epoch, t.cfg.batch)?;
        Ok(())
    }

    fn device(&self) -> Device {
        self.sae.w_dec.device().clone()
    }

    fn start(&mut self) -> Result<()> {
        initialise_from_data(self.sae, self.source, &self.trainer.cfg)?;
        self.source.start_epoch(0)?;
        Ok(())
    }
}

/// The fields of one metrics line (the run loop adds `step`, `loss` and `lr`).
fn log_record(
    t: &SaeTrainer,
    out: &StepOutcome,
    batch: &Batch,
    pos: Position,
    tokens_per_s: f64,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut rec = serde_json::Map::new();
    rec.insert("tokens".into(), pos.tokens.into());
    rec.insert("epoch".into(), pos.epoch.into());
    for (name, v) in &out.parts {
        rec.insert(format!("loss_{name}"), (*v).into());
    }
    let mut sums = VarianceSums::default();
    sums.add(&out.pass.x, &out.pass.recon)?;
    let (l0, l1) = out.pass.latents.l0_l1()?;
    rec.insert("mse".into(), sums.mse().into());
    rec.insert(
        "explained_variance".into(),
        sums.explained_variance().into(),
    );
    rec.insert("l0".into(), l0.into());
    rec.insert("l1".into(), l1.into());
    rec.insert("dead_fraction".into(), t.dead_fraction().into());
    if out.grad_norm.is_finite() {
        rec.insert("grad_norm".into(), out.grad_norm.into());
    }
    if let (Some(p), Some(labels)) = (&t.probe, &batch.labels) {
        rec.insert(
            "probe_accuracy".into(),
            p.accuracy(&out.pass.latents, labels)?.into(),
        );
    }
    rec.insert("tokens_per_s".into(), tokens_per_s.into());
    Ok(rec)
}

fn dead_fraction(since_fired: &[u64], window: u64) -> f64 {
    since_fired.iter().filter(|&&s| s >= window).count() as f64 / since_fired.len().max(1) as f64
}

/// The next batch, rolling over to the next epoch at the end of one.
fn next_batch(
    source: &mut dyn ActivationSource,
    batch: usize,
    pos: &mut Position,
) -> Result<Batch> {
    if let Some(b) = source.next_batch(batch)? {
        pos.batch_in_epoch += 1;
        return Ok(b);
    }
    pos.epoch += 1;
    pos.batch_in_epoch = 0;
    source.start_epoch(pos.epoch)?;
    let b = source
        .next_batch(batch)?
        .ok_or_else(|| Error::Invalid("the activation source yields no rows".into()))?;
    pos.batch_in_epoch = 1;
    Ok(b)
}

/// One AdamW step with the fused in-place kernel (same arithmetic as `AdamW::step`).
fn fused_adam_step(
    adam: &mut AdamW,
    params: &[(String, Var)],
    grads: &[Tensor],
    lr: f64,
) -> Result<()> {
    adam.t += 1;
    let step = AdamStep {
        lr,
        beta1: adam.beta1,
        beta2: adam.beta2,
        eps: adam.eps,
        weight_decay: adam.weight_decay,
        t: adam.t,
    };
    for (i, ((_, p), g)) in params.iter().zip(grads).enumerate() {
        adamw_update(
            p.as_tensor(),
            &g.contiguous()?,
            &adam.m[i],
            &adam.v[i],
            &step,
        )?;
    }
    Ok(())
}

/// Before the first step: the input scale (expected-norm inputs) and `b_dec` = mean of the
/// first batch.
fn initialise_from_data(
    sae: &mut Sae,
    source: &mut dyn ActivationSource,
    cfg: &SaeTrainConfig,
) -> Result<()> {
    if sae.config.input_norm == InputNorm::ExpectedNorm {
        source.start_epoch(0)?;
        let (mut sum, mut rows) = (0.0, 0usize);
        for _ in 0..cfg.norm_batches.max(1) {
            let Some(b) = source.next_batch(cfg.batch)? else {
                break;
            };
            sum +=
                b.x.to_dtype(DType::F64)?
                    .sqr()?
                    .sum(1)?
                    .sqrt()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            rows += b.x.dim(0)?;
        }
        let mean = sum / rows.max(1) as f64;
        if mean.is_nan() || mean <= 0.0 {
            return Err(Error::Invalid(
                "cannot estimate the input scale: inputs are all zero".into(),
            ));
        }
        sae.input_scale = (sae.config.d_in as f64).sqrt() / mean;
    }
    if cfg.b_dec_init_mean {
        source.start_epoch(0)?;
        if let Some(b) = source.next_batch(cfg.batch)? {
            let (x, _) = sae.normalize_input(&b.x)?;
            sae.b_dec.set(&x.mean(0)?.to_dtype(sae.b_dec.dtype())?)?;
        }
    }
    Ok(())
}

/// Resamples dead latents from the current batch; returns how many.
fn resample_dead(
    sae: &Sae,
    t: &mut SaeTrainer,
    x: &Tensor,
    recon: &Tensor,
    r: Resample,
    step: usize,
) -> Result<usize> {
    let SaeTrainer {
        cfg,
        params,
        adam,
        since_fired,
        ..
    } = t;
    let dead: Vec<usize> = (0..since_fired.len())
        .filter(|&i| since_fired[i] >= cfg.dead_window)
        .collect();
    if dead.is_empty() {
        return Ok(0);
    }
    let xs = x.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let losses: Vec<f64> = (x - recon)?
        .detach()
        .to_dtype(DType::F64)?
        .sqr()?
        .sum(1)?
        .to_vec1::<f64>()?;
    let weights: Vec<f64> = losses.iter().map(|l| l * l).collect();
    let total: f64 = weights.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return Ok(0);
    }
    let mut rng = seeded(derive_seed(cfg.seed, &format!("resample/{step}")));
    let (d, dtype) = (sae.config.d_in, sae.w_dec.dtype());
    let host = |v: &Var| v.as_tensor().to_dtype(DType::F64);
    let b_dec = host(&sae.b_dec)?.to_vec1::<f64>()?;
    let mut w_enc = host(&sae.w_enc)?.to_vec2::<f64>()?;
    let mut w_dec = host(&sae.w_dec)?.to_vec2::<f64>()?;
    let mut b_enc = host(&sae.b_enc)?.to_vec1::<f64>()?;
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let live: Vec<f64> = (0..w_enc.len())
        .filter(|i| !dead.contains(i))
        .map(|i| norm(&w_enc[i]))
        .collect();
    let enc_norm = if live.is_empty() {
        1.0
    } else {
        live.iter().sum::<f64>() / live.len() as f64
    };
    let dec_norm = match sae.config.decoder_norm {
        crate::config::DecoderNorm::Unit => 1.0,
        crate::config::DecoderNorm::Folded => crate::sae::FOLDED_INIT_NORM,
    };
    for &i in &dead {
        let mut u = rng.random::<f64>() * total;
        let row = weights.iter().position(|&w| {
            u -= w;
            u <= 0.0
        });
        let row = row.unwrap_or(weights.len() - 1);
        let v: Vec<f64> = (0..d).map(|j| xs[row][j] - b_dec[j]).collect();
        let n = norm(&v).max(1e-12);
        w_dec[i] = v.iter().map(|a| a / n * dec_norm).collect();
        w_enc[i] = v
            .iter()
            .map(|a| a / n * enc_norm * r.encoder_scale)
            .collect();
        b_enc[i] = 0.0;
        since_fired[i] = 0;
    }
    let dev = sae.w_dec.device();
    let to2 = |m: Vec<Vec<f64>>| -> Result<Tensor> {
        let rows = m.len();
        Ok(Tensor::from_vec(m.concat(), (rows, d), dev)?.to_dtype(dtype)?)
    };
    sae.w_enc.set(&to2(w_enc)?)?;
    sae.w_dec.set(&to2(w_dec)?)?;
    sae.b_enc
        .set(&Tensor::from_vec(b_enc, since_fired.len(), dev)?.to_dtype(dtype)?)?;
    // Fresh Adam moments for the resampled rows.
    let mut keep = vec![1f64; since_fired.len()];
    for &i in &dead {
        keep[i] = 0.0;
    }
    let keep = Tensor::from_vec(keep, since_fired.len(), dev)?.to_dtype(dtype)?;
    for (i, (name, _)) in params.iter().enumerate() {
        let mask = match name.as_str() {
            "w_enc" | "w_dec" => keep.unsqueeze(1)?,
            "b_enc" => keep.clone(),
            _ => continue,
        };
        adam.m[i] = adam.m[i].broadcast_mul(&mask)?;
        adam.v[i] = adam.v[i].broadcast_mul(&mask)?;
    }
    Ok(dead.len())
}

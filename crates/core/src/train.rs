//! The run loop every metarep trainer uses: a trainer supplies one optimisation step and its
//! checkpoint state ([`TrainStep`]); [`run`] supplies everything around it, the same way for
//! every trainer:
//!
//! - the learning rate of each step from the schedule (linear warmup, then cosine decay);
//! - a metrics line in `out/metrics.jsonl` every `log_every` steps and at the schedule's last
//!   step, each with `step`, `loss`, `lr` and the step's own fields; evaluations as `eval.*`
//!   lines carrying the index of the step they follow;
//! - an atomic checkpoint in `out/checkpoint/` every `checkpoint_every` steps and at the end
//!   of the run: the trainer's tensors and state, the step, and the run's config;
//! - exact resume from that checkpoint: the metrics log is cut back to the lines of the steps
//!   before it (a resumed run logs each step exactly once), and a run whose config differs
//!   from the checkpoint's is refused with an error naming the differing keys, unless
//!   [`RunControl::accept_config_change`] is set;
//! - `stop_at` (stop early as if interrupted; the schedule still spans `steps`), a loss that
//!   is not finite stops the run with an error naming the step (the last checkpoint is kept),
//!   and a progress bar ([`crate::progress`]).
//!
//! A step must be a function of the trainer's state and the step index only (batches drawn
//! from `(seed, step)` or from a data position kept in the checkpoint), so that a resumed run
//! equals the uninterrupted one bit for bit.
//!
//! A plain trainer is a loss of the step index: [`AdamRun`] supplies the rest of the step.
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use metarep_core::optim::WarmupCosine;
//! use metarep_core::train::{run, AdamRun, Plan, RunControl};
//!
//! // Fits w to minimise ‖w − 3‖².
//! let w = Var::from_tensor(&Tensor::zeros(2, DType::F32, &Device::Cpu)?)?;
//! let params = vec![("w".to_string(), w.clone())];
//! let loss = |_step: usize| -> metarep_core::Result<Tensor> {
//!     Ok((w.as_tensor() - 3.0)?.sqr()?.sum_all()?)
//! };
//! let mut fit = AdamRun::new(&params, 0.0, 1.0, loss)?;
//! let plan = Plan::new(200, WarmupCosine { lr: 0.1, warmup: 10, steps: 200 });
//! let report = run(&mut fit, &plan, &"fit w to 3", RunControl::default())?;
//! assert!(report.final_loss < 1e-2 * report.first_loss);
//! # Ok::<(), metarep_core::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_checkpoint, save_checkpoint, STATE_FILE};
use crate::config::canonical_value;
use crate::error::{Error, Result};
use crate::metrics::{truncate_metrics, MetricsSink};
use crate::optim::{clip_grad_norm, gradients, AdamW, WarmupCosine};

/// File name of the metrics log inside a run's output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Directory name of the checkpoint inside a run's output directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// How long a run is and how often it logs, evaluates and checkpoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Steps of the schedule (a run ends there, or at [`RunControl::stop_at`]).
    pub steps: usize,
    /// The learning rate of each step.
    pub schedule: WarmupCosine,
    /// Checkpoint every this many steps (0: only at the end of a run with an output directory).
    pub checkpoint_every: usize,
    /// Log a metrics line every this many steps and at the schedule's last step (0: never).
    pub log_every: usize,
    /// Evaluate every this many steps (0: never) and after the schedule's last step.
    pub eval_every: usize,
}

impl Plan {
    /// `steps` steps under `schedule`; no logging, evaluation or intermediate checkpoints.
    pub fn new(steps: usize, schedule: WarmupCosine) -> Self {
        Plan {
            steps,
            schedule,
            checkpoint_every: 0,
            log_every: 0,
            eval_every: 0,
        }
    }

    /// Whether step `step` (0-based) writes a metrics line.
    pub fn logs_at(&self, step: usize) -> bool {
        self.log_every > 0 && (step.is_multiple_of(self.log_every) || step + 1 == self.steps)
    }

    /// Whether the run evaluates after `done` steps.
    pub fn evaluates_after(&self, done: usize) -> bool {
        (self.eval_every > 0 && done.is_multiple_of(self.eval_every)) || done == self.steps
    }
}

/// What the loop tells a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepContext {
    /// Step index (0-based; the schedule position).
    pub step: usize,
    /// Learning rate of this step.
    pub lr: f64,
    /// Whether this step's metrics line is written: fill [`StepOutput::fields`] only then
    /// when they cost something to compute.
    pub logged: bool,
}

/// What a step reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    /// The loss of the step's batch.
    pub loss: f64,
    /// More fields for this step's metrics line (`grad_norm`, `l0`, ...).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl StepOutput {
    /// A step that reports only its loss.
    pub fn loss(loss: f64) -> Self {
        StepOutput {
            loss,
            fields: serde_json::Map::new(),
        }
    }

    /// Adds a field to the metrics line.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.fields.insert(key.to_string(), value.into());
        self
    }
}

/// A trainer's checkpoint: named tensors (parameters, optimiser moments, counters) and a
/// JSON state (step counts, data position, running statistics).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Named tensors (unique names).
    pub tensors: Vec<(String, Tensor)>,
    /// Everything else needed to continue exactly.
    pub state: serde_json::Value,
}

impl Checkpoint {
    /// A checkpoint of `tensors` and the serialised `state`.
    pub fn new(tensors: Vec<(String, Tensor)>, state: impl Serialize) -> Result<Self> {
        Ok(Checkpoint {
            tensors,
            state: serde_json::to_value(state).map_err(|e| Error::json("checkpoint state", e))?,
        })
    }
}

/// What a trainer plugs into [`run`]: one optimisation step and its checkpoint state.
pub trait TrainStep {
    /// The trainer's error type (the loop's own errors convert into it).
    type Error: From<Error>;

    /// Takes one optimisation step at `ctx.step` with learning rate `ctx.lr`.
    fn step(&mut self, ctx: &StepContext) -> std::result::Result<StepOutput, Self::Error>;

    /// The state a resumed run needs to continue exactly.
    fn checkpoint(&self) -> std::result::Result<Checkpoint, Self::Error>;

    /// Restores the state written by [`TrainStep::checkpoint`].
    fn restore(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        state: serde_json::Value,
    ) -> std::result::Result<(), Self::Error>;

    /// The device checkpoint tensors are loaded onto.
    fn device(&self) -> Device;

    /// Called once before the first step of a run that does not resume (e.g. to initialise
    /// from data).
    fn start(&mut self) -> std::result::Result<(), Self::Error> {
        Ok(())
    }

    /// Named evaluation metrics after `done` steps (none by default).
    fn evaluate(&mut self, _done: usize) -> std::result::Result<Vec<(String, f64)>, Self::Error> {
        Ok(Vec::new())
    }
}

/// A loss over parameters minimised by AdamW with global-norm clipping: the whole
/// [`TrainStep`] of a plain trainer, which supplies only `loss(step)` (the loss of step `step`'s
/// batch, a function of the step) and optionally `eval(steps done)`. Its checkpoint is the
/// parameters, the AdamW moments and the step count; each step logs `grad_norm`.
pub struct AdamRun<'a, E> {
    params: &'a [(String, Var)],
    adam: AdamW,
    clip: f64,
    loss: Box<LossFn<'a, E>>,
    eval: Option<Box<EvalFn<'a, E>>>,
}

/// `step → loss` of an [`AdamRun`].
pub type LossFn<'a, E> = dyn FnMut(usize) -> std::result::Result<Tensor, E> + 'a;
/// `steps done → named metrics` of an [`AdamRun`].
pub type EvalFn<'a, E> = dyn FnMut(usize) -> std::result::Result<Vec<(String, f64)>, E> + 'a;

impl<'a, E: From<Error>> AdamRun<'a, E> {
    /// Fresh AdamW state (decoupled weight decay `weight_decay`) for `params`; gradients are
    /// clipped to global norm `clip` (0 = off).
    pub fn new(
        params: &'a [(String, Var)],
        weight_decay: f64,
        clip: f64,
        loss: impl FnMut(usize) -> std::result::Result<Tensor, E> + 'a,
    ) -> Result<Self> {
        Ok(AdamRun {
            params,
            adam: AdamW::new(params, weight_decay)?,
            clip,
            loss: Box::new(loss),
            eval: None,
        })
    }

    /// Evaluates with `eval` every [`Plan::eval_every`] steps and after the last.
    pub fn with_eval(
        mut self,
        eval: impl FnMut(usize) -> std::result::Result<Vec<(String, f64)>, E> + 'a,
    ) -> Self {
        self.eval = Some(Box::new(eval));
        self
    }
}

impl<E: From<Error>> TrainStep for AdamRun<'_, E> {
    type Error = E;

    fn step(&mut self, ctx: &StepContext) -> std::result::Result<StepOutput, E> {
        let loss = (self.loss)(ctx.step)?;
        let (grads, norm) = clip_grad_norm(&gradients(&loss, self.params)?, self.clip)?;
        self.adam.step(self.params, &grads, ctx.lr)?;
        let loss = loss
            .to_dtype(DType::F64)
            .and_then(|l| l.to_scalar::<f64>())
            .map_err(Error::from)?;
        Ok(StepOutput::loss(loss).with("grad_norm", norm))
    }

    fn checkpoint(&self) -> std::result::Result<Checkpoint, E> {
        Ok(Checkpoint::new(
            self.adam.checkpoint_tensors(self.params),
            self.adam.t,
        )?)
    }

    fn restore(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        state: serde_json::Value,
    ) -> std::result::Result<(), E> {
        let t: usize =
            serde_json::from_value(state).map_err(|e| Error::json("AdamW step count", e))?;
        Ok(self.adam.restore(self.params, tensors, t)?)
    }

    fn device(&self) -> Device {
        self.params
            .first()
            .map_or(Device::Cpu, |(_, p)| p.device().clone())
    }

    fn evaluate(&mut self, done: usize) -> std::result::Result<Vec<(String, f64)>, E> {
        match self.eval.as_mut() {
            Some(f) => f(done),
            None => Ok(Vec::new()),
        }
    }
}

/// Where a run writes and how it starts and stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunControl<'a> {
    /// Output directory for `metrics.jsonl` and `checkpoint/` (none: nothing is written).
    pub out: Option<&'a Path>,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// Stop after this many steps in total, as if interrupted (the schedule still spans
    /// [`Plan::steps`]).
    pub stop_at: Option<usize>,
    /// Resume even when the run's config differs from the checkpoint's (the new one is used
    /// and recorded from then on).
    pub accept_config_change: bool,
}

impl<'a> RunControl<'a> {
    /// Writes to `out` and continues from `out/checkpoint` when a checkpoint is there (a run
    /// that finished resumes at its end and takes no step), else starts afresh.
    pub fn resuming(out: &'a Path) -> Self {
        Self {
            out: Some(out),
            resume: out.join(CHECKPOINT_DIR).join(STATE_FILE).exists(),
            ..Self::default()
        }
    }
}

/// Summary of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Step the run started from (0, or the checkpoint's step).
    pub start_step: usize,
    /// Step it stopped at.
    pub steps: usize,
    /// Loss of this run's first step (NaN when it took none).
    pub first_loss: f64,
    /// Loss of its last step (NaN when it took none).
    pub final_loss: f64,
    /// The last evaluation's metrics, if any.
    pub eval: Vec<(String, f64)>,
    /// Wall time of this run in seconds.
    pub seconds: f64,
}

/// The JSON state of a loop checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct LoopState {
    step: usize,
    config: serde_json::Value,
    trainer: serde_json::Value,
}

/// Trains `trainer` through `plan`. `config` is everything a resumed run must share with the
/// run it continues (model and training config); it is stored in each checkpoint.
pub fn run<T: TrainStep>(
    trainer: &mut T,
    plan: &Plan,
    config: &impl Serialize,
    control: RunControl,
) -> std::result::Result<RunReport, T::Error> {
    if plan.steps == 0 {
        return Err(Error::Invalid("training needs steps ≥ 1".into()).into());
    }
    let config = canonical_value(config)?;
    let ckpt_dir = control.out.map(|o| o.join(CHECKPOINT_DIR));
    let metrics_path = control.out.map(|o| o.join(METRICS_FILE));
    let start = if control.resume {
        let dir = ckpt_dir
            .as_ref()
            .ok_or_else(|| Error::Invalid("resume needs an output directory".into()))?;
        let (tensors, state): (_, LoopState) = load_checkpoint(dir, &trainer.device())?;
        if !control.accept_config_change {
            check_same_config(dir, &state.config, &config)?;
        }
        trainer.restore(&tensors, state.trainer)?;
        if let Some(path) = &metrics_path {
            truncate_metrics(path, state.step)?;
        }
        state.step
    } else {
        trainer.start()?;
        0
    };
    let mut sink = match &metrics_path {
        Some(p) if control.resume => Some(MetricsSink::append(p)?),
        Some(p) => Some(MetricsSink::create(p)?),
        None => None,
    };
    let end = control.stop_at.unwrap_or(plan.steps).min(plan.steps);
    let bar = crate::progress::bar(plan.steps as u64, "train");
    bar.set_position(start as u64);
    let clock = std::time::Instant::now();
    let (mut first_loss, mut final_loss) = (f64::NAN, f64::NAN);
    let mut eval = Vec::new();
    for step in start..end {
        let ctx = StepContext {
            step,
            lr: plan.schedule.lr_at(step),
            logged: sink.is_some() && plan.logs_at(step),
        };
        let out = trainer.step(&ctx)?;
        if !out.loss.is_finite() {
            return Err(Error::Invalid(format!(
                "training loss became {} at step {step}; stopped (the last checkpoint is kept)",
                out.loss
            ))
            .into());
        }
        final_loss = out.loss;
        if step == start {
            first_loss = out.loss;
        }
        let done = step + 1;
        if let (Some(s), true) = (sink.as_mut(), ctx.logged) {
            let mut record = out.fields;
            record.insert("step".into(), step.into());
            record.insert("loss".into(), out.loss.into());
            record.insert("lr".into(), ctx.lr.into());
            s.log(&record)?;
            s.flush()?;
        }
        if plan.evaluates_after(done) {
            let metrics = trainer.evaluate(done)?;
            if let (Some(s), false) = (sink.as_mut(), metrics.is_empty()) {
                let mut record = serde_json::Map::new();
                record.insert("step".into(), step.into());
                for (k, v) in &metrics {
                    record.insert(format!("eval.{k}"), (*v).into());
                }
                s.log(&record)?;
                s.flush()?;
            }
            if !metrics.is_empty() {
                eval = metrics;
            }
        }
        let periodic = plan.checkpoint_every > 0 && done % plan.checkpoint_every == 0;
        if let (Some(dir), true) = (&ckpt_dir, periodic || done == end) {
            let ckpt = trainer.checkpoint()?;
            let state = LoopState {
                step: done,
                config: config.clone(),
                trainer: ckpt.state,
            };
            save_checkpoint(dir, &ckpt.tensors, &state)?;
        }
        bar.set_message(format!("loss {final_loss:.4}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(RunReport {
        start_step: start,
        steps: end.max(start),
        first_loss,
        final_loss,
        eval,
        seconds: clock.elapsed().as_secs_f64(),
    })
}

/// Refuses to resume under a config other than the checkpoint's, naming every differing key.
fn check_same_config(dir: &Path, saved: &serde_json::Value, now: &serde_json::Value) -> Result<()> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", saved, &mut a);
    flatten("", now, &mut b);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let missing = "(absent)".to_string();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: {} → {}",
                a.get(k).unwrap_or(&missing),
                b.get(k).unwrap_or(&missing)
            )
        })
        .collect();
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!(
            "written under another config; differing keys (checkpoint → now): {}; \
             resume with the checkpoint's config, or accept the change explicitly \
             (RunControl::accept_config_change, `--accept-config-change` on the CLI)",
            diffs.join(", ")
        ),
    })
}

/// Dotted key → rendered leaf value (`a.b[2].c`).
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, x) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        serde_json::Value::Array(xs) if !xs.is_empty() => {
            for (i, x) in xs.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fits `w` to a step-dependent target, so that the run depends on the step index.
    struct Toy {
        params: Vec<(String, Var)>,
        adam: AdamW,
        started: usize,
    }

    impl Toy {
        fn new() -> Self {
            let w = Var::from_tensor(&Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()).unwrap();
            let params = vec![("w".to_string(), w)];
            let adam = AdamW::new(&params, 0.01).unwrap();
            Toy {
                params,
                adam,
                started: 0,
            }
        }

        fn w(&self) -> Vec<f32> {
            self.params[0].1.as_tensor().to_vec1().unwrap()
        }
    }

    impl TrainStep for Toy {
        type Error = Error;
        fn step(&mut self, ctx: &StepContext) -> Result<StepOutput> {
            let target = (ctx.step % 7) as f64 * 0.5;
            let loss = (self.params[0].1.as_tensor() - target)?.sqr()?.sum_all()?;
            let grads = gradients(&loss, &self.params)?;
            self.adam.step(&self.params, &grads, ctx.lr)?;
            let value = loss.to_scalar::<f32>()? as f64;
            Ok(StepOutput::loss(if target == 3.0 && self.started == 99 {
                f64::NAN
            } else {
                value
            })
            .with("target", target))
        }
        fn checkpoint(&self) -> Result<Checkpoint> {
            Checkpoint::new(self.adam.checkpoint_tensors(&self.params), self.adam.t)
        }
        fn restore(
            &mut self,
            tensors: &HashMap<String, Tensor>,
            state: serde_json::Value,
        ) -> Result<()> {
            let t = serde_json::from_value(state).map_err(|e| Error::json("state", e))?;
            self.adam.restore(&self.params, tensors, t)
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
        fn start(&mut self) -> Result<()> {
            self.started += 1;
            Ok(())
        }
        fn evaluate(&mut self, done: usize) -> Result<Vec<(String, f64)>> {
            Ok(vec![("done".into(), done as f64)])
        }
    }

    fn plan() -> Plan {
        Plan {
            checkpoint_every: 4,
            log_every: 3,
            eval_every: 5,
            ..Plan::new(
                20,
                WarmupCosine {
                    lr: 0.1,
                    warmup: 2,
                    steps: 20,
                },
            )
        }
    }

    fn steps_logged(path: &Path) -> Vec<(u64, bool)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v.get("eval.done").is_some())
            })
            .collect()
    }

    #[test]
    fn interrupted_and_resumed_equals_uninterrupted_and_logs_each_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|n| dir.path().join(n));
        let control = |out, resume, stop_at| RunControl {
            out: Some(out),
            resume,
            stop_at,
            accept_config_change: false,
        };
        let mut straight = Toy::new();
        let full = run(&mut straight, &plan(), &"cfg", control(&a, false, None)).unwrap();
        assert_eq!(full.eval, vec![("done".to_string(), 20.0)]);
        // Killed at step 11, after the periodic checkpoint of step 8 and with a torn last
        // line: the log holds lines past the checkpoint it resumes from.
        run(
            &mut Toy::new(),
            &plan(),
            &"cfg",
            control(&b, false, Some(11)),
        )
        .unwrap();
        run(
            &mut Toy::new(),
            &plan(),
            &"cfg",
            control(&c, false, Some(8)),
        )
        .unwrap();
        std::fs::remove_dir_all(b.join(CHECKPOINT_DIR)).unwrap();
        std::fs::rename(c.join(CHECKPOINT_DIR), b.join(CHECKPOINT_DIR)).unwrap();
        let metrics = b.join(METRICS_FILE);
        let mut text = std::fs::read_to_string(&metrics).unwrap();
        assert!(steps_logged(&metrics).iter().any(|s| s.0 >= 8));
        text.push_str("{\"step\": 11, \"lo");
        std::fs::write(&metrics, text).unwrap();
        let mut second = Toy::new();
        let rest = run(&mut second, &plan(), &"cfg", control(&b, true, None)).unwrap();
        assert_eq!(rest.start_step, 8);
        assert_eq!(second.started, 0, "a resumed run does not start afresh");
        assert_eq!(straight.w(), second.w());
        assert_eq!(full.final_loss, rest.final_loss);
        let (la, lb) = (steps_logged(&a.join(METRICS_FILE)), steps_logged(&metrics));
        assert_eq!(la, lb);
        let train_steps: Vec<u64> = la.iter().filter(|s| !s.1).map(|s| s.0).collect();
        assert_eq!(train_steps, vec![0, 3, 6, 9, 12, 15, 18, 19]);
        let eval_steps: Vec<u64> = la.iter().filter(|s| s.1).map(|s| s.0).collect();
        assert_eq!(eval_steps, vec![4, 9, 14, 19]);
    }

    #[test]
    fn resuming_continues_from_a_checkpoint_when_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let mut straight = Toy::new();
        run(&mut straight, &plan(), &"cfg", RunControl::default()).unwrap();
        let stopped = RunControl {
            stop_at: Some(8),
            ..RunControl::resuming(&out)
        };
        assert!(!stopped.resume, "no checkpoint yet: a fresh start");
        let first = run(&mut Toy::new(), &plan(), &"cfg", stopped).unwrap();
        assert_eq!((first.start_step, first.steps), (0, 8));
        let mut second = Toy::new();
        let rest = run(&mut second, &plan(), &"cfg", RunControl::resuming(&out)).unwrap();
        assert_eq!((rest.start_step, rest.steps), (8, 20));
        assert_eq!(second.started, 0);
        assert_eq!(straight.w(), second.w());
        // A finished run resumes at its end: the trained weights, no step taken.
        let mut third = Toy::new();
        let done = run(&mut third, &plan(), &"cfg", RunControl::resuming(&out)).unwrap();
        assert_eq!((done.start_step, done.steps), (20, 20));
        assert!(done.first_loss.is_nan());
        assert_eq!(straight.w(), third.w());
    }

    #[test]
    fn a_changed_config_is_refused_naming_the_keys_unless_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let cfg = serde_json::json!({"train": {"lr": 0.1, "steps": 20}, "model": {"d": 3}});
        let control = RunControl {
            out: Some(out),
            stop_at: Some(4),
            ..RunControl::default()
        };
        run(&mut Toy::new(), &plan(), &cfg, control).unwrap();
        let changed =
            serde_json::json!({"train": {"lr": 0.2, "steps": 20}, "model": {"d": 3, "e": 1}});
        let resume = RunControl {
            resume: true,
            stop_at: None,
            ..control
        };
        let err = run(&mut Toy::new(), &plan(), &changed, resume)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train.lr: 0.1 → 0.2") && err.contains("model.e: (absent) → 1"),
            "{err}"
        );
        assert!(!err.contains("steps"), "{err}");
        let accepted = RunControl {
            accept_config_change: true,
            ..resume
        };
        let r = run(&mut Toy::new(), &plan(), &changed, accepted).unwrap();
        assert_eq!((r.start_step, r.steps), (4, 20));
    }

    #[test]
    fn a_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut toy = Toy::new();
        toy.started = 98; // start() makes it 99: the step with target 3.0 (step 6) reports NaN
        let control = RunControl {
            out: Some(dir.path()),
            ..RunControl::default()
        };
        let err = run(&mut toy, &plan(), &"cfg", control)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at step 6"), "{err}");
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("checkpoint/state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(state["step"], 4);
    }

    #[test]
    fn resume_without_an_output_directory_or_checkpoint_is_an_error() {
        let err = run(
            &mut Toy::new(),
            &plan(),
            &"cfg",
            RunControl {
                resume: true,
                ..RunControl::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("output directory"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            &mut Toy::new(),
            &plan(),
            &"cfg",
            RunControl {
                out: Some(dir.path()),
                resume: true,
                ..RunControl::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("checkpoint"), "{err}");
        let zero = Plan::new(0, plan().schedule);
        assert!(run(&mut Toy::new(), &zero, &"cfg", RunControl::default()).is_err());
    }
}

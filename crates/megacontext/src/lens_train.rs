//! LensNet's training data and training.
//!
//! **Counterfactual utilities** ([`measure`]): for a working context before a chunk, the NLL of
//! the next H tokens is measured once as it is and once per candidate move applied alone
//! (budget aside); a move's utility is the loss it removes (nats per token). Each move costs a
//! forward pass of the base model over almost the whole context, so a state may measure only a
//! random draw of its moves (`trials`); the others still count in the budget term. States come
//! from streaming training documents under random moves ([`collect_samples`]), so LensNet sees
//! covers of every shape, not only the oldest-first one.
//!
//! **Loss** ([`lens_loss`]): a pairwise logistic ranking loss over the measured moves and a no-op
//! (score 0, utility 0) — for every pair whose utilities differ by more than `tolerance`, the
//! better one should score higher, each pair weighted by its utility gap — plus a budget term:
//! with each move (measured or not) taken with probability σ(score), the expected slots they
//! would add beyond the free ones, over the budget, times `budget_weight`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use metarep_core::checkpoint::load_checkpoint;
use metarep_core::progress::{self, ProgressBar};
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::{run, AdamRun, RunControl, RunReport};
use metarep_model::HookedTransformer;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::encoder::{save_params, set_params};
use crate::error::{Error, Result};
use crate::focus::{
    apply, candidates, focus_input, Allocator, Candidate, FocusConfig, Move, RandomScorer, Scorer,
};
use crate::gistnet::GistNet;
use crate::lensnet::{FocusInput, LensNet};
use crate::stream::{read_cover_and_trials, Gists, Reader, StreamConfig};
use crate::train::plan;
use crate::working_context::{PositionRule, WorkingContext};

/// One training state: what LensNet reads, the candidate moves and their measured utilities.
#[derive(Debug, Clone)]
pub struct LensSample {
    /// LensNet's input.
    pub input: FocusInput,
    /// The moves measured (all the state allows, or a random draw of them).
    pub candidates: Vec<Candidate>,
    /// Each measured move's utility: the next tokens' NLL as is minus with the move
    /// (nats/token).
    pub utilities: Vec<f32>,
    /// The state's other moves, not measured: they count in the budget term only.
    pub unmeasured: Vec<Candidate>,
    /// Free slots (budget − used).
    pub free: i64,
    /// The budget W.
    pub budget: usize,
}

/// Measures `trials` moves of `wc` drawn at random by `rng` (every move when `trials` is 0 or
/// covers them all; see [`draw_moves`]) on the `next` tokens (see the module docs); `query` is
/// LensNet's query for the state. `reader` reads `wc` after the start it shares with its
/// previous read, and keeps that read ([`read_cover_and_trials`]).
pub fn measure(
    reader: &mut Reader,
    gists: &mut Gists,
    wc: &WorkingContext,
    (rule, trials): (PositionRule, usize),
    next: &[u32],
    query: &Tensor,
    rng: &mut impl Rng,
) -> Result<LensSample> {
    let (cands, unmeasured) = draw_moves(candidates(wc), trials, rng);
    let covers = trial_covers(wc, &cands)?;
    let (base, nlls) = read_cover_and_trials(reader, gists, wc, &covers, (rule, next))?;
    let utilities = nlls.iter().map(|nll| base - nll).collect();
    Ok(LensSample {
        input: focus_input(wc, gists, query)?,
        candidates: cands,
        utilities,
        unmeasured,
        free: wc.config().budget as i64 - wc.used() as i64,
        budget: wc.config().budget,
    })
}

/// Splits `moves` into `at_most` of them drawn at random by `rng` and the rest, each part in
/// the order given; all of them are drawn when `at_most` is 0 or at least their number.
pub fn draw_moves(
    moves: Vec<Candidate>,
    at_most: usize,
    rng: &mut impl Rng,
) -> (Vec<Candidate>, Vec<Candidate>) {
    if at_most == 0 || at_most >= moves.len() {
        return (moves, Vec::new());
    }
    let mut drawn = vec![false; moves.len()];
    for i in rand::seq::index::sample(rng, moves.len(), at_most) {
        drawn[i] = true;
    }
    let (mut picked, mut rest) = (Vec::with_capacity(at_most), Vec::new());
    for (m, d) in moves.into_iter().zip(drawn) {
        if d {
            picked.push(m);
        } else {
            rest.push(m);
        }
    }
    (picked, rest)
}

/// Every move `wc` allows now ([`candidates`]) and `wc` with each applied alone, its budget
/// raised by what an expansion adds (the covers whose NLL measures a move's utility).
pub fn move_trials(wc: &WorkingContext) -> Result<(Vec<Candidate>, Vec<WorkingContext>)> {
    let cands = candidates(wc);
    let trials = trial_covers(wc, &cands)?;
    Ok((cands, trials))
}

/// `wc` with each of `moves` applied alone, its budget raised by what an expansion adds.
fn trial_covers(wc: &WorkingContext, moves: &[Candidate]) -> Result<Vec<WorkingContext>> {
    moves
        .iter()
        .map(|c| {
            let mut trial = wc.with_budget(wc.used() + c.slots.max(0) as usize);
            apply(&mut trial, c)?;
            Ok(trial)
        })
        .collect()
}

/// How training states are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LensDataConfig {
    /// The stream the states come from.
    pub stream: StreamConfig,
    /// Tokens after the state whose NLL measures a move (H).
    pub horizon: usize,
    /// A state every this many chunks.
    pub every: usize,
    /// Moves measured per state, drawn at random from those it allows (0: every move).
    pub trials: usize,
    /// The random moves that shape the covers between states.
    pub focus: FocusConfig,
    /// Seed of the random moves and of the draws of moves measured.
    pub seed: u64,
}

impl LensDataConfig {
    /// Errors unless `horizon` and `every` are ≥ 1.
    fn check(&self) -> Result<()> {
        if self.horizon == 0 || self.every == 0 {
            return Err(Error::Config(format!(
                "horizon ({}) and every ({}) must be ≥ 1",
                self.horizon, self.every
            )));
        }
        Ok(())
    }
}

/// Streams each document under random moves and measures a state every `every` chunks, until
/// `max` states ([`doc_samples`] document by document); shows a progress bar.
pub fn collect_samples(
    model: &HookedTransformer,
    net: &GistNet,
    docs: &[Vec<u32>],
    config: &LensDataConfig,
    max: usize,
) -> Result<Vec<LensSample>> {
    config.check()?;
    let bar = progress::bar(max as u64, "LensNet states");
    let mut out = Vec::with_capacity(max);
    for (d, tokens) in docs.iter().enumerate() {
        if out.len() >= max {
            break;
        }
        out.extend(doc_samples(
            model,
            net,
            (d, tokens),
            config,
            max - out.len(),
            &bar,
        )?);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The states of one document `(d, tokens)`, at most `max`: it is streamed under random moves
/// and a state is measured every `every` chunks (the moves and each state's draw of moves
/// measured seeded by `d`, its index in the collection);
/// `bar` advances by one per state. A document too short for one chunk after the warmup gives
/// none.
pub fn doc_samples(
    model: &HookedTransformer,
    net: &GistNet,
    (d, tokens): (usize, &[u32]),
    config: &LensDataConfig,
    max: usize,
    bar: &ProgressBar,
) -> Result<Vec<LensSample>> {
    config.check()?;
    let sc = &config.stream;
    let mut out = Vec::new();
    if max == 0 || tokens.len() < sc.warmup + sc.chunk.max(config.horizon) {
        return Ok(out);
    }
    sc.validate(tokens.len(), net)?;
    let mut gists = Gists::new(model, net, tokens);
    let mut wc = WorkingContext::new(sc.cover)?;
    wc.push(sc.warmup as u64);
    let mut scorer = RandomScorer::new(derive_seed(config.seed, &format!("doc {d}")));
    let mut draws = seeded(derive_seed(config.seed, &format!("doc {d} measured moves")));
    let mut allocator = Allocator::new(config.focus);
    let mut query: Option<Tensor> = None;
    let mut reader = Reader::new();
    let (mut at, mut step) = (sc.warmup, 0usize);
    while at + sc.chunk.max(config.horizon) <= tokens.len() && out.len() < max {
        if step == 0 {
            wc.fit();
        } else {
            // Random moves need no query: draws of the entries' scores.
            let scores = scorer.draw(wc.entries().len());
            allocator.step(&mut wc, &scores)?;
        }
        // A query is there only after the chunk read just before a state (below): its last
        // hidden state is the state's query.
        if let Some(q) = query.take() {
            let next = &tokens[at..at + config.horizon];
            let how = (sc.rule, config.trials);
            out.push(measure(
                &mut reader,
                &mut gists,
                &wc,
                how,
                next,
                &q,
                &mut draws,
            )?);
            bar.inc(1);
        }
        // Only the chunk before a state is read (the reader keeps the keys and values for the
        // state's reads to reuse).
        if (step + 1).is_multiple_of(config.every) {
            let (_, q) = reader.read(&mut gists, &wc, sc.rule, &tokens[at..at + sc.chunk])?;
            query = Some(q);
        }
        wc.append(sc.chunk as u64);
        at += sc.chunk;
        step += 1;
    }
    Ok(out)
}

/// A LensNet training run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LensTrainConfig {
    /// Seed of the state draws.
    pub seed: u64,
    /// Optimisation steps.
    pub steps: usize,
    /// States per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: usize,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub clip: f64,
    /// Utility gap (nats/token) below which a pair is not ranked.
    pub tolerance: f32,
    /// Weight of the budget term.
    pub budget_weight: f64,
    /// Metrics line every this many steps (0 = only the last).
    pub log_every: usize,
    /// Checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
    /// Rank the validation states every this many steps (0 = only after the last) and keep the
    /// parameters that rank them best (see [`train_lensnet`]).
    #[serde(default)]
    pub eval_every: usize,
}

impl Default for LensTrainConfig {
    /// 500 steps of 8 states, lr 1e-3 with 25 warmup steps, tolerance 1e-3, budget weight 0.1,
    /// validation every 50 steps.
    fn default() -> Self {
        LensTrainConfig {
            seed: 0,
            steps: 500,
            batch: 8,
            lr: 1e-3,
            warmup: 25,
            weight_decay: 0.0,
            clip: 1.0,
            tolerance: 1e-3,
            budget_weight: 0.1,
            log_every: 50,
            checkpoint_every: 0,
            eval_every: 50,
        }
    }
}

/// The scores `[c + u]` (f32) of a sample's `c` measured moves, then its `u` unmeasured ones.
fn candidate_scores(net: &LensNet, sample: &LensSample) -> Result<Tensor> {
    let scores = net.forward(&sample.input)?.flatten_all()?;
    let idx: Vec<u32> = sample
        .candidates
        .iter()
        .chain(&sample.unmeasured)
        .map(|c| (c.entry * 2 + usize::from(c.kind == Move::Collapse)) as u32)
        .collect();
    let idx = Tensor::from_vec(
        idx,
        sample.candidates.len() + sample.unmeasured.len(),
        scores.device(),
    )?;
    Ok(scores.index_select(&idx, 0)?)
}

/// `ln(1 + eˣ)`, computed stably.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}

/// The ranking + budget loss of one sample (a scalar; see the module docs).
pub fn lens_loss(net: &LensNet, sample: &LensSample, config: &LensTrainConfig) -> Result<Tensor> {
    let n = sample.candidates.len();
    if n == 0 || sample.utilities.len() != n {
        return Err(Error::Invalid(format!(
            "a LensNet sample needs ≥ 1 candidate and one utility each ({n} candidates, {} utilities)",
            sample.utilities.len()
        )));
    }
    let device = sample.input.vectors.device();
    let every = candidate_scores(net, sample)?;
    let sc = every.narrow(0, 0, n)?;
    let s = Tensor::cat(&[&sc, &Tensor::zeros(1, DType::F32, device)?], 0)?;
    let mut u = sample.utilities.clone();
    u.push(0.0);
    let m = n + 1;
    // Pair (i, j) with u_i − u_j > tolerance weighs its gap: the pairs that matter most count
    // most, and near-ties barely at all.
    let mut weight = vec![0f32; m * m];
    for i in 0..m {
        for j in 0..m {
            let gap = u[i] - u[j];
            if gap > config.tolerance {
                weight[i * m + j] = gap;
            }
        }
    }
    let total: f32 = weight.iter().sum();
    let weight = Tensor::from_vec(weight, (m, m), device)?;
    // diff[i][j] = s_j − s_i: the loss of ranking i above j.
    let diff = s.unsqueeze(0)?.broadcast_sub(&s.unsqueeze(1)?)?;
    let norm = if total > 0.0 {
        1.0 / f64::from(total)
    } else {
        0.0
    };
    let ranking = (softplus(&diff)? * weight)?.sum_all()?.affine(norm, 0.0)?;
    let slots: Vec<f32> = sample
        .candidates
        .iter()
        .chain(&sample.unmeasured)
        .map(|c| c.slots as f32)
        .collect();
    let slots = Tensor::from_vec(slots, every.dim(0)?, device)?;
    let take = (every.neg()?.exp()? + 1.0)?.recip()?;
    let excess = ((take * slots)?.sum_all()? - sample.free as f64)?.relu()?;
    let budget = excess.affine(config.budget_weight / sample.budget as f64, 0.0)?;
    Ok((ranking + budget)?)
}

/// How well a scorer ranks moves on held-out samples (among each sample's measured moves).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RankQuality {
    /// Fraction of pairs (utilities apart by more than the tolerance, the no-op included)
    /// ordered right.
    pub pair_accuracy: f64,
    /// Mean utility of each sample's top-scored move (the no-op, 0, when every score is ≤ 0).
    pub chosen_utility: f64,
    /// Mean utility of each sample's best move (or 0): the oracle.
    pub best_utility: f64,
    /// Samples scored.
    pub samples: usize,
}

/// Ranks `samples` with `scorer` and compares with the measured utilities.
pub fn rank_quality(
    scorer: &mut dyn Scorer,
    samples: &[LensSample],
    tolerance: f32,
) -> Result<RankQuality> {
    let (mut right, mut pairs, mut chosen, mut best) = (0usize, 0usize, 0.0, 0.0);
    for s in samples {
        let rows = scorer.score(&s.input)?;
        let mut sc: Vec<f32> = s
            .candidates
            .iter()
            .map(|c| rows[c.entry][usize::from(c.kind == Move::Collapse)])
            .collect();
        sc.push(0.0);
        let mut u = s.utilities.clone();
        u.push(0.0);
        for i in 0..u.len() {
            for j in 0..u.len() {
                if u[i] - u[j] > tolerance {
                    pairs += 1;
                    right += usize::from(sc[i] > sc[j]);
                }
            }
        }
        let top = (0..sc.len())
            .max_by(|a, b| sc[*a].total_cmp(&sc[*b]))
            .unwrap_or(0);
        chosen += f64::from(u[top]);
        best += f64::from(u.iter().copied().fold(0.0, f32::max));
    }
    let n = samples.len().max(1) as f64;
    Ok(RankQuality {
        pair_accuracy: right as f64 / pairs.max(1) as f64,
        chosen_utility: chosen / n,
        best_utility: best / n,
        samples: samples.len(),
    })
}

/// Where [`train_lensnet`] keeps the best parameters inside its output directory.
pub const BEST_DIR: &str = "best";

/// When the kept parameters ranked the validation states best, and how well.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct BestState {
    /// Steps done.
    step: usize,
    /// Their pair accuracy on the validation states.
    pair_accuracy: f64,
}

/// The parameters that ranked the validation states best so far.
struct Best {
    state: BestState,
    /// A copy of each parameter, by [`LensNet::params`] name.
    values: HashMap<String, Tensor>,
}

impl Best {
    /// The best of a run being resumed from `dir` (none if it has not evaluated yet).
    fn load(dir: &Path, device: &Device) -> Result<Option<Best>> {
        if !dir.exists() {
            return Ok(None);
        }
        let (values, state) = load_checkpoint(dir, device)?;
        Ok(Some(Best { state, values }))
    }
}

/// Trains `net` on `samples` (drawn `batch` a step by `(seed, step)`); writes metrics and
/// checkpoints under `control.out` when given.
///
/// With `validation` states (e.g. from training documents kept out of `samples`), the run ranks
/// them every [`LensTrainConfig::eval_every`] steps and after the last, and `net` ends with the
/// parameters that ranked them best (highest pair accuracy, the earliest on a tie): early
/// stopping, since LensNet can memorise a few hundred states. The report's `eval` names
/// `val_pair_accuracy` (the last), `best_step` and `best_val_pair_accuracy`; with an output
/// directory the best parameters are saved in [`BEST_DIR`] there, so a resumed run keeps them.
pub fn train_lensnet(
    net: &LensNet,
    samples: &[LensSample],
    validation: &[LensSample],
    config: &LensTrainConfig,
    control: RunControl,
) -> Result<RunReport> {
    if samples.is_empty() || config.batch == 0 {
        return Err(Error::Config(format!(
            "LensNet training needs samples ({}) and a batch ≥ 1 ({})",
            samples.len(),
            config.batch
        )));
    }
    let params = net.params();
    let best_dir = control.out.map(|o| o.join(BEST_DIR));
    let best = match &best_dir {
        Some(dir) if control.resume && !validation.is_empty() => {
            let device = params
                .first()
                .map_or(Device::Cpu, |(_, v)| v.device().clone());
            Best::load(dir, &device)?
        }
        Some(dir) if dir.exists() => {
            std::fs::remove_dir_all(dir).map_err(|e| metarep_core::Error::io(dir, e))?;
            None
        }
        _ => None,
    };
    let best = RefCell::new(best);
    let loss = |step: usize| -> Result<Tensor> {
        let mut rng = seeded(derive_seed(config.seed, &format!("lens step {step}")));
        let mut total: Option<Tensor> = None;
        for _ in 0..config.batch {
            let s = &samples[rng.random_range(0..samples.len())];
            let l = lens_loss(net, s, config)?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        let total = total.ok_or_else(|| Error::Invalid("empty LensNet batch".into()))?;
        Ok(total.affine(1.0 / config.batch as f64, 0.0)?)
    };
    let mut scorer = net.clone();
    let validate = |done: usize| -> Result<Vec<(String, f64)>> {
        let q = rank_quality(&mut scorer, validation, config.tolerance)?;
        let mut kept = best.borrow_mut();
        let state = match kept.as_ref() {
            Some(b) if b.state.pair_accuracy >= q.pair_accuracy => b.state,
            _ => {
                let state = BestState {
                    step: done,
                    pair_accuracy: q.pair_accuracy,
                };
                let values = params
                    .iter()
                    .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
                    .collect::<Result<HashMap<_, _>>>()?;
                if let Some(dir) = &best_dir {
                    save_params(dir, &params, &state)?;
                }
                *kept = Some(Best { state, values });
                state
            }
        };
        Ok(vec![
            ("val_pair_accuracy".into(), q.pair_accuracy),
            ("best_step".into(), state.step as f64),
            ("best_val_pair_accuracy".into(), state.pair_accuracy),
        ])
    };
    let mut plan = plan(
        config.steps,
        config.lr,
        config.warmup,
        config.log_every,
        config.checkpoint_every,
    );
    let fit = AdamRun::new(&params, config.weight_decay, config.clip, loss)?;
    let mut report = if validation.is_empty() {
        run(&mut { fit }, &plan, config, control)?
    } else {
        plan.eval_every = config.eval_every;
        run(&mut fit.with_eval(validate), &plan, config, control)?
    };
    if let Some(b) = best.into_inner() {
        set_params(&params, &b.values, "LensNet's best")?;
        if report.eval.is_empty() {
            // A finished run loaded from its checkpoint takes no step and ranks nothing.
            report.eval = vec![
                ("best_step".into(), b.state.step as f64),
                ("best_val_pair_accuracy".into(), b.state.pair_accuracy),
            ];
        }
    }
    Ok(report)
}

//! fig12: ΔNLL against compression. A frozen base model reads windows of held-out real text
//! (`cargo xtask fixtures corpus`) with one 32-token block replaced — by a learned GistNet gist
//! (one slot), by the mean of its token embeddings (one slot), by its last k tokens or its k most
//! surprising tokens under the base model (k slots, LLMLingua-style), or by nothing — and the
//! loss of the H tokens after the block is compared with the full context's: ΔNLL@H with 95%
//! intervals over windows, the fraction of blocks under 1 nat, and the retained context gain
//! (NLL_drop − NLL_method) / (NLL_drop − NLL_full).
//!
//! End to end, the longest held-out documents are read chunk by chunk through a W-slot budget:
//! truncation to the newest W tokens against the working context's oldest-first cover with
//! GistNet gists (levels ≤ 2, and level 1 only) and with mean-pooled gists, and the focus loop
//! steered by LensNet, by random scores or by the recency rule (newest gists expanded first).
//! LensNet trains on counterfactual utilities measured on training documents
//! (`metarep_megacontext::lens_train`), keeping the step that ranks the states of every
//! `val_stride`-th training document (not trained on) best; its ranking of moves on states from
//! other held-out documents is compared with random scores, the recency rule and the oracle.
//!
//! Base models: a byte-level Llama trained here on the corpus's training split (`base = "bytes"`,
//! the quick config CI runs) or SmolLM2-135M from its GGUF (`base = "smollm2"`, the full
//! config). GistNet trains through the frozen base model on training-split windows
//! (`metarep_megacontext::train_gistnet`).
//!
//! Everything slow is kept in `--out` as it is done, so the same command run again after an
//! interruption (or with one of `parts`) resumes: GistNet and LensNet from their checkpoints
//! (refused if they were trained from another config or base model), and each method's window
//! NLLs, each document's LensNet states and each policy's stream of each document from their
//! saved copies, reused only under the digests of what they were measured from ([`RunKeys`]).

use std::path::Path;

use candle_core::{DType, Var};
use metarep_core::atomic_write;
use metarep_core::config::{config_hash, sha256_hex};
use metarep_core::metrics::{FlatMetrics, MetricValue};
use metarep_core::progress;
use metarep_core::rng::derive_seed;
use metarep_core::train::{RunControl, RunReport};
use metarep_eval::corpus::{head_chars, read_split, Document, Split};
use metarep_eval::plot::{LinePlot, Series, SeriesStyle};
use metarep_eval::stats::{mean_ci, Interval};
use metarep_eval::table::{Cell, Table};
use metarep_megacontext::eval::{nll_per_window, summarize, DeltaSummary, Method};
use metarep_megacontext::lens_train::{rank_quality, LensSample, RankQuality};
use metarep_megacontext::sample_store::{load_samples, save_samples};
use metarep_megacontext::train::draw_windows;
use metarep_megacontext::{
    doc_samples, stream_nll, train_gistnet, train_lensnet, CoverConfig, FocusConfig, GistNet,
    GistNetConfig, GistTrainConfig, LensDataConfig, LensNet, LensNetConfig, LensTrainConfig,
    Policy, PositionRule, RandomScorer, RecencyScorer, Skip, StreamConfig, StreamLoss, WindowShape,
};
use metarep_model::HookedTransformer;
use metarep_testbeds::byte_lm::{encode as encode_bytes, ByteLmSpec};
use serde::{Deserialize, Serialize};

use crate::checks::{self, at_least_one, positive, require, CheckedConfig};
use crate::device::{load_options, onto_device};
use crate::error::BoxError;
use crate::fixtures::gguf::smollm2_file;
use crate::fixtures::{read_record, stale};
use crate::measure_cache::MeasureCache;
use crate::output::{metric_key, ResultDir};

/// The plan's gate: ΔNLL@32 of the learned gist at 32:1 (nats).
const GATE_MEAN: f64 = 0.5;
/// ... and the fraction of blocks with ΔNLL below [`GATE_BLOCK`] nats.
const GATE_FRACTION: f64 = 0.9;
/// The per-block threshold of [`GATE_FRACTION`].
const GATE_BLOCK: f64 = 1.0;
/// The plan's level-2 gate: ΔNLL@32 of a B²-token block replaced by one level-2 gist (nats).
const GATE_LEVEL2: f64 = 2.0;
/// The horizon the gates are stated at.
const GATE_HORIZON: usize = 32;

/// `configs/fig12.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig12Config {
    seed: u64,
    /// `bytes` (a byte-level LM trained here, [`ByteLm`]) or `smollm2`.
    base: String,
    /// The byte-level LM (for `base = "bytes"`).
    #[serde(default)]
    bytes: Option<ByteLmSpec>,
    /// Load the byte-level LM from the checked-in `fixtures/byte-lm` (built by `cargo xtask
    /// fixtures byte-lm` with the same `[bytes]` settings on the same training text) instead of
    /// training it.
    #[serde(default)]
    bytes_fixture: bool,
    /// Characters of training documents read (whole documents, in file order).
    train_chars: usize,
    /// GistNet's internal width, layers, heads and MLP width.
    gistnet: GistNetShape,
    /// GistNet training (its `shape` sets P, B and the training horizon).
    train: GistTrainConfig,
    /// Held-out windows per horizon.
    eval_windows: usize,
    /// Horizons H measured.
    horizons: Vec<usize>,
    /// k of the last-k-tokens and top-k-surprisal baselines (ratio B / k).
    keep: Vec<usize>,
    /// Windows per forward pass when measuring.
    eval_batch: usize,
    /// Held-out windows with a B²-token block replaced by one level-2 gist (0: not measured;
    /// the base model's context must hold prefix + B² + 32 tokens).
    #[serde(default)]
    level2_windows: usize,
    /// Held-out windows with several consecutive blocks replaced by gists in a row (not
    /// measured without the table).
    #[serde(default)]
    multi: Option<MultiSettings>,
    /// Long held-out documents read through a fixed slot budget.
    stream: StreamSettings,
    /// LensNet: its training states, size, training and the allocator it steers.
    lens: LensSettings,
    /// The parts measured after GistNet's training (both by default). A rerun into the same
    /// `--out` finds GistNet trained, so on a slow machine the parts can run one at a time.
    #[serde(default = "every_part")]
    parts: Vec<Part>,
}

/// A part of fig12 after GistNet's training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The ΔNLL windows (one block, level 2, gists in a row) and the gates.
    DeltaNll,
    /// LensNet and the streamed documents.
    Focus,
}

/// Both parts.
fn every_part() -> Vec<Part> {
    vec![Part::DeltaNll, Part::Focus]
}

/// Gists in a row: `blocks` consecutive blocks of B tokens, each replaced by its own gist (as a
/// working context holds them), against the same per-block baselines, at H = 32.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiSettings {
    /// Consecutive blocks replaced (≥ 2).
    blocks: usize,
    /// Tokens before them.
    prefix: usize,
    /// Held-out windows.
    windows: usize,
}

/// LensNet's part of fig12.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LensSettings {
    /// Training states, measured on training documents streamed under the `[stream]` budget.
    states: usize,
    /// States measured on held-out documents (not the streamed ones) for rank quality.
    held_states: usize,
    /// Every this many training documents, one's states validate LensNet (choose its step)
    /// instead of training it (0: none; 1 is refused).
    val_stride: usize,
    /// A state every this many chunks.
    every: usize,
    /// Moves measured per state, drawn at random (0: every move; each costs a read of the
    /// whole context).
    trials: usize,
    /// Tokens whose NLL measures a move (H).
    horizon: usize,
    /// LensNet's internal width, layers, heads and MLP width.
    width: usize,
    layers: usize,
    heads: usize,
    mlp: usize,
    /// LensNet training.
    train: LensTrainConfig,
    /// The allocator (also shaping the training states' covers, under random scores).
    focus: FocusConfig,
}

/// The end-to-end measurement: the longest held-out documents streamed chunk by chunk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// How many of the longest held-out documents.
    docs: usize,
    /// Each cut to its first this many tokens.
    max_tokens: usize,
    /// Slot budget W.
    budget: usize,
    /// Newest tokens always raw.
    recent: usize,
    /// Highest gist level.
    max_level: u8,
    /// Tokens predicted per step.
    chunk: usize,
    /// Tokens read before the first scored chunk.
    warmup: usize,
    /// Position ids of the slots.
    rule: PositionRule,
}

/// GistNet's size (its `d_model` and block come from the base model and the windows).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GistNetShape {
    width: usize,
    layers: usize,
    heads: usize,
    mlp: usize,
    /// Where the skip weights start (`last` or `mean`).
    skip: Skip,
}

impl CheckedConfig for Fig12Config {
    fn check(&self) -> Result<(), BoxError> {
        require(
            matches!(self.base.as_str(), "bytes" | "smollm2"),
            "base",
            &self.base,
            "`bytes` or `smollm2`",
        )?;
        require(
            self.base != "bytes" || self.bytes.is_some(),
            "bytes",
            "(missing)",
            "a [bytes] table for base = \"bytes\"",
        )?;
        require(
            !self.bytes_fixture || self.base == "bytes",
            "bytes_fixture",
            self.bytes_fixture,
            "false unless base = \"bytes\"",
        )?;
        for (key, v) in [
            ("train_chars", self.train_chars),
            ("eval_windows", self.eval_windows),
            ("eval_batch", self.eval_batch),
            ("train.steps", self.train.steps),
            ("train.batch", self.train.batch),
            ("train.shape.block", self.train.shape.block),
            ("train.shape.horizon", self.train.shape.horizon),
            ("gistnet.width", self.gistnet.width),
            ("gistnet.heads", self.gistnet.heads),
        ] {
            at_least_one(key, v)?;
        }
        require(
            self.eval_windows >= 2,
            "eval_windows",
            self.eval_windows,
            "≥ 2",
        )?;
        positive("train.lr", self.train.lr)?;
        require(
            !self.parts.is_empty(),
            "parts",
            "[]",
            "delta_nll, focus or both",
        )?;
        checks::each("horizons", &self.horizons, at_least_one)?;
        checks::each("keep", &self.keep, |key, k| {
            require(
                (1..=self.train.shape.block).contains(&k),
                key,
                k,
                "1..=train.shape.block",
            )
        })?;
        let st = &self.stream;
        at_least_one("stream.docs", st.docs)?;
        at_least_one("stream.chunk", st.chunk)?;
        at_least_one("stream.warmup", st.warmup)?;
        require(
            st.max_tokens >= st.warmup + st.chunk,
            "stream.max_tokens",
            st.max_tokens,
            "≥ stream.warmup + stream.chunk",
        )?;
        let lens = &self.lens;
        for (key, v) in [
            ("lens.states", lens.states),
            ("lens.held_states", lens.held_states),
            ("lens.every", lens.every),
            ("lens.horizon", lens.horizon),
            ("lens.width", lens.width),
            ("lens.heads", lens.heads),
            ("lens.train.steps", lens.train.steps),
            ("lens.train.batch", lens.train.batch),
        ] {
            at_least_one(key, v)?;
        }
        positive("lens.train.lr", lens.train.lr)?;
        require(
            lens.val_stride != 1,
            "lens.val_stride",
            lens.val_stride,
            "0 (no validation) or ≥ 2 (1 would leave no training states)",
        )?;
        at_least_one("train.blocks", self.train.blocks)?;
        if let Some(m) = &self.multi {
            require(m.blocks >= 2, "multi.blocks", m.blocks, "≥ 2")?;
            require(m.windows >= 2, "multi.windows", m.windows, "≥ 2")?;
            // The dropped baseline predicts the first token after the blocks from the prefix.
            at_least_one("multi.prefix", m.prefix)?;
        }
        require(
            self.horizons.contains(&GATE_HORIZON),
            "horizons",
            format!("{:?}", self.horizons),
            "a list holding the gates' horizon 32",
        )?;
        self.check_trained_length()
    }
}

impl Fig12Config {
    /// The held-out windows at horizon `h`: one block of B after the training prefix.
    fn eval_shape(&self, h: usize) -> WindowShape {
        WindowShape {
            horizon: h,
            ..self.train.shape
        }
    }

    /// The level-2 windows: a block of B² tokens after the training prefix, H = 32.
    fn level2_shape(&self) -> WindowShape {
        let b = self.train.shape.block;
        WindowShape {
            prefix: self.train.shape.prefix,
            block: b * b,
            horizon: GATE_HORIZON,
        }
    }

    /// The gists-in-a-row windows: `m.blocks` blocks of B after `m.prefix` tokens, H = 32.
    fn multi_shape(&self, m: &MultiSettings) -> WindowShape {
        WindowShape {
            prefix: m.prefix,
            block: m.blocks * self.train.shape.block,
            horizon: GATE_HORIZON,
        }
    }

    /// The byte LM is trained on `bytes.seq`-byte windows: every input fig12 reads must fit in
    /// one, or positions it never saw confound what is measured. The longest reads: GistNet's
    /// windows, the held-out windows, the stream's slots and chunk, and a LensNet state's
    /// expansion (up to B − 1 slots past the budget, then the horizon).
    fn check_trained_length(&self) -> Result<(), BoxError> {
        let Some(bytes) = self.bytes.as_ref().filter(|_| self.base == "bytes") else {
            return Ok(());
        };
        let (st, b) = (&self.stream, self.train.shape.block);
        let longest = self.horizons.iter().max().copied().unwrap_or(0);
        let mut reads = vec![
            (
                "train.shape.prefix + train.blocks · B + train.shape.horizon",
                self.train.window_shape().len(),
            ),
            (
                "train.shape.prefix + B + the longest horizon",
                self.eval_shape(longest).len(),
            ),
            ("stream.budget + stream.chunk", st.budget + st.chunk),
            (
                "stream.budget + B − 1 + lens.horizon (a LensNet state's expansion)",
                st.budget + b - 1 + self.lens.horizon,
            ),
        ];
        if let Some(m) = &self.multi {
            reads.push((
                "multi.prefix + multi.blocks · B + 32",
                self.multi_shape(m).len(),
            ));
        }
        if self.level2_windows > 0 {
            reads.push((
                "train.shape.prefix + B² + 32 (level 2)",
                self.level2_shape().len(),
            ));
        }
        let expected = format!("≤ bytes.seq = {} (the byte LM's trained length)", bytes.seq);
        for (what, len) in reads {
            require(len <= bytes.seq, what, len, &expected)?;
        }
        Ok(())
    }
}

/// Runs fig12 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig12Config = checks::load_checked(config, overrides)?;
    let root = crate::fixtures::repo_root();
    let corpus = root.join("target/fixtures/corpus");
    let train_docs = read_split(&corpus, Split::Train)
        .map_err(|e| format!("{e} (fetch it: cargo xtask fixtures corpus)"))?;
    let train_docs = head_chars(&train_docs, cfg.train_chars);
    let held_docs = read_split(&corpus, Split::HeldOut)?;
    let mut out = ResultDir::start(dir, &cfg, vec![cfg.seed])?;
    let (model, encode, base_digest) = base_model(&cfg, train_docs, dir, &mut out)?;
    let train_ids: Vec<Vec<u32>> = train_docs
        .iter()
        .map(|d| encode(&d.text))
        .collect::<Result<_, _>>()?;
    let held_ids: Vec<Vec<u32>> = held_docs
        .iter()
        .map(|d| encode(&d.text))
        .collect::<Result<_, _>>()?;
    println!(
        "  base model: {} layers, d_model {}; {} training documents ({} tokens), {} held out ({} tokens)",
        model.config().n_layers,
        model.config().d_model,
        train_ids.len(),
        train_ids.iter().map(Vec::len).sum::<usize>(),
        held_ids.len(),
        held_ids.iter().map(Vec::len).sum::<usize>()
    );
    let net = train_net(&cfg, (&model, &base_digest), &train_ids, dir)?;
    let keys = RunKeys::new((&model, &base_digest), &net)?;
    let kept_pass = keep_previous_metrics(&cfg, dir, &mut out)?;
    let pass = if cfg.parts.contains(&Part::DeltaNll) {
        let nlls = WindowNlls::new(&cfg, (&model, &net), &keys, dir);
        let rows = delta_rows(&cfg, &nlls, &held_ids)?;
        out.table("fig12_delta_nll", &table(&rows)?)?;
        out.plot("fig12_delta_nll", &plot(&rows, cfg.train.shape.block))?;
        record(&rows, &mut out)
    } else {
        kept_pass
    };
    if cfg.parts.contains(&Part::Focus) {
        focus(
            &cfg,
            (&model, &net),
            (&train_ids, &held_ids),
            (&keys, dir),
            &mut out,
        )?;
    }
    out.finish(pass)
}

/// With only some `parts` run, the metrics of the others are kept from the previous run's
/// `metrics.json` in `dir` (the same trained GistNet); returns the gates' verdict kept with
/// them (false when none was recorded). An unreadable `metrics.json` is an error.
fn keep_previous_metrics(
    cfg: &Fig12Config,
    dir: &Path,
    out: &mut ResultDir,
) -> Result<bool, BoxError> {
    let path = dir.join("metrics.json");
    if every_part().iter().all(|p| cfg.parts.contains(p)) || !path.exists() {
        return Ok(false);
    }
    let previous = FlatMetrics::read_json(&path).map_err(|e| {
        format!(
            "keeping the other parts' metrics from {}: {e}",
            path.display()
        )
    })?;
    let pass = matches!(previous.get("pass"), Some(MetricValue::Bool(true)));
    println!(
        "  parts {:?}: the other parts' {} metrics kept from {}",
        cfg.parts,
        previous.len(),
        path.display()
    );
    out.metrics.values.extend(previous.values);
    Ok(pass)
}

/// ΔNLL of every method on held-out windows: one block at each horizon, a level-2 block, and
/// gists in a row.
fn delta_rows(
    cfg: &Fig12Config,
    nlls: &WindowNlls<'_>,
    held_ids: &[Vec<u32>],
) -> Result<Vec<Row>, BoxError> {
    let net = nlls.net;
    let mut rows = Vec::new();
    for &h in &cfg.horizons {
        let shape = cfg.eval_shape(h);
        let windows = draw_windows(
            held_ids,
            shape,
            cfg.eval_windows,
            cfg.seed,
            &format!("eval H={h}"),
        )?;
        let mut methods = vec![Method::Gist(net), Method::MeanEmbedding, Method::Drop];
        methods.extend(cfg.keep.iter().map(|&k| Method::LastK(k)));
        methods.extend(cfg.keep.iter().map(|&k| Method::TopSurprisal(k)));
        rows.extend(measure(nlls, &windows, shape, &methods, "")?);
    }
    if cfg.level2_windows > 0 {
        let b = cfg.train.shape.block;
        let shape = cfg.level2_shape();
        let windows = draw_windows(
            held_ids,
            shape,
            cfg.level2_windows,
            cfg.seed,
            "eval level 2",
        )?;
        let methods = [
            Method::Gist2(net),
            Method::MeanEmbedding,
            Method::Drop,
            Method::LastK(b),
        ];
        rows.extend(measure(nlls, &windows, shape, &methods, "level2_")?);
    }
    if let Some(multi) = cfg.multi {
        let b = cfg.train.shape.block;
        let shape = cfg.multi_shape(&multi);
        let windows = draw_windows(
            held_ids,
            shape,
            multi.windows,
            cfg.seed,
            "eval gists in a row",
        )?;
        let methods = [
            Method::Gists(net),
            Method::MeanEach(b),
            Method::LastEach(b),
            Method::Drop,
        ];
        rows.extend(measure(nlls, &windows, shape, &methods, "row_")?);
    }
    Ok(rows)
}

/// The focus part: LensNet trained on counterfactual states and ranked on held-out ones, then
/// the longest held-out documents streamed under each policy; tables and metrics into `out`.
fn focus(
    cfg: &Fig12Config,
    (model, net): (&HookedTransformer, &GistNet),
    (train_ids, held_ids): (&[Vec<u32>], &[Vec<u32>]),
    (keys, dir): (&RunKeys, &Path),
    out: &mut ResultDir,
) -> Result<(), BoxError> {
    let stream_docs = longest(&cfg.stream, held_ids)?;
    let (mut lens, ranks, validation) =
        train_lens(cfg, (model, net), (train_ids, held_ids), (keys, dir))?;
    out.table("fig12_lens_ranking", &rank_table(&ranks)?)?;
    for (name, v) in validation {
        out.metrics.set_number(format!("lens_{name}"), v);
    }
    let docs = (&stream_docs[..], held_ids);
    let streams = stream_rows(cfg, (model, net), &mut lens, docs, (keys, dir))?;
    out.table("fig12_stream", &stream_table(&streams)?)?;
    for (name, q) in &ranks {
        out.metrics
            .set_number(format!("lens_{name}_pair_accuracy"), q.pair_accuracy);
        out.metrics
            .set_number(format!("lens_{name}_chosen_utility"), q.chosen_utility);
    }
    for s in &streams {
        let key = format!("stream_{}", s.name);
        out.metrics.set_number(format!("{key}_nll"), s.nll);
        out.metrics.set_number(format!("{key}_mean_span"), s.span);
    }
    Ok(())
}

/// Where LensNet's states are saved in `--out`.
const LENS_STATES: &str = "lens_states";

/// LensNet states of `docs` (`max` at most), collected document by document and saved in
/// `DIR/lens_states/{what}_doc{d}` under the models' [`RunKeys`], the document's tokens, its
/// index, the states still wanted and `data`, so that an interrupted collection resumes at the
/// first document not yet measured. Returns them document by document (those with none
/// included) with a digest of their keys.
fn lens_states(
    (model, net): (&HookedTransformer, &GistNet),
    (docs, what): (&[Vec<u32>], &str),
    data: &LensDataConfig,
    max: usize,
    (keys, dir): (&RunKeys, &Path),
) -> Result<(Vec<Vec<LensSample>>, String), BoxError> {
    let bar = progress::bar(max as u64, "LensNet states");
    let data_key = config_hash(data)?;
    let mut out = Vec::new();
    let mut taken = 0;
    let mut all_keys = String::new();
    for (d, tokens) in docs.iter().enumerate() {
        if taken >= max {
            break;
        }
        let left = max - taken;
        let at = dir.join(LENS_STATES).join(format!("{what}_doc{d}"));
        let key = format!(
            "{} {} {} {d} {left} {data_key}",
            keys.base,
            keys.gistnet,
            tokens_digest(tokens)
        );
        all_keys.push_str(&key);
        let saved = load_samples(&at, &key, model.device()).unwrap_or_else(|e| {
            eprintln!("  {e}; measuring these states again");
            None
        });
        let states = match saved {
            Some(s) => {
                bar.inc(s.len() as u64);
                s
            }
            None => {
                let s = doc_samples(model, net, (d, tokens), data, left, &bar)?;
                if !s.is_empty() {
                    save_samples(&at, &s, &key)?;
                }
                s
            }
        };
        taken += states.len();
        out.push(states);
    }
    bar.finish_and_clear();
    Ok((out, sha256_hex(all_keys.as_bytes())))
}

/// One streaming policy over the long documents.
struct StreamRow {
    name: &'static str,
    /// Mean NLL per scored token over every document's chunks.
    nll: f64,
    /// Scored tokens.
    tokens: usize,
    /// Mean slots read before a chunk.
    slots: f64,
    /// Mean tokens those slots stood for.
    span: f64,
    /// Focus-loop moves per step and slot utilisation (focus policies only).
    focus: Option<(f64, f64)>,
}

/// The `docs` longest held-out documents that hold a warmup and a chunk, longest first, cut to
/// `max_tokens`, as indices into `held`.
fn longest(st: &StreamSettings, held: &[Vec<u32>]) -> Result<Vec<usize>, BoxError> {
    let mut docs: Vec<usize> = (0..held.len())
        .filter(|i| held[*i].len() >= st.warmup + st.chunk)
        .collect();
    docs.sort_by_key(|i| std::cmp::Reverse(held[*i].len()));
    docs.truncate(st.docs);
    if docs.is_empty() {
        return Err(format!("no held-out document holds {} tokens", st.warmup + st.chunk).into());
    }
    Ok(docs)
}

/// The stream settings as a [`StreamConfig`] with gists up to `max_level`.
fn stream_config(cfg: &Fig12Config, max_level: u8) -> StreamConfig {
    let st = cfg.stream;
    StreamConfig {
        cover: CoverConfig {
            block: cfg.train.shape.block as u32,
            budget: st.budget,
            recent: st.recent,
            max_level,
        },
        rule: st.rule,
        chunk: st.chunk,
        warmup: st.warmup,
    }
}

/// A scorer's name and its rank quality on held-out states.
type Ranked = (&'static str, RankQuality);
/// Named numbers: a training run's evaluation.
type Named = Vec<(String, f64)>;

/// Measures LensNet's training states on the training documents and held-out states on the
/// held-out documents not streamed, trains LensNet into `dir/lensnet` (choosing its step on the
/// states of every `val_stride`-th training document), and ranks the held-out states' moves with
/// it, with random scores and with the recency rule. Returns LensNet, the rankings and the
/// validation's metrics (the step kept and its pair accuracy).
fn train_lens(
    cfg: &Fig12Config,
    (model, net): (&HookedTransformer, &GistNet),
    (train, held): (&[Vec<u32>], &[Vec<u32>]),
    (keys, dir): (&RunKeys, &Path),
) -> Result<(LensNet, Vec<Ranked>, Named), BoxError> {
    let l = cfg.lens;
    let data = LensDataConfig {
        stream: stream_config(cfg, cfg.stream.max_level),
        horizon: l.horizon,
        every: l.every,
        trials: l.trials,
        focus: l.focus,
        seed: derive_seed(cfg.seed, "lens states"),
    };
    let streamed = longest(&cfg.stream, held)?;
    let others: Vec<Vec<u32>> = (0..held.len())
        .filter(|i| !streamed.contains(i))
        .map(|i| held[i].clone())
        .collect();
    let start = std::time::Instant::now();
    let states = |docs: &[Vec<u32>], what: &str, max: usize| {
        lens_states((model, net), (docs, what), &data, max, (keys, dir))
    };
    let (by_doc, states_key) = states(train, "train", l.states)?;
    let (held_samples, _) = states(&others, "held", l.held_states)?;
    let (mut samples, mut validation) = (Vec::new(), Vec::new());
    for (d, doc) in by_doc.into_iter().enumerate() {
        match l.val_stride {
            k if k > 0 && d % k == k - 1 => validation.extend(doc),
            _ => samples.extend(doc),
        }
    }
    let held_samples: Vec<LensSample> = held_samples.into_iter().flatten().collect();
    let measured: usize = samples.iter().map(|s| s.candidates.len()).sum();
    let moves = measured + samples.iter().map(|s| s.unmeasured.len()).sum::<usize>();
    let per = |n: usize| n as f64 / samples.len().max(1) as f64;
    println!(
        "  LensNet states: {} training ({:.1} of their {:.1} moves measured each), {} validating (every {}th training document's), {} held out, in {:.0} s (saved in {})",
        samples.len(),
        per(measured),
        per(moves),
        validation.len(),
        l.val_stride,
        held_samples.len(),
        start.elapsed().as_secs_f64(),
        dir.join(LENS_STATES).display()
    );
    if samples.is_empty() || held_samples.is_empty() {
        return Err("no document is long enough for a LensNet state".into());
    }
    let lcfg = LensNetConfig {
        d_model: model.config().d_model,
        width: l.width,
        layers: l.layers,
        heads: l.heads,
        mlp: l.mlp,
        max_level: cfg.stream.max_level,
    };
    let mut lens = LensNet::new(lcfg, derive_seed(cfg.seed, "lensnet"), model.device())?;
    let run_dir = dir.join("lensnet");
    let from = serde_json::json!({
        "seed": cfg.seed,
        "net": lcfg,
        "train": l.train,
        "val_stride": l.val_stride,
    });
    let key = format!("{states_key} {}", config_hash(&from)?);
    let control = resume_for(&run_dir, &key, "LensNet")?;
    let report = train_lensnet(&lens, &samples, &validation, &l.train, control)?;
    let kept = |name: &str| report.eval.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let best = match (kept("best_step"), kept("best_val_pair_accuracy")) {
        (Some(step), Some(acc)) => {
            format!("; kept step {step:.0}, pair accuracy {acc:.3} on the validation states")
        }
        _ => String::new(),
    };
    println!(
        "  LensNet ({} parameters): {}{best}",
        lcfg.n_params(),
        run_text(&report, "ranking + budget loss", "")
    );
    lens.save(&dir.join("lensnet_final"))?;
    let tol = l.train.tolerance;
    let mut random = RandomScorer::new(derive_seed(cfg.seed, "random lens ranking"));
    let ranks = vec![
        ("lensnet", rank_quality(&mut lens, &held_samples, tol)?),
        ("random", rank_quality(&mut random, &held_samples, tol)?),
        (
            "recency",
            rank_quality(&mut recency(cfg), &held_samples, tol)?,
        ),
    ];
    for (name, q) in &ranks {
        println!(
            "  rank quality of {name:<8} on {} held-out states: pair accuracy {:.3}; chosen move's utility {:+.5} (oracle {:+.5}, no move 0) nats/token",
            q.samples, q.pair_accuracy, q.chosen_utility, q.best_utility
        );
    }
    Ok((lens, ranks, report.eval))
}

/// The recency rule (newest gists expanded first, oldest families collapsed first), its
/// preference falling by e over as many tokens as the budget has slots.
fn recency(cfg: &Fig12Config) -> RecencyScorer {
    RecencyScorer {
        scale: cfg.stream.budget as f32,
    }
}

fn rank_table(ranks: &[Ranked]) -> Result<Table, BoxError> {
    let mut t = Table::new(vec![
        "scorer",
        "pair accuracy",
        "chosen move utility (nats/token)",
        "oracle utility",
        "held-out states",
    ]);
    for (name, q) in ranks {
        t.push_row(vec![
            Cell::Text((*name).into()),
            Cell::Num(q.pair_accuracy),
            Cell::Num(q.chosen_utility),
            Cell::Num(q.best_utility),
            Cell::from(q.samples as i64),
        ])?;
    }
    Ok(t)
}

/// The streamed held-out documents read under truncation, working-context covers with GistNet
/// gists (levels ≤ max_level and level 1 only) and with mean-pooled gists, and the focus loop
/// steered by LensNet, by random scores and by the recency rule.
fn stream_rows(
    cfg: &Fig12Config,
    (model, net): (&HookedTransformer, &GistNet),
    lens: &mut LensNet,
    (docs, held): (&[usize], &[Vec<u32>]),
    (keys, dir): (&RunKeys, &Path),
) -> Result<Vec<StreamRow>, BoxError> {
    let st = cfg.stream;
    let cache = MeasureCache::new(&dir.join("stream"));
    let mut mean_cfg = *net.config();
    mean_cfg.skip = Skip::Mean;
    let mean_net = GistNet::new(mean_cfg, 0, model.device())?;
    let mean_key = weights_digest(mean_net.params())?;
    let lens_key = weights_digest(lens.params())?;
    let settings = serde_json::json!({
        "seed": cfg.seed, "stream": cfg.stream, "focus": cfg.lens.focus,
        "block": cfg.train.shape.block,
    });
    let settings = config_hash(&settings)?;
    let names = [
        "truncate",
        "gistnet_cover",
        "gistnet_level1_cover",
        "mean_cover",
        "lensnet_focus",
        "random_focus",
        "recency_focus",
    ];
    let doc_tokens = |i: usize| held[i].len().min(st.max_tokens);
    let per_policy: usize = docs.iter().map(|&i| doc_tokens(i)).sum();
    let bar = progress::bar((names.len() * per_policy) as u64, "stream tokens");
    let mut rows = Vec::new();
    for name in names {
        bar.set_message(name);
        let (n, level) = match name {
            "mean_cover" => (&mean_net, st.max_level),
            "gistnet_level1_cover" => (net, 1),
            _ => (net, st.max_level),
        };
        let (mut total, mut tokens, mut slots, mut span) = (0.0, 0, 0.0, 0.0);
        let (mut moves, mut util, mut steps) = (0.0, 0.0, 0.0);
        for (k, &i) in docs.iter().enumerate() {
            let d = &held[i][..doc_tokens(i)];
            let mut random = RandomScorer::new(derive_seed(cfg.seed, &format!("random focus {k}")));
            let mut rule = recency(cfg);
            let policy = match name {
                "truncate" => Policy::Truncate,
                "lensnet_focus" => Policy::Focus {
                    scorer: &mut *lens,
                    config: cfg.lens.focus,
                },
                "random_focus" => Policy::Focus {
                    scorer: &mut random,
                    config: cfg.lens.focus,
                },
                "recency_focus" => Policy::Focus {
                    scorer: &mut rule,
                    config: cfg.lens.focus,
                },
                _ => Policy::Cover,
            };
            // Saved per policy and document (see [`RunKeys`]): an interrupted part resumes.
            let key = format!(
                "{} {} {k} {} {} {settings}",
                keys.base,
                if name == "mean_cover" {
                    &mean_key
                } else {
                    &keys.gistnet
                },
                tokens_digest(d),
                if name == "lensnet_focus" {
                    &lens_key
                } else {
                    ""
                }
            );
            let r: StreamLoss = cache.get_or_measure(&format!("{name}_doc{k}"), &key, || {
                Ok(stream_nll(model, n, d, &stream_config(cfg, level), policy)?)
            })?;
            bar.inc(d.len() as u64);
            total += r.nll * r.tokens as f64;
            tokens += r.tokens;
            slots += r.mean_slots * r.tokens as f64;
            span += r.mean_span * r.tokens as f64;
            if let Some(f) = &r.focus {
                moves += (f.expansions + f.collapses) as f64;
                util += f.utilisation_sum;
                steps += f.steps as f64;
            }
        }
        let row = StreamRow {
            name,
            nll: total / tokens as f64,
            tokens,
            slots: slots / tokens as f64,
            span: span / tokens as f64,
            focus: (steps > 0.0).then(|| (moves / steps, util / steps)),
        };
        let focus = row.focus.map_or(String::new(), |(m, u)| {
            format!(
                "; {m:.2} moves per step, {:.1}% of the budget used",
                100.0 * u
            )
        });
        println!(
            "  stream {:<22} NLL {:.4} nats/token over {} tokens of {} documents; {:.1} slots standing for {:.0} tokens{focus}",
            row.name,
            row.nll,
            row.tokens,
            docs.len(),
            row.slots,
            row.span
        );
        rows.push(row);
    }
    bar.finish_and_clear();
    Ok(rows)
}

fn stream_table(rows: &[StreamRow]) -> Result<Table, BoxError> {
    let mut t = Table::new(vec![
        "policy",
        "NLL (nats/token)",
        "tokens scored",
        "mean slots",
        "mean tokens covered",
        "moves per step",
        "slot utilisation",
    ]);
    for r in rows {
        let (moves, util) = match r.focus {
            Some((m, u)) => (Cell::Num(m), Cell::Num(u)),
            None => (Cell::Text("—".into()), Cell::Text("—".into())),
        };
        t.push_row(vec![
            Cell::Text(r.name.into()),
            Cell::Num(r.nll),
            Cell::from(r.tokens as i64),
            Cell::Num(r.slots),
            Cell::Num(r.span),
            moves,
            util,
        ])?;
    }
    Ok(t)
}

/// Tokenises a document's text into the base model's ids.
type Encoder = Box<dyn Fn(&str) -> Result<Vec<u32>, BoxError>>;

/// The frozen base model and its encoder: SmolLM2 from its GGUF, or a byte-level LM trained
/// here on the training documents (joined by newlines), saved to `dir/base_model`.
fn base_model(
    cfg: &Fig12Config,
    train_docs: &[Document],
    dir: &Path,
    out: &mut ResultDir,
) -> Result<(HookedTransformer, Encoder, String), BoxError> {
    if cfg.base == "smollm2" {
        let root = crate::fixtures::repo_root();
        let gguf = smollm2_file(&root)?;
        let digest = crate::fixtures::sha256_file(&gguf)?;
        out.extra("smollm2_sha256", &digest)?;
        let model = HookedTransformer::from_gguf(&gguf, &load_options())?;
        let tok = model
            .tokenizer()
            .ok_or("the SmolLM2 GGUF carries no tokenizer")?
            .clone();
        let encode: Encoder = Box::new(move |text| Ok(tok.encode(text, false)?.ids));
        return Ok((model, encode, digest));
    }
    let spec = cfg
        .bytes
        .as_ref()
        .ok_or("base = \"bytes\" needs a [bytes] table")?;
    let text = training_bytes(train_docs);
    // Kept for `metarep megacontext eval --model DIR/base_model --bytes`.
    let saved = dir.join("base_model");
    let model = if cfg.bytes_fixture {
        let model = load_byte_fixture(spec, &text)?;
        model.save_pretrained(&saved)?;
        model
    } else {
        let (model, report) = spec.train(&text)?;
        println!(
            "  byte-level LM: loss {:.3} → {:.3} nats/byte over {} steps",
            report.first_loss, report.final_loss, report.steps
        );
        model.save_pretrained(&saved)?;
        onto_device(model, &saved)?
    };
    let digest = crate::fixtures::sha256_file(&saved.join("model.safetensors"))?;
    let encode: Encoder = Box::new(|text| Ok(encode_bytes(text)));
    Ok((model, encode, digest))
}

/// The byte-level LM's training text: the training documents' bytes, each followed by a
/// newline.
fn training_bytes(train_docs: &[Document]) -> Vec<u32> {
    train_docs
        .iter()
        .flat_map(|d| encode_bytes(&d.text).into_iter().chain([u32::from(b'\n')]))
        .collect()
}

/// The checked-in byte-level LM.
pub fn byte_fixture_dir() -> std::path::PathBuf {
    crate::fixtures::repo_root().join("fixtures/byte-lm")
}

/// What `fixtures/byte-lm/fig12.json` records: how the fixture was trained.
#[derive(Debug, Serialize, Deserialize)]
pub struct ByteFixture {
    /// The `[bytes]` settings it was trained with.
    pub bytes: ByteLmSpec,
    /// SHA-256 of its training text (one byte per id).
    pub text_sha256: String,
}

/// SHA-256 of a byte-id text.
fn text_digest(text: &[u32]) -> String {
    let raw: Vec<u8> = text.iter().map(|&b| b as u8).collect();
    sha256_hex(&raw)
}

/// The fixture byte-level LM on the chosen device, after checking it was trained with `spec`
/// on `text`.
fn load_byte_fixture(spec: &ByteLmSpec, text: &[u32]) -> Result<HookedTransformer, BoxError> {
    let dir = byte_fixture_dir();
    let stored: ByteFixture = read_record(&dir, "fig12.json", "byte-lm")?;
    if &stored.bytes != spec {
        return Err(stale(&dir, "byte-lm", "with other [bytes] settings"));
    }
    if stored.text_sha256 != text_digest(text) {
        return Err(stale(
            &dir,
            "byte-lm",
            "on other text than train_chars of the corpus fixture's training split",
        ));
    }
    println!("  byte-level LM: {}", dir.display());
    Ok(HookedTransformer::from_dir(&dir, &load_options())?)
}

/// Trains the byte-level LM of `config` (its `[bytes]` settings, on its `train_chars` of the
/// corpus fixture's training documents) into `dir` with a `fig12.json` saying how.
pub fn build_byte_fixture(config: &Path, dir: &Path) -> Result<(), BoxError> {
    let cfg: Fig12Config = checks::load_checked(config, &[])?;
    let spec = cfg
        .bytes
        .ok_or_else(|| format!("{} has no [bytes] table", config.display()))?;
    let corpus = crate::fixtures::repo_root().join("target/fixtures/corpus");
    let docs = read_split(&corpus, Split::Train)
        .map_err(|e| format!("{e} (fetch it: cargo xtask fixtures corpus)"))?;
    let text = training_bytes(head_chars(&docs, cfg.train_chars));
    let (model, report) = spec.train(&text)?;
    println!(
        "  byte-lm: loss {:.3} → {:.3} nats/byte over {} steps ({:.0} s)",
        report.first_loss, report.final_loss, report.steps, report.seconds
    );
    model.save_pretrained(dir)?;
    let about = ByteFixture {
        text_sha256: text_digest(&text),
        bytes: spec,
    };
    std::fs::write(
        dir.join("fig12.json"),
        serde_json::to_string_pretty(&about)? + "\n",
    )?;
    Ok(())
}

/// Trains GistNet through the frozen base model into `dir/gistnet`.
fn train_net(
    cfg: &Fig12Config,
    (model, base): (&HookedTransformer, &str),
    docs: &[Vec<u32>],
    dir: &Path,
) -> Result<GistNet, BoxError> {
    let g = cfg.gistnet;
    let ncfg = GistNetConfig {
        d_model: model.config().d_model,
        block: cfg.train.shape.block,
        width: g.width,
        layers: g.layers,
        heads: g.heads,
        mlp: g.mlp,
        skip: g.skip,
    };
    let net = GistNet::new(ncfg, derive_seed(cfg.seed, "gistnet"), model.device())?;
    let run_dir = dir.join("gistnet");
    let from = serde_json::json!({
        "seed": cfg.seed, "base": cfg.base, "bytes": cfg.bytes,
        "train_chars": cfg.train_chars, "gistnet": cfg.gistnet, "train": cfg.train,
    });
    let key = format!(
        "{} {base} {:?}",
        config_hash(&from)?,
        model.device().location()
    );
    let control = resume_for(&run_dir, &key, "GistNet")?;
    let report = train_gistnet(model, &net, docs, &cfg.train, control)?;
    println!(
        "  GistNet ({} parameters): {}",
        ncfg.n_params(),
        run_text(&report, "NLL after the gist", " nats")
    );
    net.save(&dir.join("gistnet_final"))?;
    Ok(net)
}

/// The file in a training run's directory recording what the net is trained from.
const TRAINED_FOR: &str = "trained_for.txt";

/// The run in `run_dir` continued from its checkpoint, when there is one, provided it was
/// trained from `key` (config, base model, device: see [`RunKeys`]); a net trained from
/// another is an error, never overwritten. Records `key` for the next run.
fn resume_for<'a>(run_dir: &'a Path, key: &str, what: &str) -> Result<RunControl<'a>, BoxError> {
    let control = RunControl::resuming(run_dir);
    let path = run_dir.join(TRAINED_FOR);
    match std::fs::read_to_string(&path) {
        Ok(k) if k != key && control.resume => {
            return Err(format!(
                "{} holds a {what} trained from another config or base model; use a fresh \
                 --out, or remove that directory to train it again",
                run_dir.display()
            )
            .into())
        }
        Err(_) if control.resume => println!(
            "  {what} in {}: no record of what it was trained from (a run before {TRAINED_FOR} \
             existed); resumed as this config's",
            run_dir.display()
        ),
        _ => {}
    }
    atomic_write(&path, key.as_bytes())?;
    Ok(control)
}

/// A training run's losses for the log, saying where it resumed (a finished run loaded from
/// its checkpoint takes no step).
fn run_text(report: &RunReport, loss: &str, unit: &str) -> String {
    let resumed = match report.start_step {
        0 => String::new(),
        s if s == report.steps => {
            return format!(
                "trained ({} steps), loaded from its checkpoint",
                report.steps
            )
        }
        s => format!(", resumed at step {s}"),
    };
    format!(
        "{loss} {:.4} → {:.4}{unit} over steps {}..{}{resumed}",
        report.first_loss, report.final_loss, report.start_step, report.steps
    )
}

/// One measured method at one horizon.
struct Row {
    horizon: usize,
    /// Tokens in the replaced block (B, B² for level-2 gists, m·B for gists in a row).
    block: usize,
    /// The metric keys' part: `` (one block), `level2_` or `row_` (gists in a row).
    part: &'static str,
    summary: DeltaSummary,
    /// (NLL_drop − NLL_method) / (NLL_drop − NLL_full), from the means.
    retained: f64,
    /// The learned gist's ΔNLL minus this method's, window by window: mean and 95% interval
    /// (`None` on the learned gist's own row).
    paired: Option<Interval>,
}

/// The models a saved measurement was measured with, as digests. Measurements are kept in
/// `--out` (a [`MeasureCache`] or saved LensNet states) so that an interrupted part resumes
/// where it stopped; each is keyed by these and by what else it depends on (its inputs' tokens
/// and settings), so it is reused only where it would come out the same.
struct RunKeys {
    /// The base model's weights and the device.
    base: String,
    /// GistNet's weights.
    gistnet: String,
}

impl RunKeys {
    /// Keys of `model` (whose weights' digest is `base`) and GistNet `net`.
    fn new((model, base): (&HookedTransformer, &str), net: &GistNet) -> Result<Self, BoxError> {
        Ok(Self {
            base: format!("{base} {:?}", model.device().location()),
            gistnet: weights_digest(net.params())?,
        })
    }
}

/// SHA-256 of the parameters' names and f32 values, in order.
fn weights_digest(params: Vec<(String, Var)>) -> Result<String, BoxError> {
    let mut bytes = Vec::new();
    for (name, var) in params {
        bytes.extend_from_slice(name.as_bytes());
        for x in var.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()? {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(sha256_hex(&bytes))
}

/// SHA-256 of token ids.
fn tokens_digest<'t>(tokens: impl IntoIterator<Item = &'t u32>) -> String {
    let bytes: Vec<u8> = tokens.into_iter().flat_map(|t| t.to_le_bytes()).collect();
    sha256_hex(&bytes)
}

/// The held-out windows' NLLs, measured once each and kept in `DIR/window_nll` so that an
/// interrupted ΔNLL part resumes at the first method not yet measured; the full context's NLLs
/// are shared by every method. An entry is keyed by the base model, the windows, their shape
/// and batch and, for GistNet's methods, the net's weights (see [`RunKeys`]).
struct WindowNlls<'a> {
    model: &'a HookedTransformer,
    net: &'a GistNet,
    batch: usize,
    cache: MeasureCache,
    keys: &'a RunKeys,
}

impl<'a> WindowNlls<'a> {
    fn new(
        cfg: &Fig12Config,
        (model, net): (&'a HookedTransformer, &'a GistNet),
        keys: &'a RunKeys,
        dir: &Path,
    ) -> Self {
        Self {
            model,
            net,
            batch: cfg.eval_batch,
            cache: MeasureCache::new(&dir.join("window_nll")),
            keys,
        }
    }

    /// NLL@H per window with the block replaced by `method` (`None`: in full), saved as `name`.
    fn get(
        &self,
        name: &str,
        windows: &[Vec<u32>],
        shape: WindowShape,
        method: Option<Method<'_>>,
    ) -> Result<Vec<f64>, BoxError> {
        let learned = matches!(
            method,
            Some(Method::Gist(_) | Method::Gist2(_) | Method::Gists(_))
        );
        let key = format!(
            "{} {shape:?} {} {} {}",
            self.keys.base,
            self.batch,
            tokens_digest(windows.iter().flatten()),
            if learned {
                self.keys.gistnet.as_str()
            } else {
                ""
            }
        );
        self.cache.get_or_measure(name, &key, || {
            let rule = PositionRule::SpanEnd;
            Ok(nll_per_window(
                self.model, windows, shape, rule, method, self.batch,
            )?)
        })
    }
}

/// ΔNLL of each of `methods` on `windows` (one of them `drop`, for the retained gain); the
/// first is the learned gist, which every other is compared with window by window.
fn measure(
    nlls: &WindowNlls<'_>,
    windows: &[Vec<u32>],
    shape: WindowShape,
    methods: &[Method<'_>],
    part: &'static str,
) -> Result<Vec<Row>, BoxError> {
    let at = format!("{part}H{}_", shape.horizon);
    let full = nlls.get(&format!("{at}full"), windows, shape, None)?;
    let mut deltas = Vec::new();
    for m in methods {
        let got = nlls.get(&format!("{at}{}", m.name()), windows, shape, Some(*m))?;
        deltas.push(
            got.iter()
                .zip(&full)
                .map(|(g, f)| g - f)
                .collect::<Vec<f64>>(),
        );
    }
    let mut summaries = Vec::new();
    for (m, d) in methods.iter().zip(&deltas) {
        summaries.push(summarize(m, shape.block, d, GATE_BLOCK)?);
    }
    let drop = summaries
        .iter()
        .find(|s| s.method == "drop")
        .map(|s| s.mean)
        .ok_or("no drop baseline")?;
    let learned = deltas.first().ok_or("no methods")?;
    let mut rows = Vec::new();
    for (k, (s, d)) in summaries.into_iter().zip(&deltas).enumerate() {
        let paired = match k {
            0 => None,
            _ => {
                let diff: Vec<f64> = learned.iter().zip(d).map(|(g, o)| g - o).collect();
                Some(mean_ci(&diff, 0.95)?)
            }
        };
        rows.push(Row {
            horizon: shape.horizon,
            block: shape.block,
            part,
            retained: (drop - s.mean) / drop,
            summary: s,
            paired,
        });
    }
    for r in &rows {
        let s = &r.summary;
        let paired = r.paired.map_or(String::new(), |p| {
            format!(
                "; {} − this, paired: {:+.4} [{:+.4}, {:+.4}]",
                rows[0].summary.method, p.estimate, p.low, p.high
            )
        });
        println!(
            "  H={:<4} block {:<5} {:<14} ratio {:>6} ΔNLL {:+.4} [{:+.4}, {:+.4}], {:.3} of blocks < {} nat, retained gain {:.3}{paired}",
            r.horizon,
            r.block,
            s.method,
            ratio_text(s.ratio),
            s.mean,
            s.low,
            s.high,
            s.below,
            s.threshold,
            r.retained
        );
    }
    Ok(rows)
}

fn ratio_text(r: f64) -> String {
    if r.is_finite() {
        format!("{r}:1")
    } else {
        "∞".into()
    }
}

fn table(rows: &[Row]) -> Result<Table, BoxError> {
    let mut t = Table::new(vec![
        "H",
        "block tokens",
        "method",
        "tokens per slot",
        "ΔNLL (nats)",
        "95% low",
        "95% high",
        "blocks with ΔNLL < 1",
        "retained context gain",
        "learned − this, paired",
        "paired 95% low",
        "paired 95% high",
        "windows",
    ]);
    for r in rows {
        let s = &r.summary;
        let paired = |f: fn(&Interval) -> f64| {
            r.paired
                .as_ref()
                .map_or(Cell::from(""), |p| Cell::Num(f(p)))
        };
        t.push_row(vec![
            Cell::from(r.horizon as i64),
            Cell::from(r.block as i64),
            Cell::Text(s.method.clone()),
            Cell::Text(ratio_text(s.ratio)),
            Cell::Num(s.mean),
            Cell::Num(s.low),
            Cell::Num(s.high),
            Cell::Num(s.below),
            Cell::Num(r.retained),
            paired(|p| p.estimate),
            paired(|p| p.low),
            paired(|p| p.high),
            Cell::from(s.n as i64),
        ])?;
    }
    Ok(t)
}

/// ΔNLL@32 against tokens per slot: last-k tokens as a line over k, the one-slot methods as
/// points at B:1, dropping as a dashed level.
fn plot(rows: &[Row], block: usize) -> LinePlot {
    let at = |name: &str| {
        rows.iter()
            .filter(|r| {
                r.horizon == GATE_HORIZON && r.part.is_empty() && r.summary.method.starts_with(name)
            })
            .map(|r| (r.summary.ratio, r.summary.mean))
            .filter(|(x, _)| x.is_finite())
            .collect::<Vec<_>>()
    };
    let mut keep = at("last_");
    keep.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut surprising = at("surprisal_");
    surprising.sort_by(|a, b| a.0.total_cmp(&b.0));
    let drop = rows
        .iter()
        .find(|r| r.horizon == GATE_HORIZON && r.part.is_empty() && r.summary.method == "drop")
        .map_or(0.0, |r| r.summary.mean);
    let lowest = keep.first().map_or(1.0, |p| p.0);
    let series = |name: &str, points, style| Series {
        name: name.into(),
        points,
        style,
        color: None,
    };
    LinePlot::new("fig12: ΔNLL@32 of the tokens after a replaced block")
        .x_label("tokens per slot (log)")
        .y_label("ΔNLL@32 vs full context (nats)")
        .log_x(true)
        .series(series("last k tokens", keep, SeriesStyle::Solid))
        .series(series(
            "k most surprising tokens",
            surprising,
            SeriesStyle::Solid,
        ))
        .series(series("GistNet", at("gistnet"), SeriesStyle::Markers))
        .series(series(
            "mean of embeddings",
            at("mean"),
            SeriesStyle::Markers,
        ))
        .series(series(
            "block dropped",
            vec![(lowest, drop), (block as f64, drop)],
            SeriesStyle::Dashed,
        ))
}

/// The metrics and the gates; returns whether every gate measured here holds.
fn record(rows: &[Row], out: &mut ResultDir) -> bool {
    let m = &mut out.metrics;
    for r in rows {
        let s = &r.summary;
        let key = format!("h{}_{}{}", r.horizon, r.part, metric_key(&s.method));
        m.set_number(format!("{key}_delta_nll"), s.mean);
        m.set_number(format!("{key}_delta_nll_low"), s.low);
        m.set_number(format!("{key}_delta_nll_high"), s.high);
        m.set_number(format!("{key}_below_1"), s.below);
        m.set_number(format!("{key}_retained_gain"), r.retained);
        if let Some(p) = &r.paired {
            m.set_number(format!("{key}_learned_minus_this"), p.estimate);
            m.set_number(format!("{key}_learned_minus_this_low"), p.low);
            m.set_number(format!("{key}_learned_minus_this_high"), p.high);
        }
    }
    let at32: Vec<&DeltaSummary> = rows
        .iter()
        .filter(|r| r.horizon == GATE_HORIZON && r.part.is_empty())
        .map(|r| &r.summary)
        .collect();
    let level2 = rows
        .iter()
        .find(|r| r.summary.method == "gistnet_level2")
        .map(|r| r.summary.mean);
    let Some(gist) = at32.iter().find(|s| s.method == "gistnet") else {
        return false;
    };
    let mean_gate = gist.mean < GATE_MEAN;
    let block_gate = gist.below > GATE_FRACTION;
    // Training-free baselines spending at most the gist's one slot per block.
    let apart = at32
        .iter()
        .filter(|s| s.method != "gistnet" && s.ratio >= gist.ratio)
        .all(|s| gist.high < s.low);
    m.set_bool("gate_delta_nll_32_below_0_5", mean_gate);
    m.set_bool("gate_blocks_below_1_nat_over_0_9", block_gate);
    m.set_bool("gate_gist_beats_training_free_at_32_to_1", apart);
    m.set_bool("gate_level2_measured", level2.is_some());
    let level2_gate = level2.is_none_or(|d| d < GATE_LEVEL2);
    if level2.is_some() {
        m.set_bool("gate_level2_delta_nll_below_2", level2_gate);
    }
    let level2_text = match level2 {
        Some(d) => format!("level-2 (1 024:1) ΔNLL {d:.4} < {GATE_LEVEL2}: {level2_gate}"),
        None => "level-2 (1 024:1) not measured".into(),
    };
    println!(
        "  gates at 32:1, H=32: ΔNLL {:.4} < {GATE_MEAN}: {mean_gate}; {:.3} of blocks < {GATE_BLOCK} nat > {GATE_FRACTION}: {block_gate}; intervals apart from every training-free baseline: {apart}; {level2_text}",
        gist.mean, gist.below
    );
    mean_gate && block_gate && apart && level2_gate
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use metarep_megacontext::eval::delta_nll;
    use metarep_megacontext::{GistNetConfig, Skip};
    use metarep_model::init::random_weights;
    use metarep_model::ModelConfig;

    fn mean_of(rows: &[Row], method: &str) -> f64 {
        rows.iter()
            .find(|r| r.summary.method == method)
            .map(|r| r.summary.mean)
            .unwrap()
    }

    #[test]
    fn a_trained_net_resumes_only_under_the_key_it_was_trained_from() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("gistnet");
        assert!(!resume_for(&run, "a", "GistNet").unwrap().resume);
        std::fs::create_dir_all(run.join("checkpoint")).unwrap();
        std::fs::write(run.join("checkpoint/state.json"), "{}").unwrap();
        assert!(resume_for(&run, "a", "GistNet").unwrap().resume);
        let err = resume_for(&run, "b", "GistNet").unwrap_err().to_string();
        assert!(err.contains("trained from another config"), "{err}");
        assert_eq!(std::fs::read_to_string(run.join(TRAINED_FOR)).unwrap(), "a");
        // A run from before the record: resumed, and recorded from then on.
        std::fs::remove_file(run.join(TRAINED_FOR)).unwrap();
        assert!(resume_for(&run, "b", "GistNet").unwrap().resume);
        assert!(resume_for(&run, "a", "GistNet").is_err());
    }

    #[test]
    fn window_nlls_are_kept_per_method_and_measured_again_for_another_gistnet() {
        let mcfg = ModelConfig::gpt2_like(1, 16, 2, 32, 64);
        let w = random_weights(&mcfg, 3, 0.5, DType::F32, &Device::Cpu).unwrap();
        let model = HookedTransformer::new(mcfg, w).unwrap();
        let quick = crate::fixtures::repo_root().join("configs/fig12.quick.toml");
        let cfg: Fig12Config = checks::load_checked(&quick, &[]).unwrap();
        let shape = WindowShape {
            prefix: 8,
            block: 8,
            horizon: 4,
        };
        let windows: Vec<Vec<u32>> = (0..6u32)
            .map(|i| (0..20u32).map(|t| (t * 5 + i * 3 + t / 4) % 32).collect())
            .collect();
        let ncfg = GistNetConfig {
            d_model: 16,
            block: 8,
            width: 16,
            layers: 1,
            heads: 2,
            mlp: 32,
            skip: Skip::Last,
        };
        let net = GistNet::new(ncfg, 1, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let run = |net: &GistNet| {
            let keys = RunKeys::new((&model, "test model"), net).unwrap();
            let nlls = WindowNlls::new(&cfg, (&model, net), &keys, dir.path());
            let methods = [Method::Gist(net), Method::MeanEmbedding, Method::Drop];
            measure(&nlls, &windows, shape, &methods, "").unwrap()
        };
        let direct = |m: Method| {
            let d = delta_nll(&model, &windows, shape, PositionRule::SpanEnd, m, 2).unwrap();
            d.iter().sum::<f64>() / d.len() as f64
        };
        let first = run(&net);
        assert!((mean_of(&first, "gistnet") - direct(Method::Gist(&net))).abs() < 1e-6);
        // The paired comparison: the learned gist minus each other method, window by window.
        assert!(first[0].paired.is_none());
        for r in &first[1..] {
            let p = r.paired.unwrap();
            let gap = mean_of(&first, "gistnet") - r.summary.mean;
            assert!((p.estimate - gap).abs() < 1e-9, "{}", r.summary.method);
            assert!(p.low < p.estimate && p.estimate < p.high);
        }
        assert!((mean_of(&first, "mean") - direct(Method::MeanEmbedding)).abs() < 1e-6);
        let cached = dir.path().join("window_nll");
        for name in ["H4_full", "H4_gistnet", "H4_mean", "H4_drop"] {
            assert!(cached.join(format!("{name}.json")).exists(), "{name}");
        }
        // A rerun reads the saved values: a doctored entry under its own key shows through.
        let path = cached.join("H4_mean.json");
        let mut entry: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        entry["value"] = serde_json::json!(vec![100.0; windows.len()]);
        std::fs::write(&path, entry.to_string()).unwrap();
        let again = run(&net);
        assert!(mean_of(&again, "mean") > 50.0);
        assert_eq!(mean_of(&again, "gistnet"), mean_of(&first, "gistnet"));
        // Other weights: the gist is measured again, the baselines are not.
        let b = ncfg.block;
        let (_, mix) = net.params().into_iter().find(|(n, _)| n == "mix").unwrap();
        mix.set(&Tensor::from_vec(vec![1.0f32 / b as f32; b], b, &Device::Cpu).unwrap())
            .unwrap();
        let other = run(&net);
        let gist = mean_of(&other, "gistnet");
        assert!((gist - mean_of(&first, "gistnet")).abs() > 1e-4);
        assert!((gist - direct(Method::Gist(&net))).abs() < 1e-6);
        assert!(mean_of(&other, "mean") > 50.0);
    }

    #[test]
    fn the_byte_fixture_loads_only_for_its_settings_and_text() {
        let about = byte_fixture_dir().join("fig12.json");
        let stored: ByteFixture =
            serde_json::from_str(&std::fs::read_to_string(about).unwrap()).unwrap();
        let text = vec![u32::from(b'a'); 300];
        let err = load_byte_fixture(&stored.bytes, &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("other text") && err.contains("cargo xtask fixtures byte-lm"),
            "{err}"
        );
        let other = ByteLmSpec {
            steps: stored.bytes.steps + 1,
            ..stored.bytes.clone()
        };
        let err = load_byte_fixture(&other, &text).unwrap_err().to_string();
        assert!(err.contains("[bytes] settings"), "{err}");
        assert_ne!(text_digest(&text), stored.text_sha256);
        let config: Fig12Config = checks::load_checked(
            &crate::fixtures::repo_root().join("configs/fig12.quick.toml"),
            &[],
        )
        .unwrap();
        assert!(config.bytes_fixture);
        assert_eq!(config.bytes.as_ref(), Some(&stored.bytes));
    }
}

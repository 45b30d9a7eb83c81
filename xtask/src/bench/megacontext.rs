//! `megacontext`: the learned half of MegaContext over SmolLM2-135M (the GGUF fetched by
//! `cargo xtask fixtures smollm2`, dequantized to f32) on the CPU, in one run:
//!
//! - **ingest**: held-out corpus text (`cargo xtask fixtures corpus`) appended to an on-disk
//!   gist tree whose level-1 and level-2 gists GistNet makes (`GistNetSummarizer`, commits of
//!   4 096 tokens, fsync per commit), tokens/s, against the base model's plain forward over the
//!   same tokens in windows of 1 024 (target: ingest ≥ 50% of the plain forward's tokens/s —
//!   gisting should cost less than reading);
//! - **eval**: next-token loss over the same document read through a 512-slot working context
//!   (oldest-first cover, chunks of 32), tokens scored/s, as `stream_gists` reads it (each
//!   chunk after the keys and values of the context's start unchanged since the last chunk,
//!   `stream::Reader`) and with the whole context read for every chunk (`read_cover`), with the
//!   difference of their mean NLLs;
//! - **focus overhead**: 16 tokens generated after the document through the working context
//!   with LensNet's focus loop, the loop's time (LensNet's input and scores, the allocator) over
//!   the decode steps' time (target ≤ 10%). A decode step runs the context after the start it
//!   shares with the previous step (`stream::Reader`): two positions when the step only
//!   appended a token, all of them when a move or a new gist changed the context's front. The
//!   same 16 tokens' decode steps without the focus loop (oldest-first cover) are reported too.
//! - **LensNet states**: the counterfactual measurement LensNet trains on (every move of a
//!   512-slot cover scored on the next 32 tokens) at a quarter, a half and three quarters of
//!   the document: each move's cover read in full against `read_cover_and_trials`, which reads
//!   the moves after the keys and values of the prefix they share with the cover; seconds,
//!   moves, and the largest difference in a move's NLL.
//!
//! GistNet and LensNet have fig12's SmolLM2 shapes and are untrained: their cost does not depend
//! on their weights. Each repetition runs every workload once; the report gives medians, and
//! ratios as medians of per-repetition ratios. The
//! tree is written under `target/megacontext-bench/` and deleted afterwards.
//! Settings: `tokens` (document length, default 4 096), `reps` (default 2).

use std::path::Path;
use std::time::Instant;

use metarep_eval::corpus::{read_split, Split};
use metarep_gist_tree::{FsyncPolicy, GistDType, Provenance, TreeConfig, Writer, WriterOptions};
use metarep_megacontext::generate::{generate, GenerateConfig};
use metarep_megacontext::lens_train::move_trials;
use metarep_megacontext::stream::{read_cover, read_cover_and_trials, stream_gists, Gists, Reader};
use metarep_megacontext::{
    CoverConfig, FocusConfig, GistNet, GistNetConfig, GistNetSummarizer, LensNet, LensNetConfig,
    Policy, PositionRule, StreamConfig, WorkingContext,
};
use metarep_model::generate::Sampling;
use metarep_model::{HookedTransformer, Input, LoadOptions};
use serde_json::json;

use super::{load_average, median, median_ratio, setting, write_report};
use crate::error::BoxError;
use crate::fixtures::gguf::smollm2_file;

/// The `--set` keys this benchmark accepts.
pub const SETTINGS: &[&str] = &["tokens", "reps"];

const WINDOW: usize = 1024;
const COMMIT: usize = 4096;
const NEW_TOKENS: usize = 16;
const INGEST_TARGET: f64 = 0.5;
const FOCUS_TARGET: f64 = 0.1;
/// Tokens after a LensNet state whose NLL measures a move (fig12's `lens.horizon`).
const HORIZON: usize = 32;

/// One repetition of the LensNet-states workload.
struct StateCost {
    /// Seconds reading each move's cover in full (and the cover itself).
    full: f64,
    /// Seconds with `read_cover_and_trials`.
    shared: f64,
    moves: usize,
    /// Largest |NLL difference| of a move between the two.
    max_diff: f32,
}

/// The LensNet-states workload over `tokens` (see the module docs).
fn state_cost(
    gists: &mut Gists,
    tokens: &[u32],
    cover: CoverConfig,
) -> Result<StateCost, BoxError> {
    let rule = PositionRule::SpanEnd;
    let mut cost = StateCost {
        full: 0.0,
        shared: 0.0,
        moves: 0,
        max_diff: 0.0,
    };
    for at in [tokens.len() / 4, tokens.len() / 2, 3 * tokens.len() / 4] {
        let mut wc = WorkingContext::new(cover)?;
        wc.push(at as u64);
        let (_, trials) = move_trials(&wc)?;
        let next = &tokens[at..at + HORIZON];
        // Gists are made on first use: made (without the base model) before either is timed.
        for t in &trials {
            gists.embed_slots(&t.slots())?;
        }
        let start = Instant::now();
        read_cover(gists, &wc, rule, next)?;
        let each = trials
            .iter()
            .map(|t| Ok(read_cover(gists, t, rule, next)?.0))
            .collect::<Result<Vec<f32>, BoxError>>()?;
        cost.full += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let (_, got) =
            read_cover_and_trials(&mut Reader::new(), gists, &wc, &trials, (rule, next))?;
        cost.shared += start.elapsed().as_secs_f64();
        cost.moves += trials.len();
        for (a, b) in each.iter().zip(&got) {
            cost.max_diff = cost.max_diff.max((a - b).abs());
        }
    }
    Ok(cost)
}

/// The eval workload with the whole cover read for every chunk: tokens scored/s and the mean
/// NLL per scored token.
fn full_read_eval(gists: &mut Gists, stream: &StreamConfig) -> Result<(f64, f64), BoxError> {
    let tokens = gists.tokens().to_vec();
    let mut wc = WorkingContext::new(stream.cover)?;
    wc.push(stream.warmup as u64);
    let (mut at, mut nlls) = (stream.warmup, Vec::new());
    let start = Instant::now();
    while at + stream.chunk <= tokens.len() {
        wc.fit();
        nlls.push(read_cover(gists, &wc, stream.rule, &tokens[at..at + stream.chunk])?.0);
        wc.append(stream.chunk as u64);
        at += stream.chunk;
    }
    let tps = (nlls.len() * stream.chunk) as f64 / start.elapsed().as_secs_f64();
    let mean = nlls.iter().map(|x| f64::from(*x)).sum::<f64>() / nlls.len().max(1) as f64;
    Ok((tps, mean))
}

fn number(key: &str, default: usize) -> Result<usize, BoxError> {
    match setting(key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("--set {key}={v}: expected a whole number").into()),
    }
}

/// Runs the benchmark and writes `results/bench/megacontext.json`.
pub fn run(out: &Path) -> Result<bool, BoxError> {
    let n = number("tokens", 4096)?;
    let reps = number("reps", 2)?.max(1);
    let root = crate::fixtures::repo_root();
    let model = HookedTransformer::from_gguf(&smollm2_file(&root)?, &LoadOptions::default())?;
    let tok = model
        .tokenizer()
        .ok_or("the SmolLM2 GGUF carries no tokenizer")?;
    let held = read_split(&root.join("target/fixtures/corpus"), Split::HeldOut)
        .map_err(|e| format!("{e} (fetch it: cargo xtask fixtures corpus)"))?;
    let text: String = held
        .iter()
        .map(|d| d.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let mut tokens = tok.encode(&text, false)?.ids;
    if tokens.len() < n {
        return Err(format!(
            "the held-out corpus has {} tokens, fewer than {n}",
            tokens.len()
        )
        .into());
    }
    tokens.truncate(n);
    let d = model.config().d_model;
    let net = GistNet::new(GistNetConfig::for_model(d, 32), 0, model.device())?;
    let mut lens = LensNet::new(LensNetConfig::for_model(d, 2), 0, model.device())?;
    let cover = CoverConfig::default();
    let (mut plain, mut ingest, mut eval, mut focus_share, mut decode_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut eval_full, mut eval_diff) = (Vec::new(), 0.0f64);
    let mut cover_decode_ms = Vec::new();
    let mut states = Vec::new();
    let mut scored = 0;
    for rep in 0..reps {
        println!("  repetition {}/{reps}", rep + 1);
        let start = Instant::now();
        for w in tokens.chunks(WINDOW) {
            model.forward(Input::from_ids(&[w.to_vec()], model.device())?)?;
        }
        plain.push(n as f64 / start.elapsed().as_secs_f64());

        let dir = root.join("target/megacontext-bench");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let config = TreeConfig {
            block: 32,
            width: d as u32,
            dtype: GistDType::F16,
            ..TreeConfig::default()
        };
        let opts = WriterOptions {
            fsync: FsyncPolicy::EveryCommit,
            ..WriterOptions::default()
        };
        let summarizer = GistNetSummarizer::new(net.clone(), model.clone(), 1);
        let start = Instant::now();
        let mut w = Writer::create(&dir, config, opts, Box::new(summarizer))?;
        for part in tokens.chunks(COMMIT) {
            w.append(part, &Provenance::default())?;
            w.commit()?;
        }
        w.close()?;
        ingest.push(n as f64 / start.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&dir)?;

        let stream = StreamConfig {
            cover,
            rule: PositionRule::SpanEnd,
            chunk: 32,
            warmup: cover.budget,
        };
        let start = Instant::now();
        let loss = stream_gists(
            &mut Gists::new(&model, &net, &tokens),
            &stream,
            Policy::Cover,
        )?;
        eval.push(loss.tokens as f64 / start.elapsed().as_secs_f64());
        scored = loss.tokens;
        let (tps, mean) = full_read_eval(&mut Gists::new(&model, &net, &tokens), &stream)?;
        eval_full.push(tps);
        eval_diff = eval_diff.max((mean - loss.nll).abs());

        let gen = GenerateConfig {
            cover,
            rule: PositionRule::SpanEnd,
            max_new: NEW_TOKENS,
            sampling: Sampling::Greedy,
        };
        let mut plain_gists = Gists::new(&model, &net, &tokens);
        let g = generate(&mut plain_gists, &gen, None)?;
        cover_decode_ms.push(1e3 * g.decode_seconds / NEW_TOKENS as f64);
        let mut gists = Gists::new(&model, &net, &tokens);
        let g = generate(&mut gists, &gen, Some((&mut lens, FocusConfig::default())))?;
        focus_share.push(g.focus_seconds / g.decode_seconds);
        decode_ms.push(1e3 * g.decode_seconds / NEW_TOKENS as f64);

        states.push(state_cost(&mut gists, &tokens, cover)?);
    }
    let full_s: Vec<f64> = states.iter().map(|c| c.full).collect();
    let shared_s: Vec<f64> = states.iter().map(|c| c.shared).collect();
    let state_ratio = median_ratio(&full_s, &shared_s);
    let max_diff = states.iter().map(|c| c.max_diff).fold(0.0f32, f32::max);
    let moves = states.first().map_or(0, |c| c.moves);
    let (plain_tps, ingest_tps, eval_tps) = (median(&plain), median(&ingest), median(&eval));
    let ingest_ratio = median_ratio(&ingest, &plain);
    let eval_ratio = median_ratio(&eval, &plain);
    let reuse_ratio = median_ratio(&eval, &eval_full);
    let share = median(&focus_share);
    println!(
        "  plain forward {plain_tps:.0} tokens/s; ingest with GistNet gists {ingest_tps:.0} tokens/s ({ingest_ratio:.2}× the forward, target ≥ {INGEST_TARGET}); eval through {} slots {eval_tps:.0} tokens/s; focus loop {:.1}% of a {:.0} ms decode step (target ≤ {:.0}%)",
        cover.budget,
        100.0 * share,
        median(&decode_ms),
        100.0 * FOCUS_TARGET
    );
    println!(
        "  decode step without the focus loop (oldest-first cover) {:.0} ms",
        median(&cover_decode_ms)
    );
    println!(
        "  eval reading the whole context for every chunk {:.1} tokens/s: reusing its unchanged start is {reuse_ratio:.2}× faster (mean NLLs {eval_diff:.1e} apart)",
        median(&eval_full)
    );
    println!(
        "  LensNet states: {moves} moves at 3 points, each cover read in full {:.1} s, after the shared prefix {:.1} s ({state_ratio:.2}× faster; largest NLL difference {max_diff:.1e})",
        median(&full_s),
        median(&shared_s)
    );
    let body = json!({
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, f32)",
        "document_tokens": n,
        "repetitions": reps,
        "load_average": load_average(),
        "plain_forward": {"window": WINDOW, "tokens_per_s": plain_tps, "all": plain},
        "ingest": {
            "commit_tokens": COMMIT, "fsync": "every commit", "gist_dtype": "f16",
            "gistnet_params": net.config().n_params(),
            "tokens_per_s": ingest_tps, "all": ingest,
            "ratio_to_plain_forward": ingest_ratio, "target": INGEST_TARGET,
            "met": ingest_ratio >= INGEST_TARGET,
        },
        "eval": {
            "budget": cover.budget, "chunk": 32, "tokens_scored": scored,
            "tokens_per_s": eval_tps, "all": eval,
            "ratio_to_plain_forward": eval_ratio,
            "full_reads_tokens_per_s": median(&eval_full), "all_full_reads": eval_full,
            "reuse_speedup": reuse_ratio, "mean_nll_difference": eval_diff,
        },
        "focus_overhead": {
            "new_tokens": NEW_TOKENS, "lensnet_params": lens.config().n_params(),
            "decode_ms_per_token": median(&decode_ms),
            "decode_ms_per_token_without_focus": median(&cover_decode_ms),
            "focus_over_decode": share, "all": focus_share,
            "target": FOCUS_TARGET, "met": share <= FOCUS_TARGET,
        },
        "lens_states": {
            "points": 3, "budget": cover.budget, "horizon": HORIZON, "moves": moves,
            "full_reads_s": median(&full_s), "shared_prefix_s": median(&shared_s),
            "speedup": state_ratio, "max_nll_difference": max_diff,
            "all_full": full_s, "all_shared": shared_s,
        },
    });
    write_report(out, "megacontext", body)?;
    Ok(true)
}

//! `real_forward`: a real pretrained model, SmolLM2-135M-Instruct (the Q4_1 GGUF fetched by
//! `cargo xtask fixtures smollm2`), loaded by `HookedTransformer::from_gguf` with every tensor
//! dequantized to f32, on the CPU:
//!
//! - forward pass of a batch of 4 × 256 tokens (full logits), tokens/s;
//! - greedy generation of 128 new tokens from a 256-token prompt with the KV cache
//!   (`HookedTransformer::generate`, no stop tokens, so always 128), tokens/s (new tokens over the
//!   whole call, prompt pass included), plus the time to the first new token;
//! - peak resident set of the metarep process (`VmHWM`, reset through `/proc/self/clear_refs`
//!   before each phase: load, forward, generation, the timed repetitions) against the bytes of
//!   the f32 weights. The metarep side runs in this process, which does nothing else; the
//!   reference runs in its own child process, so neither's memory counts in the other's.
//!
//! In the same run, the reference: transformers loading the same GGUF through its own GGUF loader
//! (dequantized to f32), `model(ids)` on the same ids and `model.generate(max_new_tokens = 128,
//! min_new_tokens = 128, do_sample = False, use_cache = True)` on the same prompt
//! (`xtask/python/bench_real_forward.py`, run with `$METAREP_PYTHON`; skipped with a note naming
//! what to install when it cannot run), with as many torch threads as candle uses. Both sides
//! get the same token ids (drawn with a fixed seed above the special tokens), never text.
//!
//! The machine is shared, so every repetition times each workload once on each side,
//! interleaved; the report gives minimums and medians and the speed-ups as medians of
//! per-repetition ratios and as ratios of minimums.
//!
//! Targets (issue 17): forward ≥ 1.5× transformers tokens/s, generation ≥ 2× transformers'
//! `generate`, peak RSS ≤ 1.3× the f32 weights. Times are never asserted; the report says met or
//! missed.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use metarep_core::memory;
use metarep_core::rng::{derive_seed, seeded};
use metarep_model::generate::{GenerateOptions, Sampling};
use metarep_model::{HookedTransformer, Input, LoadOptions, NoHooks};
use rand::Rng;
use serde_json::{json, Value};

use super::py_server::PyServer;
use super::{load_average, median, median_ratio, min, write_report};
use crate::error::BoxError;

/// The `--set` keys: `reps` (timed repetitions per side, default 5).
pub const SETTINGS: &[&str] = &["reps"];

/// The model file, relative to the repository root.
const MODEL: &str = "target/fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const BATCH: usize = 4;
const POS: usize = 256;
const NEW_TOKENS: usize = 128;
const REPS: usize = 5;
/// Token ids are drawn from `FIRST_ID..d_vocab` (SmolLM2's special tokens are the first 17).
const FIRST_ID: u32 = 100;
const FORWARD_TARGET: f64 = 1.5;
const GENERATE_TARGET: f64 = 2.0;
const RSS_TARGET: f64 = 1.3;
const NEEDS: &str =
    "torch, transformers < 5, gguf and accelerate (pip install torch \"transformers<5\" gguf accelerate)";

/// Wall times of one workload on one side, one per repetition.
#[derive(Default)]
struct Times {
    ms: Vec<f64>,
    /// Generation only: time to the first new token.
    first_ms: Vec<f64>,
}

impl Times {
    /// Minimum and median times, tokens/s from them (`tokens` per run) and every time.
    fn summary(&self, tokens: usize) -> Value {
        let tps = |ms: f64| tokens as f64 / (ms / 1e3);
        let (lo, mid) = (min(&self.ms), median(&self.ms));
        let mut v = json!({
            "ms": {"min": lo, "median": mid},
            "tokens_per_s": {"best": tps(lo), "median": tps(mid)},
            "all_ms": self.ms,
        });
        if !self.first_ms.is_empty() {
            // Tokens after the first, over the time after the first.
            let decode: Vec<f64> = self
                .ms
                .iter()
                .zip(&self.first_ms)
                .map(|(t, f)| (tokens - 1) as f64 / ((t - f) / 1e3))
                .collect();
            v["first_token_ms"] =
                json!({"min": min(&self.first_ms), "median": median(&self.first_ms)});
            v["decode_tokens_per_s"] = json!({"median": median(&decode)});
        }
        v
    }
}

/// metarep tokens/s over transformers tokens/s (= transformers time over metarep time), as the
/// median of per-repetition ratios and as the ratio of minimums, each against `target`.
fn speedup(ours: &Times, reference: &Times, target: f64) -> Value {
    let by_rep = median_ratio(&reference.ms, &ours.ms);
    let of_min = min(&reference.ms) / min(&ours.ms);
    json!({
        "median_of_ratios": by_rep,
        "of_minimums": of_min,
        "target_at_least": target,
        "median_of_ratios_target": met(by_rep >= target),
        "of_minimums_target": met(of_min >= target),
    })
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

/// The peak resident set (MiB) since the last reset, then resets it.
fn phase_peak() -> Option<f64> {
    let peak = memory::peak_resident_mib();
    memory::reset_peak();
    peak
}

/// Runs the benchmark and writes `results/bench/real_forward.json`.
pub fn run(out: &Path) -> Result<bool, BoxError> {
    let reps = super::disk::num("reps", REPS as f64)?.round() as usize;
    let path = crate::fixtures::repo_root().join(MODEL);
    if !path.is_file() {
        return Err(format!(
            "{} is missing: run `cargo xtask fixtures smollm2` first",
            path.display()
        )
        .into());
    }
    let threads = candle_core::utils::get_num_threads();
    let load_before = load_average();

    // metarep: load, then one forward and one generation, each its own memory phase.
    memory::reset_peak();
    let rss_before_load = memory::resident_mib();
    let start = Instant::now();
    let model = HookedTransformer::from_gguf(&path, &LoadOptions::default())
        .map_err(|e| format!("loading {}: {e}", path.display()))?;
    let load_s = start.elapsed().as_secs_f64();
    let peak_load = phase_peak();
    let rss_after_load = memory::resident_mib();
    let weight_bytes: usize = model
        .weights()
        .named_tensors()
        .iter()
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    let weight_mib = weight_bytes as f64 / (1u64 << 20) as f64;
    let vocab = model.config().d_vocab as u32;
    let mut rng = seeded(derive_seed(0, "bench/real_forward"));
    let ids: Vec<Vec<u32>> = (0..BATCH)
        .map(|_| {
            (0..POS)
                .map(|_| rng.random_range(FIRST_ID..vocab))
                .collect()
        })
        .collect();
    let prompt = ids[0].clone();
    let input = Input::from_ids(&ids, &Device::Cpu)?;
    let opts = GenerateOptions {
        max_new_tokens: NEW_TOKENS,
        sampling: Sampling::Greedy,
        stop_tokens: Vec::new(),
    };
    let forward = || -> Result<f64, BoxError> {
        let start = Instant::now();
        drop(std::hint::black_box(model.forward(input.clone())?));
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    let generate = || -> Result<(f64, f64, Vec<u32>), BoxError> {
        let start = Instant::now();
        let mut first = None;
        let new = model.generate(&prompt, &opts, &mut NoHooks, |_| {
            first.get_or_insert_with(|| start.elapsed());
            Ok(())
        })?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if new.len() != NEW_TOKENS {
            return Err(format!(
                "metarep generated {} tokens, expected {NEW_TOKENS}",
                new.len()
            )
            .into());
        }
        let first_ms = first.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        Ok((ms, first_ms, new))
    };
    forward()?; // warm-up
    let peak_forward = phase_peak();
    let (_, _, ours_tokens) = generate()?; // warm-up
    let peak_generate = phase_peak();
    println!(
        "  metarep: loaded {} in {load_s:.1} s ({weight_mib:.0} MiB of f32 weights); {threads} threads",
        path.display()
    );

    // The reference, in its own process, warmed up before it answers.
    let request = json!({"forward_ids": ids, "prompt": prompt, "new_tokens": NEW_TOKENS});
    let mut reference = PyServer::start(
        "bench_real_forward.py",
        &[path.to_string_lossy().into_owned(), threads.to_string()],
        Some(&request.to_string()),
        NEEDS,
    );
    let note = match &reference {
        Ok(_) => String::new(),
        Err(e) => {
            let n = format!("transformers side skipped: {e}");
            println!("  {n}");
            n
        }
    };

    // [metarep, transformers] × [forward, generate].
    let mut times: [[Times; 2]; 2] = Default::default();
    let mut reference_tokens: Option<Vec<u32>> = None;
    let pause = || std::thread::sleep(Duration::from_millis(200));
    for rep in 0..reps {
        times[0][0].ms.push(forward()?);
        if let Ok(server) = reference.as_mut() {
            pause();
            let a = server.request_json("forward")?;
            times[1][0].ms.push(num(&a, "ms")?);
            pause();
        }
        let (ms, first_ms, _) = generate()?;
        times[0][1].ms.push(ms);
        times[0][1].first_ms.push(first_ms);
        if let Ok(server) = reference.as_mut() {
            pause();
            let a = server.request_json("generate")?;
            times[1][1].ms.push(num(&a, "ms")?);
            times[1][1].first_ms.push(num(&a, "first_token_ms")?);
            let tokens: Vec<u32> = serde_json::from_value(a["tokens"].clone())?;
            if tokens.len() != NEW_TOKENS {
                return Err(format!(
                    "transformers generated {} tokens, expected {NEW_TOKENS}",
                    tokens.len()
                )
                .into());
            }
            reference_tokens.get_or_insert(tokens);
            pause();
        }
        print!("\r  repetition {}/{reps}", rep + 1);
        std::io::stdout().flush()?;
    }
    println!();
    let peak_timed = phase_peak();
    let (reference_info, reference_peak) = match reference {
        Ok(server) => {
            let info = server.info.clone();
            let peak = server
                .quit()
                .and_then(|l| serde_json::from_str::<Value>(&l).ok())
                .and_then(|v| v["peak_rss_mb"].as_f64());
            (Some(info), peak)
        }
        Err(_) => (None, None),
    };

    // Memory.
    let phases = [
        ("load", peak_load),
        ("forward", peak_forward),
        ("generate", peak_generate),
        ("timed_repetitions", peak_timed),
    ];
    let peak = phases
        .iter()
        .filter_map(|(_, p)| *p)
        .fold(f64::NAN, f64::max);
    let rss_ratio = peak / weight_mib;
    let rss_target = if peak.is_finite() {
        met(rss_ratio <= RSS_TARGET)
    } else {
        "not measured"
    };
    let phase_json: serde_json::Map<String, Value> = phases
        .iter()
        .map(|(n, p)| {
            (
                n.to_string(),
                json!({"peak_mib": p, "over_f32_weights": p.map(|p| p / weight_mib)}),
            )
        })
        .collect();
    let memory = json!({
        "f32_weight_bytes": weight_bytes,
        "f32_weight_mib": weight_mib,
        "rss_before_load_mib": rss_before_load,
        "rss_after_load_mib": rss_after_load,
        "peak_rss_mib": peak,
        "peak_over_f32_weights": rss_ratio,
        "target_at_most": RSS_TARGET,
        "target": rss_target,
        "phases": phase_json,
        "transformers_peak_rss_mib": reference_peak,
    });

    // Tokens agree? (greedy on both sides; transformers cannot emit EOS before the 128th
    // token, metarep can, so a difference right after a metarep EOS is expected.)
    let eos = reference_info
        .as_ref()
        .and_then(|i| i["eos_token_id"].as_u64());
    let agreement = reference_tokens.as_ref().map(|theirs| {
        let prefix = ours_tokens
            .iter()
            .zip(theirs)
            .take_while(|(a, b)| a == b)
            .count();
        json!({
            "common_prefix": prefix,
            "of": NEW_TOKENS,
            "metarep_eos_positions": eos.map(|e| ours_tokens.iter().enumerate()
                .filter(|(_, &t)| t as u64 == e).map(|(i, _)| i).collect::<Vec<_>>()),
            "metarep_tokens": ours_tokens,
            "transformers_tokens": theirs,
        })
    });

    let have_reference = reference_info.is_some();
    let forward_speed = have_reference.then(|| speedup(&times[0][0], &times[1][0], FORWARD_TARGET));
    let generate_speed =
        have_reference.then(|| speedup(&times[0][1], &times[1][1], GENERATE_TARGET));
    let load_after = load_average();
    print_table(
        &times,
        have_reference,
        forward_speed.as_ref(),
        generate_speed.as_ref(),
    );
    println!(
        "  peak RSS: metarep {peak:.0} MiB = {rss_ratio:.2}× the {weight_mib:.0} MiB of f32 weights (target ≤ {RSS_TARGET}×: {}; load {}, forward {}, generate {}, timed {}); transformers process {}",
        rss_target,
        mib(peak_load),
        mib(peak_forward),
        mib(peak_generate),
        mib(peak_timed),
        mib(reference_peak),
    );
    if let Some(a) = &agreement {
        println!(
            "  greedy tokens: the first {} of {NEW_TOKENS} agree between the two sides",
            a["common_prefix"]
        );
    }
    println!(
        "  load average {} before, {} after",
        opt(load_before),
        opt(load_after)
    );
    let side = |k: usize| {
        json!({
            "forward": times[k][0].summary(BATCH * POS),
            "generate": times[k][1].summary(NEW_TOKENS),
        })
    };
    let mut transformers = reference_info.unwrap_or(Value::Null);
    if let Some(o) = transformers.as_object_mut() {
        o.remove("ready");
        o.insert("times".into(), side(1));
    }
    let body = json!({
        "what": format!("SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32), CPU, {threads} threads both sides: forward of {BATCH} x {POS} tokens (full logits); greedy generation of {NEW_TOKENS} new tokens from a {POS}-token prompt with the KV cache; peak RSS of the metarep process against the f32 weights"),
        "method": format!("{reps} repetitions after one warm-up per side; each repetition times the forward and the generation once on each side, interleaved with transformers (its own process, a timing server), 200 ms apart; token ids drawn with a fixed seed from {FIRST_ID}..vocab, the same on both sides; generation tokens/s = new tokens over the whole generate call (prompt pass included); speed-ups = metarep tokens/s over transformers tokens/s as the median of per-repetition ratios and as the ratio of minimums; memory: VmHWM of this process (metarep only), reset before each phase"),
        "model": path.display().to_string(),
        "batch": BATCH,
        "positions": POS,
        "new_tokens": NEW_TOKENS,
        "repetitions": reps,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "metarep": {
            "load_s": load_s,
            "threads": threads,
            "times": side(0),
        },
        "transformers": transformers,
        "speedup": {
            "forward": forward_speed,
            "generate": generate_speed,
        },
        "memory": memory,
        "greedy_agreement": agreement,
        "note": note,
    });
    write_report(out, "real_forward", body)?;
    Ok(true)
}

/// Field `key` of a reply of the Python server, as a number.
fn num(v: &Value, key: &str) -> Result<f64, BoxError> {
    v[key]
        .as_f64()
        .ok_or_else(|| format!("the transformers server's reply {v} has no number `{key}`").into())
}

fn mib(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |m| format!("{m:.0} MiB"))
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.2}"))
}

/// The timing table: min / median ms and tokens/s per side, speed-ups and targets.
fn print_table(
    times: &[[Times; 2]; 2],
    have_reference: bool,
    forward: Option<&Value>,
    generate: Option<&Value>,
) {
    println!(
        "  {:<22} {:>19} {:>15} | {:>19} {:>15} | speed-up: median ratio / minimums (target)",
        "workload", "metarep ms min/med", "tokens/s best", "transf. ms min/med", "tokens/s best"
    );
    let rows = [
        (format!("forward {BATCH}×{POS}"), 0, BATCH * POS, forward),
        (
            format!("generate {NEW_TOKENS} (p {POS})"),
            1,
            NEW_TOKENS,
            generate,
        ),
    ];
    for (name, w, tokens, speed) in rows {
        let cell = |t: &Times| {
            (
                format!("{:.0} / {:.0}", min(&t.ms), median(&t.ms)),
                format!("{:.1}", tokens as f64 / (min(&t.ms) / 1e3)),
            )
        };
        let (ours_ms, ours_tps) = cell(&times[0][w]);
        let (ref_ms, ref_tps) = if have_reference {
            cell(&times[1][w])
        } else {
            ("skipped".into(), "-".into())
        };
        let speed = speed.map_or("-".into(), |s| {
            format!(
                "{:.2}× / {:.2}× (≥ {}×: {} / {})",
                s["median_of_ratios"].as_f64().unwrap_or(f64::NAN),
                s["of_minimums"].as_f64().unwrap_or(f64::NAN),
                s["target_at_least"],
                s["median_of_ratios_target"].as_str().unwrap_or(""),
                s["of_minimums_target"].as_str().unwrap_or(""),
            )
        });
        println!(
            "  {name:<22} {ours_ms:>19} {ours_tps:>15} | {ref_ms:>19} {ref_tps:>15} | {speed}"
        );
    }
}

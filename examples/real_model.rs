//! A real pretrained model: SmolLM2-135M-Instruct (Llama architecture, 30 layers × 9 heads,
//! GGUF Q4_1 dequantized to f32) completes a prompt greedily, then the head detectors run on
//! repeated random tokens — the induction, previous-token, duplicate-token and prefix-matching
//! score of each of its 270 heads — with the loss on the first and the second copy (95%
//! bootstrap intervals) and the top induction heads zero-ablated cumulatively.
//!
//! Set-up (once, outside git): `cargo xtask fixtures smollm2`.
//! Run: `cargo run --release --example real_model [-- FILE.gguf]`
//!
//! `cargo xtask reproduce fig13` writes the heat maps, curves and checks.

use std::time::Instant;

use metarep::circuits::detectors::TokenDraw;
use metarep::circuits::repeat_study::{repeat_study, StudyOptions};
use metarep::core::rng::seeded;
use metarep::model::generate::GenerateOptions;
use metarep::model::{Component, HookedTransformer, LoadOptions, NoHooks};

mod common;

const PROMPT: &str = "The capital of France is Paris. The capital of Germany is";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    metarep::core::threads::fix_cpu_threads();
    let path = common::smollm2_gguf()?;
    let start = Instant::now();
    let model = HookedTransformer::from_gguf(&path, &LoadOptions::default())?;
    let cfg = model.config();
    println!(
        "{} ({} layers × {} heads, {} KV heads, d_model {}): loaded in {:.1} s",
        path.display(),
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.d_model,
        start.elapsed().as_secs_f64()
    );

    let tok = model.tokenizer().ok_or("the GGUF file has no tokenizer")?;
    let prompt = tok.encode(PROMPT, true)?.ids;
    let opts = GenerateOptions {
        max_new_tokens: 8,
        ..GenerateOptions::default()
    };
    let new = model.generate(&prompt, &opts, &mut NoHooks, |_| Ok(()))?;
    println!("greedy: {PROMPT}⟨{}⟩", tok.decode(&new, true)?);

    // 8 sequences [BOS, s, s], |s| = 50, s drawn from the non-special tokens.
    let bos = tok.bos_id().ok_or("the GGUF file declares no BOS token")?;
    let tokens = TokenDraw::for_model(&model, bos)?.repeated(&mut seeded(0), 8, 50)?;
    let start = Instant::now();
    let study = repeat_study(
        &model,
        &tokens,
        &StudyOptions {
            ablate_top: 5,
            resamples: 1000,
            bootstrap_seed: 1,
        },
    )?;
    println!(
        "repeated random tokens (8 × [BOS, s, s], |s| = 50), {:.1} s:",
        start.elapsed().as_secs_f64()
    );
    let s = &study.scores;
    println!("  head    induction  previous  duplicate  prefix-matching");
    for &(head, score) in study.ranked.iter().take(10) {
        let Component::Head { layer: l, head: h } = head else {
            continue;
        };
        println!(
            "  {head:<7} {score:.3}      {:.3}     {:.3}      {:.3}",
            s.previous_token[l][h], s.duplicate_token[l][h], s.prefix_matching[l][h]
        );
    }
    println!(
        "  loss: first copy {} nats, second copy {}",
        study.clean.first.display(3),
        study.clean.second.display(3)
    );
    for step in &study.ablations {
        let heads: Vec<String> = step.heads.iter().map(Component::to_string).collect();
        println!(
            "  zeroed {}: second copy {}",
            heads.join(" "),
            step.losses.second.display(3)
        );
    }
    Ok(())
}

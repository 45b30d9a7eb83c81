//! Indirect object identification in a real model, SmolLM2-135M-Instruct (GGUF Q4_1 dequantized
//! to f32): "When Mary and John went to the store, John gave a drink to" should continue with
//! " Mary". Builds the IOI prompts of `metarep::circuits::ioi` (eight templates, both name
//! orders, names that are one token in this tokenizer), prints the accuracy and the mean logit
//! difference `logit[IO] − logit[S]`, then the heads that write the most of that difference
//! directly into the logits (direct logit attribution) on the first template.
//!
//! Set-up (once, outside git): `cargo xtask fixtures smollm2`.
//! Run: `cargo run --release --example ioi [-- FILE.gguf]`
//!
//! `cargo xtask reproduce fig15` adds intervals, patching heat maps and path patching.

use metarep::circuits::ioi::{
    ioi_attribution, ioi_logit_diffs, ioi_prompts, single_token_names, NAMES, TEMPLATES,
};
use metarep::circuits::ranking::ranked_heads;
use metarep::core::rng::seeded;
use metarep::model::{HookedTransformer, LoadOptions};

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    metarep::core::threads::fix_cpu_threads();
    let path = common::smollm2_gguf()?;
    let model = HookedTransformer::from_gguf(&path, &LoadOptions::default())?;
    let tok = model.tokenizer().ok_or("the GGUF file has no tokenizer")?;
    let names = single_token_names(tok, NAMES)?;
    let prompts = ioi_prompts(tok, tok.bos_id(), TEMPLATES, &names, 4, &mut seeded(0))?;
    let diffs = ioi_logit_diffs(&model, &prompts, 32)?;
    let correct = diffs.iter().filter(|&&d| d > 0.0).count();
    println!(
        "{} prompts, e.g. {:?}: IO preferred over S on {correct} ({:.1}%), mean logit difference {:.2}",
        prompts.len(),
        prompts[0].text,
        100.0 * correct as f64 / prompts.len() as f64,
        diffs.iter().sum::<f64>() / diffs.len() as f64
    );

    let first: Vec<_> = prompts.iter().filter(|p| p.template == 0).collect();
    let dla = ioi_attribution(&model, &first)?.heads;
    println!(
        "heads writing logit[IO] − logit[S] directly (template 0, {} prompts):",
        first.len()
    );
    for (head, v) in ranked_heads(&dla).into_iter().take(5) {
        println!("  {head}: {v:+.2}");
    }
    Ok(())
}

//! Induction heads in the 2-layer attention-only model checked into `fixtures/induction-2l`:
//! every head's induction, previous-token, duplicate-token and prefix-matching scores on
//! repeated random tokens, the loss on the first and the second repeat, and what zeroing the
//! top induction head does to the second.
//!
//! ```sh
//! cargo run --release --example induction_heads
//! ```
//!
//! `cargo xtask reproduce fig8` writes the heat maps, tables and staged ablations.

use std::path::PathBuf;

use metarep::circuits::detectors::{head_scores, repeat_losses, repeated_tokens, token_losses};
use metarep::circuits::ranking::ranked_heads;
use metarep::core::rng::seeded;
use metarep::model::interventions::{Intervention, Interventions};
use metarep::model::{Component, HookedTransformer, LoadOptions, NoHooks};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/induction-2l");
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default())?;
    let vocab = model.config().d_vocab;
    let tokens = repeated_tokens(&mut seeded(1), 32, 25, vocab)?;

    let s = head_scores(&model, &tokens)?;
    println!("head   induction  previous  duplicate  prefix-matching");
    let ranked = ranked_heads(&s.induction);
    for &(head, score) in &ranked {
        let Component::Head { layer: l, head: h } = head else {
            continue;
        };
        println!(
            "{head}   {score:.3}      {:.3}     {:.3}      {:.3}",
            s.previous_token[l][h], s.duplicate_token[l][h], s.prefix_matching[l][h]
        );
    }

    let mean_repeats = |losses: Vec<Vec<f64>>| -> Result<(f64, f64), Box<dyn std::error::Error>> {
        let pairs = losses
            .iter()
            .map(|r| repeat_losses(r).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let n = pairs.len() as f64;
        Ok((
            pairs.iter().map(|p| p.0).sum::<f64>() / n,
            pairs.iter().map(|p| p.1).sum::<f64>() / n,
        ))
    };
    let (first, second) = mean_repeats(token_losses(&model, &tokens, &mut NoHooks)?)?;
    println!("loss on the first repeat {first:.3} nats, on the second {second:.3}");
    let top = ranked[0].0;
    let mut off = Interventions::new(vec![Intervention::zero(top)?]);
    let (a_first, a_second) = mean_repeats(token_losses(&model, &tokens, &mut off)?)?;
    println!("with {top} zeroed: first {a_first:.3}, second {a_second:.3}");
    Ok(())
}

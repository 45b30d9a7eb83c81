//! Second-order neuron effects on the arith fixture, end to end: evaluate 1000 problems,
//! find the correctness direction, select layers and neurons, compute every selected neuron's
//! second-order effects (written to disk in chunks), their principal components and sparse
//! decompositions over a math lexicon, and the ablations; prints the summary and the top
//! neurons with their words.
//!
//! ```sh
//! cargo run --release --example second_order
//! ```
//!
//! The run directory is `target/second-order-example/` (deleted first); the same pipeline runs
//! stage by stage with `metarep second-order STAGE --model DIR --run DIR --config FILE`,
//! and `cargo xtask reproduce fig11` reports it.

use std::path::PathBuf;

use metarep::model::{HookedTransformer, LoadOptions};
use metarep::second_order::report::summary;
use metarep::second_order::{Pipeline, PipelineConfig, RunFiles, Stage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model =
        HookedTransformer::from_dir(&root.join("fixtures/arith/seed-0"), &LoadOptions::default())?;
    let config = PipelineConfig {
        data: None,
        problems: 1000,
        max_digits: 2,
        seed: 0,
        frame_token: Some("<|endoftext|>".into()),
        top_layers: 6,
        top_neurons: 100,
        pca_k: 100,
        omp_atoms: 32,
        lexicon: root.join("fixtures/lexicon/math.txt"),
        single_token_lexicon: false,
        random_controls: 4,
        batch: 64,
        effects_dtype: "f16".into(),
    };
    let dir = root.join("target/second-order-example");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let pipeline = Pipeline::open(&model, config, &dir)?;
    pipeline.run_to(Stage::Report, false, |line| println!("  {line}"))?;

    let run = RunFiles::load(&dir)?;
    let s = summary(&run);
    println!(
        "\naccuracy {:.3}; selected layers {:?} (the last layer has no later attention);",
        s.accuracy, run.layers.selected
    );
    println!(
        "per neuron: PC1 explains {:.2} of its top-k variance, significant against shuffled prompts on {:.2} of prompts (0.05 by chance), text reconstruction cosine {:.2}",
        s.mean_pc1_explained, s.mean_significant_fraction, s.mean_text_cosine
    );
    println!("\nablations (Δ correctness score, mean |Δ score|, Δ first-token accuracy):");
    for r in &run.ablations {
        println!(
            "  {:<26} {:+.3}  {:.3}  {:+.3}",
            r.name, r.delta_score, r.mean_abs_score_change, r.delta_accuracy
        );
    }
    let mut top: Vec<_> = run.analyses.iter().collect();
    top.sort_by(|a, b| b.pc.explained.total_cmp(&a.pc.explained));
    println!("\nneurons with the most one-dimensional effects, and their words:");
    for a in top.iter().take(5) {
        let words: Vec<String> = a
            .text
            .iter()
            .take(5)
            .map(|(w, c)| format!("{w} ({c:+.2})"))
            .collect();
        println!(
            "  L{}N{}: PC1 {:.2}, cosine {:.2}: {}",
            a.layer,
            a.neuron,
            a.pc.explained,
            a.text_cosine,
            words.join(", ")
        );
    }
    println!("\nreport: {}", dir.join("report.md").display());
    Ok(())
}

//! Tokenization diagnostics on the arith fixture: how many tokens each operand and answer take
//! under its BPE tokenizer, exact-answer accuracy and answer loss for single- vs multi-token
//! operands (95% bootstrap intervals), and a stress grid over operand length (1–6 digits) and
//! operation.
//!
//! ```sh
//! cargo run --release --example tokenization_diagnostics
//! ```
//!
//! The fixture is built by `cargo xtask fixtures arith`; `cargo xtask reproduce fig8` runs the
//! same diagnostics on all three seeds with attribution, ablations and patching.

use std::path::PathBuf;

use metarep::core::rng::seeded;
use metarep::eval::tasks::text::Op;
use metarep::model::{HookedTransformer, LoadOptions, NoHooks};
use metarep::testbeds::arith::{framing, ArithSpec};
use metarep::testbeds::tokenization::{by_class, score_problems, tokenize_all, StressGrid};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/arith/seed-0");
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default())?;
    let tokenizer = model
        .tokenizer()
        .ok_or("the arith fixture has no tokenizer.json")?
        .clone();
    let framing = framing(&tokenizer)?;
    let spec: ArithSpec = serde_json::from_str(&std::fs::read_to_string(dir.join("arith.json"))?)?;

    let problems = tokenize_all(
        &tokenizer,
        &spec.suite().sample(&mut seeded(7), 1000)?,
        &framing,
    )?;
    println!("A few prompts and their token counts (operand a, operand b, answer):");
    for p in problems.iter().take(6) {
        let pieces: Vec<String> = p
            .framed
            .ids
            .iter()
            .map(|&i| tokenizer.id_to_token(i).unwrap_or_default())
            .collect();
        println!(
            "  {:<12}{:<8} {:?} {} → {}",
            p.problem.text.prompt,
            p.problem.text.answer,
            p.operand_tokens,
            p.framed.answer_tokens,
            pieces.join(" ")
        );
    }

    let scores = score_problems(&model, &problems, framing.pad, 256, &mut NoHooks)?;
    println!(
        "\nIn distribution (1–{} digits, + − ×), 1000 problems:",
        spec.max_digits
    );
    for (class, g) in by_class(&problems, &scores, 2000, &mut seeded(0))? {
        println!(
            "  {class:?}-token operands: {:>4} problems, accuracy {}, answer loss {}",
            g.count,
            g.accuracy.display(3),
            g.loss.display(3)
        );
    }

    let grid = StressGrid {
        model: &model,
        tokenizer: &tokenizer,
        framing,
        per_cell: 100,
        shots: 0,
        resamples: 1000,
    };
    let cells = grid.run(&Op::ALL, &[1, 2, 3, 4, 5, 6], &mut seeded(8))?;
    println!("\nStress grid: accuracy (mean tokens per operand) by digits per operand:");
    println!("  op   1            2            3            4            5            6");
    for op in Op::ALL {
        let row: Vec<String> = cells
            .iter()
            .filter(|c| c.op == op)
            .map(|c| {
                format!(
                    "{:.2} ({:.1})   ",
                    c.summary.accuracy.estimate, c.operand_tokens
                )
            })
            .collect();
        println!("  {}    {}", op.symbol(), row.join(""));
    }
    Ok(())
}

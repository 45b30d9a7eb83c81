//! fig15, tokenization part: few-shot arithmetic on SmolLM2's real BPE. Problems from
//! `metarep_eval::tasks::text` ("12 + 7 =" → " 19"), each after `shots` solved problems of the
//! same kind, one per line; a problem counts as solved when greedy decoding gives exactly the
//! answer and then a newline. Accuracy and answer loss with 95% bootstrap intervals by
//! tokenization class (both operands one token vs not) and by operation, every prompt's token
//! counts, and a stress grid of operand length × operation (`metarep_testbeds::tokenization`).

use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::tasks::text::{ArithmeticSuite, Op, Tier};
use metarep_model::{HookedTransformer, NoHooks, Tokenizer};
use metarep_testbeds::tokenization::{
    by_class, by_op, few_shot_prefix, score_problems, summarize, tokenize_all_after, Framing,
    StressGrid,
};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::error::BoxError;
use crate::fig8::arith::{prompt_table, stress_report, summary_row, summary_table};
use crate::output::{metric_key, ResultDir};

/// `[arithmetic]` of `configs/fig15.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArithConfig {
    /// Solved problems before each prompt.
    shots: usize,
    /// Problems of the main set (operands of 1 to `max_digits` digits).
    problems: usize,
    /// Largest operand length of the main set.
    max_digits: u32,
    /// Problems per stress-grid cell.
    stress_per_cell: usize,
    /// Operand lengths of the stress grid.
    stress_digits: Vec<u32>,
    /// Problems per forward pass.
    batch: usize,
    /// Bootstrap resamples of the intervals.
    resamples: usize,
}

impl ArithConfig {
    /// Checks the section (keys named `arithmetic.*`).
    pub fn check(&self) -> Result<(), BoxError> {
        for (key, v) in [
            ("arithmetic.problems", self.problems),
            ("arithmetic.stress_per_cell", self.stress_per_cell),
            ("arithmetic.batch", self.batch),
        ] {
            checks::at_least_one(key, v)?;
        }
        checks::require(
            self.resamples >= 100,
            "arithmetic.resamples",
            self.resamples.to_string(),
            "≥ 100",
        )
    }
}

/// SmolLM2's framing: its BOS first, the newline token as the end of every answer (scored).
fn framing(tok: &Tokenizer) -> Result<Framing, BoxError> {
    let newline = match tok.encode("\n", false)?.ids[..] {
        [id] => id,
        ref other => return Err(format!("the newline encodes as {other:?}, not one token").into()),
    };
    Ok(Framing {
        bos: tok.bos_id(),
        eos: Some(newline),
        pad: tok.pad_id(),
    })
}

/// Runs the arithmetic part on `model` and records into `out` (reported, not gated).
pub fn run(
    seed: u64,
    cfg: &ArithConfig,
    model: &HookedTransformer,
    out: &mut ResultDir,
) -> Result<(), BoxError> {
    let tok = model
        .tokenizer()
        .ok_or("the SmolLM2 GGUF carries no tokenizer")?;
    let framing = framing(tok)?;
    let mut rng = seeded(derive_seed(seed, "fig15/arith"));
    let suite = ArithmeticSuite {
        tier: Tier::InDistribution {
            max_digits: cfg.max_digits,
        },
        ops: Op::ALL.to_vec(),
    };
    let prefix = few_shot_prefix(&suite.sample(&mut rng, cfg.shots)?);
    let problems = tokenize_all_after(
        tok,
        &prefix,
        &suite.sample(&mut rng, cfg.problems)?,
        &framing,
    )?;
    let scores = score_problems(model, &problems, framing.pad, cfg.batch, &mut NoHooks)?;
    let all = summarize(&scores, cfg.resamples, &mut rng)?;
    let classes = by_class(&problems, &scores, cfg.resamples, &mut rng)?;
    let ops = by_op(&problems, &scores, cfg.resamples, &mut rng)?;
    let mut table = summary_table();
    table.push_row(summary_row(seed, "all", &all))?;
    println!(
        "  arithmetic ({}-shot, 1–{} digits): accuracy {} over {} problems",
        cfg.shots,
        cfg.max_digits,
        all.accuracy.display(3),
        all.count
    );
    let m = &mut out.metrics;
    m.set_number("arith_accuracy", all.accuracy.estimate);
    for (c, g) in &classes {
        let name = format!("{c:?}-token operands").to_lowercase();
        println!(
            "    {name:<24} n = {:<4} accuracy {}",
            g.count,
            g.accuracy.display(3)
        );
        table.push_row(summary_row(seed, &name, g))?;
        m.set_number(
            format!("arith_accuracy_{}", metric_key(&name)),
            g.accuracy.estimate,
        );
        m.set_number(
            format!("arith_problems_{}", metric_key(&name)),
            g.count as f64,
        );
    }
    for (op, g) in &ops {
        let name = format!("op {}", op.symbol());
        println!(
            "    {name:<24} n = {:<4} accuracy {}",
            g.count,
            g.accuracy.display(3)
        );
        table.push_row(summary_row(seed, &name, g))?;
    }
    out.table("fig15_arith_accuracy", &table)?;
    prompt_table("fig15_arith_prompts", &problems, &scores, out)?;

    let grid = StressGrid {
        model,
        tokenizer: tok,
        framing,
        per_cell: cfg.stress_per_cell,
        shots: cfg.shots,
        resamples: cfg.resamples,
    };
    let cells = grid.run(&Op::ALL, &cfg.stress_digits, &mut rng)?;
    for c in &cells {
        println!(
            "    stress a {} b, {} digits: accuracy {} ({:.1} tokens per operand, {:.1} answer tokens)",
            c.op.symbol(),
            c.digits,
            c.summary.accuracy.display(3),
            c.operand_tokens,
            c.answer_tokens
        );
        out.metrics.set_number(
            format!(
                "stress_{}_{}_digits_accuracy",
                metric_key(&format!("{:?}", c.op)),
                c.digits
            ),
            c.summary.accuracy.estimate,
        );
    }
    let (stress, plot) = stress_report(
        &cells,
        &format!(
            "fig15: SmolLM2-135M {}-shot arithmetic by operand length",
            cfg.shots
        ),
    )?;
    out.table("fig15_arith_stress", &stress)?;
    out.plot("fig15_arith_stress", &plot)
}

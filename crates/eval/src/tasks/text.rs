//! Language-style tasks: numeric-label prompts built from regression tasks, and tiered
//! arithmetic suites. Labels are numbers written as text (never JSON); [`extract_number`] reads
//! a model's answer back.
//!
//! Prompt format (one example per line, the query last, answer after `y:`):
//!
//! ```text
//! x: 0.12 -1.30 0.55 -> y: 2.41
//! x: 1.02 0.33 -0.71 -> y: -0.88
//! x: -0.45 0.10 1.20 -> y:
//! ```

use rand::Rng;

use super::linear::{LinearTaskSpec, RegressionTask};
use crate::{Error, Result};

/// One prompt with its expected completion.
#[derive(Debug, Clone, PartialEq)]
pub struct TextExample {
    /// The prompt text (ends right before the answer).
    pub prompt: String,
    /// The expected completion, e.g. `" 2.41"`.
    pub answer: String,
    /// The answer as a number.
    pub value: f64,
}

/// Numeric-label prompts over a linear regression task family.
#[derive(Debug, Clone, PartialEq)]
pub struct NumericPromptSpec {
    /// The regression family (its `n_support` is the number of in-context examples).
    pub task: LinearTaskSpec,
    /// Decimals printed for inputs and labels.
    pub decimals: usize,
}

/// `x` with `decimals` decimals as the prompts print it (`-0.00` as `0.00`).
pub fn format_number(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    // Avoid "-0.00".
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

impl NumericPromptSpec {
    /// Draws a task and writes one prompt per query point.
    pub fn sample(&self, rng: &mut impl Rng) -> Result<(RegressionTask, Vec<TextExample>)> {
        let task = self.task.sample(rng)?;
        let line = |x: nalgebra::DMatrixView<f64>| -> String {
            x.iter()
                .map(|v| format_number(*v, self.decimals))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut context = String::new();
        for i in 0..task.x_support.nrows() {
            let x = task.x_support.rows(i, 1);
            context.push_str(&format!(
                "x: {} -> y: {}\n",
                line(x),
                format_number(task.y_support[i], self.decimals)
            ));
        }
        let examples = (0..task.x_query.nrows())
            .map(|q| {
                let answer = format_number(task.y_query[q], self.decimals);
                let value = answer.parse::<f64>().unwrap_or(task.y_query[q]);
                TextExample {
                    prompt: format!("{context}x: {} -> y:", line(task.x_query.rows(q, 1))),
                    answer: format!(" {answer}"),
                    value,
                }
            })
            .collect();
        Ok((task, examples))
    }
}

impl NumericPromptSpec {
    /// `task` with every number rounded as the prompts print it: the numbers a baseline reads
    /// from the prompt (the query targets rounded as the answers are).
    pub fn as_printed(&self, task: &RegressionTask) -> RegressionTask {
        let round = |v: f64| format_number(v, self.decimals).parse::<f64>().unwrap_or(v);
        RegressionTask {
            x_support: task.x_support.map(round),
            y_support: task.y_support.map(round),
            x_query: task.x_query.map(round),
            y_query: task.y_query.map(round),
            ..task.clone()
        }
    }
}

/// The first number in `text` (optional sign, digits, optional fraction, optional exponent).
pub fn extract_number(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let starts = c.is_ascii_digit()
            || ((c == b'-' || c == b'+' || c == b'.')
                && bytes.get(i + 1).is_some_and(|n| n.is_ascii_digit()));
        if starts {
            let mut j = i + 1;
            let mut seen_dot = c == b'.';
            let mut seen_exp = false;
            while j < bytes.len() {
                let d = bytes[j];
                if d.is_ascii_digit() {
                    j += 1;
                } else if d == b'.' && !seen_dot && !seen_exp {
                    seen_dot = true;
                    j += 1;
                } else if (d == b'e' || d == b'E')
                    && !seen_exp
                    && bytes
                        .get(j + 1)
                        .is_some_and(|n| n.is_ascii_digit() || *n == b'-' || *n == b'+')
                {
                    seen_exp = true;
                    j += 2;
                } else {
                    break;
                }
            }
            if let Ok(v) = text[i..j].trim_end_matches('.').parse::<f64>() {
                return Some(v);
            }
        }
        i += 1;
    }
    None
}

/// Token-level accuracy: the fraction of positions where `pred` equals `target` (positions past
/// the shorter sequence count as wrong).
pub fn token_accuracy<T: PartialEq>(pred: &[T], target: &[T]) -> Result<f64> {
    if target.is_empty() {
        return Err(Error::invalid("target tokens", "empty"));
    }
    let hits = pred.iter().zip(target).filter(|(a, b)| a == b).count();
    Ok(hits as f64 / pred.len().max(target.len()) as f64)
}

/// Mean absolute error between extracted answers and targets; an answer with no number counts
/// as missing and is reported separately.
pub fn numeric_mae(outputs: &[String], targets: &[f64]) -> Result<(f64, usize)> {
    if outputs.len() != targets.len() || targets.is_empty() {
        return Err(Error::shape(
            "outputs",
            format!("{} non-empty", targets.len()),
            outputs.len(),
        ));
    }
    let mut sum = 0.0;
    let mut found = 0;
    for (o, t) in outputs.iter().zip(targets) {
        if let Some(v) = extract_number(o) {
            sum += (v - t).abs();
            found += 1;
        }
    }
    let missing = targets.len() - found;
    Ok((
        if found > 0 {
            sum / found as f64
        } else {
            f64::NAN
        },
        missing,
    ))
}

/// An arithmetic operation (`add`, `sub`, `mul` in configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
}

impl Op {
    /// Every operation, in order.
    pub const ALL: [Op; 3] = [Op::Add, Op::Sub, Op::Mul];

    /// The operator as written in prompts: `+`, `-`, `*`.
    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
        }
    }

    /// The result `a ∘ b`.
    pub fn apply(self, a: i64, b: i64) -> i64 {
        match self {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
        }
    }
}

/// A tier of the arithmetic suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Operands with 1..=`max_digits` digits (the training range).
    InDistribution {
        /// Largest operand digit count.
        max_digits: u32,
    },
    /// Operands with exactly `max_digits + 1` digits: just outside the training range.
    NearOod {
        /// The training range's largest digit count.
        max_digits: u32,
    },
    /// Symbolic patterns with the same arithmetic: `Let a = 12. Let b = 7. a + b =`.
    Symbolic {
        /// Largest operand digit count.
        max_digits: u32,
    },
    /// Operands with exactly `digits` digits (stress tests over operand length).
    Exact {
        /// Digit count of both operands.
        digits: u32,
    },
}

/// A tiered arithmetic problem generator.
#[derive(Debug, Clone, PartialEq)]
pub struct ArithmeticSuite {
    /// Which tier.
    pub tier: Tier,
    /// Operations to draw from.
    pub ops: Vec<Op>,
}

/// One arithmetic problem.
#[derive(Debug, Clone, PartialEq)]
pub struct ArithmeticProblem {
    /// The example as prompt + answer.
    pub text: TextExample,
    /// Left operand.
    pub a: i64,
    /// Right operand.
    pub b: i64,
    /// Operation.
    pub op: Op,
}

fn operand(rng: &mut impl Rng, min_digits: u32, max_digits: u32) -> i64 {
    let digits = rng.random_range(min_digits..=max_digits);
    let lo = if digits == 1 {
        0
    } else {
        10i64.pow(digits - 1)
    };
    rng.random_range(lo..10i64.pow(digits))
}

impl ArithmeticSuite {
    /// Draws `count` problems.
    pub fn sample(&self, rng: &mut impl Rng, count: usize) -> Result<Vec<ArithmeticProblem>> {
        if self.ops.is_empty() {
            return Err(Error::invalid("arithmetic suite", "no operations"));
        }
        let max = match self.tier {
            Tier::InDistribution { max_digits }
            | Tier::NearOod { max_digits }
            | Tier::Symbolic { max_digits }
            | Tier::Exact { digits: max_digits } => max_digits,
        };
        if !(1..=9).contains(&max) {
            return Err(Error::invalid(
                "arithmetic suite",
                format!("max_digits must be in 1..=9, got {max}"),
            ));
        }
        Ok((0..count)
            .map(|_| {
                let (lo, hi) = match self.tier {
                    Tier::NearOod { max_digits } => (max_digits + 1, max_digits + 1),
                    Tier::Exact { digits } => (digits, digits),
                    _ => (1, max),
                };
                let (a, b) = (operand(rng, lo, hi), operand(rng, lo, hi));
                let op = self.ops[rng.random_range(0..self.ops.len())];
                let value = op.apply(a, b);
                let prompt = match self.tier {
                    Tier::Symbolic { .. } => {
                        format!("Let a = {a}. Let b = {b}. a {} b =", op.symbol())
                    }
                    _ => format!("{a} {} {b} =", op.symbol()),
                };
                ArithmeticProblem {
                    text: TextExample {
                        prompt,
                        answer: format!(" {value}"),
                        value: value as f64,
                    },
                    a,
                    b,
                    op,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::linear::Spectrum;
    use crate::testing::seeded;

    #[test]
    fn prompts_round_trip_through_the_extractor() {
        let spec = NumericPromptSpec {
            task: LinearTaskSpec {
                dim: 3,
                n_support: 5,
                n_query: 4,
                spectrum: Spectrum::PowerLaw { kappa: 4.0 },
                noise: 0.0,
            },
            decimals: 2,
        };
        let (task, ex) = spec.sample(&mut seeded(1)).unwrap();
        assert_eq!(ex.len(), 4);
        for (q, e) in ex.iter().enumerate() {
            assert_eq!(e.prompt.lines().count(), 6);
            assert!(e.prompt.ends_with("-> y:") && !e.prompt.contains('{'));
            let v = extract_number(&e.answer).unwrap();
            assert!((v - task.y_query[q]).abs() <= 0.005 + 1e-12);
        }
        let printed = spec.as_printed(&task);
        assert_eq!(printed.y_query[0], ex[0].value);
        let first: Vec<f64> = ex[0].prompt.lines().next().unwrap()[3..]
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(first.len(), 4);
        assert_eq!(
            first[..3],
            printed.x_support.row(0).iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(first[3], printed.y_support[0]);
        assert!((printed.x_support[(0, 0)] - task.x_support[(0, 0)]).abs() > 0.0);
    }

    #[test]
    fn extractor_handles_signs_decimals_exponents_and_junk() {
        assert_eq!(extract_number(" -12.5 apples"), Some(-12.5));
        assert_eq!(extract_number("y: 3e2"), Some(300.0));
        assert_eq!(extract_number("answer is .5."), Some(0.5));
        assert_eq!(extract_number("x-y 42"), Some(42.0));
        assert_eq!(extract_number("no digits"), None);
        assert_eq!(extract_number(""), None);
    }

    #[test]
    fn numeric_metrics() {
        assert_eq!(token_accuracy(&[1, 2, 3], &[1, 2, 4]).unwrap(), 2.0 / 3.0);
        assert_eq!(token_accuracy(&[1], &[1, 2]).unwrap(), 0.5);
        let (mae, missing) =
            numeric_mae(&[" 3".into(), "x".into(), "-1".into()], &[2.0, 5.0, 1.0]).unwrap();
        assert_eq!((mae, missing), (1.5, 1));
        assert!(numeric_mae(&[], &[]).is_err());
    }

    #[test]
    fn arithmetic_tiers_respect_their_operand_ranges() {
        let ops = vec![Op::Add, Op::Sub, Op::Mul];
        let ind = ArithmeticSuite {
            tier: Tier::InDistribution { max_digits: 2 },
            ops: ops.clone(),
        }
        .sample(&mut seeded(2), 500)
        .unwrap();
        assert!(ind.iter().all(|p| p.a < 100 && p.b < 100));
        let ood = ArithmeticSuite {
            tier: Tier::NearOod { max_digits: 2 },
            ops: ops.clone(),
        }
        .sample(&mut seeded(2), 500)
        .unwrap();
        assert!(ood
            .iter()
            .all(|p| (100..1000).contains(&p.a) && (100..1000).contains(&p.b)));
        for p in ind.iter().chain(&ood) {
            assert_eq!(
                extract_number(&p.text.answer),
                Some(p.op.apply(p.a, p.b) as f64)
            );
        }
        let sym = ArithmeticSuite {
            tier: Tier::Symbolic { max_digits: 1 },
            ops,
        }
        .sample(&mut seeded(3), 3)
        .unwrap();
        assert!(sym[0].text.prompt.starts_with("Let a = "));
        let exact = ArithmeticSuite {
            tier: Tier::Exact { digits: 4 },
            ops: vec![Op::Mul],
        }
        .sample(&mut seeded(4), 200)
        .unwrap();
        assert!(exact
            .iter()
            .all(|p| (1000..10000).contains(&p.a) && (1000..10000).contains(&p.b)));
        assert!(ArithmeticSuite {
            tier: Tier::InDistribution { max_digits: 0 },
            ops: vec![Op::Add]
        }
        .sample(&mut seeded(0), 1)
        .is_err());
    }
}

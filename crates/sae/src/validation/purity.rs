//! Feature purity: the share of a direction's top activations that carry one label (the same
//! token, or one [`TokenClass`]), next to that label's base rate over all positions, and the
//! excess over the base rate `(share − rate) / (1 − rate)` (0: no better than chance, 1: every
//! top activation), by which the label is chosen — so a label most tokens carry (a word start)
//! does not make every direction look pure.

use std::collections::HashMap;

use serde::Serialize;

use super::labels::TokenClass;

/// A direction's purity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Purity {
    /// The most common label among the top activations (`token "…"` or a class name).
    pub label: String,
    /// The share of the top activations that carry it.
    pub fraction: f64,
    /// Its share over all positions.
    pub base_rate: f64,
    /// `(fraction − base_rate) / (1 − base_rate)`.
    pub excess: f64,
}

impl Purity {
    fn new(label: String, fraction: f64, base_rate: f64) -> Self {
        let excess = if base_rate < 1.0 {
            (fraction - base_rate) / (1.0 - base_rate)
        } else {
            0.0
        };
        Self {
            label,
            fraction,
            base_rate,
            excess,
        }
    }
}

/// Labels of the positions of a dataset: each position's token and the token texts.
#[derive(Debug, Clone)]
pub struct PositionLabels {
    tokens: Vec<u32>,
    texts: HashMap<u32, String>,
    token_counts: HashMap<u32, usize>,
    class_counts: [usize; TokenClass::ALL.len()],
}

impl PositionLabels {
    /// Positions with token ids `tokens`; `text(id)` gives a token's text.
    pub fn new(tokens: Vec<u32>, text: impl Fn(u32) -> String) -> Self {
        let mut token_counts = HashMap::new();
        for &t in &tokens {
            *token_counts.entry(t).or_insert(0) += 1;
        }
        let texts: HashMap<u32, String> = token_counts.keys().map(|&t| (t, text(t))).collect();
        let mut class_counts = [0; TokenClass::ALL.len()];
        for &t in &tokens {
            for (count, class) in class_counts.iter_mut().zip(TokenClass::ALL) {
                *count += usize::from(class.holds(&texts[&t]));
            }
        }
        Self {
            tokens,
            texts,
            token_counts,
            class_counts,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no positions.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether position `i`'s token is in `class`.
    pub fn holds(&self, i: usize, class: TokenClass) -> bool {
        class.holds(&self.texts[&self.tokens[i]])
    }

    /// The share of all positions in `class`.
    pub fn class_rate(&self, class: TokenClass) -> f64 {
        let k = TokenClass::ALL
            .iter()
            .position(|&c| c == class)
            .unwrap_or(0);
        self.class_counts[k] as f64 / self.len().max(1) as f64
    }

    /// The purity of the positions `top` (indices into the dataset): among their tokens and the
    /// classes, the label with the largest excess over its base rate (ties to the larger
    /// share), with its share among them and over all positions. `None` for no positions.
    pub fn purity(&self, top: &[usize]) -> Option<Purity> {
        if top.is_empty() {
            return None;
        }
        let n = top.len() as f64;
        let total = self.len() as f64;
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for &i in top {
            *counts.entry(self.tokens[i]).or_insert(0) += 1;
        }
        let mut candidates: Vec<Purity> = counts
            .into_iter()
            .map(|(t, c)| {
                Purity::new(
                    format!("token {:?}", self.texts[&t]),
                    c as f64 / n,
                    self.token_counts[&t] as f64 / total,
                )
            })
            .collect();
        for class in TokenClass::ALL {
            let c = top.iter().filter(|&&i| self.holds(i, class)).count();
            candidates.push(Purity::new(
                class.name().into(),
                c as f64 / n,
                self.class_rate(class),
            ));
        }
        candidates.into_iter().max_by(|a, b| {
            a.excess
                .total_cmp(&b.excess)
                .then(a.fraction.total_cmp(&b.fraction))
                .then(b.label.cmp(&a.label))
        })
    }
}

/// The indices of the `n` largest of `values` (largest first; only values > 0).
pub fn top_positions(values: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| values[i] > 0.0).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(n);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> PositionLabels {
        let texts = [" the", "ing", " 42", ",", " The"];
        // Positions: the, ing, the, 42, ",", The, ",", ",".
        PositionLabels::new(vec![0, 1, 0, 2, 3, 4, 3, 3], |t| {
            texts[t as usize].to_string()
        })
    }

    #[test]
    fn purity_is_the_label_furthest_above_its_base_rate() {
        let l = labels();
        assert_eq!(l.len(), 8);
        // Three commas: the token itself, 3/3, base rate 3/8, excess 1 (ties with the
        // punctuation class, same rate, broken by name).
        let p = l.purity(&[4, 6, 7]).unwrap();
        assert_eq!((p.fraction, p.base_rate, p.excess), (1.0, 3.0 / 8.0, 1.0));
        // " the", " 42", " The": no shared token; all start a word (base rate 4/8).
        let p = l.purity(&[0, 3, 5]).unwrap();
        assert_eq!(p.label, "word_start");
        assert_eq!((p.fraction, p.base_rate), (1.0, 0.5));
        // " the" twice and "ing": the token " the" (2/3, rate 2/8, excess 5/9) beats
        // word_start (2/3, rate 4/8, excess 1/3).
        let p = l.purity(&[0, 2, 1]).unwrap();
        assert_eq!(p.label, "token \" the\"");
        assert!((p.fraction - 2.0 / 3.0).abs() < 1e-12);
        assert!((p.excess - 5.0 / 9.0).abs() < 1e-12);
        assert!(l.purity(&[]).is_none());
        assert!((l.class_rate(TokenClass::Capitalised) - 1.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn top_positions_are_the_largest_positive_values() {
        assert_eq!(top_positions(&[0.5, 0.0, 2.0, 1.0, -3.0], 3), vec![2, 3, 0]);
        assert_eq!(top_positions(&[0.0, -1.0], 3), Vec::<usize>::new());
    }
}

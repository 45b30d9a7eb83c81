//! A small probabilistic grammar with number agreement whose generating latents are known at
//! every token (fig10: do SAE features of a language model trained on it track them?).
//!
//! A sentence is `ADV NP VP .`: the adverb fixes the tense (`now` → present, `yesterday` →
//! past), the subject noun phrase fixes the number the main verb must agree with (present
//! tense only), and the noun phrase may carry an attractor (`the cat near the dogs`) or an
//! object relative clause (`the cat that the dogs see`, nested up to a depth) whose own verb
//! agrees with its own subject. Words are single tokens.
//!
//! Per token, [`LATENTS`] are labelled from the prefix up to and including that token (what a
//! causal model can know there):
//! - `subject_pending`: a main-clause subject has been read, its verb not yet;
//! - `subject_plural`: ... and that subject is plural;
//! - `in_relative`: inside a relative clause (from `that` through its verb);
//! - `past`: the sentence is in the past tense;
//! - `attractor`: a noun of the other number than the pending main subject has been read
//!   since it (in a prepositional phrase or a relative clause), its verb not yet;
//! - `verb_next`: the next token is the main verb (where agreement is predicted).

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Names of the per-token latent labels, in [`Sample::labels`] order.
pub const LATENTS: [&str; 6] = [
    "subject_pending",
    "subject_plural",
    "in_relative",
    "past",
    "attractor",
    "verb_next",
];

/// Index of `subject_pending` in [`LATENTS`].
pub const SUBJECT_PENDING: usize = 0;
/// Index of `subject_plural`.
pub const SUBJECT_PLURAL: usize = 1;
/// Index of `in_relative`.
pub const IN_RELATIVE: usize = 2;
/// Index of `past`.
pub const PAST: usize = 3;
/// Index of `attractor`.
pub const ATTRACTOR: usize = 4;
/// Index of `verb_next`.
pub const VERB_NEXT: usize = 5;

/// The tokens on which each latent is a question: `Some(j)` means only where latent `j` holds
/// (subject number and attractors are asked about while a subject is pending; comparing a
/// plural-subject token with an unrelated one would test the wrong thing), `None` everywhere.
pub const DOMAINS: [Option<usize>; 6] = [
    None,
    Some(SUBJECT_PENDING),
    None,
    None,
    Some(SUBJECT_PENDING),
    None,
];

/// Sizes and probabilities of the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrammarSpec {
    /// Noun stems (each has a singular and a plural token).
    pub nouns: usize,
    /// Verb stems (singular, plural and past tokens each).
    pub verbs: usize,
    /// Adjectives.
    pub adjectives: usize,
    /// Probability of an adjective in a noun phrase.
    pub p_adjective: f64,
    /// Probability that a noun phrase takes a prepositional phrase (`near|with the N`).
    pub p_pp: f64,
    /// Probability that a noun phrase takes a relative clause (while below `max_depth`).
    pub p_relative: f64,
    /// Probability of the past tense.
    pub p_past: f64,
    /// Probability that the main verb takes an object noun phrase.
    pub p_object: f64,
    /// Deepest nesting of relative clauses.
    pub max_depth: usize,
}

impl Default for GrammarSpec {
    fn default() -> Self {
        Self {
            nouns: 8,
            verbs: 6,
            adjectives: 4,
            p_adjective: 0.3,
            p_pp: 0.3,
            p_relative: 0.25,
            p_past: 0.3,
            p_object: 0.4,
            max_depth: 2,
        }
    }
}

/// Fixed tokens.
const BOS: u32 = 0;
const STOP: u32 = 1;
const THE: u32 = 2;
const THAT: u32 = 3;
const PREPS: [u32; 2] = [4, 5];
const NOW: u32 = 6;
const YESTERDAY: u32 = 7;
const FIRST_WORD: u32 = 8;

/// One token sequence and its per-token latent labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Token ids, starting with BOS (id 0).
    pub tokens: Vec<u32>,
    /// `labels[t][j]`: latent `LATENTS[j]` at token `t`.
    pub labels: Vec<[bool; 6]>,
}

/// What the generator tracks while it emits a sentence.
#[derive(Default)]
struct State {
    past: bool,
    /// Number of the main subject while its verb is pending.
    subject: Option<bool>,
    relative_depth: usize,
    attractor: bool,
}

impl GrammarSpec {
    /// Checks the sizes and probabilities.
    pub fn validate(&self) -> Result<()> {
        if self.nouns == 0 || self.verbs == 0 {
            return Err(Error::Invalid(
                "grammar: nouns and verbs must be ≥ 1".into(),
            ));
        }
        for (name, p) in [
            ("p_adjective", self.p_adjective),
            ("p_pp", self.p_pp),
            ("p_relative", self.p_relative),
            ("p_past", self.p_past),
            ("p_object", self.p_object),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Invalid(format!(
                    "grammar: {name} = {p} is not a probability"
                )));
            }
        }
        Ok(())
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        FIRST_WORD as usize + 2 * self.nouns + 3 * self.verbs + self.adjectives
    }

    fn noun(&self, stem: usize, plural: bool) -> u32 {
        FIRST_WORD + (stem + if plural { self.nouns } else { 0 }) as u32
    }

    /// Token of verb `stem`: present singular, present plural, or past.
    fn verb(&self, stem: usize, plural: bool, past: bool) -> u32 {
        let form = if past { 2 } else { usize::from(plural) };
        FIRST_WORD + (2 * self.nouns + form * self.verbs + stem) as u32
    }

    /// The present-tense verb tokens of one number (for agreement scoring).
    pub fn present_verbs(&self, plural: bool) -> Vec<u32> {
        (0..self.verbs)
            .map(|v| self.verb(v, plural, false))
            .collect()
    }

    fn adjective(&self, i: usize) -> u32 {
        FIRST_WORD + (2 * self.nouns + 3 * self.verbs + i) as u32
    }

    /// A readable word for every token id.
    pub fn words(&self) -> Vec<String> {
        let mut w: Vec<String> = [
            "<bos>",
            ".",
            "the",
            "that",
            "near",
            "with",
            "now",
            "yesterday",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        w.extend((0..self.nouns).map(|i| format!("noun{i}")));
        w.extend((0..self.nouns).map(|i| format!("noun{i}s")));
        w.extend((0..self.verbs).map(|i| format!("verb{i}s")));
        w.extend((0..self.verbs).map(|i| format!("verb{i}")));
        w.extend((0..self.verbs).map(|i| format!("verb{i}ed")));
        w.extend((0..self.adjectives).map(|i| format!("adj{i}")));
        w
    }

    /// A sequence of exactly `len` tokens: BOS, then sentences (the last one cut off).
    pub fn sample(&self, rng: &mut impl Rng, len: usize) -> Result<Sample> {
        self.validate()?;
        if len == 0 {
            return Err(Error::Invalid("grammar: length must be ≥ 1".into()));
        }
        let mut out = Sample {
            tokens: vec![BOS],
            labels: vec![[false; 6]],
        };
        while out.tokens.len() < len {
            self.sentence(rng, &mut out);
        }
        out.tokens.truncate(len);
        out.labels.truncate(len);
        Ok(out)
    }

    /// `n` independent samples of `len` tokens.
    pub fn samples(&self, rng: &mut impl Rng, n: usize, len: usize) -> Result<Vec<Sample>> {
        (0..n).map(|_| self.sample(rng, len)).collect()
    }

    fn sentence(&self, rng: &mut impl Rng, out: &mut Sample) {
        let mut st = State {
            past: rng.random_bool(self.p_past),
            ..State::default()
        };
        emit(out, if st.past { YESTERDAY } else { NOW }, &st);
        let plural = rng.random_bool(0.5);
        self.noun_phrase(rng, out, &mut st, plural, 0, true);
        // The main verb: `verb_next` marks the token before it.
        if let Some(last) = out.labels.last_mut() {
            last[VERB_NEXT] = true;
        }
        let stem = rng.random_range(0..self.verbs);
        let verb = self.verb(stem, plural, st.past);
        st.subject = None;
        st.attractor = false;
        emit(out, verb, &st);
        if rng.random_bool(self.p_object) {
            let plural = rng.random_bool(0.5);
            self.noun_phrase(rng, out, &mut st, plural, self.max_depth, false);
        }
        emit(out, STOP, &st);
    }

    /// `the (ADJ) N (PP | REL)`; `main` marks the main subject.
    fn noun_phrase(
        &self,
        rng: &mut impl Rng,
        out: &mut Sample,
        st: &mut State,
        plural: bool,
        depth: usize,
        main: bool,
    ) {
        emit(out, THE, st);
        if self.adjectives > 0 && rng.random_bool(self.p_adjective) {
            emit(
                out,
                self.adjective(rng.random_range(0..self.adjectives)),
                st,
            );
        }
        let noun = self.noun(rng.random_range(0..self.nouns), plural);
        if main {
            st.subject = Some(plural);
        } else if st.subject.is_some_and(|s| s != plural) {
            st.attractor = true;
        }
        emit(out, noun, st);
        if depth < self.max_depth && rng.random_bool(self.p_relative) {
            st.relative_depth += 1;
            emit(out, THAT, st);
            let inner = rng.random_bool(0.5);
            self.noun_phrase(rng, out, st, inner, depth + 1, false);
            let stem = rng.random_range(0..self.verbs);
            emit(out, self.verb(stem, inner, st.past), st);
            st.relative_depth -= 1;
        } else if rng.random_bool(self.p_pp) {
            emit(out, PREPS[rng.random_range(0..PREPS.len())], st);
            let other = rng.random_bool(0.5);
            self.noun_phrase(rng, out, st, other, self.max_depth, false);
        }
    }
}

/// Appends `token` labelled with the state after reading it.
fn emit(out: &mut Sample, token: u32, st: &State) {
    out.tokens.push(token);
    out.labels.push([
        st.subject.is_some(),
        st.subject == Some(true),
        st.relative_depth > 0,
        st.past,
        st.attractor,
        false,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::seeded;

    #[test]
    fn main_verbs_agree_with_their_subject_and_labels_follow_the_sentence() {
        let spec = GrammarSpec::default();
        let mut rng = seeded(3);
        let (mut verbs, mut attractors, mut relatives) = (0, 0, 0);
        for s in spec.samples(&mut rng, 200, 64).unwrap() {
            assert_eq!((s.tokens.len(), s.labels.len()), (64, 64));
            assert_eq!(s.tokens[0], BOS);
            assert!(s.tokens.iter().all(|&t| (t as usize) < spec.vocab()));
            for t in 0..63 {
                let l = s.labels[t];
                // Number and attractors are only ever labelled while a subject is pending.
                assert!(l[SUBJECT_PENDING] || !(l[SUBJECT_PLURAL] || l[ATTRACTOR]));
                if l[ATTRACTOR] {
                    attractors += 1;
                }
                if l[IN_RELATIVE] {
                    relatives += 1;
                }
                if !l[VERB_NEXT] {
                    continue;
                }
                assert!(l[SUBJECT_PENDING]);
                // The next token is the main verb, in the sentence's tense, agreeing in number.
                verbs += 1;
                let v = s.tokens[t + 1];
                if l[PAST] {
                    assert!((0..spec.verbs).any(|i| spec.verb(i, false, true) == v));
                } else {
                    let plural = l[SUBJECT_PLURAL];
                    assert!(spec.present_verbs(plural).contains(&v), "t {t}");
                    assert!(!spec.present_verbs(!plural).contains(&v));
                }
                // After the verb no subject is pending.
                assert!(!s.labels[t + 1][SUBJECT_PENDING] && !s.labels[t + 1][ATTRACTOR]);
            }
        }
        assert!(verbs > 500 && attractors > 200 && relatives > 200);
    }

    #[test]
    fn same_seed_same_samples_and_bad_specs_are_named() {
        let spec = GrammarSpec::default();
        let a = spec.samples(&mut seeded(1), 3, 40).unwrap();
        let b = spec.samples(&mut seeded(1), 3, 40).unwrap();
        assert_eq!(a, b);
        let bad = GrammarSpec { p_pp: 1.5, ..spec };
        let e = bad.sample(&mut seeded(0), 10).unwrap_err().to_string();
        assert!(e.contains("p_pp"), "{e}");
        assert_eq!(spec.words().len(), spec.vocab());
    }
}

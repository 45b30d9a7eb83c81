//! Indirect object identification (IOI; Wang et al. 2022, "Interpretability in the wild"):
//! prompts such as "When Mary and John went to the store, John gave a drink to", whose right
//! continuation is the indirect object (" Mary"), not the repeated subject (" John").
//!
//! [`ioi_prompts`] fills [`TEMPLATES`] with pairs of names that are one token each in the
//! model's tokenizer, in both orders ([`Order::Abba`]: IO first; [`Order::Baba`]: subject
//! first), and pairs each clean prompt with a corrupted one whose second-clause subject is the
//! indirect object instead (names swapped there, so the corrupted answer is the subject). The
//! logit difference `logit[IO] − logit[S]` at the last position ([`ioi_logit_diffs`]) is
//! positive when the model prefers the indirect object.
//!
//! ```
//! use metarep_circuits::ioi::{Order, TEMPLATES};
//! assert_eq!(Order::Abba.fill(TEMPLATES[0], "Mary", "John", "John"),
//!            "When Mary and John went to the store, John gave a drink to");
//! ```

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use metarep_model::predictions::PromptPair;
use metarep_model::tokenizer::Tokenizer;
use metarep_model::{HookedTransformer, NoHooks};
use rand::seq::IndexedRandom;
use rand::Rng;
use serde::Serialize;

use crate::attribution::{answer_attribution, AnswerAttribution};
use crate::error::{Error, Result};
use crate::patching::{last_logit_diffs, PatchSet};

/// Prompt templates: `{A}` and `{B}` are the two names of the first clause, `{S}` the subject
/// of the second; the answer follows the last word.
pub const TEMPLATES: &[&str] = &[
    "When {A} and {B} went to the store, {S} gave a drink to",
    "After {A} and {B} had lunch at the cafe, {S} handed the bill to",
    "Yesterday {A} and {B} walked to the park, and {S} threw the ball to",
    "While {A} and {B} were working at the office, {S} sent an email to",
    "Then {A} and {B} arrived at the party. {S} brought a gift for",
    "Once {A} and {B} finished cleaning the kitchen, {S} passed the towel to",
    "During the trip, {A} and {B} stopped at a shop, and {S} bought a map for",
    "Later that day {A} and {B} sat by the river. {S} showed a photo to",
];

/// First names tried as single tokens (with a leading space).
pub const NAMES: &[&str] = &[
    "Mary",
    "John",
    "James",
    "Robert",
    "Michael",
    "William",
    "David",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Paul",
    "Steven",
    "Andrew",
    "Kevin",
    "Brian",
    "George",
    "Edward",
    "Ryan",
    "Jacob",
    "Gary",
    "Eric",
    "Jonathan",
    "Peter",
    "Frank",
    "Scott",
    "Justin",
    "Samuel",
    "Gregory",
    "Patrick",
    "Jack",
    "Dennis",
    "Jerry",
    "Tyler",
    "Aaron",
    "Henry",
    "Adam",
    "Douglas",
    "Nathan",
    "Zachary",
    "Kyle",
    "Walter",
    "Ethan",
    "Jeremy",
    "Harold",
    "Carl",
    "Arthur",
    "Roger",
    "Sean",
    "Austin",
    "Noah",
    "Alan",
    "Jordan",
    "Albert",
    "Billy",
    "Bruce",
    "Louis",
    "Philip",
    "Bobby",
    "Johnny",
    "Victor",
    "Martin",
    "Ralph",
    "Roy",
    "Eugene",
    "Russell",
    "Randy",
    "Wayne",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Sandra",
    "Ashley",
    "Emily",
    "Donna",
    "Michelle",
    "Carol",
    "Amanda",
    "Melissa",
    "Deborah",
    "Stephanie",
    "Rebecca",
    "Sharon",
    "Laura",
    "Cynthia",
    "Amy",
    "Angela",
    "Anna",
    "Helen",
    "Emma",
    "Nicole",
    "Samantha",
    "Katherine",
    "Christine",
    "Rachel",
    "Catherine",
    "Maria",
    "Heather",
    "Diane",
    "Julie",
    "Joyce",
    "Victoria",
    "Kelly",
    "Christina",
    "Lauren",
    "Joan",
    "Evelyn",
    "Judith",
    "Andrea",
    "Hannah",
    "Megan",
    "Olivia",
    "Alice",
    "Jean",
    "Grace",
    "Rose",
    "Sophia",
    "Kate",
    "Lucy",
    "Tom",
    "Jim",
    "Bob",
    "Mike",
    "Dan",
    "Ben",
    "Sam",
    "Alex",
    "Max",
    "Leo",
    "Luke",
    "Jane",
    "Anne",
    "Ruth",
    "Sara",
    "Amber",
    "Claire",
    "Ellen",
];

/// Which name comes first in the first clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Order {
    /// Indirect object first: "A and B ..., B gave ... to" (answer A).
    Abba,
    /// Subject first: "B and A ..., B gave ... to" (answer A).
    Baba,
}

impl Order {
    /// Both orders.
    pub const ALL: [Order; 2] = [Order::Abba, Order::Baba];

    /// `template` with the indirect object `io`, the first-clause subject `s` and the
    /// second-clause subject `subject` (`s` for a clean prompt, `io` for its corrupted twin).
    pub fn fill(self, template: &str, io: &str, s: &str, subject: &str) -> String {
        let (a, b) = match self {
            Order::Abba => (io, s),
            Order::Baba => (s, io),
        };
        template
            .replace("{A}", a)
            .replace("{B}", b)
            .replace("{S}", subject)
    }

    /// `abba` or `baba`.
    pub fn name(self) -> &'static str {
        match self {
            Order::Abba => "abba",
            Order::Baba => "baba",
        }
    }
}

/// One IOI prompt and its corrupted twin, tokenised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IoiPrompt {
    /// Index into the templates used.
    pub template: usize,
    /// Name order.
    pub order: Order,
    /// The clean prompt's text.
    pub text: String,
    /// Clean token ids (with the BOS token first when one was given).
    pub clean: Vec<u32>,
    /// Corrupted token ids: the second-clause subject replaced by the indirect object.
    pub corrupted: Vec<u32>,
    /// The indirect object's token (the clean answer).
    pub io: u32,
    /// The subject's token (the corrupted answer).
    pub s: u32,
}

impl IoiPrompt {
    /// The prompt as a patching pair (answer: IO, alternative: S).
    pub fn pair(&self) -> PromptPair {
        PromptPair {
            clean: self.clean.clone(),
            corrupted: self.corrupted.clone(),
            answer: self.io,
            alternative: self.s,
        }
    }
}

/// The names of `names` that `tok` encodes, with a leading space, as exactly one token that
/// decodes back to the name, with that token; in the order given, without repeats.
pub fn single_token_names(tok: &Tokenizer, names: &[&str]) -> Result<Vec<(String, u32)>> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for name in names {
        let ids = tok.encode(&format!(" {name}"), false)?.ids;
        if let [id] = ids[..] {
            // The token must spell the name (not an unknown-word token).
            let spelled = tok.decode(&[id], false)?;
            if spelled.trim() == *name && !out.iter().any(|(_, t)| *t == id) {
                out.push((name.to_string(), id));
            }
        }
    }
    Ok(out)
}

/// `per_cell` prompts for every template × order, each with two different names drawn from
/// `names` (see [`single_token_names`]), the BOS token `bos` first when given. A template that
/// tokenises a clean prompt and its corrupted twin to different lengths, or a name to anything
/// but its own token, is an error naming the template.
pub fn ioi_prompts<R: Rng>(
    tok: &Tokenizer,
    bos: Option<u32>,
    templates: &[&str],
    names: &[(String, u32)],
    per_cell: usize,
    rng: &mut R,
) -> Result<Vec<IoiPrompt>> {
    if names.len() < 2 {
        return Err(Error::Invalid(format!(
            "IOI prompts need at least 2 single-token names, got {}",
            names.len()
        )));
    }
    let encode = |text: &str| -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = bos.into_iter().collect();
        ids.extend(tok.encode(text, false)?.ids);
        Ok(ids)
    };
    let mut prompts = Vec::with_capacity(templates.len() * 2 * per_cell);
    for (t, template) in templates.iter().enumerate() {
        if ["{A}", "{B}", "{S}"].iter().any(|p| !template.contains(p)) {
            return Err(Error::Invalid(format!(
                "IOI template {t} ({template:?}) must contain {{A}}, {{B}} and {{S}}"
            )));
        }
        for order in Order::ALL {
            for _ in 0..per_cell {
                let pair: Vec<&(String, u32)> = names.choose_multiple(rng, 2).collect();
                let ((io, io_id), (s, s_id)) = (pair[0], pair[1]);
                let text = order.fill(template, io, s, s);
                let clean = encode(&text)?;
                let corrupted = encode(&order.fill(template, io, s, io))?;
                let count = |ids: &[u32], id: u32| ids.iter().filter(|&&x| x == id).count();
                if clean.len() != corrupted.len()
                    || count(&clean, *io_id) != 1
                    || count(&clean, *s_id) != 2
                    || count(&corrupted, *io_id) != 2
                {
                    return Err(Error::Invalid(format!(
                        "IOI template {t} ({template:?}) does not keep the names{io:?} and{s:?} as single tokens in a fixed frame: clean {clean:?}, corrupted {corrupted:?}"
                    )));
                }
                prompts.push(IoiPrompt {
                    template: t,
                    order,
                    text,
                    clean,
                    corrupted,
                    io: *io_id,
                    s: *s_id,
                });
            }
        }
    }
    Ok(prompts)
}

/// The prompts grouped by clean length (equal-length groups can be batched and patched),
/// as indices into `prompts`, shortest first.
pub fn by_length(prompts: &[IoiPrompt]) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        groups.entry(p.clean.len()).or_default().push(i);
    }
    groups.into_values().collect()
}

/// Stacks prompts of one length into a patch set on `device`.
pub fn patch_set(prompts: &[&IoiPrompt], device: &Device) -> Result<PatchSet> {
    let pairs: Vec<PromptPair> = prompts.iter().map(|p| p.pair()).collect();
    PatchSet::from_pairs(&pairs, device)
}

/// Per prompt (in order), `logit[IO] − logit[S]` at the last position of the clean prompt, in
/// batches of at most `batch` prompts of one length.
pub fn ioi_logit_diffs(
    model: &HookedTransformer,
    prompts: &[IoiPrompt],
    batch: usize,
) -> Result<Vec<f64>> {
    let mut out = vec![f64::NAN; prompts.len()];
    for group in by_length(prompts) {
        for chunk in group.chunks(batch.max(1)) {
            let rows: Vec<&IoiPrompt> = chunk.iter().map(|&i| &prompts[i]).collect();
            let set = patch_set(&rows, model.device())?;
            let diffs = last_logit_diffs(
                model,
                &set.clean,
                &set.answer,
                &set.alternative,
                &mut NoHooks,
            )?;
            for (&i, d) in chunk.iter().zip(diffs) {
                out[i] = f64::from(d);
            }
        }
    }
    Ok(out)
}

/// Direct logit attribution of `logit[IO] − logit[S]` at the last position of prompts of one
/// length: per head, the IO attribution minus the S attribution, `[layer][head]`, with both
/// attributions (whose `check` compares them with a plain pass).
pub struct IoiAttribution {
    /// `[layer][head]`: attribution to `logit[IO] − logit[S]`.
    pub heads: Vec<Vec<f64>>,
    /// Attribution of `logit[IO]`.
    pub io: AnswerAttribution,
    /// Attribution of `logit[S]`.
    pub s: AnswerAttribution,
}

/// What the attributions of prompts of one length read: the clean prompts `[batch, pos]`,
/// the last position of each, and the IO and S tokens.
struct Targets {
    clean: Tensor,
    last: Vec<usize>,
    io: Vec<u32>,
    s: Vec<u32>,
}

impl Targets {
    fn of(model: &HookedTransformer, prompts: &[&IoiPrompt]) -> Result<Self> {
        Ok(Targets {
            clean: patch_set(prompts, model.device())?.clean,
            last: prompts.iter().map(|p| p.clean.len() - 1).collect(),
            io: prompts.iter().map(|p| p.io).collect(),
            s: prompts.iter().map(|p| p.s).collect(),
        })
    }
}

/// [`IoiAttribution`] of `prompts` (one length) on the clean prompts.
pub fn ioi_attribution(
    model: &HookedTransformer,
    prompts: &[&IoiPrompt],
) -> Result<IoiAttribution> {
    let t = Targets::of(model, prompts)?;
    let io = answer_attribution(model, &t.clean, &t.last, &t.io)?;
    let s = answer_attribution(model, &t.clean, &t.last, &t.s)?;
    let heads = io
        .heads
        .iter()
        .zip(&s.heads)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
        .collect();
    Ok(IoiAttribution { heads, io, s })
}

impl IoiAttribution {
    /// Whether both attributions (of `prompts`, as given to [`ioi_attribution`]) reproduce a
    /// plain pass within `tol` ([`crate::attribution::AttributionCheck::exact`]).
    pub fn exact(
        &self,
        model: &HookedTransformer,
        prompts: &[&IoiPrompt],
        tol: f64,
    ) -> Result<bool> {
        let t = Targets::of(model, prompts)?;
        let io = self.io.check(model, &t.clean, &t.last, &t.io)?;
        let s = self.s.check(model, &t.clean, &t.last, &t.s)?;
        Ok(io.exact(tol) && s.exact(tol))
    }
}

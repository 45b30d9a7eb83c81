//! Text atoms in a model's unembedding space: the dictionary [`crate::omp()`] decomposes neuron
//! directions over.
//!
//! A lexicon file has one entry (a word or short phrase) per line; empty lines and lines
//! starting with `#` are ignored. Each entry is tokenized as `" " + entry`, the way a word
//! appears in the middle of a text, and its atom is the mean of the unembedding columns
//! `W_U[:, t]` of its tokens, minus the mean column over the whole vocabulary, unit-normalised.
//!
//! Why the vocabulary mean: effects live in the final normalised space, where `⟨e, W_U[:, t]⟩`
//! is the logit `e` adds to token `t`. A component shared by every column moves all logits
//! together and changes no prediction, so it is removed; `⟨e, atom⟩` is then proportional to
//! the logit of the entry's tokens relative to the average token. (Centring over `d_model`
//! instead would not match: the normalised stream is multiplied by `w_final` after centring, so
//! it does not lie in the mean-zero subspace.)
//!
//! Entries are skipped (and listed in [`Lexicon::skipped`]) when they are blank, encode to no
//! tokens, to an unknown token, to an id outside the model's vocabulary, to the same token
//! sequence as an earlier entry (the first one is kept), or to a zero atom; with
//! [`Lexicon::load_single_token`], also when they take more than one token.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{DType, Tensor};
use metarep_model::{HookedTransformer, Tokenizer};

use crate::error::{Error, Result};

/// Lexicon entries and their unit atoms in the model's unembedding space.
#[derive(Debug, Clone)]
pub struct Lexicon {
    /// The kept entries, in file order.
    pub entries: Vec<String>,
    /// `[entries, d_model]` f32, unit rows (row `i` is `entries[i]`'s atom).
    pub atoms: Tensor,
    /// Entries that were skipped (see the module docs), in file order.
    pub skipped: Vec<String>,
}

/// The ids a tokenizer uses for unknown text: its model's `unk_token` / `unk_id` and the usual
/// spellings when present in the vocabulary.
fn unk_ids(tok: &Tokenizer) -> HashSet<u32> {
    let mut ids = HashSet::new();
    if let Ok(json) = tok.inner().to_string(false) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) {
            let model = &v["model"];
            if let Some(t) = model["unk_token"].as_str() {
                if let Some(id) = tok.token_to_id(t) {
                    ids.insert(id);
                }
            }
            if let Some(id) = model["unk_id"].as_u64() {
                ids.insert(id as u32);
            }
        }
    }
    for t in ["[UNK]", "<unk>", "<|unk|>"] {
        if let Some(id) = tok.token_to_id(t) {
            ids.insert(id);
        }
    }
    ids
}

/// The entries of a lexicon file (see the module docs); an empty file is an error naming it.
fn read_entries(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let entries: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if entries.is_empty() {
        return Err(Error::Invalid(format!(
            "lexicon {} has no entries",
            path.display()
        )));
    }
    Ok(entries)
}

impl Lexicon {
    /// Reads a lexicon file (see the module docs) and builds its atoms for `model`.
    pub fn load(path: &Path, model: &HookedTransformer) -> Result<Self> {
        let entries = read_entries(path)?;
        Self::build(
            &entries.iter().map(String::as_str).collect::<Vec<_>>(),
            model,
            false,
        )
    }

    /// [`Lexicon::load`] keeping only the entries that are one token of `model`'s vocabulary
    /// (as `" " + entry`); the others are skipped. A word lexicon whose atoms are exactly
    /// unembedding columns.
    pub fn load_single_token(path: &Path, model: &HookedTransformer) -> Result<Self> {
        let entries = read_entries(path)?;
        Self::build(
            &entries.iter().map(String::as_str).collect::<Vec<_>>(),
            model,
            true,
        )
    }

    /// Builds atoms for `entries` with `model`'s tokenizer and unembedding.
    pub fn from_entries(entries: &[&str], model: &HookedTransformer) -> Result<Self> {
        Self::build(entries, model, false)
    }

    fn build(entries: &[&str], model: &HookedTransformer, single_token: bool) -> Result<Self> {
        let tok = model.tokenizer().ok_or_else(|| {
            Error::Invalid("the model has no tokenizer; a lexicon needs one".into())
        })?;
        let w_u = model.w_u().ok_or_else(|| {
            Error::Unsupported("a lexicon of a model without an unembedding".into())
        })?;
        let vocab = model.config().d_vocab;
        let unk = unk_ids(tok);
        // [d_vocab, d_model], each column centred by the vocabulary mean.
        let cols = w_u.to_dtype(DType::F32)?.t()?.contiguous()?;
        let cols = cols.broadcast_sub(&cols.mean_keepdim(0)?)?;
        let mut kept = Vec::new();
        let mut atoms = Vec::new();
        let mut skipped = Vec::new();
        let mut seen: HashSet<Vec<u32>> = HashSet::new();
        for &entry in entries {
            let entry = entry.trim();
            if entry.is_empty() {
                skipped.push(String::new());
                continue;
            }
            let ids = tok.encode(&format!(" {entry}"), false)?.ids;
            let bad = ids.is_empty()
                || (single_token && ids.len() != 1)
                || ids
                    .iter()
                    .any(|id| unk.contains(id) || *id as usize >= vocab)
                || seen.contains(&ids);
            if bad {
                skipped.push(entry.to_string());
                continue;
            }
            let idx = Tensor::from_vec(ids.clone(), ids.len(), cols.device())?;
            let atom = cols.index_select(&idx, 0)?.mean(0)?;
            let norm = atom.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
            if !(norm.is_finite() && norm > 0.0) {
                skipped.push(entry.to_string());
                continue;
            }
            seen.insert(ids);
            atoms.push((atom / norm as f64)?);
            kept.push(entry.to_string());
        }
        if atoms.is_empty() {
            return Err(Error::Invalid(format!(
                "no lexicon entry could be encoded ({} skipped)",
                skipped.len()
            )));
        }
        let atoms = Tensor::stack(&atoms, 0)?;
        Ok(Lexicon {
            entries: kept,
            atoms,
            skipped,
        })
    }

    /// Number of kept entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry was kept (never for a constructed lexicon).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

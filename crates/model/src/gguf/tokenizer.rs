//! A `tokenizers` tokenizer rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Supported:
//! - byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`) with the pre-tokenizer
//!   `tokenizer.ggml.pre` names — `gpt2` and `default` (GPT-2's split), `smollm` (single digits,
//!   then GPT-2's split), `llama-bpe` / `llama3` (Llama 3's split). Control and user-defined
//!   tokens (`tokenizer.ggml.token_type` 3 and 4) are special tokens that text never splits.
//! - SentencePiece BPE vocabularies (`tokenizer.ggml.model = llama`: Gemma, Llama 2) with
//!   `tokenizer.ggml.scores`. llama.cpp tokenizes them by repeatedly joining the adjacent pair
//!   whose joined text is the highest-scoring token (leftmost first), over the whole text with
//!   spaces written `▁`, then falls back to `<0xXX>` byte tokens; the same result comes from a BPE
//!   whose merges are every (left, right) split of every token, ranked by the token's score
//!   ([`score_merges`]). User-defined tokens (Gemma's newline and space runs, HTML tags) are
//!   split off the raw text first, as llama.cpp does; control tokens are special.
//!
//! A BOS token is prepended when `tokenizer.ggml.add_bos_token` says so. Any other tokenizer
//! model or pre-tokenizer is an error naming it.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use super::Metadata;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Tokenizer models this module builds.
pub const SUPPORTED_MODELS: &[&str] = &["gpt2", "llama"];

/// Pre-tokenizers this module builds.
pub const SUPPORTED_PRE: &[&str] = &["default", "gpt2", "smollm", "llama-bpe", "llama3"];

/// Llama 3's split (up to three digits per piece, contractions, letters, punctuation runs).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `token_type` of control tokens (`<|im_start|>`, BOS, EOS).
const CONTROL: i64 = 3;
/// `token_type` of user-defined tokens.
const USER_DEFINED: i64 = 4;
/// `token_type` of byte-fallback tokens (`<0x0A>`).
const BYTE: i64 = 6;
/// SentencePiece's word-boundary mark, standing for a space.
const SPACE_MARK: &str = "\u{2581}";

/// The tokenizer the metadata describes.
pub fn from_metadata(meta: &Metadata) -> Result<Tokenizer> {
    let model = meta.string("tokenizer.ggml.model")?;
    if !SUPPORTED_MODELS.contains(&model) {
        return Err(meta.err(
            "tokenizer.ggml.model",
            format!(
                "tokenizer model `{model}` is not supported ({})",
                SUPPORTED_MODELS.join(", ")
            ),
        ));
    }
    let tokens = strings(meta, "tokenizer.ggml.tokens")?;
    let types = integers(meta, "tokenizer.ggml.token_type", tokens.len())?;
    let vocab: HashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut tok = if model == "gpt2" {
        byte_level_bpe(meta, vocab)?
    } else {
        sentencepiece_bpe(meta, &tokens, &types, vocab)?
    };
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == CONTROL || t == USER_DEFINED)
        .map(|(s, &t)| {
            // SentencePiece's user-defined pieces are text (newline runs): not special.
            let special = t == CONTROL || model == "gpt2";
            AddedToken::from(s.clone(), special).normalized(false)
        })
        .collect();
    tok.add_special_tokens(added)
        .map_err(|e| Error::Tokenizer(format!("special tokens: {e}")))?;
    if meta.bool_or("tokenizer.ggml.add_bos_token", false)? {
        let id = meta.usize("tokenizer.ggml.bos_token_id")?;
        let bos = tokens.get(id).ok_or_else(|| {
            meta.err(
                "tokenizer.ggml.bos_token_id",
                format!("{id} is not a token id"),
            )
        })?;
        let template = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B")))
            .map_err(|e| Error::Tokenizer(format!("BOS template: {e}")))?
            .special_tokens(vec![(bos.clone(), id as u32)])
            .build()
            .map_err(|e| Error::Tokenizer(format!("BOS template: {e}")))?;
        tok.with_post_processor(Some(template));
    }
    let bos = token_id(meta, "tokenizer.ggml.bos_token_id", tokens.len())?;
    let mut eos = Vec::new();
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        eos.extend(token_id(meta, key, tokens.len())?);
    }
    Ok(Tokenizer::from_inner(tok).with_special_ids(bos, eos))
}

/// The token id under `key`, if present; an id outside the vocabulary is an error.
fn token_id(meta: &Metadata, key: &str, vocab: usize) -> Result<Option<u32>> {
    if meta.get(key).is_none() {
        return Ok(None);
    }
    let id = meta.usize(key)?;
    if id >= vocab {
        return Err(meta.err(key, format!("{id} is not a token id (vocabulary {vocab})")));
    }
    Ok(Some(id as u32))
}

/// A byte-level BPE (`tokenizer.ggml.model = gpt2`) from `tokenizer.ggml.merges`.
fn byte_level_bpe(meta: &Metadata, vocab: HashMap<String, u32>) -> Result<tokenizers::Tokenizer> {
    let merges: Vec<(String, String)> = strings(meta, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(meta.err(
                "tokenizer.ggml.merges",
                format!("entry {i} `{m}` is not two tokens separated by a space"),
            )),
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .build()
        .map_err(|e| meta.err("tokenizer.ggml.merges", format!("cannot build BPE: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let pre = match meta.get("tokenizer.ggml.pre") {
        Some(_) => meta.string("tokenizer.ggml.pre")?,
        None => "default",
    };
    tok.with_pre_tokenizer(Some(pre_tokenizer(meta, pre)?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tok)
}

/// A SentencePiece BPE (`tokenizer.ggml.model = llama`) from `tokenizer.ggml.scores`: spaces
/// become `▁` (one is prepended when `tokenizer.ggml.add_space_prefix` says so), no
/// pre-tokenizer, byte fallback.
fn sentencepiece_bpe(
    meta: &Metadata,
    tokens: &[String],
    types: &[i64],
    vocab: HashMap<String, u32>,
) -> Result<tokenizers::Tokenizer> {
    let scores = floats(meta, "tokenizer.ggml.scores", tokens.len())?;
    let merges = score_merges(tokens, types, &scores, &vocab);
    let unk = meta
        .usize_or("tokenizer.ggml.unknown_token_id", 0)
        .map(|id| tokens.get(id).cloned())?;
    let mut builder = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| meta.err("tokenizer.ggml.scores", format!("cannot build BPE: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let spaces = Replace::new(" ", SPACE_MARK)
        .map_err(|e| Error::Tokenizer(format!("space normaliser: {e}")))?;
    let prefix = meta.bool_or("tokenizer.ggml.add_space_prefix", true)?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE_MARK, " ")
            .map_err(|e| Error::Tokenizer(format!("space decoder: {e}")))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix {
        normalizers.push(Prepend::new(SPACE_MARK.into()).into());
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    normalizers.push(spaces.into());
    tok.with_normalizer(Some(tokenizers::normalizers::Sequence::new(normalizers)))
        .map_err(|e| Error::Tokenizer(format!("normaliser: {e}")))?;
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

/// The merges that make a BPE tokenize as SentencePiece's score-driven joining does: every
/// split `(left, right)` of every token (byte tokens excepted) whose halves are tokens, ranked
/// by the joined token's score, highest first (ties by token id).
pub fn score_merges(
    tokens: &[String],
    types: &[i64],
    scores: &[f32],
    vocab: &HashMap<String, u32>,
) -> Vec<(String, String)> {
    let mut ranked: Vec<(f32, usize, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] == BYTE {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                ranked.push((scores[id], id, left.to_string(), right.to_string()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect()
}

/// The pre-tokenizer llama.cpp names `pre`.
fn pre_tokenizer(meta: &Metadata, pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex: bool| ByteLevel::new(false, true, use_regex);
    Ok(match pre {
        "default" | "gpt2" => byte_level(true).into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::Tokenizer(format!("Llama 3 split: {e}")))?;
            Sequence::new(vec![split.into(), byte_level(false).into()]).into()
        }
        other => {
            return Err(meta.err(
                "tokenizer.ggml.pre",
                format!(
                    "pre-tokenizer `{other}` is not supported ({})",
                    SUPPORTED_PRE.join(", ")
                ),
            ))
        }
    })
}

/// `key` as an array of strings.
fn strings(meta: &Metadata, key: &str) -> Result<Vec<String>> {
    meta.array(key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.to_string()
                .cloned()
                .map_err(|_| meta.err(key, format!("entry {i} is not a string")))
        })
        .collect()
}

/// `key` as an array of `len` floats.
fn floats(meta: &Metadata, key: &str, len: usize) -> Result<Vec<f32>> {
    numbers(meta, key, len, "a float", |v| v.to_f32().ok())
}

/// `key` as an array of `len` integers (all 1, i.e. normal tokens, when absent).
fn integers(meta: &Metadata, key: &str, len: usize) -> Result<Vec<i64>> {
    if meta.get(key).is_none() {
        return Ok(vec![1; len]);
    }
    numbers(meta, key, len, "an integer", |v| {
        v.to_i32()
            .map(i64::from)
            .or_else(|_| v.to_u32().map(i64::from))
            .ok()
    })
}

/// `key` as an array of `len` values, each read by `read` (`what` names the expected kind).
fn numbers<T>(
    meta: &Metadata,
    key: &str,
    len: usize,
    what: &str,
    read: impl Fn(&candle_core::quantized::gguf_file::Value) -> Option<T>,
) -> Result<Vec<T>> {
    let values = meta.array(key)?;
    if values.len() != len {
        return Err(meta.err(key, format!("{} entries for {len} tokens", values.len())));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| read(v).ok_or_else(|| meta.err(key, format!("entry {i} is not {what}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_joined_tokens_scores_and_skip_byte_tokens() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc", "<0x61>", "<0x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let types = [1, 1, 1, 1, 1, 1, BYTE, 1];
        // "bc" outranks "ab"; "abc" has two splits, both ranked by its score.
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0, 0.0, 0.0];
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = score_merges(&tokens, &types, &scores, &vocab);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            merges,
            vec![
                pair("b", "c"),
                pair("a", "b"),
                pair("a", "bc"),
                pair("ab", "c")
            ]
        );
    }
}

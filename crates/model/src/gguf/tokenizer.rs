//! A `tokenizers` tokenizer rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Supported: byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`) with the
//! pre-tokenizer `tokenizer.ggml.pre` names — `gpt2` and `default` (GPT-2's split), `smollm`
//! (single digits, then GPT-2's split), `llama-bpe` / `llama3` (Llama 3's split). Control and
//! user-defined tokens (`tokenizer.ggml.token_type` 3 and 4) are special tokens that text never
//! splits; a BOS token is prepended when `tokenizer.ggml.add_bos_token` says so. Any other
//! tokenizer model or pre-tokenizer is an error naming it.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::Metadata;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Tokenizer models this module builds.
pub const SUPPORTED_MODELS: &[&str] = &["gpt2"];

/// Pre-tokenizers this module builds.
pub const SUPPORTED_PRE: &[&str] = &["default", "gpt2", "smollm", "llama-bpe", "llama3"];

/// Llama 3's split (up to three digits per piece, contractions, letters, punctuation runs).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `token_type` of control tokens (`<|im_start|>`, BOS, EOS).
const CONTROL: i64 = 3;
/// `token_type` of user-defined tokens.
const USER_DEFINED: i64 = 4;

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
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| meta.err("tokenizer.ggml.merges", format!("cannot build BPE: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let pre = match meta.get("tokenizer.ggml.pre") {
        Some(_) => meta.string("tokenizer.ggml.pre")?,
        None => "default",
    };
    tok.with_pre_tokenizer(Some(pre_tokenizer(meta, pre)?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let types = integers(meta, "tokenizer.ggml.token_type", tokens.len())?;
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == CONTROL || t == USER_DEFINED)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(special)
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
    Ok(Tokenizer::from_inner(tok))
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

/// `key` as an array of `len` integers (all 1, i.e. normal tokens, when absent).
fn integers(meta: &Metadata, key: &str, len: usize) -> Result<Vec<i64>> {
    if meta.get(key).is_none() {
        return Ok(vec![1; len]);
    }
    let values = meta.array(key)?;
    if values.len() != len {
        return Err(meta.err(key, format!("{} entries for {len} tokens", values.len())));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.to_i32()
                .map(i64::from)
                .or_else(|_| v.to_u32().map(i64::from))
                .map_err(|_| meta.err(key, format!("entry {i} is not an integer")))
        })
        .collect()
}

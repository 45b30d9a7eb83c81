//! Token datasets for capture: JSONL, plain-text or token-id files, concatenated and cut into
//! fixed-length contexts.
//!
//! Formats, by extension:
//! - `.jsonl`: one JSON object per line with `"text"` (a string, tokenized) or `"tokens"` (an
//!   array of ids);
//! - `.txt`: one document per non-empty line (tokenized);
//! - `.ids` / `.tokens`: one document per non-empty line of ids separated by commas or spaces.
//!
//! Documents are tokenized without special tokens, concatenated in file order and cut into
//! contexts of `context` tokens; a final remainder shorter than a context is dropped (counted
//! in [`TokenDataset::dropped`]).

use std::path::{Path, PathBuf};

use metarep_model::TextEncoder;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A dataset cut into equal-length contexts.
#[derive(Debug, Clone)]
pub struct TokenDataset {
    /// The source file.
    pub path: PathBuf,
    /// Hex SHA-256 of the source file's bytes.
    pub sha256: String,
    /// Contexts, each `context` token ids.
    pub sequences: Vec<Vec<u32>>,
    /// Tokens at the end that did not fill a context.
    pub dropped: usize,
}

impl TokenDataset {
    /// Reads `path` (see the module docs), tokenizing text with `encoder` (a model's
    /// [`text_encoder`](metarep_model::HookedTransformer::text_encoder); required for `.jsonl`
    /// `"text"` fields and `.txt`), and cuts it into contexts of `context` tokens.
    pub fn load(path: &Path, encoder: Option<&dyn TextEncoder>, context: usize) -> Result<Self> {
        if context == 0 {
            return Err(Error::Invalid("context length must be ≥ 1".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, e.to_string()))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| Error::file(path, format!("not UTF-8: {e}")))?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let mut stream: Vec<u32> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |reason: String| Error::file(path, format!("line {}: {reason}", i + 1));
            let doc = match ext {
                "jsonl" => jsonl_document(line, encoder).map_err(at)?,
                "txt" => tokenize(line, encoder).map_err(at)?,
                "ids" | "tokens" => parse_ids(line).map_err(at)?,
                other => {
                    return Err(Error::file(
                        path,
                        format!("unknown dataset format `.{other}` (expected .jsonl, .txt, .ids or .tokens)"),
                    ))
                }
            };
            stream.extend(doc);
        }
        let n = stream.len() / context;
        if n == 0 {
            return Err(Error::file(
                path,
                format!(
                    "{} tokens: not enough for one context of {context}",
                    stream.len()
                ),
            ));
        }
        let dropped = stream.len() - n * context;
        let sequences = stream.chunks_exact(context).map(<[u32]>::to_vec).collect();
        Ok(Self {
            path: path.to_path_buf(),
            sha256: hex(&Sha256::digest(&bytes)),
            sequences,
            dropped,
        })
    }

    /// Tokens in all contexts.
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(Vec::len).sum()
    }
}

fn jsonl_document(
    line: &str,
    encoder: Option<&dyn TextEncoder>,
) -> std::result::Result<Vec<u32>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
        return tokenize(t, encoder);
    }
    if let Some(ids) = v.get("tokens").and_then(|t| t.as_array()) {
        return ids
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| format!("`tokens` holds {x}, not a token id"))
            })
            .collect();
    }
    Err("expected a `text` string or a `tokens` array".into())
}

fn tokenize(
    text: &str,
    encoder: Option<&dyn TextEncoder>,
) -> std::result::Result<Vec<u32>, String> {
    let enc = encoder.ok_or("text needs a tokenizer, and the model has none (give token ids)")?;
    enc.encode_ids(text).map_err(|e| e.to_string())
}

/// Token ids separated by commas or whitespace.
pub fn parse_ids(line: &str) -> std::result::Result<Vec<u32>, String> {
    line.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|e| format!("`{t}` is not a token id ({e})"))
        })
        .collect()
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

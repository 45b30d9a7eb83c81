//! A thin wrapper over the `tokenizers` crate: encode/decode with character offsets, and
//! right-padded batches ready for [`crate::HookedTransformer`].

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::input::Input;

/// One encoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Token strings.
    pub tokens: Vec<String>,
    /// Byte offsets `(start, end)` of each token in the input text (`(0, 0)` for added special
    /// tokens).
    pub offsets: Vec<(usize, usize)>,
    /// Segment (token-type) ids.
    pub type_ids: Vec<u32>,
}

/// A right-padded batch of encodings.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Tokens `[batch, max_len]`, attention mask (1 = token, 0 = padding) and token types.
    pub input: Input,
    /// Unpadded length of each row.
    pub lengths: Vec<usize>,
    /// The encodings, unpadded.
    pub encodings: Vec<Encoding>,
}

/// A Hugging Face tokenizer (`tokenizer.json`). Padding configured in the file is turned off
/// (its pad id is kept): [`Tokenizer::batch`] pads to the longest text itself.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer(vocab = {})", self.vocab_size())
    }
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{context}: {e}"))
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_err(&path.display().to_string(), e))?;
        Ok(Self::from_inner(inner))
    }

    /// Wraps an existing `tokenizers::Tokenizer` (e.g. one trained in code).
    pub fn from_inner(mut inner: tokenizers::Tokenizer) -> Self {
        let pad_id = match inner.get_padding() {
            Some(p) => p.pad_id,
            None => ["[PAD]", "<pad>", "<|endoftext|>"]
                .iter()
                .find_map(|t| inner.token_to_id(t))
                .unwrap_or(0),
        };
        inner.with_padding(None);
        Self {
            inner,
            pad_id,
            bos_id: None,
            eos_ids: Vec::new(),
        }
    }

    /// The same tokenizer with the checkpoint's beginning- and end-of-sequence ids (a GGUF's
    /// `tokenizer.ggml.*_token_id`, a Hugging Face `config.json`'s `bos_token_id` /
    /// `eos_token_id`); `eos` is sorted and deduplicated.
    pub fn with_special_ids(mut self, bos: Option<u32>, mut eos: Vec<u32>) -> Self {
        eos.sort_unstable();
        eos.dedup();
        self.bos_id = bos;
        self.eos_ids = eos;
        self
    }

    /// The beginning-of-sequence id the checkpoint declares.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence ids the checkpoint declares (generation stops at any of them).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The wrapped tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes `tokenizer.json` to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| tok_err("serializing tokenizer", e))?;
        Ok(metarep_core::atomic_write(path, text.as_bytes())?)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The padding id: the file's padding setting, else `[PAD]`, `<pad>`, `<|endoftext|>`, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Encodes one text (`add_special`: add `[CLS]`/`[SEP]` etc. as the post-processor says).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Encoding> {
        let e = self
            .inner
            .encode(text, add_special)
            .map_err(|e| tok_err(&format!("encoding {text:?}"), e))?;
        Ok(Encoding {
            ids: e.get_ids().to_vec(),
            tokens: e.get_tokens().to_vec(),
            offsets: e.get_offsets().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
        })
    }

    /// Decodes ids back to text.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tok_err("decoding", e))
    }

    /// Encodes `texts` and right-pads them into one batch on `device`.
    pub fn batch(&self, texts: &[&str], add_special: bool, device: &Device) -> Result<Batch> {
        if texts.is_empty() {
            return Err(Error::Invalid("tokenizer batch: no texts".into()));
        }
        let encodings = texts
            .iter()
            .map(|t| self.encode(t, add_special))
            .collect::<Result<Vec<_>>>()?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.ids.len()).collect();
        let max = lengths.iter().copied().max().unwrap_or(0);
        if max == 0 {
            return Err(Error::Invalid(
                "tokenizer batch: every text encodes to no tokens".into(),
            ));
        }
        let pad = self.pad_id();
        let n = texts.len();
        let mut ids = vec![pad; n * max];
        let mut mask = vec![0u32; n * max];
        let mut types = vec![0u32; n * max];
        for (i, e) in encodings.iter().enumerate() {
            for (j, (&id, &ty)) in e.ids.iter().zip(&e.type_ids).enumerate() {
                ids[i * max + j] = id;
                mask[i * max + j] = 1;
                types[i * max + j] = ty;
            }
        }
        let input = Input::new(Tensor::from_vec(ids, (n, max), device)?)
            .with_attention_mask(Tensor::from_vec(mask, (n, max), device)?)
            .with_token_types(Tensor::from_vec(types, (n, max), device)?);
        Ok(Batch {
            input,
            lengths,
            encodings,
        })
    }
}

impl crate::text::TextEncoder for Tokenizer {
    fn encode_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(text, false)?.ids)
    }
}

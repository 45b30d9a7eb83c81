//! Text to token ids, as a trait: code that only needs to encode text (dataset readers of the
//! activation store) takes this, so any tokenizer can serve; [`crate::Tokenizer`] implements it.

use crate::error::Result;

/// Encodes text to token ids without special tokens.
pub trait TextEncoder {
    /// The ids of `text`.
    fn encode_ids(&self, text: &str) -> Result<Vec<u32>>;
}

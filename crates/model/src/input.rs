//! The model's input: token ids with an optional padding mask and BERT token types.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// A batch of model input: token ids and, optionally, a padding mask and BERT token types.
#[derive(Debug, Clone)]
pub struct Input {
    /// Token ids `[batch, pos]` (any integer dtype).
    pub tokens: Tensor,
    /// `[batch, pos]`, 1 for real tokens and 0 for padding (keys that are 0 get no attention).
    pub attention_mask: Option<Tensor>,
    /// BERT segment ids `[batch, pos]` (zeros when absent).
    pub token_type_ids: Option<Tensor>,
}

impl Input {
    /// Token ids only.
    pub fn new(tokens: Tensor) -> Self {
        Input {
            tokens,
            attention_mask: None,
            token_type_ids: None,
        }
    }

    /// Adds a padding mask `[batch, pos]` (1 = token, 0 = padding).
    pub fn with_attention_mask(mut self, mask: Tensor) -> Self {
        self.attention_mask = Some(mask);
        self
    }

    /// Adds BERT token-type ids `[batch, pos]`.
    pub fn with_token_types(mut self, types: Tensor) -> Self {
        self.token_type_ids = Some(types);
        self
    }

    /// Token ids from rows of equal length, on `device`.
    pub fn from_ids(rows: &[Vec<u32>], device: &Device) -> Result<Self> {
        let p = rows.first().map(Vec::len).unwrap_or(0);
        if rows.is_empty() || p == 0 || rows.iter().any(|r| r.len() != p) {
            return Err(Error::shape(
                "token rows",
                "≥ 1 non-empty rows of equal length",
                format!(
                    "lengths {:?}",
                    rows.iter().map(Vec::len).collect::<Vec<_>>()
                ),
            ));
        }
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        Ok(Input::new(Tensor::from_vec(flat, (rows.len(), p), device)?))
    }
}

impl From<Tensor> for Input {
    fn from(tokens: Tensor) -> Self {
        Input::new(tokens)
    }
}

impl From<&Tensor> for Input {
    fn from(tokens: &Tensor) -> Self {
        Input::new(tokens.clone())
    }
}

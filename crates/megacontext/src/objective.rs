//! ΔNLL@H: the next-token loss of the H tokens after a block when the block is replaced (by a
//! gist, by nothing, by some of its tokens) against the loss with the block in full.
//!
//! A **window** is `P + B + H` consecutive tokens of a document: a prefix of P, the block of B
//! that gets replaced, and the H tokens whose loss is measured. The model reads the prefix,
//! the block's replacement and the first H − 1 tokens after it, each at its position in the
//! window (a gist at the block's last token, [`PositionRule::SpanEnd`]) or at consecutive slots
//! ([`PositionRule::Slot`]); the last H slots predict the H tokens after the block (the slot
//! just before them — the gist, the block's last kept token, or the prefix's last token when
//! the block is dropped — predicts the first). A block may also be replaced by m vectors, one
//! per equal sub-block (m gists in a row, as in a working context), each at its sub-block's
//! last token.

use candle_core::{DType, Tensor};
use metarep_model::ops::log_softmax_last_dim;
use metarep_model::{HookedTransformer, Input, KvCache, NoHooks, RunTo};

use crate::error::{Error, Result};
use crate::working_context::PositionRule;

/// The window's shape: prefix P, block B, horizon H.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowShape {
    /// Tokens before the block.
    pub prefix: usize,
    /// The block that is replaced.
    pub block: usize,
    /// Tokens after it whose loss is measured (≥ 1).
    pub horizon: usize,
}

impl WindowShape {
    /// Tokens in a window: P + B + H.
    pub fn len(&self) -> usize {
        self.prefix + self.block + self.horizon
    }

    /// Whether the window is empty (never, for a valid shape).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Errors unless B ≥ 1 and H ≥ 1.
    pub fn validate(&self) -> Result<()> {
        if self.block == 0 || self.horizon == 0 {
            return Err(Error::Config(format!(
                "a window needs a block and a horizon of at least one token: {self:?}"
            )));
        }
        Ok(())
    }
}

/// What stands in the block's place.
#[derive(Debug, Clone)]
pub enum Replacement {
    /// The block itself (the full-context reference).
    Full,
    /// Nothing: the block is dropped.
    Drop,
    /// Vectors in the embedding space: one per window `[n, d_model]` (a gist, or the mean of
    /// the block's token embeddings), or one per each of m equal sub-blocks `[n, m, d_model]`
    /// (m divides B; m gists in a row).
    Vector(Tensor),
    /// The block's tokens at these offsets (strictly increasing, `< B`), per window.
    Keep(Vec<Vec<usize>>),
}

/// Mean NLL (nats) of the H tokens after the block of each window `[n]`, with the block
/// replaced as `replacement` says. `windows` are `[n, P + B + H]` token ids. Gradients flow
/// into a [`Replacement::Vector`] (the base model's own weights are plain tensors).
pub fn nll_after_block(
    model: &HookedTransformer,
    windows: &[Vec<u32>],
    shape: WindowShape,
    replacement: &Replacement,
    rule: PositionRule,
) -> Result<Tensor> {
    let logits = logits_after_block(model, windows, shape, replacement, rule)?;
    token_nll(&logits, &targets(model, windows, shape)?)
}

/// The H tokens after each window's block `[n, H]` (u32).
pub fn targets(
    model: &HookedTransformer,
    windows: &[Vec<u32>],
    shape: WindowShape,
) -> Result<Tensor> {
    let start = shape.prefix + shape.block;
    let flat: Vec<u32> = windows
        .iter()
        .flat_map(|w| w[start..start + shape.horizon].to_vec())
        .collect();
    Ok(Tensor::from_vec(
        flat,
        (windows.len(), shape.horizon),
        model.device(),
    )?)
}

/// Mean over the H positions of KL(p_full ‖ p) `[n]`: how far the predictions with the block
/// replaced (`logits`, `[n, H, vocab]`) are from the full context's (`full`, same shape; no
/// gradient flows into it).
pub fn kl_to_full(full: &Tensor, logits: &Tensor) -> Result<Tensor> {
    let lp_full = log_softmax_last_dim(&full.detach())?;
    let lp = log_softmax_last_dim(logits)?;
    let kl = (lp_full.exp()? * (&lp_full - lp)?)?.sum(2)?;
    Ok(kl.mean(1)?)
}

/// In-batch contrastive loss (InfoNCE) that keeps gists apart and tied to their own blocks:
/// with `s_ij = cos(g_i, m_j) / temperature`, where `g` are the gists `[n, d]` and `m` the mean
/// of each block's token embeddings (`blocks`, `[n, B, d]`; no gradient flows into them), the
/// mean over i of `−log softmax_j(s_ij)` at `j = i`. It is `ln n` when every gist is equally
/// close to every block, at least `ln n` when all gists are one vector, and falls as each gist
/// becomes closer to its own block than to the others: it pushes gists of different blocks
/// apart and towards their own block's content.
pub fn contrastive(gists: &Tensor, blocks: &Tensor, temperature: f64) -> Result<Tensor> {
    let (n, d) = gists.dims2()?;
    let (nb, _, db) = blocks.dims3()?;
    if n < 2 || nb != n || db != d {
        return Err(Error::Invalid(format!(
            "the contrastive term needs gists [n ≥ 2, d] and blocks [n, B, d]: got {:?} and {:?}",
            gists.dims(),
            blocks.dims()
        )));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Invalid(format!(
            "the contrastive temperature must be positive, got {temperature}"
        )));
    }
    let unit = |x: &Tensor| -> Result<Tensor> {
        let norm = (x.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-12)?;
        Ok(x.broadcast_div(&norm)?)
    };
    let g = unit(gists)?;
    let m = unit(&blocks.detach().mean(1)?)?;
    let scores = (g.matmul(&m.t()?)? / temperature)?;
    // Row i's own block is class i: a one-position "sequence" per row for `token_nll`.
    let own = Tensor::arange(0u32, n as u32, gists.device())?.unsqueeze(1)?;
    Ok(token_nll(&scores.unsqueeze(1)?, &own)?.mean_all()?)
}

/// The logits `[n, H, vocab]` (f32) that predict the H tokens after each window's block, with
/// the block replaced as `replacement` says (see [`nll_after_block`]).
pub fn logits_after_block(
    model: &HookedTransformer,
    windows: &[Vec<u32>],
    shape: WindowShape,
    replacement: &Replacement,
    rule: PositionRule,
) -> Result<Tensor> {
    shape.validate()?;
    let n = windows.len();
    if n == 0 || windows.iter().any(|w| w.len() != shape.len()) {
        return Err(Error::shape(
            "windows",
            format!("≥ 1 windows of P + B + H = {} tokens", shape.len()),
            format!(
                "lengths {:?}",
                windows.iter().map(Vec::len).collect::<Vec<_>>()
            ),
        ));
    }
    let (p, b, h) = (shape.prefix, shape.block, shape.horizon);
    let dev = model.device();
    let ids = |range: std::ops::Range<usize>| -> Result<Tensor> {
        let flat: Vec<u32> = windows
            .iter()
            .flat_map(|w| w[range.clone()].to_vec())
            .collect();
        Ok(Tensor::from_vec(flat, (n, range.len()), dev)?)
    };
    let embed = |range: std::ops::Range<usize>| -> Result<Tensor> {
        Ok(model.token_embeddings(&ids(range)?)?.to_dtype(DType::F32)?)
    };
    // The prefix runs once, without gradient, into a key/value cache; the pieces after it
    // (the replacement and the tokens after the block) run with their window positions.
    let mut pieces: Vec<Tensor> = Vec::new();
    let mut positions: Vec<usize> = Vec::new();
    match replacement {
        Replacement::Full => {
            pieces.push(embed(p..p + b)?);
            positions.extend(p..p + b);
        }
        Replacement::Drop => {}
        Replacement::Vector(v) => {
            let d = model.config().d_model;
            let v = if v.rank() == 2 {
                v.unsqueeze(1)?
            } else {
                v.clone()
            };
            let m = v.dims().get(1).copied().unwrap_or(0);
            if v.rank() != 3 || v.dims() != [n, m, d] || m == 0 || !b.is_multiple_of(m) {
                return Err(Error::shape(
                    "replacement vectors",
                    format!("[{n}, {d}] or [{n}, m, {d}] with m dividing the block of {b}"),
                    format!("{:?}", v.dims()),
                ));
            }
            pieces.push(v.to_dtype(DType::F32)?);
            let sub = b / m;
            positions.extend((1..=m).map(|j| p + j * sub - 1));
        }
        Replacement::Keep(kept) => {
            let valid = kept.len() == n
                && kept
                    .iter()
                    .all(|k| k.windows(2).all(|w| w[0] < w[1]) && k.iter().all(|&o| o < b));
            if !valid {
                return Err(Error::Invalid(format!(
                    "kept offsets must be {n} lists (one per window), strictly increasing, < {b}"
                )));
            }
            if kept.iter().any(|k| *k != kept[0]) {
                // Positions differ between windows: one pass per window.
                let rows = windows
                    .iter()
                    .zip(kept)
                    .map(|(w, k)| {
                        let one = Replacement::Keep(vec![k.clone()]);
                        logits_after_block(model, std::slice::from_ref(w), shape, &one, rule)
                    })
                    .collect::<Result<Vec<_>>>()?;
                return Ok(Tensor::cat(&rows, 0)?);
            }
            let offsets = &kept[0];
            if !offsets.is_empty() {
                let flat: Vec<u32> = windows
                    .iter()
                    .flat_map(|w| offsets.iter().map(|&o| w[p + o]).collect::<Vec<_>>())
                    .collect();
                let t = Tensor::from_vec(flat, (n, offsets.len()), dev)?;
                pieces.push(model.token_embeddings(&t)?.to_dtype(DType::F32)?);
                positions.extend(offsets.iter().map(|&o| p + o));
            }
        }
    }
    if h > 1 {
        pieces.push(embed(p + b..p + b + h - 1)?);
        positions.extend(p + b..p + b + h - 1);
    }
    let rest = positions.len();
    if p + rest < h || p + rest == 0 {
        return Err(Error::Invalid(format!(
            "{} slots cannot predict {h} tokens: give a prefix",
            p + rest
        )));
    }
    let positions: Vec<usize> = match rule {
        PositionRule::SpanEnd => positions,
        PositionRule::Slot => (p..p + rest).collect(),
    };
    let mut cache = KvCache::new(model);
    let mut hidden: Vec<Tensor> = Vec::new();
    if p > 0 {
        let prefix = Input::new(ids(0..p)?);
        let ph = model.run_cached_to(&prefix, &mut cache, &mut NoHooks, RunTo::Hidden)?;
        // The prefix's last position predicts the first target when fewer than H slots follow.
        if rest < h {
            hidden.push(ph.narrow(1, p - 1, 1)?);
        }
    }
    if rest > 0 {
        let refs: Vec<&Tensor> = pieces.iter().collect();
        let embeds = Tensor::cat(&refs, 1)?.to_dtype(model.dtype())?;
        hidden.push(if p > 0 {
            model.run_embeddings_after(&embeds, &positions, &cache, &mut NoHooks, RunTo::Hidden)?
        } else {
            model.run_embeddings(&embeds, &positions, &mut NoHooks, RunTo::Hidden)?
        });
    }
    let refs: Vec<&Tensor> = hidden.iter().collect();
    let hidden = Tensor::cat(&refs, 1)?;
    let last = hidden.narrow(1, hidden.dim(1)? - h, h)?;
    Ok(model.unembed(&last)?.to_dtype(DType::F32)?.contiguous()?)
}

/// Mean over positions of −log p(target) `[n]` from `logits` `[n, h, vocab]` and `targets`
/// `[n, h]`.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_core::Tensor::log_sum_exp(logits, candle_core::D::Minus1)?;
    let picked = logits.gather(&targets.unsqueeze(2)?, 2)?.squeeze(2)?;
    Ok((logp - picked)?.mean(1)?)
}

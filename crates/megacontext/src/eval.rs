//! ΔNLL@H of a block replaced by each method, against the full context, over fixed windows:
//! per-window values, their mean with a 95% interval, and the fraction of blocks under a
//! threshold.

use candle_core::{DType, Tensor};
use metarep_eval::stats::mean_ci;
use metarep_model::HookedTransformer;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::gistnet::GistNet;
use crate::objective::{nll_after_block, Replacement, WindowShape};
use crate::train::block_embeddings;
use crate::working_context::PositionRule;

/// What stands in a block's place.
#[derive(Debug, Clone, Copy)]
pub enum Method<'a> {
    /// Nothing (the block is dropped).
    Drop,
    /// The mean of the block's token embeddings (one slot).
    MeanEmbedding,
    /// The block's last `k` tokens.
    LastK(usize),
    /// The block's `k` most surprising tokens under the base model reading the window from its
    /// start (LLMLingua-style selection; the block's first token counts as most surprising when
    /// there is no prefix to predict it from), in order.
    TopSurprisal(usize),
    /// A GistNet's gist (one slot).
    Gist(&'a GistNet),
    /// A level-2 gist (one slot for a block of B² tokens): the GistNet's gist of the gists of
    /// the block's B sub-blocks.
    Gist2(&'a GistNet),
    /// One GistNet gist per sub-block of the net's block size: m gists in a row for a block of
    /// m·B tokens, as a working context holds them.
    Gists(&'a GistNet),
    /// The mean of the token embeddings of each sub-block of this many tokens (one slot each).
    MeanEach(usize),
    /// The last token of each sub-block of this many tokens (one slot each).
    LastEach(usize),
}

impl Method<'_> {
    /// A short name for tables and metrics.
    pub fn name(&self) -> String {
        match self {
            Method::Drop => "drop".into(),
            Method::MeanEmbedding => "mean".into(),
            Method::LastK(k) => format!("last_{k}"),
            Method::TopSurprisal(k) => format!("surprisal_{k}"),
            Method::Gist(_) => "gistnet".into(),
            Method::Gist2(_) => "gistnet_level2".into(),
            Method::Gists(_) => "gistnet_each".into(),
            Method::MeanEach(_) => "mean_each".into(),
            Method::LastEach(_) => "last_each".into(),
        }
    }

    /// Slots the method spends on a block of `block` tokens.
    pub fn slots(&self, block: usize) -> usize {
        match self {
            Method::Drop => 0,
            Method::MeanEmbedding | Method::Gist(_) | Method::Gist2(_) => 1,
            Method::LastK(k) | Method::TopSurprisal(k) => *k,
            Method::Gists(net) => block / net.config().block.max(1),
            Method::MeanEach(sub) | Method::LastEach(sub) => block / (*sub).max(1),
        }
    }

    /// The replacement of each window's block (gists carry no gradient).
    pub fn replacement(
        &self,
        model: &HookedTransformer,
        windows: &[Vec<u32>],
        shape: WindowShape,
    ) -> Result<Replacement> {
        Ok(match self {
            Method::Drop => Replacement::Drop,
            Method::MeanEmbedding => {
                Replacement::Vector(block_embeddings(model, windows, shape)?.mean(1)?)
            }
            Method::LastK(k) => {
                check_k(*k, shape)?;
                Replacement::Keep(vec![
                    (shape.block - k..shape.block).collect();
                    windows.len()
                ])
            }
            Method::TopSurprisal(k) => {
                check_k(*k, shape)?;
                let s = block_surprisal(model, windows, shape)?;
                let kept = s
                    .iter()
                    .map(|row| {
                        let mut order: Vec<usize> = (0..row.len()).collect();
                        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                        let mut top = order[..*k].to_vec();
                        top.sort_unstable();
                        top
                    })
                    .collect();
                Replacement::Keep(kept)
            }
            Method::Gist(net) => Replacement::Vector(
                net.forward(&block_embeddings(model, windows, shape)?)?
                    .detach(),
            ),
            Method::Gist2(net) => {
                let b = net.config().block;
                if shape.block != b * b {
                    return Err(Error::Config(format!(
                        "a level-2 gist stands for {} tokens, not a block of {}",
                        b * b,
                        shape.block
                    )));
                }
                let (n, d) = (windows.len(), model.config().d_model);
                let tokens = block_embeddings(model, windows, shape)?.reshape((n * b, b, d))?;
                let level1 = net.forward(&tokens)?.reshape((n, b, d))?;
                Replacement::Vector(net.forward(&level1)?.detach())
            }
            Method::Gists(net) => {
                let sub = net.config().block;
                let blocks = sub_blocks(model, windows, shape, sub)?;
                let m = shape.block / sub;
                let (n, d) = (windows.len(), model.config().d_model);
                Replacement::Vector(net.forward(&blocks)?.reshape((n, m, d))?.detach())
            }
            Method::MeanEach(sub) => {
                let blocks = sub_blocks(model, windows, shape, *sub)?;
                let (n, d) = (windows.len(), model.config().d_model);
                Replacement::Vector(blocks.mean(1)?.reshape((n, shape.block / sub, d))?)
            }
            Method::LastEach(sub) => {
                check_sub(*sub, shape)?;
                Replacement::Keep(vec![
                    (1..=shape.block / sub).map(|j| j * sub - 1).collect();
                    windows.len()
                ])
            }
        })
    }
}

/// Errors unless `sub` ≥ 1 divides the block.
fn check_sub(sub: usize, shape: WindowShape) -> Result<()> {
    if sub == 0 || !shape.block.is_multiple_of(sub) {
        return Err(Error::Config(format!(
            "a block of {} tokens does not split into sub-blocks of {sub}",
            shape.block
        )));
    }
    Ok(())
}

/// The token embeddings of each window's block cut into sub-blocks of `sub` tokens
/// `[n · B / sub, sub, d_model]` (f32).
fn sub_blocks(
    model: &HookedTransformer,
    windows: &[Vec<u32>],
    shape: WindowShape,
    sub: usize,
) -> Result<Tensor> {
    check_sub(sub, shape)?;
    let d = model.config().d_model;
    let n = windows.len();
    Ok(block_embeddings(model, windows, shape)?.reshape((n * shape.block / sub, sub, d))?)
}

/// Errors unless `1 ≤ k ≤ B`.
fn check_k(k: usize, shape: WindowShape) -> Result<()> {
    if k == 0 || k > shape.block {
        return Err(Error::Config(format!(
            "a block keeps 1..={} of its tokens, not {k}",
            shape.block
        )));
    }
    Ok(())
}

/// −log p of each block token under `model` reading each window from its start `[n][B]` (the
/// first token of a window has no prediction: +∞).
pub fn block_surprisal(
    model: &HookedTransformer,
    windows: &[Vec<u32>],
    shape: WindowShape,
) -> Result<Vec<Vec<f64>>> {
    let (p, b) = (shape.prefix, shape.block);
    let flat: Vec<u32> = windows.iter().flat_map(|w| w[..p + b].to_vec()).collect();
    let ids = Tensor::from_vec(flat, (windows.len(), p + b), model.device())?;
    let logits = model.forward(ids)?.to_dtype(DType::F64)?;
    let lse = logits.log_sum_exp(2)?.to_vec2::<f64>()?;
    let rows = logits.to_vec3::<f64>()?;
    Ok(windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            (0..b)
                .map(|j| match p + j {
                    0 => f64::INFINITY,
                    at => lse[i][at - 1] - rows[i][at - 1][w[at] as usize],
                })
                .collect()
        })
        .collect())
}

/// NLL@H per window (nats per token over the H tokens after the block) with the block replaced
/// by `method`, or in full for `None`, in batches of `batch` windows. A window's value does not
/// depend on the others in its batch, so the full context's values can be computed once and
/// shared by every method (`delta_nll` is the difference).
pub fn nll_per_window(
    model: &HookedTransformer,
    windows: &[Vec<u32>],
    shape: WindowShape,
    rule: PositionRule,
    method: Option<Method<'_>>,
    batch: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(batch.max(1)) {
        let repl = match method {
            Some(m) => m.replacement(model, chunk, shape)?,
            None => Replacement::Full,
        };
        let nll = nll_after_block(model, chunk, shape, &repl, rule)?;
        out.extend(nll.to_dtype(DType::F64)?.to_vec1::<f64>()?);
    }
    Ok(out)
}

/// ΔNLL@H per window: NLL with the block replaced by `method` minus NLL with the block in full,
/// in batches of `batch` windows.
pub fn delta_nll(
    model: &HookedTransformer,
    windows: &[Vec<u32>],
    shape: WindowShape,
    rule: PositionRule,
    method: Method<'_>,
    batch: usize,
) -> Result<Vec<f64>> {
    let full = nll_per_window(model, windows, shape, rule, None, batch)?;
    let got = nll_per_window(model, windows, shape, rule, Some(method), batch)?;
    Ok(got.iter().zip(&full).map(|(g, f)| g - f).collect())
}

/// Summary of per-window ΔNLL values.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaSummary {
    /// Method name.
    pub method: String,
    /// Tokens represented per slot (B / slots; infinite when dropped).
    pub ratio: f64,
    /// Windows.
    pub n: usize,
    /// Mean ΔNLL (nats).
    pub mean: f64,
    /// 95% interval of the mean (Student t).
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
    /// Fraction of windows with ΔNLL below `threshold`.
    pub below: f64,
    /// The threshold of `below` (nats).
    pub threshold: f64,
}

/// Summarises `deltas` of `method` on blocks of `block` tokens (≥ 2 windows).
pub fn summarize(
    method: &Method<'_>,
    block: usize,
    deltas: &[f64],
    threshold: f64,
) -> Result<DeltaSummary> {
    let ci = mean_ci(deltas, 0.95).map_err(|e| Error::Invalid(format!("ΔNLL interval: {e}")))?;
    let below = deltas.iter().filter(|&&d| d < threshold).count() as f64 / deltas.len() as f64;
    Ok(DeltaSummary {
        method: method.name(),
        ratio: block as f64 / method.slots(block) as f64,
        n: deltas.len(),
        mean: ci.estimate,
        low: ci.low,
        high: ci.high,
        below,
        threshold,
    })
}

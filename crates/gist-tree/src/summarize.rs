//! The pluggable summariser that turns B children into one gist, batched over many nodes of a
//! level so that a learned compressor (GistNet on a candle device) can run one forward pass per
//! batch; and [`MeanPool`], the deterministic mean-pooling summariser used by tests and the CLI.

use crate::error::{Error, Result};
use crate::node::Producer;

/// The children of a batch of nodes, row-major and contiguous (ready for `Tensor::from_slice`).
#[derive(Debug, Clone, Copy)]
pub enum ChildData<'a> {
    /// Level-1 nodes: token ids, shape `[n, block]`.
    Tokens(&'a [u32]),
    /// Level-k ≥ 2 nodes: child gists (as stored, decoded to f32), shape `[n, block, width]`.
    Gists(&'a [f32]),
}

/// A batch of nodes of one level to summarise.
#[derive(Debug, Clone, Copy)]
pub struct SummaryBatch<'a> {
    /// The level of the nodes being made (≥ 1).
    pub level: u8,
    /// Their indices within the level, shape `[n]` (for position-aware compressors).
    pub nodes: &'a [u64],
    /// Arity B.
    pub block: usize,
    /// Gist width d.
    pub width: usize,
    /// The children.
    pub children: ChildData<'a>,
}

impl SummaryBatch<'_> {
    /// Number of nodes in the batch.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Makes level-k gists from level-(k−1) children. Called by the writer at commit, once per level
/// per batch of at most [`Summarizer::max_batch`] nodes; gists of level k are stored (rounded to
/// the tree's dtype) before level k+1 is summarised from them.
pub trait Summarizer {
    /// The producer id and version stamped into the provenance of every gist made.
    fn producer(&self) -> Producer;

    /// Writes one gist per node of `batch` into `out`, shape `[batch.len(), batch.width]`.
    fn summarize(&mut self, batch: &SummaryBatch<'_>, out: &mut [f32]) -> Result<()>;

    /// Largest batch the writer hands over at once.
    fn max_batch(&self) -> usize {
        1024
    }
}

/// Deterministic mean pooling: a level-1 gist is the mean of the children's token embeddings
/// (rows of a fixed seeded table), a level-k gist the mean of its child gists, summed in child
/// order in f32 and divided by B.
#[derive(Debug, Clone)]
pub struct MeanPool {
    width: usize,
    table: Vec<f32>,
    producer: Producer,
}

/// Rows of [`MeanPool`]'s embedding table.
pub const MEAN_POOL_ROWS: usize = 4096;
/// The producer id of [`MeanPool`].
pub const MEAN_POOL_PRODUCER: u32 = 1;

impl MeanPool {
    /// A mean-pooling summariser for gists of `width`, its embedding table drawn from `seed`.
    pub fn new(width: usize, seed: u64) -> Result<Self> {
        let mut rng = metarep_core::rng::seeded(seed);
        let table = metarep_core::rng::uniform_vec(&mut rng, MEAN_POOL_ROWS * width, -1.0, 1.0)?
            .into_iter()
            .map(|v| v as f32)
            .collect();
        Ok(MeanPool {
            width,
            table,
            producer: Producer {
                id: MEAN_POOL_PRODUCER,
                version: 1,
            },
        })
    }

    /// The embedding of `token`: a table row chosen by a mix of the id.
    pub fn embedding(&self, token: u32) -> &[f32] {
        let mut z = (token as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let row = (z % MEAN_POOL_ROWS as u64) as usize;
        &self.table[row * self.width..(row + 1) * self.width]
    }

    /// Mean of `rows` (each `width` long) summed in order, into `out`.
    fn mean<'r>(&self, rows: impl Iterator<Item = &'r [f32]>, n: usize, out: &mut [f32]) {
        out.fill(0.0);
        for r in rows {
            for (o, v) in out.iter_mut().zip(r) {
                *o += *v;
            }
        }
        for o in out.iter_mut() {
            *o /= n as f32;
        }
    }
}

impl Summarizer for MeanPool {
    fn producer(&self) -> Producer {
        self.producer
    }

    fn summarize(&mut self, batch: &SummaryBatch<'_>, out: &mut [f32]) -> Result<()> {
        let (b, d) = (batch.block, batch.width);
        if d != self.width || out.len() != batch.len() * d {
            return Err(Error::Summarizer {
                producer: self.producer.to_string(),
                reason: format!(
                    "made for width {}, asked for width {d} with an output of {} floats for {} nodes",
                    self.width,
                    out.len(),
                    batch.len()
                ),
            });
        }
        for (i, o) in out.chunks_exact_mut(d).enumerate() {
            match batch.children {
                ChildData::Tokens(ids) => {
                    let row = &ids[i * b..(i + 1) * b];
                    self.mean(row.iter().map(|t| self.embedding(*t)), b, o);
                }
                ChildData::Gists(g) => {
                    let node = &g[i * b * d..(i + 1) * b * d];
                    self.mean(node.chunks_exact(d), b, o);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_is_deterministic_and_means() {
        let mut m = MeanPool::new(3, 7).unwrap();
        let ids = [1u32, 2, 3, 4];
        let mut out = vec![0.0; 6];
        let batch = SummaryBatch {
            level: 1,
            nodes: &[0, 1],
            block: 2,
            width: 3,
            children: ChildData::Tokens(&ids),
        };
        m.summarize(&batch, &mut out).unwrap();
        let e1 = m.embedding(1);
        let e2 = m.embedding(2);
        assert_eq!(out[0], (e1[0] + e2[0]) / 2.0);
        let mut again = vec![0.0; 6];
        MeanPool::new(3, 7)
            .unwrap()
            .summarize(&batch, &mut again)
            .unwrap();
        assert_eq!(out, again);
        assert!(m.summarize(&batch, &mut [0.0; 5]).is_err());
    }
}

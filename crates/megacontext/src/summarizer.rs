//! GistNet as the gist tree's [`Summarizer`]: level-1 gists from the base model's token
//! embeddings of each block, level-k ≥ 2 gists from the B child gists, one GistNet forward pass
//! per batch the writer hands over. The tree's gist width must be the base model's `d_model`.

use candle_core::Tensor;
use metarep_gist_tree::{ChildData, Producer, Summarizer, SummaryBatch};
use metarep_model::HookedTransformer;

use crate::gistnet::GistNet;

/// The producer id stamped into the provenance of GistNet gists.
pub const GISTNET_PRODUCER: u32 = 2;

/// A [`Summarizer`] that runs a GistNet over the base model's embeddings.
pub struct GistNetSummarizer {
    net: GistNet,
    model: HookedTransformer,
    producer: Producer,
}

impl GistNetSummarizer {
    /// Summarises with `net` over `model`'s token embeddings; `version` (e.g. the training
    /// step of the checkpoint) goes into every gist's provenance.
    pub fn new(net: GistNet, model: HookedTransformer, version: u32) -> Self {
        GistNetSummarizer {
            net,
            model,
            producer: Producer {
                id: GISTNET_PRODUCER,
                version,
            },
        }
    }

    fn gists(&self, batch: &SummaryBatch<'_>) -> crate::Result<Vec<f32>> {
        let (n, b, d) = (batch.len(), batch.block, batch.width);
        let dev = self.model.device();
        let children = match batch.children {
            ChildData::Tokens(ids) => {
                let ids = Tensor::from_slice(ids, (n, b), dev)?;
                self.model.token_embeddings(&ids)?
            }
            ChildData::Gists(g) => Tensor::from_slice(g, (n, b, d), dev)?,
        };
        let out = self.net.forward(&children)?.detach();
        Ok(out.flatten_all()?.to_vec1::<f32>()?)
    }
}

impl Summarizer for GistNetSummarizer {
    fn producer(&self) -> Producer {
        self.producer
    }

    fn summarize(
        &mut self,
        batch: &SummaryBatch<'_>,
        out: &mut [f32],
    ) -> metarep_gist_tree::Result<()> {
        let fail = |reason: String| metarep_gist_tree::Error::Summarizer {
            producer: self.producer.to_string(),
            reason,
        };
        let cfg = self.net.config();
        if batch.width != cfg.d_model || batch.block != cfg.block {
            return Err(fail(format!(
                "GistNet makes gists of width {} from {} children; the tree asks for width {} \
                 from {}",
                cfg.d_model, cfg.block, batch.width, batch.block
            )));
        }
        if out.len() != batch.len() * batch.width {
            return Err(fail(format!(
                "an output of {} floats for {} gists of width {}",
                out.len(),
                batch.len(),
                batch.width
            )));
        }
        let gists = self.gists(batch).map_err(|e| fail(e.to_string()))?;
        out.copy_from_slice(&gists);
        Ok(())
    }

    fn max_batch(&self) -> usize {
        256
    }
}

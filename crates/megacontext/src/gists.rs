//! A document's tokens and the gists of its tree nodes, as the working context reads them:
//! vectors in the base model's embedding space, one per level ≥ 1 node — a level-1 gist made by
//! GistNet from its block's token embeddings, a level-k gist from its B level-(k−1) gists — or
//! read from an on-disk gist tree that stores them ([`Gists::from_tree`]).

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use metarep_gist_tree::{NodeRef, Snapshot};
use metarep_model::HookedTransformer;

use crate::error::{Error, Result};
use crate::gistnet::GistNet;
use crate::working_context::Slot;

/// A document's tokens and its nodes' gists: read from a gist tree where it has them, made by
/// GistNet otherwise, each kept once made.
pub struct Gists<'a> {
    model: &'a HookedTransformer,
    net: &'a GistNet,
    tokens: Vec<u32>,
    tree: Option<&'a Snapshot>,
    made: HashMap<NodeRef, Tensor>,
}

impl<'a> Gists<'a> {
    /// Gists of the document `tokens` by `net` over `model`'s token embeddings.
    pub fn new(model: &'a HookedTransformer, net: &'a GistNet, tokens: &[u32]) -> Self {
        Gists {
            model,
            net,
            tokens: tokens.to_vec(),
            tree: None,
            made: HashMap::new(),
        }
    }

    /// The document a gist tree holds, with the tree's stored gists (which must be vectors of
    /// the model's width, made by a GistNet of the tree's arity); every gist slot read is
    /// counted in the tree's access telemetry.
    pub fn from_tree(
        model: &'a HookedTransformer,
        net: &'a GistNet,
        tree: &'a Snapshot,
    ) -> Result<Self> {
        let c = tree.config();
        if c.width as usize != model.config().d_model || c.block as usize != net.config().block {
            return Err(Error::Config(format!(
                "the tree's gists (width {}, arity {}) do not fit a model of d_model {} and a \
                 GistNet of block {}",
                c.width,
                c.block,
                model.config().d_model,
                net.config().block
            )));
        }
        let tokens = tree.tokens(0..tree.token_count())?;
        Ok(Gists {
            tree: Some(tree),
            ..Gists::new(model, net, &tokens)
        })
    }

    /// The base model.
    pub fn model(&self) -> &'a HookedTransformer {
        self.model
    }

    /// The GistNet making missing gists.
    pub fn net(&self) -> &'a GistNet {
        self.net
    }

    /// The document so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Appends tokens to the document (their gists are made by GistNet when read).
    pub fn extend(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// The gist of `node` (level ≥ 1, complete within the document) `[d_model]`, no gradient.
    pub fn get(&mut self, node: NodeRef) -> Result<Tensor> {
        if let Some(g) = self.made.get(&node) {
            return Ok(g.clone());
        }
        let b = self.net.config().block;
        let span = node.token_span(b as u32);
        if node.level == 0 || span.end > self.tokens.len() as u64 {
            return Err(Error::Invalid(format!(
                "no gist for {node:?}: gists are of complete nodes of level ≥ 1 (document of {} tokens)",
                self.tokens.len()
            )));
        }
        if let Some(tree) = self.tree.filter(|t| span.end <= t.token_count()) {
            let g = Tensor::from_vec(
                tree.gist(node)?,
                self.model.config().d_model,
                self.model.device(),
            )?;
            self.made.insert(node, g.clone());
            return Ok(g);
        }
        let children = if node.level == 1 {
            let ids = &self.tokens[span.start as usize..span.end as usize];
            let ids = Tensor::from_slice(ids, (1, b), self.model.device())?;
            self.model.token_embeddings(&ids)?.to_dtype(DType::F32)?
        } else {
            let kids = node
                .children(b as u32)
                .into_iter()
                .map(|k| self.get(k))
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&kids, 0)?.unsqueeze(0)?
        };
        let g = self.net.forward(&children)?.detach().squeeze(0)?;
        self.made.insert(node, g.clone());
        Ok(g)
    }

    /// The vector LensNet reads for a working-context entry `[d_model]` (f32): its gist, or
    /// for a raw block the mean of its tokens' embeddings (those in the document).
    pub fn entry_vector(&mut self, node: NodeRef) -> Result<Tensor> {
        if node.level > 0 {
            return self.get(node);
        }
        let span = node.token_span(self.net.config().block as u32);
        let end = (span.end as usize).min(self.tokens.len());
        let start = span.start as usize;
        if start >= end {
            return Err(Error::Invalid(format!(
                "{node:?} holds no token of a document of {} tokens",
                self.tokens.len()
            )));
        }
        let ids = Tensor::from_slice(
            &self.tokens[start..end],
            (1, end - start),
            self.model.device(),
        )?;
        let e = self.model.token_embeddings(&ids)?.to_dtype(DType::F32)?;
        Ok(e.squeeze(0)?.mean(0)?)
    }

    /// The input embeddings of `slots` in order `[1, slots, d_model]` (model dtype).
    pub fn embed_slots(&mut self, slots: &[Slot]) -> Result<Tensor> {
        let model = self.model;
        let mut rows = Vec::with_capacity(slots.len());
        let mut run: Vec<u32> = Vec::new();
        let flush = |run: &mut Vec<u32>, rows: &mut Vec<Tensor>| -> Result<()> {
            if !run.is_empty() {
                let ids = Tensor::from_slice(run, (1, run.len()), model.device())?;
                let e = model.token_embeddings(&ids)?.to_dtype(DType::F32)?;
                rows.push(e.squeeze(0)?);
                run.clear();
            }
            Ok(())
        };
        for s in slots {
            match s {
                Slot::Token(t) => run.push(self.tokens[*t as usize]),
                Slot::Gist(n) => {
                    flush(&mut run, &mut rows)?;
                    if let (Some(t), true) = (self.tree, self.made.contains_key(n)) {
                        t.record_access(*n);
                    }
                    rows.push(self.get(*n)?.unsqueeze(0)?);
                }
            }
        }
        flush(&mut run, &mut rows)?;
        let refs: Vec<&Tensor> = rows.iter().collect();
        Ok(Tensor::cat(&refs, 0)?
            .unsqueeze(0)?
            .to_dtype(model.dtype())?)
    }
}

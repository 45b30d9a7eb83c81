//! What a writer holds between commits: committed blocks being rewritten, blocks appended past
//! the committed stream, blocks whose ancestors must be recomputed, and prune operations.
//!
//! Appended blocks are kept flat (one token vector, one provenance per block) rather than one
//! allocation per block, since appending is the common case and a commit reads them in order.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::PruneOp;
use crate::node::Provenance;

/// A committed level-0 block being rewritten by the pending commit: its full new content.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub tokens: Vec<u32>,
    pub prov: Provenance,
}

/// Changes since the last commit.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Token count including pending appends.
    pub tokens: u64,
    /// Block size of the tree.
    block: u64,
    /// Committed blocks being rewritten (edits, or appends filling a partial last block).
    pub rewritten: BTreeMap<u64, Block>,
    /// Index of the first block past the committed stream (the committed level-0 count).
    tail_first: u64,
    /// Tokens of blocks `tail_first..`, flat: block `tail_first + i` is
    /// `tail[i * block..min((i + 1) * block, len)]`.
    tail: Vec<u32>,
    /// Provenance of each appended block.
    tail_provs: Vec<Provenance>,
    /// Committed blocks whose ancestors' gists must be recomputed although the block is unchanged.
    pub touched: BTreeSet<u64>,
    /// Prunes and restores, in call order (already applied to the writer's state).
    pub ops: Vec<PruneOp>,
}

impl Pending {
    /// Nothing pending over a committed stream of `tokens` tokens in blocks of `block`.
    pub fn new(tokens: u64, block: u32) -> Self {
        let block = block as u64;
        Pending {
            tokens,
            block,
            rewritten: BTreeMap::new(),
            tail_first: tokens.div_ceil(block),
            tail: Vec::new(),
            tail_provs: Vec::new(),
            touched: BTreeSet::new(),
            ops: Vec::new(),
        }
    }

    /// Whether anything would be committed.
    pub fn is_empty(&self) -> bool {
        self.rewritten.is_empty()
            && self.tail_provs.is_empty()
            && self.touched.is_empty()
            && self.ops.is_empty()
    }

    /// Whether block `blk` lies past the committed stream.
    pub fn is_new(&self, blk: u64) -> bool {
        blk >= self.tail_first
    }

    /// Appends `tokens` at the end of the stream, which must lie past the committed blocks
    /// (`self.tokens ≥ tail_first · block`); `prov` starts each new block and is merged into a
    /// partly filled one.
    pub fn append_new(&mut self, tokens: &[u32], prov: &Provenance) {
        debug_assert!(self.tokens >= self.tail_first * self.block);
        let (pos, end) = (self.tokens, self.tokens + tokens.len() as u64);
        if !pos.is_multiple_of(self.block) {
            if let Some(last) = self.tail_provs.last_mut() {
                *last = last.merge(prov);
            }
        }
        let started = end.div_ceil(self.block) - pos.div_ceil(self.block);
        self.tail_provs
            .extend(std::iter::repeat_n(*prov, started as usize));
        self.tail.extend_from_slice(tokens);
        self.tokens = end;
    }

    /// Gives up the appended blocks' buffers (for [`Pending::reuse_buffers`]).
    pub fn tail_buffers(&mut self) -> (Vec<u32>, Vec<Provenance>) {
        (
            std::mem::take(&mut self.tail),
            std::mem::take(&mut self.tail_provs),
        )
    }

    /// Keeps `buffers`' allocations for appends when nothing has been appended yet, so that a
    /// stream of commits does not allocate afresh for each.
    pub fn reuse_buffers(&mut self, (mut tail, mut provs): (Vec<u32>, Vec<Provenance>)) {
        if self.tail_provs.is_empty() && tail.capacity() > self.tail.capacity() {
            tail.clear();
            provs.clear();
            (self.tail, self.tail_provs) = (tail, provs);
        }
    }

    /// The pending content of block `blk`, if it has one.
    pub fn get(&self, blk: u64) -> Option<(&[u32], Provenance)> {
        if self.is_new(blk) {
            let i = (blk - self.tail_first) as usize;
            let prov = *self.tail_provs.get(i)?;
            Some((&self.tail[self.tail_range(i)], prov))
        } else {
            self.rewritten.get(&blk).map(|b| (&b.tokens[..], b.prov))
        }
    }

    /// The tokens and provenance of appended block `blk` for editing in place.
    pub fn new_block_mut(&mut self, blk: u64) -> Option<(&mut [u32], &mut Provenance)> {
        let i = blk.checked_sub(self.tail_first)? as usize;
        let range = self.tail_range(i);
        let prov = self.tail_provs.get_mut(i)?;
        Some((&mut self.tail[range], prov))
    }

    fn tail_range(&self, i: usize) -> std::ops::Range<usize> {
        let b = self.block as usize;
        i * b..((i + 1) * b).min(self.tail.len())
    }

    /// Every block to write, in index order: rewritten ones, then appended ones.
    pub fn blocks(&self) -> impl Iterator<Item = (u64, &[u32], Provenance)> + '_ {
        let rewritten = self
            .rewritten
            .iter()
            .map(|(i, b)| (*i, &b.tokens[..], b.prov));
        let appended = self
            .tail
            .chunks(self.block as usize)
            .zip(&self.tail_provs)
            .enumerate()
            .map(|(i, (t, p))| (self.tail_first + i as u64, t, *p));
        rewritten.chain(appended)
    }

    /// The level-0 blocks whose ancestors a commit recomputes, in index order.
    pub fn dirty_blocks(&self) -> Vec<u64> {
        let mut old: Vec<u64> = self
            .rewritten
            .keys()
            .chain(&self.touched)
            .copied()
            .collect();
        old.sort_unstable();
        old.dedup();
        old.extend(self.tail_first..self.tail_first + self.tail_provs.len() as u64);
        old
    }

    /// The tokens and provenances of `nodes` when they are consecutive complete appended
    /// blocks (slices, no copy); `None` otherwise.
    pub fn new_run(&self, nodes: &[u64]) -> Option<(&[u32], &[Provenance])> {
        let (first, last) = (*nodes.first()?, *nodes.last()?);
        if first < self.tail_first || last - first + 1 != nodes.len() as u64 {
            return None;
        }
        let (b, i) = (self.block as usize, (first - self.tail_first) as usize);
        let tokens = self.tail.get(i * b..(i + nodes.len()) * b)?;
        Some((tokens, &self.tail_provs[i..i + nodes.len()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_blocks_are_flat_and_carry_their_provenance() {
        // Committed: 2 full blocks of 4 and a partial third (10 tokens).
        let mut p = Pending::new(10, 4);
        assert!(p.is_empty() && !p.is_new(2) && p.is_new(3));
        // The partial block 2 is the writer's to fill (as a rewritten block): 2 tokens.
        p.rewritten.insert(
            2,
            Block {
                tokens: vec![8, 9, 10, 11],
                prov: Provenance::source(1, 0, 1),
            },
        );
        p.tokens = 12;
        p.append_new(&[12, 13, 14, 15, 16], &Provenance::source(2, 0, 1));
        p.append_new(&[17, 18], &Provenance::source(3, 0, 1));
        assert_eq!(p.tokens, 19);
        let got: Vec<(u64, Vec<u32>, u64)> = p
            .blocks()
            .map(|(i, t, pr)| (i, t.to_vec(), pr.source))
            .collect();
        let mixed = Provenance::source(2, 0, 1)
            .merge(&Provenance::source(3, 0, 1))
            .source;
        assert_eq!(
            got,
            vec![
                (2, vec![8, 9, 10, 11], 1),
                (3, vec![12, 13, 14, 15], 2),
                (4, vec![16, 17, 18], mixed),
            ]
        );
        assert_eq!(p.get(4).unwrap().0, &[16, 17, 18]);
        assert_eq!(p.get(5), None);
        assert_eq!(p.dirty_blocks(), vec![2, 3, 4]);
        let (run, provs) = p.new_run(&[3]).unwrap();
        assert_eq!((run, provs[0].source), (&[12, 13, 14, 15][..], 2));
        // Block 4 is incomplete; block 2 is not an appended one.
        assert_eq!(p.new_run(&[3, 4]), None);
        assert_eq!(p.new_run(&[2, 3]), None);
        let (t, _) = p.new_block_mut(4).unwrap();
        t[0] = 99;
        assert_eq!(p.get(4).unwrap().0, &[99, 17, 18]);
        assert!(p.new_block_mut(2).is_none());
    }
}

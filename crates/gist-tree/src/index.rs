//! The compact in-memory index: one packed `u64` per node giving its record's segment and
//! offset plus a pruned flag, in copy-on-write chunks so that a snapshot is a cheap clone.

use std::sync::Arc;

/// Nodes per index chunk.
const CHUNK: usize = 4096;
/// Entry bit: the node has no record (not written yet, or reclaimed by compaction).
pub const ABSENT: u64 = 1 << 63;
/// Entry bit: the node is a pruned subtree root (its descendants are hidden).
pub const PRUNED: u64 = 1 << 62;
const OFFSET_BITS: u32 = 40;
const SEG_MASK: u64 = (1 << 22) - 1;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

/// Where a record lives: segment number and byte offset of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment number within the level.
    pub seg: u32,
    /// Offset of the frame in the segment file.
    pub offset: u64,
}

impl Loc {
    /// Packs the location (pruned flag clear).
    pub fn pack(self) -> u64 {
        ((self.seg as u64 & SEG_MASK) << OFFSET_BITS) | (self.offset & OFFSET_MASK)
    }

    /// The location of an entry, if it has a record.
    pub fn unpack(entry: u64) -> Option<Loc> {
        (entry & ABSENT == 0).then_some(Loc {
            seg: ((entry >> OFFSET_BITS) & SEG_MASK) as u32,
            offset: entry & OFFSET_MASK,
        })
    }
}

/// Largest segment number a location can hold.
pub const MAX_SEG: u32 = SEG_MASK as u32;
/// Largest offset a location can hold.
pub const MAX_OFFSET: u64 = OFFSET_MASK;

/// One level's entries: a growable array of full chunks shared between clones (a write copies
/// only the chunk it touches if a snapshot still holds it) and a tail of fewer than `CHUNK`
/// entries owned by this index, where appends land without reference-count traffic. A clone
/// copies the tail (at most `CHUNK` entries) and shares the rest.
#[derive(Debug, Clone, Default)]
pub struct LevelIndex {
    /// Entries `0 .. CHUNK · chunks.len()`, `CHUNK` per chunk.
    chunks: Vec<Arc<Vec<u64>>>,
    /// The entries after the full chunks (fewer than `CHUNK`).
    tail: Vec<u64>,
}

impl LevelIndex {
    /// Number of entries.
    pub fn len(&self) -> u64 {
        (self.chunks.len() * CHUNK + self.tail.len()) as u64
    }

    /// Whether the level has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry of node `i` (ABSENT past the end).
    pub fn get(&self, i: u64) -> u64 {
        let (c, k) = chunk_and_offset(i);
        match self.chunks.get(c) {
            Some(chunk) => chunk[k],
            None if c == self.chunks.len() => self.tail.get(k).copied().unwrap_or(ABSENT),
            None => ABSENT,
        }
    }

    /// Sets entry `i`, growing the level with ABSENT entries as needed.
    pub fn set(&mut self, i: u64, entry: u64) {
        if i >= self.len() {
            self.resize(i + 1);
        }
        let (c, k) = chunk_and_offset(i);
        match self.chunks.get_mut(c) {
            Some(chunk) => Arc::make_mut(chunk)[k] = entry,
            None => self.tail[k] = entry,
        }
    }

    /// Grows or shrinks to `len` entries (new entries ABSENT).
    pub fn resize(&mut self, len: u64) {
        let (full, rest) = chunk_and_offset(len);
        if full < self.chunks.len() {
            // The new end falls in a full chunk: it becomes the tail (the dropped entries go).
            self.tail.clear();
            self.tail.extend_from_slice(&self.chunks[full][..rest]);
            self.chunks.truncate(full);
            return;
        }
        while self.chunks.len() < full {
            self.tail.resize(CHUNK, ABSENT);
            let chunk = std::mem::replace(&mut self.tail, Vec::with_capacity(CHUNK));
            self.chunks.push(Arc::new(chunk));
        }
        self.tail.resize(rest, ABSENT);
    }

    /// All entries, in order.
    pub fn to_vec(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.len() as usize);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&self.tail);
        out
    }

    /// A level holding `entries`.
    pub fn from_entries(entries: &[u64]) -> Self {
        let mut parts = entries.chunks_exact(CHUNK);
        let chunks = parts.by_ref().map(|c| Arc::new(c.to_vec())).collect();
        Self {
            chunks,
            tail: parts.remainder().to_vec(),
        }
    }
}

/// Entry `i`'s chunk and its offset in that chunk (the tail counts as chunk `chunks.len()`).
fn chunk_and_offset(i: u64) -> (usize, usize) {
    ((i / CHUNK as u64) as usize, (i % CHUNK as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loc_packing_and_cow() {
        let l = Loc {
            seg: 7,
            offset: 123_456_789,
        };
        assert_eq!(Loc::unpack(l.pack()), Some(l));
        assert_eq!(Loc::unpack(l.pack() | PRUNED), Some(l));
        assert_eq!(Loc::unpack(ABSENT), None);
        let mut a = LevelIndex::default();
        a.set(5000, 1);
        let snap = a.clone();
        a.set(5000, 2);
        a.set(1, 3);
        assert_eq!(snap.get(5000), 1);
        assert_eq!(snap.get(1), ABSENT);
        assert_eq!(a.get(5000), 2);
        assert_eq!(LevelIndex::from_entries(&a.to_vec()).to_vec(), a.to_vec());
        a.resize(2);
        a.resize(6000);
        assert_eq!(a.get(5000), ABSENT);
        assert_eq!(a.get(1), 3);
    }

    /// One operation on a level: set an entry, resize, or take a snapshot (a clone).
    #[derive(Debug, Clone)]
    enum Op {
        Set(u64, u64),
        Resize(u64),
        Snapshot,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Indices around the chunk boundaries, so tails fill, freeze and are cut back.
        let index = prop_oneof![0u64..64, 4090u64..4100, 8180u64..8200, 0u64..12_300];
        prop_oneof![
            4 => (index.clone(), any::<u64>()).prop_map(|(i, e)| Op::Set(i, e >> 2)),
            1 => index.prop_map(Op::Resize),
            1 => Just(Op::Snapshot),
        ]
    }

    proptest::proptest! {
        /// Against a plain vector: every entry, length and earlier snapshot stays as written,
        /// whatever the sequence of sets, resizes and clones.
        #[test]
        fn behaves_as_a_vector_with_snapshots(ops in proptest::collection::vec(op(), 1..60)) {
            let (mut ix, mut model) = (LevelIndex::default(), Vec::<u64>::new());
            let mut snaps: Vec<(LevelIndex, Vec<u64>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Set(i, e) => {
                        if i as usize >= model.len() {
                            model.resize(i as usize + 1, ABSENT);
                        }
                        model[i as usize] = e;
                        ix.set(i, e);
                    }
                    Op::Resize(n) => {
                        model.resize(n as usize, ABSENT);
                        ix.resize(n);
                    }
                    Op::Snapshot => snaps.push((ix.clone(), model.clone())),
                }
                proptest::prop_assert_eq!(ix.len(), model.len() as u64);
            }
            proptest::prop_assert_eq!(ix.to_vec(), model.clone());
            for i in [0, 4095, 4096, 8191, 8192, model.len() as u64, 20_000] {
                proptest::prop_assert_eq!(ix.get(i), model.get(i as usize).copied().unwrap_or(ABSENT));
            }
            proptest::prop_assert_eq!(LevelIndex::from_entries(&model).to_vec(), model);
            for (snap, want) in snaps {
                proptest::prop_assert_eq!(snap.to_vec(), want);
            }
        }
    }
}

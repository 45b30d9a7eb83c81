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

/// One level's entries: a growable array in shared chunks (cloning shares every chunk; a write
/// copies only the chunk it touches if a snapshot still holds it).
#[derive(Debug, Clone, Default)]
pub struct LevelIndex {
    chunks: Vec<Arc<Vec<u64>>>,
    len: u64,
}

impl LevelIndex {
    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the level has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry of node `i` (ABSENT past the end).
    pub fn get(&self, i: u64) -> u64 {
        if i >= self.len {
            return ABSENT;
        }
        self.chunks[(i / CHUNK as u64) as usize][(i % CHUNK as u64) as usize]
    }

    /// Sets entry `i`, growing the level with ABSENT entries as needed.
    pub fn set(&mut self, i: u64, entry: u64) {
        if i >= self.len {
            self.resize(i + 1);
        }
        let chunk = Arc::make_mut(&mut self.chunks[(i / CHUNK as u64) as usize]);
        chunk[(i % CHUNK as u64) as usize] = entry;
    }

    /// Grows or shrinks to `len` entries (new entries ABSENT).
    pub fn resize(&mut self, len: u64) {
        let need = len.div_ceil(CHUNK as u64) as usize;
        if len < self.len {
            // Clear the dropped tail so a later grow sees ABSENT.
            for i in len..self.len.min(need as u64 * CHUNK as u64) {
                let chunk = Arc::make_mut(&mut self.chunks[(i / CHUNK as u64) as usize]);
                chunk[(i % CHUNK as u64) as usize] = ABSENT;
            }
        }
        self.chunks
            .resize_with(need, || Arc::new(vec![ABSENT; CHUNK]));
        self.len = len;
    }

    /// All entries, in order.
    pub fn to_vec(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.len as usize);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out.truncate(self.len as usize);
        out
    }

    /// A level holding `entries`.
    pub fn from_entries(entries: &[u64]) -> Self {
        let mut ix = LevelIndex::default();
        ix.resize(entries.len() as u64);
        for (c, part) in ix.chunks.iter_mut().zip(entries.chunks(CHUNK)) {
            Arc::make_mut(c)[..part.len()].copy_from_slice(part);
        }
        ix
    }
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
}

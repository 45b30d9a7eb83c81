//! Node addresses, provenance, layout tags and the node values readers get back.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A node's address: level 0 holds token blocks, level 1 one gist per block, level k ≥ 2 one
/// gist per B level-(k−1) gists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeRef {
    /// Level (0 = token blocks).
    pub level: u8,
    /// Index within the level.
    pub index: u64,
}

impl NodeRef {
    /// The node at `(level, index)`.
    pub fn new(level: u8, index: u64) -> Self {
        NodeRef { level, index }
    }

    /// The token span `[start, end)` this node covers in a tree of arity `block`: B tokens for
    /// a level-0 block and its level-1 gist, B^k tokens for a level-k gist (the end may lie past
    /// the stream's end for the partial last block).
    pub fn token_span(self, block: u32) -> Range<u64> {
        let width = (block as u64).saturating_pow(self.level.max(1) as u32);
        let start = self.index.saturating_mul(width);
        start..start.saturating_add(width)
    }

    /// The parent: level-0 block j's parent is level-1 gist j (its summary); a level-k ≥ 1
    /// node's parent is level k+1 node index / B.
    pub fn parent(self, block: u32) -> NodeRef {
        if self.level == 0 {
            NodeRef::new(1, self.index)
        } else {
            NodeRef::new(self.level + 1, self.index / block as u64)
        }
    }

    /// The ancestor at `level` (≥ self.level).
    pub fn ancestor(self, level: u8, block: u32) -> NodeRef {
        if level <= self.level {
            return self;
        }
        let up = (block as u64).saturating_pow((level - self.level.max(1)) as u32);
        NodeRef::new(level, self.index / up)
    }

    /// The children: none for a level-0 block, the one block a level-1 gist summarises, B
    /// level-(k−1) gists for a level-k ≥ 2 gist.
    pub fn children(self, block: u32) -> Vec<NodeRef> {
        match self.level {
            0 => Vec::new(),
            1 => vec![NodeRef::new(0, self.index)],
            l => {
                let b = block as u64;
                (self.index * b..self.index * b + b)
                    .map(|i| NodeRef::new(l - 1, i))
                    .collect()
            }
        }
    }

    /// Parses `LEVEL:INDEX`, e.g. `2:17`.
    pub fn parse(s: &str) -> Result<Self> {
        let (l, i) = s
            .split_once(':')
            .ok_or_else(|| Error::Invalid(format!("node `{s}`: expected LEVEL:INDEX")))?;
        let level = l
            .parse()
            .map_err(|_| Error::Invalid(format!("node `{s}`: bad level `{l}`")))?;
        let index = i
            .parse()
            .map_err(|_| Error::Invalid(format!("node `{s}`: bad index `{i}`")))?;
        Ok(NodeRef::new(level, index))
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.index)
    }
}

/// Which program made a record: e.g. a compressor checkpoint (`id` names the model family,
/// `version` the checkpoint). Raw token blocks carry the ingesting program's producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Producer {
    /// Producer id (assigned by the user; [`crate::MeanPool`] uses 1).
    pub id: u32,
    /// Producer version (e.g. checkpoint step).
    pub version: u32,
}

impl fmt::Display for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "producer {}/v{}", self.id, self.version)
    }
}

/// Layout tags of a node's content, a bit set (a gist carries the union of its children's).
/// Serialised as the list of tag names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LayoutTags(pub u16);

impl Serialize for LayoutTags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for LayoutTags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        LayoutTags::parse(&names.join(",")).map_err(serde::de::Error::custom)
    }
}

impl LayoutTags {
    /// A heading.
    pub const HEADING: LayoutTags = LayoutTags(1);
    /// A table.
    pub const TABLE: LayoutTags = LayoutTags(1 << 1);
    /// A formula.
    pub const FORMULA: LayoutTags = LayoutTags(1 << 2);
    /// Source code.
    pub const CODE: LayoutTags = LayoutTags(1 << 3);
    /// A dialogue turn.
    pub const DIALOGUE: LayoutTags = LayoutTags(1 << 4);
    /// A list.
    pub const LIST: LayoutTags = LayoutTags(1 << 5);
    /// A quotation.
    pub const QUOTE: LayoutTags = LayoutTags(1 << 6);
    /// Names of the defined tags, in bit order.
    pub const NAMES: [&'static str; 7] = [
        "heading", "table", "formula", "code", "dialogue", "list", "quote",
    ];

    /// No tags.
    pub fn empty() -> Self {
        LayoutTags(0)
    }

    /// The union of two tag sets.
    pub fn union(self, other: LayoutTags) -> Self {
        LayoutTags(self.0 | other.0)
    }

    /// Whether every tag of `other` is set.
    pub fn contains(self, other: LayoutTags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parses a comma-separated list of tag names (`code,table`; `bitN` for unnamed bits);
    /// empty string = no tags.
    pub fn parse(s: &str) -> Result<Self> {
        let mut bits = 0u16;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if let Some(b) = name.strip_prefix("bit").and_then(|b| b.parse::<u16>().ok()) {
                if b < 16 {
                    bits |= 1 << b;
                    continue;
                }
            }
            let pos = Self::NAMES.iter().position(|n| *n == name).ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown layout tag `{name}`; known: {}",
                    Self::NAMES.join(", ")
                ))
            })?;
            bits |= 1 << pos;
        }
        Ok(LayoutTags(bits))
    }

    /// The names of the set tags (unnamed bits as `bitN`).
    pub fn names(self) -> Vec<String> {
        (0..16)
            .filter(|b| self.0 & (1 << b) != 0)
            .map(|b| {
                Self::NAMES
                    .get(b)
                    .map_or_else(|| format!("bit{b}"), |n| n.to_string())
            })
            .collect()
    }
}

/// `source` of a node whose children come from different sources.
pub const MIXED_SOURCE: u64 = u64::MAX;

/// Where a node's content came from.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// Source document id ([`MIXED_SOURCE`] when the children differ).
    pub source: u64,
    /// Byte span `[start, end)` in the source.
    pub byte_start: u64,
    /// End of the byte span.
    pub byte_end: u64,
    /// Unix time in milliseconds when the content was ingested (gists: latest child).
    pub timestamp_ms: u64,
    /// Who made the record.
    pub producer: Producer,
    /// Optional retrieval score (e.g. from a retriever that fetched the source).
    pub score: Option<f32>,
    /// Layout tags.
    pub tags: LayoutTags,
}

impl Provenance {
    /// Checks what a caller supplies: the byte span is ordered and a score is finite.
    pub fn validate(&self) -> crate::error::Result<()> {
        if self.byte_start > self.byte_end {
            return Err(crate::error::Error::Invalid(format!(
                "provenance byte span [{}, {}) ends before it starts",
                self.byte_start, self.byte_end
            )));
        }
        if let Some(s) = self.score.filter(|s| !s.is_finite()) {
            return Err(crate::error::Error::Invalid(format!(
                "provenance score {s} is not a finite number"
            )));
        }
        Ok(())
    }

    /// Provenance for tokens of `source` at bytes `[byte_start, byte_end)`, stamped now.
    pub fn source(source: u64, byte_start: u64, byte_end: u64) -> Self {
        Provenance {
            source,
            byte_start,
            byte_end,
            timestamp_ms: now_ms(),
            ..Provenance::default()
        }
    }

    /// Merges the provenance of two parts of one node: same source or [`MIXED_SOURCE`], the
    /// covering byte span, the later timestamp, the higher score, the union of tags; the
    /// producer of `self` is kept.
    pub fn merge(&self, other: &Provenance) -> Provenance {
        Provenance {
            source: if self.source == other.source {
                self.source
            } else {
                MIXED_SOURCE
            },
            byte_start: self.byte_start.min(other.byte_start),
            byte_end: self.byte_end.max(other.byte_end),
            timestamp_ms: self.timestamp_ms.max(other.timestamp_ms),
            producer: self.producer,
            score: match (self.score, other.score) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            tags: self.tags.union(other.tags),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum NodeData {
    /// A level-0 block: up to B token ids (fewer only for the last block).
    Tokens(Vec<u32>),
    /// A gist vector of width d, decoded to f32.
    Gist(Vec<f32>),
}

/// A node as read from a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// The node's address.
    pub node: NodeRef,
    /// The version whose commit wrote this record.
    pub written_at: u64,
    /// Where the content came from.
    pub provenance: Provenance,
    /// Tokens or gist.
    pub data: NodeData,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_arithmetic() {
        let n = NodeRef::new(2, 3);
        assert_eq!(n.token_span(4), 48..64);
        assert_eq!(NodeRef::new(0, 13).token_span(4), 52..56);
        assert_eq!(NodeRef::new(1, 13).token_span(4), 52..56);
        assert_eq!(n.parent(4), NodeRef::new(3, 0));
        assert_eq!(NodeRef::new(0, 13).parent(4), NodeRef::new(1, 13));
        assert_eq!(NodeRef::new(0, 13).ancestor(2, 4), n);
        assert_eq!(NodeRef::new(1, 13).ancestor(2, 4), n);
        assert_eq!(n.children(4)[0], NodeRef::new(1, 12));
        assert_eq!(NodeRef::new(1, 5).children(4), vec![NodeRef::new(0, 5)]);
        assert_eq!(NodeRef::parse("2:3").unwrap(), n);
        assert!(NodeRef::parse("2-3").is_err());
        let t = LayoutTags::parse("code, table").unwrap();
        assert!(t.contains(LayoutTags::CODE) && !t.contains(LayoutTags::HEADING));
        assert_eq!(t.names(), vec!["table", "code"]);
        assert!(LayoutTags::parse("chart").is_err());
    }

    #[test]
    fn merge_provenance() {
        let a = Provenance::source(1, 0, 10);
        let b = Provenance {
            score: Some(0.5),
            ..Provenance::source(2, 10, 20)
        };
        let m = a.merge(&b);
        assert_eq!(m.source, MIXED_SOURCE);
        assert_eq!((m.byte_start, m.byte_end), (0, 20));
        assert_eq!(m.score, Some(0.5));
    }
}

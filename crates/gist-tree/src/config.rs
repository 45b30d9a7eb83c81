//! Per-tree settings (fixed at `create`, stored in `tree.json`) and per-writer options.

use std::path::Path;

use metarep_core::half_bytes::{self, Half};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The on-disk format version written into `tree.json` and every file header.
pub const FORMAT_VERSION: u32 = 1;

/// The element type gists are stored in (they are always handed out as `f32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GistDType {
    /// IEEE half precision (2 bytes).
    F16,
    /// bfloat16 (2 bytes).
    Bf16,
    /// IEEE single precision (4 bytes).
    F32,
}

impl GistDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            GistDType::F16 | GistDType::Bf16 => 2,
            GistDType::F32 => 4,
        }
    }

    /// Parses `f16`, `bf16` or `f32`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f16" => Ok(GistDType::F16),
            "bf16" => Ok(GistDType::Bf16),
            "f32" => Ok(GistDType::F32),
            other => Err(Error::Invalid(format!(
                "unknown gist dtype `{other}`; expected f16, bf16 or f32"
            ))),
        }
    }

    /// Encodes `values` in this dtype, appending little-endian bytes to `out` (f16/bf16 use the
    /// CPU's vector conversions where it has them).
    pub fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self.half() {
            Some(kind) => half_bytes::encode(kind, values, out),
            None => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        }
    }

    /// Encodes `values` like [`GistDType::encode`] and replaces each by its stored value (what
    /// decoding gives back), in one pass.
    pub fn encode_rounding(self, values: &mut [f32], out: &mut Vec<u8>) {
        match self.half() {
            Some(kind) => half_bytes::encode_rounding(kind, values, out),
            None => self.encode(values, out),
        }
    }

    /// Decodes little-endian `bytes` (a whole number of elements) and appends them to `out`.
    pub fn decode(self, bytes: &[u8], out: &mut Vec<f32>) {
        let start = out.len();
        let n = bytes.len() / self.size();
        match self.half() {
            Some(kind) => {
                out.resize(start + n, 0.0);
                half_bytes::decode(kind, bytes, &mut out[start..]);
            }
            None => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }

    /// The 16-bit format of this dtype (`None` for f32).
    fn half(self) -> Option<Half> {
        match self {
            GistDType::F16 => Some(Half::F16),
            GistDType::Bf16 => Some(Half::Bf16),
            GistDType::F32 => None,
        }
    }

    /// Rounds `v` to this dtype and back (what a stored value reads back as).
    pub fn round_trip(self, v: f32) -> f32 {
        match self {
            GistDType::F16 => half::f16::from_f32(v).to_f32(),
            GistDType::Bf16 => half::bf16::from_f32(v).to_f32(),
            GistDType::F32 => v,
        }
    }
}

/// The shape of a tree, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeConfig {
    /// Arity B: tokens per level-0 block and children per gist (MegaContext uses 32).
    pub block: u32,
    /// Gist width d (elements per gist vector).
    pub width: u32,
    /// Element type gists are stored in.
    pub dtype: GistDType,
    /// A level's active segment file is sealed and a new one started past this many bytes.
    pub segment_bytes: u64,
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            block: 32,
            width: 256,
            dtype: GistDType::F16,
            segment_bytes: 256 << 20,
        }
    }
}

/// Largest accepted arity (a block's token count is stored as `u16`).
pub const MAX_BLOCK: u32 = 4096;
/// Largest accepted gist width.
pub const MAX_WIDTH: u32 = 1 << 16;

impl TreeConfig {
    /// Checks the settings are in range.
    pub fn validate(&self) -> Result<()> {
        if !(2..=MAX_BLOCK).contains(&self.block) {
            return Err(Error::Invalid(format!(
                "block (arity) must be in 2..={MAX_BLOCK}, got {}",
                self.block
            )));
        }
        if !(1..=MAX_WIDTH).contains(&self.width) {
            return Err(Error::Invalid(format!(
                "width must be in 1..={MAX_WIDTH}, got {}",
                self.width
            )));
        }
        if self.segment_bytes < 4096 || self.segment_bytes > (1 << 40) {
            return Err(Error::Invalid(format!(
                "segment_bytes must be in 4096..=2^40, got {}",
                self.segment_bytes
            )));
        }
        Ok(())
    }

    /// Bytes of one stored gist.
    pub fn gist_bytes(&self) -> usize {
        self.width as usize * self.dtype.size()
    }
}

/// The contents of `tree.json`: format version, tree id and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeMeta {
    /// On-disk format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Random-looking id written into every file header, to detect files of other trees.
    pub tree_id: u64,
    /// The tree's shape.
    pub config: TreeConfig,
}

impl TreeMeta {
    /// Reads and checks `DIR/tree.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tree.json");
        if !path.exists() {
            if crate::open::holds_tree_data(dir) {
                return Err(Error::corrupt(
                    &path,
                    0,
                    "missing, but the directory holds a tree's data (its generation \
                     directories): restore tree.json from a backup (its tree id is in every \
                     file header); `init` refuses to replace the data",
                ));
            }
            return Err(Error::NotATree {
                path: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let meta: TreeMeta = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(&path, 0, format!("tree.json does not parse: {e}")))?;
        if meta.format != FORMAT_VERSION {
            return Err(Error::corrupt(
                &path,
                0,
                format!(
                    "format version {} (this build reads {FORMAT_VERSION})",
                    meta.format
                ),
            ));
        }
        meta.config.validate()?;
        Ok(meta)
    }
}

/// When the writer calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsyncPolicy {
    /// Segments and the commit log are synced before `commit` returns: a returned commit
    /// survives power loss.
    EveryCommit,
    /// Synced every N commits (and on close): survives a process crash always, power loss up to
    /// the last synced commit.
    EveryN(u32),
    /// Never synced by the writer (the OS flushes): survives a process crash (SIGKILL), not
    /// power loss.
    Off,
}

impl FsyncPolicy {
    /// Parses `commit`, `off` or `every:N`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "commit" => Ok(FsyncPolicy::EveryCommit),
            "off" => Ok(FsyncPolicy::Off),
            _ => s
                .strip_prefix("every:")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n > 0)
                .map(FsyncPolicy::EveryN)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "unknown fsync policy `{s}`; expected commit, off or every:N (N > 0)"
                    ))
                }),
        }
    }
}

/// Options of one writer session (not stored in the tree).
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// Write an index checkpoint after this many bytes of new records (and on close), so that
    /// recovery after a crash rescans at most about this much.
    pub checkpoint_bytes: u64,
    /// Record per-node access telemetry for snapshots taken from this writer.
    pub telemetry: bool,
    /// Let recovery cut records although other evidence (`commits.end`, the index checkpoint,
    /// records of later versions) says their versions were committed — i.e. give up versions
    /// missing from a damaged commit log. Without it, opening refuses and names the evidence.
    pub discard_uncommitted: bool,
    /// How long opening waits for another holder of `DIR/LOCK` to let go before refusing with
    /// [`Error::Locked`]. Default one second. Zero refuses at once, but then a process that
    /// closes and reopens a tree while other threads spawn child processes is refused now and
    /// then: a child being forked holds the lock file for a moment, until it executes its
    /// program (measured: 11% of 3 000 close-reopens beside a spawning thread).
    pub lock_wait: std::time::Duration,
    /// Bytes of records each level collects before they are written (default 512 KiB): a write
    /// thread per level takes the full buffers, the committing thread writes the rest.
    pub write_buffer: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            fsync: FsyncPolicy::EveryCommit,
            checkpoint_bytes: 256 << 20,
            telemetry: true,
            discard_uncommitted: false,
            lock_wait: std::time::Duration::from_secs(1),
            write_buffer: 512 << 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_round_trip_and_parse() {
        for dt in [GistDType::F16, GistDType::Bf16, GistDType::F32] {
            let vals = [0.0f32, 1.5, -2.25, 1e-3];
            let mut bytes = Vec::new();
            dt.encode(&vals, &mut bytes);
            assert_eq!(bytes.len(), vals.len() * dt.size());
            let mut back = Vec::new();
            dt.decode(&bytes, &mut back);
            for (v, b) in vals.iter().zip(&back) {
                assert_eq!(dt.round_trip(*v), *b);
            }
        }
        assert!(GistDType::parse("f64").is_err());
        assert_eq!(
            FsyncPolicy::parse("every:8").unwrap(),
            FsyncPolicy::EveryN(8)
        );
        assert!(FsyncPolicy::parse("every:0").is_err());
        assert!(TreeConfig {
            block: 1,
            ..TreeConfig::default()
        }
        .validate()
        .is_err());
    }
}

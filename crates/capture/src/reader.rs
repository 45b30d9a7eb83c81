//! Reading a store back: shuffled batches across shards with bounded memory, epoch after
//! epoch, deterministic under a seed.
//!
//! Each epoch visits the shards in a seeded random order. Rows go into a shuffle buffer; a
//! batch draws rows uniformly from it without replacement, and the next shard is loaded only
//! when fewer than `buffer_rows` rows remain. Memory is therefore bounded by `buffer_rows` plus
//! one shard, and every stored row appears exactly once per epoch. Each shard's SHA-256 and
//! shape are checked against `meta.json` when it is loaded: a corrupt or truncated shard is an
//! error naming its file, never data.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::{derive_seed, seeded};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::dataset::hex;
use crate::error::{Error, Result};
use crate::store::{StoreMeta, TENSOR_NAME};

/// A shuffled, bounded-memory reader of one store.
#[derive(Debug)]
pub struct StoreReader {
    dir: PathBuf,
    meta: StoreMeta,
    seed: u64,
    buffer_rows: usize,
    rng: ChaCha8Rng,
    /// Shards of the current epoch still to load, next last.
    queue: Vec<usize>,
    /// Shuffle buffer, row-major `[rows, d_in]` f32.
    buffer: Vec<f32>,
}

impl StoreReader {
    /// Opens the store in `dir` with a shuffle buffer of `buffer_rows` rows, at epoch 0.
    pub fn open(dir: &Path, seed: u64, buffer_rows: usize) -> Result<Self> {
        let meta = StoreMeta::read(dir)?;
        if meta.shards.is_empty() {
            return Err(Error::file(dir, "the store has no finished shard yet"));
        }
        let mut reader = Self {
            dir: dir.to_path_buf(),
            meta,
            seed,
            buffer_rows: buffer_rows.max(1),
            rng: seeded(0),
            queue: Vec::new(),
            buffer: Vec::new(),
        };
        reader.start_epoch(0)?;
        Ok(reader)
    }

    /// The store's description.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// Row width.
    pub fn d_in(&self) -> usize {
        self.meta.d_in
    }

    /// Rows held in memory right now (buffer only).
    pub fn buffered_rows(&self) -> usize {
        self.buffer.len() / self.meta.d_in
    }

    /// Starts epoch `epoch` (its order derives from the seed and the epoch number).
    pub fn start_epoch(&mut self, epoch: u64) -> Result<()> {
        self.rng = seeded(derive_seed(
            self.seed,
            &format!("capture/reader/epoch{epoch}"),
        ));
        let mut order: Vec<usize> = (0..self.meta.shards.len()).collect();
        order.shuffle(&mut self.rng);
        order.reverse();
        self.queue = order;
        self.buffer.clear();
        Ok(())
    }

    /// The next batch of up to `batch` rows `[rows, d_in]` (f32) of the current epoch, or
    /// `None` when it is over.
    pub fn next_batch(&mut self, batch: usize) -> Result<Option<Tensor>> {
        let d = self.meta.d_in;
        while self.buffered_rows() < self.buffer_rows.max(batch) {
            let Some(i) = self.queue.pop() else { break };
            let shard = self.load_shard(i)?;
            self.buffer.extend(shard.flatten_all()?.to_vec1::<f32>()?);
        }
        let n = self.buffered_rows().min(batch);
        if n == 0 {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let rows = self.buffered_rows();
            let pick = self.rng.random_range(0..rows);
            out.extend_from_slice(&self.buffer[pick * d..(pick + 1) * d]);
            // Move the last row into the picked slot.
            let last = (rows - 1) * d;
            self.buffer.copy_within(last..last + d, pick * d);
            self.buffer.truncate(last);
        }
        Ok(Some(Tensor::from_vec(out, (n, d), &Device::Cpu)?))
    }

    /// Shard `i` as `[tokens, d_in]` f32, after checking its checksum and shape.
    pub fn load_shard(&self, i: usize) -> Result<Tensor> {
        let info = self
            .meta
            .shards
            .get(i)
            .ok_or_else(|| Error::Invalid(format!("shard index {i} out of range")))?;
        let path = self.dir.join(&info.file);
        let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e.to_string()))?;
        let sha = hex(&Sha256::digest(&bytes));
        if sha != info.sha256 {
            return Err(Error::file(
                &path,
                format!(
                    "corrupt or truncated shard: SHA-256 {sha} ≠ {} in meta.json ({} bytes)",
                    info.sha256,
                    bytes.len()
                ),
            ));
        }
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::file(&path, format!("not a safetensors file: {e}")))?;
        let view = st
            .tensor(TENSOR_NAME)
            .map_err(|_| Error::file(&path, format!("no tensor `{TENSOR_NAME}`")))?;
        let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
            .map_err(|e| Error::file(&path, format!("unreadable tensor: {e}")))?;
        if t.dims() != [info.tokens, self.meta.d_in] || t.dtype() != self.meta.candle_dtype()? {
            return Err(Error::file(
                &path,
                format!(
                    "holds {:?} {:?}, meta.json says [{}, {}] {}",
                    t.dims(),
                    t.dtype(),
                    info.tokens,
                    self.meta.d_in,
                    self.meta.dtype
                ),
            ));
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

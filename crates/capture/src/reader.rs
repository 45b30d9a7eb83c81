//! Reading a store back: shuffled batches across shards with bounded memory, epoch after
//! epoch, deterministic under a seed.
//!
//! Each epoch visits the shards in a seeded random order. Rows go into a shuffle buffer; a
//! batch draws rows uniformly from it without replacement, and the next shard is loaded only
//! when fewer than `buffer_rows` rows remain. Memory is therefore bounded by `buffer_rows` plus
//! one shard, and every stored row appears exactly once per epoch. Each shard's CRC-32C and
//! shape are checked against `meta.json` when it is loaded: a corrupt or truncated shard is an
//! error naming its file, never data.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use metarep_core::rng::{derive_seed, seeded};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

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
            let mut buffer = std::mem::take(&mut self.buffer);
            let read = self.read_shard_into(i, &mut buffer);
            self.buffer = buffer;
            read?;
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
        let mut rows = Vec::new();
        self.read_shard_into(i, &mut rows)?;
        Ok(Tensor::from_vec(
            rows,
            (info.tokens, self.meta.d_in),
            &Device::Cpu,
        )?)
    }

    /// Appends shard `i`'s rows (f32, row-major) to `out` after checking its checksum, header,
    /// dtype and shape against `meta.json`.
    fn read_shard_into(&self, i: usize, out: &mut Vec<f32>) -> Result<()> {
        let info = self
            .meta
            .shards
            .get(i)
            .ok_or_else(|| Error::Invalid(format!("shard index {i} out of range")))?;
        let path = self.dir.join(&info.file);
        let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e.to_string()))?;
        let crc = crc32c::crc32c(&bytes);
        if crc != info.crc32c {
            return Err(Error::file(
                &path,
                format!(
                    "corrupt or truncated shard: CRC-32C {crc:#010x} ≠ {:#010x} in meta.json ({} bytes)",
                    info.crc32c,
                    bytes.len()
                ),
            ));
        }
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::file(&path, format!("not a safetensors file: {e}")))?;
        let view = st
            .tensor(TENSOR_NAME)
            .map_err(|_| Error::file(&path, format!("no tensor `{TENSOR_NAME}`")))?;
        let want = [info.tokens, self.meta.d_in];
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            _ => DType::U8,
        };
        if view.shape() != want || dtype != self.meta.candle_dtype()? {
            return Err(Error::file(
                &path,
                format!(
                    "holds {:?} {:?}, meta.json says {want:?} {}",
                    view.shape(),
                    view.dtype(),
                    self.meta.dtype
                ),
            ));
        }
        decode(dtype, view.data(), out);
        Ok(())
    }
}

/// Appends little-endian `data` of `dtype` (f32, f16 or bf16) to `out` as f32.
fn decode(dtype: DType, data: &[u8], out: &mut Vec<f32>) {
    let start = out.len();
    match dtype {
        DType::F16 | DType::BF16 => {
            let bits: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            out.resize(start + bits.len(), 0.0);
            if dtype == DType::F16 {
                bits.reinterpret_cast::<half::f16>()
                    .convert_to_f32_slice(&mut out[start..]);
            } else {
                bits.reinterpret_cast::<half::bf16>()
                    .convert_to_f32_slice(&mut out[start..]);
            }
        }
        _ => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
    }
}

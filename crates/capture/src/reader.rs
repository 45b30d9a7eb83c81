//! Reading a store back: shuffled batches across shards with bounded memory, epoch after
//! epoch, deterministic under a seed.
//!
//! Each epoch visits the shards in a seeded random order. Rows go into a shuffle buffer; a
//! batch draws rows uniformly from it without replacement, and the next shard is loaded only
//! when fewer than `buffer_rows` rows remain. Memory is therefore bounded by `buffer_rows` plus
//! one shard, and every stored row appears exactly once per epoch. Each shard's CRC-32C and
//! shape are checked against `meta.json` when it is loaded: a corrupt or truncated shard is an
//! error naming its file, never data.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::{derive_seed, seeded};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::codec::{decode, prefetch};
use crate::error::{Error, Result};
use crate::store::{ShardInfo, StoreMeta, TENSOR_NAME};

/// Spent buffers kept for reuse.
const MAX_SPARES: usize = 2;

/// Rows ahead of the one being decoded whose bytes are prefetched.
const PREFETCH_AHEAD: usize = 4;

/// A shuffled, bounded-memory reader of one store.
///
/// Rows stay in the stored encoding (f16 rows take half the memory of f32) and where they
/// were read until a batch decodes them to f32: a shard's file buffer joins the shuffle buffer
/// as it is, and a served row is dropped from an index rather than moved. While batches are
/// served, the next shard is read and checked by a background thread. Memory holds the rows
/// to serve (at most `buffer_rows` plus one shard), served rows sharing buffers with them (no
/// more than the rows to serve plus one shard: beyond that, the rows to serve are compacted
/// into one buffer), one shard read ahead and up to two spare buffers (kept because fresh
/// memory costs a page fault per 4 KiB, which dominated reading before they were).
#[derive(Debug)]
pub struct StoreReader {
    dir: PathBuf,
    meta: StoreMeta,
    dtype: DType,
    seed: u64,
    buffer_rows: usize,
    rng: ChaCha8Rng,
    /// Shards of the current epoch still to load, next last.
    queue: Vec<usize>,
    /// Byte buffers holding the buffered rows (stored encoding, `row_bytes` each) next to
    /// rows already served; an emptied buffer becomes a spare.
    chunks: Vec<Chunk>,
    /// Where the rows not yet served this epoch are: (chunk, byte offset).
    slots: Vec<(usize, usize)>,
    row_bytes: usize,
    /// The shard being read ahead and its reader thread.
    ahead: Option<(usize, JoinHandle<Result<Shard>>)>,
    /// Spent byte buffers (at most [`MAX_SPARES`]), reused for reads and compaction.
    spares: Vec<Vec<u8>>,
    /// Rows at positions below this in their context are not served.
    skip_positions: usize,
}

/// One byte buffer of the shuffle buffer and how many of its rows are still to serve.
#[derive(Debug, Default)]
struct Chunk {
    bytes: Vec<u8>,
    live: usize,
}

/// A shard file read into memory and checked: its rows are `bytes[start..]`.
#[derive(Debug)]
struct Shard {
    bytes: Vec<u8>,
    start: usize,
}

impl StoreReader {
    /// Opens the store in `dir` with a shuffle buffer of `buffer_rows` rows, at epoch 0.
    pub fn open(dir: &Path, seed: u64, buffer_rows: usize) -> Result<Self> {
        let meta = StoreMeta::read(dir)?;
        if meta.shards.is_empty() {
            return Err(Error::file(dir, "the store has no finished shard yet"));
        }
        let dtype = meta.candle_dtype()?;
        let row_bytes = meta.d_in * dtype.size_in_bytes();
        let mut reader = Self {
            dir: dir.to_path_buf(),
            meta,
            dtype,
            seed,
            buffer_rows: buffer_rows.max(1),
            rng: seeded(0),
            queue: Vec::new(),
            chunks: Vec::new(),
            slots: Vec::new(),
            row_bytes,
            ahead: None,
            spares: Vec::new(),
            skip_positions: 0,
        };
        reader.start_epoch(0)?;
        Ok(reader)
    }

    /// Serves only rows at positions ≥ `n` of their context, from the next epoch on (e.g.
    /// `n = 1` leaves out each context's first token, whose residual stream in many models is
    /// an attention sink far larger than the rest); `n` must be below the context length.
    pub fn skip_positions(mut self, n: usize) -> Result<Self> {
        if n >= self.meta.context {
            return Err(Error::Invalid(format!(
                "skip_positions {n} would leave nothing of contexts of {} tokens",
                self.meta.context
            )));
        }
        self.skip_positions = n;
        self.start_epoch(0)?;
        Ok(self)
    }

    /// The store's description.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// Row width.
    pub fn d_in(&self) -> usize {
        self.meta.d_in
    }

    /// Rows held in the shuffle buffer right now.
    pub fn buffered_rows(&self) -> usize {
        self.slots.len()
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
        self.slots.clear();
        for chunk in std::mem::take(&mut self.chunks) {
            self.recycle(chunk.bytes);
        }
        // A read-ahead of the previous epoch is of no use now (its errors do not matter).
        if let Some((_, handle)) = self.ahead.take() {
            let _ = handle.join();
        }
        self.read_ahead();
        Ok(())
    }

    /// The next batch of up to `batch` rows `[rows, d_in]` (f32) of the current epoch, or
    /// `None` when it is over.
    pub fn next_batch(&mut self, batch: usize) -> Result<Option<Tensor>> {
        let d = self.meta.d_in;
        while self.buffered_rows() < self.buffer_rows.max(batch) {
            let Some(i) = self.queue.pop() else { break };
            let shard = match self.ahead.take() {
                Some((j, handle)) if j == i => handle
                    .join()
                    .unwrap_or_else(|_| Err(Error::Invalid("the shard reader panicked".into())))?,
                _ => {
                    let spare = self.spare();
                    read_shard(&self.dir, &self.meta, i, spare)?
                }
            };
            self.take_rows(shard);
            self.read_ahead();
        }
        let n = self.buffered_rows().min(batch);
        if n == 0 {
            return Ok(None);
        }
        let picks: Vec<(usize, usize)> = (0..n)
            .map(|_| {
                let pick = self.rng.random_range(0..self.slots.len());
                self.slots.swap_remove(pick)
            })
            .collect();
        let rb = self.row_bytes;
        let mut out = vec![0f32; n * d];
        for (k, row) in out.chunks_exact_mut(d).enumerate() {
            // Rows sit anywhere in a buffer far larger than the caches: ask for one ahead.
            if let Some(&(c, at)) = picks.get(k + PREFETCH_AHEAD) {
                prefetch(&self.chunks[c].bytes[at..at + rb]);
            }
            let (c, at) = picks[k];
            let chunk = &mut self.chunks[c];
            decode(self.dtype, &chunk.bytes[at..at + rb], row);
            chunk.live -= 1;
            if chunk.live == 0 {
                let bytes = std::mem::take(&mut chunk.bytes);
                self.recycle(bytes);
            }
        }
        Ok(Some(Tensor::from_vec(out, (n, d), &Device::Cpu)?))
    }

    /// Shard `i` as `[tokens, d_in]` f32, after checking its checksum and shape.
    pub fn load_shard(&self, i: usize) -> Result<Tensor> {
        let shard = read_shard(&self.dir, &self.meta, i, Vec::new())?;
        let data = &shard.bytes[shard.start..];
        let rows = data.len() / self.row_bytes;
        let mut out = vec![0f32; rows * self.meta.d_in];
        decode(self.dtype, data, &mut out);
        Ok(Tensor::from_vec(out, (rows, self.meta.d_in), &Device::Cpu)?)
    }

    /// Adds a shard's rows to the shuffle buffer, first compacting the rows to serve when
    /// served rows would otherwise take more memory than they do plus one shard.
    fn take_rows(&mut self, shard: Shard) {
        let rb = self.row_bytes;
        let Shard { bytes, start } = shard;
        let rows = (bytes.len() - start) / rb;
        let held: usize = self.chunks.iter().map(|c| c.bytes.len()).sum();
        if held > 2 * self.slots.len() * rb + bytes.len() {
            self.compact();
        }
        let c = self.chunks.len();
        // Shards hold whole contexts, so a row's position is its index modulo the context.
        let (context, skip) = (self.meta.context, self.skip_positions);
        let before = self.slots.len();
        self.slots.extend(
            (0..rows)
                .filter(|r| r % context >= skip)
                .map(|r| (c, start + r * rb)),
        );
        let live = self.slots.len() - before;
        self.chunks.push(Chunk { bytes, live });
    }

    /// Moves the rows to serve into one buffer, freeing the others.
    fn compact(&mut self) {
        let rb = self.row_bytes;
        let mut fresh = self.spare();
        fresh.reserve(self.slots.len() * rb);
        for (c, at) in &mut self.slots {
            let to = fresh.len();
            fresh.extend_from_slice(&self.chunks[*c].bytes[*at..*at + rb]);
            (*c, *at) = (0, to);
        }
        let live = self.slots.len();
        for chunk in std::mem::take(&mut self.chunks) {
            self.recycle(chunk.bytes);
        }
        self.chunks.push(Chunk { bytes: fresh, live });
    }

    /// The largest spare buffer, emptied (a new one when there is none).
    fn spare(&mut self) -> Vec<u8> {
        let largest = (0..self.spares.len()).max_by_key(|&i| self.spares[i].capacity());
        let mut spare = largest.map_or_else(Vec::new, |i| self.spares.swap_remove(i));
        spare.clear();
        spare
    }

    /// Keeps `bytes` as a spare if there is room or it is larger than the smallest one.
    fn recycle(&mut self, bytes: Vec<u8>) {
        if self.spares.len() < MAX_SPARES {
            self.spares.push(bytes);
        } else if let Some(smallest) = self.spares.iter_mut().min_by_key(|b| b.capacity()) {
            if smallest.capacity() < bytes.capacity() {
                *smallest = bytes;
            }
        }
    }

    /// Starts reading the next queued shard in the background.
    fn read_ahead(&mut self) {
        if self.ahead.is_some() {
            return;
        }
        if let Some(&i) = self.queue.last() {
            let (dir, meta) = (self.dir.clone(), self.meta.clone());
            let spare = self.spare();
            self.ahead = Some((
                i,
                std::thread::spawn(move || read_shard(&dir, &meta, i, spare)),
            ));
        }
    }
}

/// Reads shard `i` of the store in `dir` into `bytes` (reused) after checking its checksum,
/// header, dtype and shape against `meta`.
fn read_shard(dir: &Path, meta: &StoreMeta, i: usize, mut bytes: Vec<u8>) -> Result<Shard> {
    let info: &ShardInfo = meta
        .shards
        .get(i)
        .ok_or_else(|| Error::Invalid(format!("shard index {i} out of range")))?;
    let path = dir.join(&info.file);
    let io = |e: std::io::Error| Error::file(&path, e.to_string());
    let mut file = File::open(&path).map_err(io)?;
    bytes.clear();
    file.read_to_end(&mut bytes).map_err(io)?;
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
    let want = [info.tokens, meta.d_in];
    let dtype = match view.dtype() {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        _ => DType::U8,
    };
    let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
    let ends_file = start + view.data().len() == bytes.len();
    if view.shape() != want || dtype != meta.candle_dtype()? || !ends_file {
        return Err(Error::file(
            &path,
            format!(
                "holds {:?} {:?} ({} bytes of data from byte {start} of {}), meta.json says {want:?} {}",
                view.shape(),
                view.dtype(),
                view.data().len(),
                bytes.len(),
                meta.dtype
            ),
        ));
    }
    Ok(Shard { bytes, start })
}

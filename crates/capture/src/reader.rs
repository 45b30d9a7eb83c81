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
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use candle_core::{DType, Device, Tensor};
use memmap2::{Advice, Mmap};
use metarep_core::rng::{derive_seed, seeded};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::codec::{decode, prefetch};
use crate::error::{Error, Result};
use crate::store::{ShardInfo, StoreMeta, TENSOR_NAME};

/// Rows ahead of the one being decoded whose bytes are prefetched.
const PREFETCH_AHEAD: usize = 4;

/// Marks a place no row of the shard being copied in goes to.
const NO_ROW: usize = usize::MAX;

/// Rows one parallel task of a batch's decoding takes.
const DECODE_RUN: usize = 256;

/// A shuffled, bounded-memory reader of one store.
///
/// Rows stay in the stored encoding (f16 rows take half the memory of f32) until a batch
/// decodes them to f32. The shuffle buffer is one allocation of fixed places, one row each,
/// kept across epochs: a loaded shard's rows are copied into free places and a served row
/// frees its place, so after the first epoch reading allocates nothing but the batches it
/// returns (fresh memory costs a page fault per 4 KiB, which dominated reading before). While
/// rows are copied and batches served, the next shard is mapped, read through and checked by a
/// background thread. Copying rows in and decoding batches use both cores (rayon). Memory: the
/// places (the larger of `buffer_rows` and the batch size, plus one shard) and the page cache
/// behind two mapped shards.
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
    /// The shuffle buffer's places, `row_bytes` each, holding rows in the stored encoding.
    places: Vec<u8>,
    /// Places holding a row not yet served this epoch, in the order draws index them.
    slots: Vec<usize>,
    /// Places free for the next shard's rows.
    free: Vec<usize>,
    /// For each place, the row of the shard being copied in that goes there, or [`NO_ROW`].
    source: Vec<usize>,
    row_bytes: usize,
    /// The shard being read ahead and its reader thread.
    ahead: Option<(usize, JoinHandle<Result<Shard>>)>,
    /// Rows at positions below this in their context are not served.
    skip_positions: usize,
}

/// A shard file mapped into memory and checked: its rows are `map[start..]`.
#[derive(Debug)]
struct Shard {
    map: Mmap,
    start: usize,
}

impl Shard {
    /// The stored rows' bytes.
    fn data(&self) -> &[u8] {
        &self.map[self.start..]
    }
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
            places: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            source: Vec::new(),
            row_bytes,
            ahead: None,
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
        self.free.clear();
        self.free
            .extend((0..self.places.len() / self.row_bytes).rev());
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
                _ => read_shard(&self.dir, &self.meta, i)?,
            };
            // The next shard is read while this one's rows are copied in.
            self.read_ahead();
            self.take_rows(&shard, batch);
        }
        let n = self.buffered_rows().min(batch);
        if n == 0 {
            return Ok(None);
        }
        let picks: Vec<usize> = (0..n)
            .map(|_| {
                let pick = self.rng.random_range(0..self.slots.len());
                self.slots.swap_remove(pick)
            })
            .collect();
        let (rb, dtype, places) = (self.row_bytes, self.dtype, &self.places);
        let mut out = vec![0f32; n * d];
        // Decoded in parallel runs of rows (the reader's other work is the shard thread's).
        out.par_chunks_mut(DECODE_RUN * d)
            .zip(picks.par_chunks(DECODE_RUN))
            .for_each(|(out, picks)| {
                for (k, row) in out.chunks_exact_mut(d).enumerate() {
                    // Rows sit anywhere in a buffer far larger than the caches: ask ahead.
                    if let Some(&p) = picks.get(k + PREFETCH_AHEAD) {
                        prefetch(&places[p * rb..(p + 1) * rb]);
                    }
                    let p = picks[k];
                    decode(dtype, &places[p * rb..(p + 1) * rb], row);
                }
            });
        self.free.extend_from_slice(&picks);
        Ok(Some(Tensor::from_vec(out, (n, d), &Device::Cpu)?))
    }

    /// Shard `i` as `[tokens, d_in]` f32, after checking its checksum and shape.
    pub fn load_shard(&self, i: usize) -> Result<Tensor> {
        let shard = read_shard(&self.dir, &self.meta, i)?;
        let data = shard.data();
        let rows = data.len() / self.row_bytes;
        let mut out = vec![0f32; rows * self.meta.d_in];
        decode(self.dtype, data, &mut out);
        Ok(Tensor::from_vec(out, (rows, self.meta.d_in), &Device::Cpu)?)
    }

    /// Copies a shard's servable rows into free places of the shuffle buffer, first growing it
    /// (once, in the first epoch) to hold the rows to serve plus the largest shard.
    fn take_rows(&mut self, shard: &Shard, batch: usize) {
        let rb = self.row_bytes;
        let data = shard.data();
        let rows = data.len() / rb;
        if self.free.len() < rows {
            let largest = self.meta.shards.iter().map(|s| s.tokens).max().unwrap_or(0);
            let total: usize = self.meta.shards.iter().map(|s| s.tokens).sum();
            let want =
                (self.buffer_rows.max(batch).min(total) + largest).max(self.slots.len() + rows);
            let have = self.places.len() / rb;
            if want > have {
                self.places.resize(want * rb, 0);
                self.free.extend((have..want).rev());
            }
        }
        // Shards hold whole contexts, so a row's position is its index modulo the context.
        let (context, skip) = (self.meta.context, self.skip_positions);
        self.source.resize(self.places.len() / rb, NO_ROW);
        for r in (0..rows).filter(|r| r % context >= skip) {
            let p = self
                .free
                .pop()
                .expect("the shuffle buffer was grown to hold the shard");
            self.source[p] = r;
            self.slots.push(p);
        }
        // The rows land at scattered places: both cores copy, each over its own places.
        self.places
            .par_chunks_mut(rb)
            .zip(self.source.par_iter_mut())
            .with_min_len(4096)
            .for_each(|(place, source)| {
                if *source != NO_ROW {
                    place.copy_from_slice(&data[*source * rb..(*source + 1) * rb]);
                    *source = NO_ROW;
                }
            });
    }

    /// Starts reading the next queued shard in the background.
    fn read_ahead(&mut self) {
        if self.ahead.is_some() {
            return;
        }
        if let Some(&i) = self.queue.last() {
            let (dir, meta) = (self.dir.clone(), self.meta.clone());
            self.ahead = Some((i, std::thread::spawn(move || read_shard(&dir, &meta, i))));
        }
    }
}

/// Maps shard `i` of the store in `dir` and reads it through once, checking its checksum,
/// header, dtype and shape against `meta`.
///
/// A map rather than a read into a buffer saves the kernel's copy of every byte (a third of the
/// reader's work). Shard files are never changed once renamed into place (a rerun writes new
/// files), the same assumption candle's memory-mapped safetensors loading makes.
fn read_shard(dir: &Path, meta: &StoreMeta, i: usize) -> Result<Shard> {
    let info: &ShardInfo = meta
        .shards
        .get(i)
        .ok_or_else(|| Error::Invalid(format!("shard index {i} out of range")))?;
    let path = dir.join(&info.file);
    let io = |e: std::io::Error| Error::file(&path, e.to_string());
    let file = File::open(&path).map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Err(Error::file(
            &path,
            "corrupt or truncated shard: the file is empty",
        ));
    }
    // SAFETY: the file is only read through the map, and shard files are not modified once
    // written (see above).
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    // The checksum reads the file front to back: read ahead of it.
    let _ = map.advise(Advice::Sequential);
    let bytes = &map[..];
    let crc = crc32c::crc32c(bytes);
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
    let st = safetensors::SafeTensors::deserialize(bytes)
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
    Ok(Shard { map, start })
}

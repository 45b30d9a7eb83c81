//! Where training activations come from: a minimal [`ActivationSource`] trait (shuffled batches
//! of `[batch, d_in]` f32 rows, epochs, deterministic under a seed, resumable by skipping), an
//! in-memory [`TensorSource`], and loaders for `.npy` and safetensors files.
//!
//! Rows can come in windows of consecutive positions (`window` rows that belong together, e.g.
//! one captured sequence): windows are shuffled as units, so a batch holds whole windows in
//! order — what the temporal-smoothness loss needs. With `window = 1` rows are shuffled
//! individually.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::{derive_seed, seeded};
use rand::seq::SliceRandom;

use crate::error::{Error, Result};

/// A batch of activations.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Rows `[batch, d_in]`, f32.
    pub x: Tensor,
    /// Optional integer labels `[batch]` u32 (for the probe loss).
    pub labels: Option<Tensor>,
    /// Rows per window of consecutive positions (1: unrelated rows).
    pub window: usize,
}

/// A stream of shuffled activation batches, epoch by epoch.
///
/// Contract: after `start_epoch(e)` the sequence of batches returned by `next_batch` depends
/// only on the source's seed and `e`; `next_batch` returns `None` at the end of the epoch;
/// `skip(n, batch)` is equivalent to discarding `n` calls of `next_batch(batch)`.
pub trait ActivationSource {
    /// Row width.
    fn d_in(&self) -> usize;
    /// Starts epoch `epoch` (its order is derived from the seed and the epoch number).
    fn start_epoch(&mut self, epoch: u64) -> Result<()>;
    /// The next batch of up to `batch` rows of the current epoch, or `None` when it is over.
    fn next_batch(&mut self, batch: usize) -> Result<Option<Batch>>;
    /// Skips `n` batches of `batch` rows (resuming); the default reads and drops them.
    fn skip(&mut self, n: usize, batch: usize) -> Result<()> {
        for _ in 0..n {
            if self.next_batch(batch)?.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// Activations held in memory, `[rows, d_in]` f32 (plus optional labels).
#[derive(Debug, Clone)]
pub struct TensorSource {
    data: Tensor,
    labels: Option<Tensor>,
    window: usize,
    seed: u64,
    order: Vec<u32>,
    pos: usize,
}

impl TensorSource {
    /// A source over `data` `[rows, d_in]` (converted to f32 on the CPU), rows shuffled
    /// individually; every value must be finite.
    pub fn new(data: Tensor, seed: u64) -> Result<Self> {
        let data = data
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let (rows, _) = match data.dims() {
            &[r, d] if r > 0 && d > 0 => (r, d),
            dims => {
                return Err(Error::shape(
                    "activations",
                    "[rows ≥ 1, d_in ≥ 1]",
                    format!("{dims:?}"),
                ))
            }
        };
        let flat = data.flatten_all()?.to_vec1::<f32>()?;
        if let Some(p) = flat.iter().position(|v| !v.is_finite()) {
            let d = flat.len() / rows;
            return Err(Error::Invalid(format!(
                "activation row {} column {} is {}",
                p / d,
                p % d,
                flat[p]
            )));
        }
        let mut s = Self {
            data,
            labels: None,
            window: 1,
            seed,
            order: Vec::new(),
            pos: 0,
        };
        s.start_epoch(0)?;
        Ok(s)
    }

    /// Attaches integer labels `[rows]` (any integer dtype; stored as u32).
    pub fn with_labels(mut self, labels: Tensor) -> Result<Self> {
        let rows = self.rows();
        if labels.dims() != [rows] {
            return Err(Error::shape(
                "labels",
                format!("[{rows}]"),
                format!("{:?}", labels.dims()),
            ));
        }
        let labels = labels.to_device(&Device::Cpu)?;
        let labels = match labels.dtype() {
            DType::U32 => labels,
            DType::U8 | DType::I64 | DType::I32 | DType::I16 => {
                let v = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
                if let Some(p) = v.iter().position(|&l| l < 0 || l > u32::MAX as i64) {
                    return Err(Error::Invalid(format!(
                        "label {} at row {p} is not a class index",
                        v[p]
                    )));
                }
                labels.to_dtype(DType::I64)?.to_dtype(DType::U32)?
            }
            d => {
                return Err(Error::Invalid(format!(
                    "labels must be integers, got {d:?}"
                )))
            }
        };
        self.labels = Some(labels);
        Ok(self)
    }

    /// Groups rows into windows of `window` consecutive positions, shuffled as units
    /// (`rows` must be a multiple of `window`).
    pub fn with_window(mut self, window: usize) -> Result<Self> {
        if window == 0 || !self.rows().is_multiple_of(window) {
            return Err(Error::Invalid(format!(
                "window {window} does not divide the {} rows",
                self.rows()
            )));
        }
        self.window = window;
        self.start_epoch(0)?;
        Ok(self)
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.data.dim(0).unwrap_or(0)
    }

    /// All rows, in file order.
    pub fn data(&self) -> &Tensor {
        &self.data
    }

    /// Windows per epoch.
    fn windows(&self) -> usize {
        self.rows() / self.window
    }
}

impl ActivationSource for TensorSource {
    fn d_in(&self) -> usize {
        self.data.dim(1).unwrap_or(0)
    }

    fn start_epoch(&mut self, epoch: u64) -> Result<()> {
        let mut order: Vec<u32> = (0..self.windows() as u32).collect();
        order.shuffle(&mut seeded(derive_seed(
            self.seed,
            &format!("epoch/{epoch}"),
        )));
        self.order = order;
        self.pos = 0;
        Ok(())
    }

    fn next_batch(&mut self, batch: usize) -> Result<Option<Batch>> {
        if batch == 0 || !batch.is_multiple_of(self.window) {
            return Err(Error::Invalid(format!(
                "batch {batch} must be a positive multiple of the window {}",
                self.window
            )));
        }
        if self.pos >= self.order.len() {
            return Ok(None);
        }
        let take = (batch / self.window).min(self.order.len() - self.pos);
        let window = self.window as u32;
        let rows: Vec<u32> = self.order[self.pos..self.pos + take]
            .iter()
            .flat_map(|&w| (0..window).map(move |t| w * window + t))
            .collect();
        self.pos += take;
        let idx = Tensor::from_vec(rows, take * self.window, &Device::Cpu)?;
        Ok(Some(Batch {
            x: self.data.index_select(&idx, 0)?,
            labels: match &self.labels {
                Some(l) => Some(l.index_select(&idx, 0)?),
                None => None,
            },
            window: self.window,
        }))
    }

    fn skip(&mut self, n: usize, batch: usize) -> Result<()> {
        if batch == 0 || !batch.is_multiple_of(self.window) {
            return Err(Error::Invalid(format!(
                "batch {batch} must be a positive multiple of the window {}",
                self.window
            )));
        }
        self.pos = (self.pos + n * (batch / self.window)).min(self.order.len());
        Ok(())
    }
}

/// Activations read from a file: rows `[rows, d_in]`, the sequence length when the file holds
/// `[sequences, positions, d_in]`, and labels when present.
#[derive(Debug, Clone)]
pub struct LoadedActivations {
    /// `[rows, d_in]` f32.
    pub data: Tensor,
    /// Positions per sequence for rank-3 inputs (rows are then grouped in windows of it).
    pub seq_len: Option<usize>,
    /// Labels `[rows]` (a safetensors tensor named `labels`), if any.
    pub labels: Option<Tensor>,
}

impl LoadedActivations {
    /// A [`TensorSource`] over these activations (windows of `seq_len` when `windows` is set).
    pub fn into_source(self, seed: u64, windows: bool) -> Result<TensorSource> {
        let mut s = TensorSource::new(self.data, seed)?;
        if let Some(l) = self.labels {
            s = s.with_labels(l)?;
        }
        if let (true, Some(w)) = (windows, self.seq_len) {
            s = s.with_window(w)?;
        }
        Ok(s)
    }
}

/// Reads activations from `path`: `.npy` (one array) or `.safetensors` (the tensor named
/// `key`, else `activations`, else the only non-label tensor; a tensor `labels` is read too).
/// Arrays of rank 2 are rows; rank 3 `[sequences, positions, d_in]` is flattened to rows with
/// `seq_len = positions`. f16, bf16, f32 and f64 are read as f32.
pub fn load_activations(path: &Path, key: Option<&str>) -> Result<LoadedActivations> {
    if !path.is_file() {
        return Err(Error::file(path, "no such file"));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (data, labels) = match ext {
        "npy" => {
            let t = Tensor::read_npy(path).map_err(|e| Error::file(path, format!("not a readable .npy array: {e}")))?;
            (t, None)
        }
        "safetensors" => {
            let mut all = candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| Error::file(path, format!("not a readable safetensors file: {e}")))?;
            let labels = all.remove("labels");
            let name = match key {
                Some(k) => k.to_string(),
                None if all.contains_key("activations") => "activations".to_string(),
                None if all.len() == 1 => all.keys().next().cloned().unwrap_or_default(),
                None => {
                    let mut names: Vec<&String> = all.keys().collect();
                    names.sort();
                    return Err(Error::file(
                        path,
                        format!("holds several tensors {names:?}; name one (no `activations` tensor)"),
                    ));
                }
            };
            let t = all
                .remove(&name)
                .ok_or_else(|| Error::file(path, format!("has no tensor `{name}`")))?;
            (t, labels)
        }
        _ => {
            return Err(Error::file(
                path,
                "unknown activation format (expected .npy or .safetensors; an activation-store directory is read by metarep-capture)",
            ))
        }
    };
    if !matches!(
        data.dtype(),
        DType::F16 | DType::BF16 | DType::F32 | DType::F64
    ) {
        return Err(Error::file(
            path,
            format!("activations must be floats, got {:?}", data.dtype()),
        ));
    }
    let data = data.to_dtype(DType::F32)?;
    let (data, seq_len) = match *data.dims() {
        [_, _] => (data, None),
        [s, p, d] => (data.reshape((s * p, d))?, Some(p)),
        ref dims => {
            return Err(Error::file(
                path,
                format!(
                "activations must be [rows, d_in] or [sequences, positions, d_in], got {dims:?}"
            ),
            ))
        }
    };
    let labels = match labels {
        Some(l) => {
            let rows = data.dim(0)?;
            Some(l.flatten_all().map_err(Error::from).and_then(|l| {
                if l.dims() == [rows] {
                    Ok(l)
                } else {
                    Err(Error::file(
                        path,
                        format!("labels have {} entries for {rows} rows", l.elem_count()),
                    ))
                }
            })?)
        }
        None => None,
    };
    Ok(LoadedActivations {
        data,
        seq_len,
        labels,
    })
}

/// A metarep-capture activation store as a training source: shuffled batches across its shards
/// through a bounded shuffle buffer ([`metarep_capture::StoreReader`]), rows of one token each.
#[derive(Debug)]
pub struct StoreSource {
    reader: metarep_capture::StoreReader,
}

impl StoreSource {
    /// Opens the store in `dir` (a hook's directory, with `meta.json`), shuffling under `seed`
    /// with a buffer of `buffer_rows` rows.
    pub fn open(dir: &Path, seed: u64, buffer_rows: usize) -> Result<Self> {
        Ok(Self {
            reader: metarep_capture::StoreReader::open(dir, seed, buffer_rows)?,
        })
    }

    /// Leaves out rows at positions below `n` of their context
    /// ([`metarep_capture::StoreReader::skip_positions`]).
    pub fn skip_positions(self, n: usize) -> Result<Self> {
        Ok(Self {
            reader: self.reader.skip_positions(n)?,
        })
    }

    /// The store's description (hook, model, tokens, shards).
    pub fn meta(&self) -> &metarep_capture::StoreMeta {
        self.reader.meta()
    }
}

impl ActivationSource for StoreSource {
    fn d_in(&self) -> usize {
        self.reader.d_in()
    }

    fn start_epoch(&mut self, epoch: u64) -> Result<()> {
        Ok(self.reader.start_epoch(epoch)?)
    }

    fn next_batch(&mut self, batch: usize) -> Result<Option<Batch>> {
        Ok(self.reader.next_batch(batch)?.map(|x| Batch {
            x,
            labels: None,
            window: 1,
        }))
    }
}

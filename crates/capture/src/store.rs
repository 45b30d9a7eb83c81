//! The activation store: one directory per hook holding safetensors shards (one tensor
//! `activations` `[tokens, d_in]` each) and `meta.json` describing the store and listing every
//! finished shard with its token count and CRC-32C.
//!
//! Writes are crash-safe: a shard is written to a temporary file and renamed, then `meta.json`
//! is replaced the same way, so a shard exists for readers only once it is listed. Shards hold
//! whole contexts and their boundaries depend only on the settings, so an interrupted capture
//! resumes at the first unlisted shard and reproduces exactly the bytes an uninterrupted one
//! would have written. A store with no finished shard (a run that failed early, e.g. on a bad
//! token id) binds nothing: the next run replaces it, whatever its settings.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use metarep_core::fsutil::{atomic_write_parts, ensure_dir, read_json, write_json_pretty};
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::encode;
use crate::dataset::{hex, TokenDataset};
use crate::error::{Error, Result};

/// Name of the store description in a store directory.
pub const META_FILE: &str = "meta.json";
/// Name of the tensor inside every shard.
pub const TENSOR_NAME: &str = "activations";
/// Version of the on-disk layout.
pub const FORMAT_VERSION: u32 = 1;

/// One finished shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the store directory.
    pub file: String,
    /// Rows (tokens) in it.
    pub tokens: usize,
    /// CRC-32C of the file (hardware-accelerated; catches corruption and truncation).
    pub crc32c: u32,
}

/// `meta.json`: what a store holds and how it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreMeta {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The model (directory or hub id as given).
    pub model: String,
    /// Hex SHA-256 of the model's configuration (JSON).
    pub model_config_sha256: String,
    /// Hex SHA-256 of the model's weights ([`weights_sha256`]): two checkpoints of one
    /// architecture share a config, not weights. Empty in stores written before it existed
    /// (which therefore cannot be resumed).
    #[serde(default)]
    pub model_weights_sha256: String,
    /// TransformerLens hook name.
    pub hook: String,
    /// Stored dtype: `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// Row width.
    pub d_in: usize,
    /// Tokens per context (model input length).
    pub context: usize,
    /// Contexts per shard (the last shard may hold fewer).
    pub contexts_per_shard: usize,
    /// The dataset file as given.
    pub dataset: String,
    /// Hex SHA-256 of the dataset file.
    pub dataset_sha256: String,
    /// Tokens the dataset yields (all contexts).
    pub dataset_tokens: usize,
    /// Finished shards, in order.
    pub shards: Vec<ShardInfo>,
    /// True once every context of the dataset is stored.
    pub complete: bool,
}

impl StoreMeta {
    /// Reads and checks `dir/meta.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(META_FILE);
        if !path.is_file() {
            return Err(Error::file(dir, "not an activation store (no meta.json)"));
        }
        let meta: StoreMeta = read_json(&path)?;
        if meta.format_version != FORMAT_VERSION {
            return Err(Error::file(
                &path,
                format!(
                    "format version {} (this build reads {FORMAT_VERSION})",
                    meta.format_version
                ),
            ));
        }
        store_dtype(&meta.dtype).map_err(|e| Error::file(&path, e.to_string()))?;
        if meta.d_in == 0 || meta.context == 0 || meta.contexts_per_shard == 0 {
            return Err(Error::file(
                &path,
                "d_in, context and contexts_per_shard must be ≥ 1",
            ));
        }
        Ok(meta)
    }

    /// Tokens in the finished shards.
    pub fn tokens(&self) -> usize {
        self.shards.iter().map(|s| s.tokens).sum()
    }

    /// The candle dtype of the shards.
    pub fn candle_dtype(&self) -> Result<DType> {
        store_dtype(&self.dtype)
    }
}

/// `f32` / `f16` / `bf16` → candle dtype.
pub fn store_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::Invalid(format!(
            "store dtype `{other}` (expected f32, f16 or bf16)"
        ))),
    }
}

/// Settings of a capture run.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// Hooks to store (one store directory each, named after the hook).
    pub hooks: Vec<HookPoint>,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// Target tokens per shard (rounded up to whole contexts).
    pub shard_tokens: usize,
    /// Contexts per forward pass.
    pub batch_contexts: usize,
    /// The model's name as recorded in the metadata.
    pub model_name: String,
    /// Stop after this many contexts in this run (a budget; the rest is done by a later run).
    pub max_contexts: Option<usize>,
}

/// What a capture run did.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureReport {
    /// Store directory per hook.
    pub stores: Vec<PathBuf>,
    /// Contexts already stored when the run started (resumed from there).
    pub resumed_at_context: usize,
    /// Tokens captured by this run (per hook).
    pub tokens_this_run: usize,
    /// Tokens stored in total (per hook).
    pub tokens_total: usize,
    /// True when every store is complete.
    pub complete: bool,
    /// Wall time of this run (s).
    pub seconds: f64,
}

/// Directory of `hook`'s store under `out`.
pub fn store_dir(out: &Path, hook: HookPoint) -> PathBuf {
    out.join(hook.name())
}

/// The writer of one store: rows are encoded in the stored dtype as they are pushed and
/// written as a shard on [`StoreWriter::finish_shard`], after which `meta.json` lists it.
/// [`capture`] drives one per hook; it is public for writing activations computed elsewhere.
///
/// A shard's file and the `meta.json` that lists it are written by a background thread while
/// the caller computes the next rows; at most one shard is in flight. An error of that write
/// surfaces from the next [`StoreWriter::finish_shard`] or [`StoreWriter::close`], after which
/// the writer refuses further work (reopen the store: `meta.json` on disk lists only the shards
/// that were fully written). The last shard (`finish_shard(true)`) is written before the call
/// returns.
#[derive(Debug)]
pub struct StoreWriter {
    dir: PathBuf,
    meta: StoreMeta,
    dtype: DType,
    /// Rows of the current shard, encoded (little-endian bytes of `dtype`).
    pending: Vec<u8>,
    pending_rows: usize,
    /// The background write of the previous shard; it hands its buffer back for reuse.
    in_flight: Option<JoinHandle<Result<Vec<u8>>>>,
    /// Set once a background write failed.
    failed: Option<String>,
}

impl StoreWriter {
    /// Opens the store in `dir` when it exists with the settings of `fresh` (cleaning files a
    /// crash left behind), else creates it with `fresh` as its description.
    pub fn open(dir: &Path, fresh: StoreMeta) -> Result<Self> {
        let dtype = store_dtype(&fresh.dtype)?;
        let meta = open_or_create(dir, fresh)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            dtype,
            pending: Vec::new(),
            pending_rows: 0,
            in_flight: None,
            failed: None,
        })
    }

    /// The store's description, including a shard whose background write is still running.
    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    /// Contexts in finished shards.
    pub fn contexts_done(&self) -> usize {
        self.meta.tokens() / self.meta.context
    }

    /// Encodes rows `[n, d_in]` (any float dtype) into the current shard.
    pub fn push(&mut self, rows: Tensor) -> Result<()> {
        self.check_healthy()?;
        if rows.dims().len() != 2 || rows.dim(1)? != self.meta.d_in {
            return Err(Error::Invalid(format!(
                "rows of shape {:?} for a store of width {}",
                rows.dims(),
                self.meta.d_in
            )));
        }
        let rows_f32 = rows.to_dtype(DType::F32)?;
        let (storage, layout) = rows_f32.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            // Read in place when the rows are contiguous f32 in CPU memory (the usual case).
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => {
                encode(self.dtype, &v[a..b], &mut self.pending)
            }
            _ => {
                drop(storage);
                let flat = rows_f32.flatten_all()?.to_vec1::<f32>()?;
                encode(self.dtype, &flat, &mut self.pending);
            }
        }
        self.pending_rows += rows.dim(0)?;
        Ok(())
    }

    /// Writes the pushed rows as the next shard, then lists it in `meta.json` (marking the
    /// store complete when `last`, in which case everything is on disk when this returns).
    pub fn finish_shard(&mut self, last: bool) -> Result<()> {
        let mut recycled = self.wait()?;
        let mut shard = None;
        if self.pending_rows > 0 {
            let data = std::mem::take(&mut self.pending);
            let header = shard_header(self.dtype, self.pending_rows, self.meta.d_in, data.len());
            let file = format!("shard_{:06}.safetensors", self.meta.shards.len());
            self.meta.shards.push(ShardInfo {
                file: file.clone(),
                tokens: self.pending_rows,
                crc32c: crc32c::crc32c_append(crc32c::crc32c(&header), &data),
            });
            self.pending_rows = 0;
            shard = Some((self.dir.join(file), header, data));
        }
        recycled.clear();
        self.pending = recycled;
        self.meta.complete = last;
        let meta_path = self.dir.join(META_FILE);
        let meta = self.meta.clone();
        let job = move || -> Result<Vec<u8>> {
            let mut buffer = Vec::new();
            if let Some((path, header, data)) = shard {
                atomic_write_parts(&path, &[&header, &data])?;
                buffer = data;
            }
            write_json_pretty(&meta_path, &meta)?;
            Ok(buffer)
        };
        if last {
            if let Err(e) = job() {
                self.failed = Some(e.to_string());
                return Err(e);
            }
        } else {
            self.in_flight = Some(std::thread::spawn(job));
        }
        Ok(())
    }

    /// Waits for the shard in flight and returns the store's description as on disk.
    pub fn close(mut self) -> Result<StoreMeta> {
        self.wait()?;
        Ok(self.meta.clone())
    }

    /// Waits for the background write, if any; returns its buffer for reuse.
    fn wait(&mut self) -> Result<Vec<u8>> {
        self.check_healthy()?;
        let Some(handle) = self.in_flight.take() else {
            return Ok(Vec::new());
        };
        let outcome = handle
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("the shard writer thread panicked".into())));
        if let Err(e) = &outcome {
            self.failed = Some(e.to_string());
        }
        outcome
    }

    fn check_healthy(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(e) => Err(Error::file(
                &self.dir,
                format!("an earlier shard write failed ({e}); reopen the store to resume"),
            )),
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            // Nothing is lost: meta.json lists only complete shards, and a resumed capture
            // rewrites the rest. Still, say so.
            eprintln!("metarep-capture: {e}");
        }
    }
}

/// The safetensors prefix of a shard holding one tensor [`TENSOR_NAME`] `[rows, d_in]` of
/// `data_len` bytes: the header length (u64, little-endian) and the JSON header, padded with
/// spaces to a multiple of 8 bytes so the data stays aligned.
fn shard_header(dtype: DType, rows: usize, d_in: usize, data_len: usize) -> Vec<u8> {
    let name = match dtype {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        _ => "F32",
    };
    let mut json = serde_json::json!({
        TENSOR_NAME: {"dtype": name, "shape": [rows, d_in], "data_offsets": [0, data_len]}
    })
    .to_string()
    .into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

/// Runs `model` over `data` and stores the activations of `spec.hooks` under `out` (one store
/// per hook, see [`store_dir`]), resuming stores that a previous run left unfinished.
/// `progress(tokens_done, tokens_total)` is called after every forward pass.
pub fn capture(
    model: &HookedTransformer,
    data: &TokenDataset,
    out: &Path,
    spec: &CaptureSpec,
    mut progress: impl FnMut(usize, usize),
) -> Result<CaptureReport> {
    let start = Instant::now();
    if spec.hooks.is_empty() {
        return Err(Error::Invalid("no hooks to capture".into()));
    }
    if spec.batch_contexts == 0 || spec.shard_tokens == 0 {
        return Err(Error::Invalid(
            "batch_contexts and shard_tokens must be ≥ 1".into(),
        ));
    }
    store_dtype(&spec.dtype)?;
    let cfg = model.config();
    let context = data.sequences[0].len();
    let per_shard = spec.shard_tokens.div_ceil(context);
    let config_json = serde_json::to_vec(cfg).map_err(|e| Error::Invalid(e.to_string()))?;
    let weights_sha256 = weights_sha256(model)?;
    let mut writers = Vec::with_capacity(spec.hooks.len());
    for &hook in &spec.hooks {
        hook.check_available(cfg)?;
        let fresh = StoreMeta {
            format_version: FORMAT_VERSION,
            model: spec.model_name.clone(),
            model_config_sha256: hex(&Sha256::digest(&config_json)),
            model_weights_sha256: weights_sha256.clone(),
            hook: hook.name(),
            dtype: spec.dtype.clone(),
            d_in: hook_width(model, hook)?,
            context,
            contexts_per_shard: per_shard,
            dataset: data.path.display().to_string(),
            dataset_sha256: data.sha256.clone(),
            dataset_tokens: data.tokens(),
            shards: Vec::new(),
            complete: false,
        };
        writers.push(StoreWriter::open(&store_dir(out, hook), fresh)?);
    }
    let resumed_at = writers
        .iter()
        .map(StoreWriter::contexts_done)
        .min()
        .unwrap_or(0);
    let total = data.sequences.len();
    let budget_end = spec
        .max_contexts
        .map_or(total, |m| (resumed_at + m).min(total));
    let filter = HookFilter::patterns(&spec.hooks.iter().map(|h| h.name()).collect::<Vec<_>>());
    let run_to = model.run_to_reach(&spec.hooks);
    let mut s = resumed_at;
    progress(s * context, total * context);
    while s < budget_end {
        // Batches never cross a shard boundary, so a resumed run computes the same batches.
        let shard_end = (s / per_shard + 1) * per_shard;
        let end = (s + spec.batch_contexts).min(shard_end).min(budget_end);
        let input = Input::from_ids(&data.sequences[s..end], &Device::Cpu)?;
        let (_, cache) = model.run_with_cache_to(&input, filter.clone(), run_to)?;
        for w in &mut writers {
            if end <= w.contexts_done() {
                continue; // this hook's store is already past this batch
            }
            let act = cache.get(HookPoint::parse_for(&w.meta.hook, cfg)?)?;
            let rows = act.reshape(((), w.meta.d_in))?.to_dtype(DType::F32)?;
            w.push(rows)?;
            if end.is_multiple_of(per_shard) || end == total {
                w.finish_shard(end == total)?;
            }
        }
        s = end;
        progress(s * context, total * context);
    }
    let stores: Vec<PathBuf> = writers.iter().map(|w| w.dir.clone()).collect();
    let metas = writers
        .into_iter()
        .map(StoreWriter::close)
        .collect::<Result<Vec<_>>>()?;
    Ok(CaptureReport {
        stores,
        resumed_at_context: resumed_at,
        tokens_this_run: (s - resumed_at) * context,
        tokens_total: metas.iter().map(StoreMeta::tokens).min().unwrap_or(0),
        complete: metas.iter().all(|m| m.complete),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Last dimension of the activation at `hook` (from a one-token run).
fn hook_width(model: &HookedTransformer, hook: HookPoint) -> Result<usize> {
    let input = Input::from_ids(&[vec![0]], &Device::Cpu)?;
    let (_, cache) = model.run_with_cache(input, HookFilter::patterns(&[hook.name()]))?;
    let act = cache.get(hook)?;
    let dims = act.dims();
    if dims.len() != 3 {
        return Err(Error::Invalid(format!(
            "hook {} has shape {dims:?}; the store takes [batch, pos, d] hooks (flatten per-head hooks such as hook_z is not supported)",
            hook.name()
        )));
    }
    Ok(dims[2])
}

/// Hex SHA-256 over every weight tensor of `model` in a fixed order: its name, shape, dtype and
/// bytes (as f32, little endian).
pub fn weights_sha256(model: &HookedTransformer) -> Result<String> {
    let mut h = Sha256::new();
    for (name, t) in model.weights().named_tensors() {
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.dims(), t.dtype()).as_bytes());
        let values = t
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for v in values {
            h.update(v.to_le_bytes());
        }
    }
    Ok(hex(&h.finalize()))
}

/// The store's meta: the existing one when its settings match `fresh` (after deleting shards
/// it does not list and temporary files), else `fresh`, written. A store without a finished
/// shard (left by a run that failed before its first one) holds nothing to resume, so it is
/// replaced whatever its settings; a store holding data with other settings is an error.
fn open_or_create(dir: &Path, fresh: StoreMeta) -> Result<StoreMeta> {
    ensure_dir(dir)?;
    let existing = dir
        .join(META_FILE)
        .exists()
        .then(|| StoreMeta::read(dir))
        .transpose()?;
    let meta = match existing {
        Some(meta) if !meta.shards.is_empty() => {
            check_same_settings(dir, &meta, &fresh)?;
            meta
        }
        _ => {
            write_json_pretty(&dir.join(META_FILE), &fresh)?;
            fresh
        }
    };
    remove_strays(dir, &meta)?;
    Ok(meta)
}

/// Errors naming the first setting in which the stored `meta` differs from `fresh`, and any
/// shard it lists that is missing.
fn check_same_settings(dir: &Path, meta: &StoreMeta, fresh: &StoreMeta) -> Result<()> {
    let pairs: [(&str, String, String); 8] = [
        (
            "model_config_sha256",
            meta.model_config_sha256.clone(),
            fresh.model_config_sha256.clone(),
        ),
        (
            "model_weights_sha256",
            meta.model_weights_sha256.clone(),
            fresh.model_weights_sha256.clone(),
        ),
        ("hook", meta.hook.clone(), fresh.hook.clone()),
        ("dtype", meta.dtype.clone(), fresh.dtype.clone()),
        ("d_in", meta.d_in.to_string(), fresh.d_in.to_string()),
        (
            "context",
            meta.context.to_string(),
            fresh.context.to_string(),
        ),
        (
            "contexts_per_shard",
            meta.contexts_per_shard.to_string(),
            fresh.contexts_per_shard.to_string(),
        ),
        (
            "dataset_sha256",
            meta.dataset_sha256.clone(),
            fresh.dataset_sha256.clone(),
        ),
    ];
    for (key, stored, requested) in pairs {
        if stored != requested {
            return Err(Error::Mismatch {
                path: dir.to_path_buf(),
                key: key.into(),
                stored,
                requested,
            });
        }
    }
    for shard in &meta.shards {
        if !dir.join(&shard.file).is_file() {
            return Err(Error::file(
                dir.join(&shard.file),
                "listed in meta.json but missing",
            ));
        }
    }
    Ok(())
}

/// Deletes the files a crash left behind: temporaries and shards written but never listed.
fn remove_strays(dir: &Path, meta: &StoreMeta) -> Result<()> {
    let listed: Vec<&str> = meta.shards.iter().map(|s| s.file.as_str()).collect();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, e.to_string()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stray_tmp = name.starts_with('.') && name.contains(".tmp.");
        let stray_shard = name.starts_with("shard_") && !listed.contains(&name.as_str());
        if stray_tmp || stray_shard {
            std::fs::remove_file(entry.path())
                .map_err(|e| Error::file(entry.path(), e.to_string()))?;
        }
    }
    Ok(())
}

//! A source of named checkpoint tensors (memory-mapped safetensors files, or an in-memory map)
//! that checks shapes, converts dtype and device, and remembers which tensors were used so
//! that unexpected leftovers are reported by name.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

enum Backend {
    Mmap(MmapedSafetensors),
    Map(HashMap<String, Tensor>),
}

/// Named tensors being consumed by an architecture's loader.
pub struct CheckpointTensors {
    backend: Backend,
    desc: String,
    names: BTreeSet<String>,
    used: HashSet<String>,
    dtype: DType,
    device: Device,
}

impl CheckpointTensors {
    /// Memory-maps `files` (one checkpoint, possibly sharded); tensors are converted to `dtype`
    /// on `device` when taken.
    pub fn open(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        for f in files {
            if !f.is_file() {
                return Err(Error::io(
                    f,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
                ));
            }
        }
        // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on
        // them not being truncated or rewritten while the model is being loaded.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
            Error::Invalid(format!(
                "cannot read safetensors {}: {e}",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        let desc = match files {
            [one] => one.display().to_string(),
            many => format!(
                "{} shards in {}",
                many.len(),
                many[0]
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        };
        Ok(Self {
            backend: Backend::Mmap(st),
            desc,
            names,
            used: HashSet::new(),
            dtype,
            device: device.clone(),
        })
    }

    /// Wraps an in-memory map of tensors (described as `desc` in errors).
    pub fn from_map(
        map: HashMap<String, Tensor>,
        desc: &str,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let names = map.keys().cloned().collect();
        Self {
            backend: Backend::Map(map),
            desc: desc.to_string(),
            names,
            used: HashSet::new(),
            dtype,
            device: device.clone(),
        }
    }

    /// What this store reads from (for error messages).
    pub fn description(&self) -> &str {
        &self.desc
    }

    /// Whether a tensor named `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The shape of `name` without loading it.
    pub fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        match &self.backend {
            Backend::Mmap(st) => st
                .get(name)
                .map(|v| v.shape().to_vec())
                .map_err(|_| self.missing(name)),
            Backend::Map(m) => m
                .get(name)
                .map(|t| t.dims().to_vec())
                .ok_or_else(|| self.missing(name)),
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            name: name.to_string(),
            source_desc: self.desc.clone(),
        }
    }

    /// Loads `name`, checks it has `shape`, converts it; marks it used.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if !self.contains(name) {
            return Err(self.missing(name));
        }
        let got = self.shape_of(name)?;
        if got != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got,
            });
        }
        let t = match &mut self.backend {
            Backend::Mmap(st) => st
                .load(name, &self.device)
                .map_err(|e| Error::Invalid(format!("tensor `{name}` in {}: {e}", self.desc)))?,
            // Moved out, so that a converted copy (a transpose) does not sit beside it.
            Backend::Map(m) => m
                .remove(name)
                .ok_or_else(|| {
                    Error::Invalid(format!("tensor `{name}` in {} was read twice", self.desc))
                })?
                .to_device(&self.device)?,
        };
        if !t.dtype().is_float() {
            return Err(Error::Invalid(format!(
                "tensor `{name}` in {} has dtype {:?}, expected a float dtype",
                self.desc,
                t.dtype()
            )));
        }
        self.used.insert(name.to_string());
        Ok(t.to_dtype(self.dtype)?)
    }

    /// Like [`CheckpointTensors::take`] when `name` exists, `None` otherwise.
    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Loads the first of `names` that exists (checkpoints spell some tensors two ways).
    pub fn take_any(&mut self, names: &[String], shape: &[usize]) -> Result<Tensor> {
        match names.iter().find(|n| self.contains(n)) {
            Some(n) => {
                let n = n.clone();
                self.take(&n, shape)
            }
            None => Err(self.missing(&names[0])),
        }
    }

    /// Marks `name` as known but unused (e.g. a tied duplicate of another tensor).
    pub fn skip(&mut self, name: &str) {
        if self.contains(name) {
            self.used.insert(name.to_string());
        }
    }

    /// Errors with the first tensor that was neither used, skipped nor `ignorable`.
    pub fn finish(&self, ignorable: impl Fn(&str) -> bool) -> Result<()> {
        match self
            .names
            .iter()
            .find(|n| !self.used.contains(*n) && !ignorable(n))
        {
            None => Ok(()),
            Some(n) => Err(Error::ExtraTensor {
                name: n.clone(),
                source_desc: self.desc.clone(),
            }),
        }
    }
}

//! Run-directory files: JSON, JSONL and safetensors, written atomically (temporary file, then
//! rename) so an interrupted stage never leaves a half-written output behind.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("serializing {}: {e}", path.display())))?;
    text.push('\n');
    Ok(metarep_core::fsutil::atomic_write(path, text.as_bytes())?)
}

/// Reads JSON written by [`write_json`]; errors name the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Writes one JSON object per line.
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(
            &serde_json::to_string(r)
                .map_err(|e| Error::Invalid(format!("serializing {}: {e}", path.display())))?,
        );
        text.push('\n');
    }
    Ok(metarep_core::fsutil::atomic_write(path, text.as_bytes())?)
}

/// Reads one JSON object per non-empty line; an error names the file and the line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::Invalid(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// Writes named tensors as safetensors.
pub fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reads the tensors `names` (in that order) from a safetensors file onto `device`; an error
/// names a missing one.
pub fn read_tensors<const K: usize>(
    path: &Path,
    names: [&str; K],
    device: &Device,
) -> Result<[Tensor; K]> {
    if !path.is_file() {
        return Err(Error::Invalid(format!("{} does not exist", path.display())));
    }
    let mut all = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let mut out = Vec::with_capacity(K);
    for name in names {
        out.push(
            all.remove(name).ok_or_else(|| {
                Error::Invalid(format!("{} has no tensor `{name}`", path.display()))
            })?,
        );
    }
    out.try_into()
        .map_err(|_| Error::Invalid(format!("{}: tensor count", path.display())))
}

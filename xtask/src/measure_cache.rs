//! Measurements kept on disk under a key, so that a long measurement stopped part-way resumes at
//! the first entry not yet measured. An entry whose key differs (the config, the inputs or a
//! trained net changed) is measured again and replaced; an unreadable entry is measured again
//! with a note, never trusted.

use std::path::{Path, PathBuf};

use metarep_core::atomic_write;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;

/// A directory of named, keyed measurements (one JSON file each).
pub struct MeasureCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Entry<T> {
    key: String,
    value: T,
}

impl MeasureCache {
    /// A cache in `dir` (created at the first write).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The value saved as `name` under `key`, or else `measure()`'s, saved before it is returned.
    /// `name` must be a plain file name (letters, digits, `_`, `-`, `.`).
    pub fn get_or_measure<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        key: &str,
        measure: impl FnOnce() -> Result<T, BoxError>,
    ) -> Result<T, BoxError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(format!("measurement name {name:?} is not a plain file name").into());
        }
        let path = self.dir.join(format!("{name}.json"));
        if let Some(value) = read_entry(&path, key) {
            return Ok(value);
        }
        let value = measure()?;
        let text = serde_json::to_string(&Entry {
            key: key.to_string(),
            value: &value,
        })?;
        atomic_write(&path, text.as_bytes())?;
        Ok(value)
    }
}

/// The entry at `path` when it exists, parses and carries `key`.
fn read_entry<T: DeserializeOwned>(path: &Path, key: &str) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str::<Entry<T>>(&text) {
        Ok(e) if e.key == key => Some(e.value),
        Ok(_) => None,
        Err(e) => {
            eprintln!(
                "  {} is unreadable ({e}); measuring it again",
                path.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_values_are_reused_only_under_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MeasureCache::new(dir.path());
        let mut calls = 0;
        let mut get = |key: &str, v: Vec<f64>| {
            cache
                .get_or_measure("nll", key, || {
                    calls += 1;
                    Ok(v)
                })
                .unwrap()
        };
        assert_eq!(get("a", vec![0.1, 1.0 / 3.0]), vec![0.1, 1.0 / 3.0]);
        // Same key: the saved values, to the bit, without measuring.
        assert_eq!(get("a", vec![9.0]), vec![0.1, 1.0 / 3.0]);
        // Another key: measured again and replaced.
        assert_eq!(get("b", vec![2.0]), vec![2.0]);
        assert_eq!(get("b", vec![3.0]), vec![2.0]);
        assert_eq!(calls, 2);
    }

    #[test]
    fn unreadable_entries_are_measured_again_and_bad_names_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.json"), "{not json").unwrap();
        let cache = MeasureCache::new(dir.path());
        let v: Vec<f64> = cache.get_or_measure("x", "k", || Ok(vec![1.0])).unwrap();
        assert_eq!(v, vec![1.0]);
        let again: Vec<f64> = cache.get_or_measure("x", "k", || Ok(vec![5.0])).unwrap();
        assert_eq!(again, vec![1.0]);
        let bad = cache.get_or_measure::<Vec<f64>>("../x", "k", || Ok(vec![]));
        assert!(bad.unwrap_err().to_string().contains("plain file name"));
    }

    #[test]
    fn a_failed_measurement_saves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MeasureCache::new(dir.path());
        let r = cache.get_or_measure::<Vec<f64>>("y", "k", || Err("broke".into()));
        assert!(r.is_err());
        assert!(!dir.path().join("y.json").exists());
    }
}

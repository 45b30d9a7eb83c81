//! Metrics output: a JSON-lines sink for streams of records, and `FlatMetrics`, the flat
//! `metrics.json` object of named numbers and booleans.
//!
//! Non-finite numbers: JSON has no NaN or infinity, so [`MetricValue::Number`] writes NaN,
//! +inf and -inf as the strings `"NaN"`, `"inf"` and `"-inf"` (and reads them back), keeping
//! `metrics.json` valid JSON without losing the value. In [`MetricsSink`] records, serde_json
//! writes non-finite floats as `null`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::fsutil::ensure_dir;

/// Appends one JSON object per line to a file; buffered, flushed on [`MetricsSink::flush`]
/// and on drop.
#[derive(Debug)]
pub struct MetricsSink {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl MetricsSink {
    /// Creates (truncating) the JSONL file at `path`, creating its directory if needed.
    pub fn create(path: &Path) -> Result<Self> {
        Self::open(path, false)
    }

    /// Opens the JSONL file at `path` for appending (e.g. when resuming), creating it if needed.
    pub fn append(path: &Path) -> Result<Self> {
        Self::open(path, true)
    }

    fn open(path: &Path, append: bool) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            ensure_dir(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsSink {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
        })
    }

    /// The file this sink writes to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `record` as one compact JSON line.
    pub fn log(&mut self, record: &impl Serialize) -> Result<()> {
        let line =
            serde_json::to_string(record).map_err(|e| Error::json(self.path.display(), e))?;
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes buffered lines to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Cuts the JSONL log at `path` back to the lines whose `step` is below `step` (what a run
/// resuming from a checkpoint of step `step` keeps); lines without a step and lines cut short
/// by an interruption are dropped. A missing file is left missing. Atomic.
pub fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut kept = String::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v.get("step")
            .and_then(|s| s.as_u64())
            .is_some_and(|s| s < step as u64)
        {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    crate::fsutil::atomic_write(path, kept.as_bytes())
}

impl Drop for MetricsSink {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; call `flush()` explicitly to see them.
        let _ = self.writer.flush();
    }
}

/// One metric: a number or a boolean (serialized untagged; non-finite numbers as strings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricValue {
    /// A number; NaN/inf are written as `"NaN"`, `"inf"`, `"-inf"`.
    Number(f64),
    /// A boolean, e.g. `"pass"`.
    Bool(bool),
}

impl MetricValue {
    /// The number, if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetricValue::Number(x) => Some(x),
            MetricValue::Bool(_) => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetricValue::Bool(b) => Some(b),
            MetricValue::Number(_) => None,
        }
    }
}

impl Serialize for MetricValue {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            MetricValue::Bool(b) => s.serialize_bool(b),
            MetricValue::Number(x) if x.is_finite() => s.serialize_f64(x),
            MetricValue::Number(x) if x.is_nan() => s.serialize_str("NaN"),
            MetricValue::Number(x) if x > 0.0 => s.serialize_str("inf"),
            MetricValue::Number(_) => s.serialize_str("-inf"),
        }
    }
}

impl<'de> Deserialize<'de> for MetricValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(x) => Ok(MetricValue::Number(x)),
            Raw::Bool(b) => Ok(MetricValue::Bool(b)),
            Raw::Text(t) => match t.as_str() {
                "NaN" => Ok(MetricValue::Number(f64::NAN)),
                "inf" | "+inf" => Ok(MetricValue::Number(f64::INFINITY)),
                "-inf" => Ok(MetricValue::Number(f64::NEG_INFINITY)),
                other => Err(serde::de::Error::custom(format!(
                    "metric value must be a number, a boolean, \"NaN\", \"inf\" or \"-inf\", \
                     got string {other:?}"
                ))),
            },
        }
    }
}

/// The flat `metrics.json` object: named numbers and booleans, keys sorted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FlatMetrics {
    /// The metrics by name.
    pub values: BTreeMap<String, MetricValue>,
}

impl FlatMetrics {
    /// An empty set of metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a numeric metric.
    pub fn set_number(&mut self, key: impl Into<String>, value: f64) {
        self.values.insert(key.into(), MetricValue::Number(value));
    }

    /// Sets a boolean metric.
    pub fn set_bool(&mut self, key: impl Into<String>, value: bool) {
        self.values.insert(key.into(), MetricValue::Bool(value));
    }

    /// The metric named `key`, if set.
    pub fn get(&self, key: &str) -> Option<MetricValue> {
        self.values.get(key).copied()
    }

    /// Number of metrics.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no metric is set.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Writes the metrics as a pretty JSON object, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_json_pretty(path, self)
    }

    /// Reads metrics written by [`FlatMetrics::write_json`].
    pub fn read_json(path: &Path) -> Result<Self> {
        crate::fsutil::read_json(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Step {
        step: u32,
        loss: f64,
        tag: &'static str,
    }

    #[test]
    fn jsonl_one_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runs/metrics.jsonl");
        {
            let mut sink = MetricsSink::create(&p).unwrap();
            for step in 0..3 {
                sink.log(&Step {
                    step,
                    loss: if step == 2 {
                        f64::NAN
                    } else {
                        1.0 / (step + 1) as f64
                    },
                    tag: "a\nb",
                })
                .unwrap();
            }
            sink.flush().unwrap();
        }
        {
            let mut sink = MetricsSink::append(&p).unwrap();
            sink.log(&serde_json::json!({"step": 3})).unwrap();
        } // flushed on drop
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v.is_object());
            assert_eq!(v["step"], i as u64);
        }
    }

    #[test]
    fn flat_metrics_round_trip() {
        let mut m = FlatMetrics::new();
        m.set_number("rel_err", 1.5e-7);
        m.set_number("nan", f64::NAN);
        m.set_number("big", f64::INFINITY);
        m.set_number("small", f64::NEG_INFINITY);
        m.set_bool("pass", true);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.json");
        m.write_json(&p).unwrap();
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(raw["nan"], "NaN");
        assert_eq!(raw["pass"], true);
        let back = FlatMetrics::read_json(&p).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.get("rel_err"), Some(MetricValue::Number(1.5e-7)));
        assert!(back.get("nan").unwrap().as_f64().unwrap().is_nan());
        assert_eq!(back.get("big").unwrap().as_f64(), Some(f64::INFINITY));
        assert_eq!(back.get("small").unwrap().as_f64(), Some(f64::NEG_INFINITY));
        assert_eq!(back.get("pass").unwrap().as_bool(), Some(true));
        assert!(back.get("missing").is_none());
        assert!(serde_json::from_str::<FlatMetrics>(r#"{"x": "oops"}"#).is_err());
    }
}

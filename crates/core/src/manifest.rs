//! Run manifests: what ran (config + hash, seeds, git commit, crate version), where and when.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::config::{canonical_value, config_hash};
use crate::error::{Error, Result};
use crate::time::now_rfc3339;

/// The `manifest.json` written next to every result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// Snapshot of the config, as JSON with sorted keys.
    pub config: serde_json::Value,
    /// Lowercase hex SHA-256 of the canonical JSON of the config.
    pub config_sha256: String,
    /// Every seed the run used.
    pub seeds: Vec<u64>,
    /// `git rev-parse HEAD` in the current directory, or `"unknown"`.
    pub git_commit: String,
    /// Name of the crate that produced the run.
    pub crate_name: String,
    /// Version of that crate.
    pub crate_version: String,
    /// Host name (from `/etc/hostname`, then `$HOSTNAME`, else `"unknown"`).
    pub host: String,
    /// Start time, RFC 3339 UTC.
    pub start_time: String,
    /// End time, RFC 3339 UTC; `None` until [`RunManifest::finish`].
    pub end_time: Option<String>,
    /// Free-form extra fields (e.g. other crate versions, device).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl RunManifest {
    /// Starts a manifest now: snapshots and hashes `config`, records seeds, git commit and host.
    pub fn start(
        config: &impl Serialize,
        seeds: Vec<u64>,
        crate_name: &str,
        crate_version: &str,
    ) -> Result<Self> {
        Ok(RunManifest {
            config: canonical_value(config)?,
            config_sha256: config_hash(config)?,
            seeds,
            git_commit: git_commit(),
            crate_name: crate_name.to_string(),
            crate_version: crate_version.to_string(),
            host: host_name(),
            start_time: now_rfc3339(),
            end_time: None,
            extra: BTreeMap::new(),
        })
    }

    /// Records the end time (now).
    pub fn finish(&mut self) {
        self.end_time = Some(now_rfc3339());
    }

    /// Sets an extra field to any serializable value.
    pub fn set_extra(&mut self, key: &str, value: &impl Serialize) -> Result<()> {
        let v = serde_json::to_value(value)
            .map_err(|e| Error::json(format!("manifest extra `{key}`"), e))?;
        self.extra.insert(key.to_string(), v);
        Ok(())
    }

    /// Writes the manifest as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_json_pretty(path, self)
    }

    /// Reads a manifest written by [`RunManifest::write_json`].
    pub fn read_json(path: &Path) -> Result<Self> {
        crate::fsutil::read_json(path)
    }
}

/// The current git commit (`git rev-parse HEAD` in the working directory), or `"unknown"`.
pub fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_string())
}

/// The host name from `/etc/hostname`, then `$HOSTNAME`, else `"unknown"`.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Cfg {
        z: u32,
        a: Vec<f64>,
    }

    #[test]
    fn round_trip_through_json() {
        let cfg = Cfg {
            z: 3,
            a: vec![0.5, 1.0],
        };
        let mut m = RunManifest::start(&cfg, vec![1, 2, 3], "metarep-core", "0.1.0").unwrap();
        assert!(m.end_time.is_none());
        assert_eq!(m.config_sha256, config_hash(&cfg).unwrap());
        assert!(!m.git_commit.is_empty() && !m.host.is_empty());
        m.set_extra("device", &"cpu").unwrap();
        m.finish();
        assert!(m.end_time.as_deref().unwrap() >= m.start_time.as_str());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.json");
        m.write_json(&p).unwrap();
        let back = RunManifest::read_json(&p).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.config["z"], 3);
        assert!(RunManifest::read_json(&dir.path().join("missing.json")).is_err());
    }
}

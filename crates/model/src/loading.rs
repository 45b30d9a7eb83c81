//! Finding a checkpoint's files: a local directory (`config.json` + `model.safetensors` or a
//! sharded `model.safetensors.index.json`, optional `tokenizer.json`) or a Hugging Face hub id,
//! fetched through `hf-hub` into its cache (`$HF_HOME/hub` by default, or
//! [`LoadOptions::cache_dir`]). Offline (`HF_HUB_OFFLINE=1` or [`LoadOptions::offline`]) only
//! the cache is read, and a model that is not there is an error naming the id and the cache path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Dtype the weights are converted to (the forward pass runs in it).
    pub dtype: DType,
    /// Device the weights are placed on.
    pub device: Device,
    /// Hub revision (branch, tag or commit); `main` by default.
    pub revision: String,
    /// Hub cache directory; `None` uses `hf-hub`'s default (`$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network; read the hub cache only.
    pub offline: bool,
}

impl Default for LoadOptions {
    /// f32 on the CPU, revision `main`, default cache, offline when `HF_HUB_OFFLINE` is set
    /// to `1`/`true`.
    fn default() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
            .unwrap_or(false);
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            revision: "main".to_string(),
            cache_dir: None,
            offline,
        }
    }
}

/// The files of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// The safetensors files (one, or the shards of an index).
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<PathBuf>,
}

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";

/// The shard files named by a `model.safetensors.index.json` (its `weight_map` values, sorted).
pub fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::json(index.display(), e))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config {
            path: index.to_path_buf(),
            key: "weight_map".into(),
            reason: "missing or not an object".into(),
        })?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| Error::Config {
            path: index.to_path_buf(),
            key: format!("weight_map.{tensor}"),
            reason: "the shard must be a file name".into(),
        })?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(Error::Config {
                path: index.to_path_buf(),
                key: format!("weight_map.{tensor}"),
                reason: format!("shard `{file}` must be a plain file name"),
            });
        }
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        return Err(Error::Config {
            path: index.to_path_buf(),
            key: "weight_map".into(),
            reason: "names no shard".into(),
        });
    }
    Ok(shards.into_iter().collect())
}

/// The files of the checkpoint in directory `dir`.
pub fn local_files(dir: &Path) -> Result<ModelFiles> {
    let config = dir.join(CONFIG);
    if !config.is_file() {
        return Err(Error::io(
            &config,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no config.json in the model directory",
            ),
        ));
    }
    let weights = if dir.join(SINGLE).is_file() {
        vec![dir.join(SINGLE)]
    } else if dir.join(INDEX).is_file() {
        index_shards(&dir.join(INDEX))?
            .into_iter()
            .map(|f| dir.join(f))
            .collect()
    } else if dir.join("pytorch_model.bin").is_file() {
        return Err(Error::Unsupported(format!(
            "{} holds only pytorch_model.bin; metarep reads safetensors (convert it, e.g. with \
             `transformers`' save_pretrained(safe_serialization=True))",
            dir.display()
        )));
    } else {
        return Err(Error::io(
            dir.join(SINGLE),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "neither model.safetensors nor model.safetensors.index.json in the model directory",
            ),
        ));
    };
    let tokenizer = Some(dir.join(TOKENIZER)).filter(|p| p.is_file());
    Ok(ModelFiles {
        config,
        weights,
        tokenizer,
    })
}

/// The hub cache directory `opts` uses.
pub fn cache_dir(opts: &LoadOptions) -> PathBuf {
    opts.cache_dir
        .clone()
        .unwrap_or_else(|| hf_hub::Cache::from_env().path().clone())
}

/// The files of hub model `id`, from the cache or (unless offline) downloaded into it.
pub fn hub_files(id: &str, opts: &LoadOptions) -> Result<ModelFiles> {
    let cache_path = cache_dir(opts);
    let repo = hf_hub::Repo::with_revision(
        id.to_string(),
        hf_hub::RepoType::Model,
        opts.revision.clone(),
    );
    let cached = hf_hub::Cache::new(cache_path.clone()).repo(repo.clone());
    let offline_err = |hint: String| Error::Offline {
        id: id.to_string(),
        cache: cache_path.clone(),
        hint,
    };
    // Everything already cached: no network needed.
    if let Some(config) = cached.get(CONFIG) {
        let weights = if let Some(single) = cached.get(SINGLE) {
            Some(vec![single])
        } else if let Some(index) = cached.get(INDEX) {
            index_shards(&index)?
                .iter()
                .map(|f| cached.get(f))
                .collect::<Option<Vec<_>>>()
        } else {
            None
        };
        if let Some(weights) = weights {
            return Ok(ModelFiles {
                config,
                weights,
                tokenizer: cached.get(TOKENIZER),
            });
        }
    }
    if opts.offline {
        return Err(offline_err(
            " (offline mode: HF_HUB_OFFLINE or LoadOptions::offline)".into(),
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache_path.clone()))
        .with_progress(metarep_core::progress::enabled())
        .build()
        .map_err(|e| Error::Hub {
            id: id.to_string(),
            cache: cache_path.clone(),
            reason: e.to_string(),
        })?
        .repo(repo);
    let info = api
        .info()
        .map_err(|e| offline_err(format!(" and the hub could not be reached: {e}")))?;
    let files: BTreeSet<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let fetch = |name: &str| {
        api.get(name).map_err(|e| Error::Hub {
            id: id.to_string(),
            cache: cache_path.clone(),
            reason: format!("downloading {name}: {e}"),
        })
    };
    let config = fetch(CONFIG)?;
    let weights = if files.contains(SINGLE) {
        vec![fetch(SINGLE)?]
    } else if files.contains(INDEX) {
        let index = fetch(INDEX)?;
        index_shards(&index)?
            .iter()
            .map(|f| fetch(f))
            .collect::<Result<Vec<_>>>()?
    } else {
        return Err(Error::Hub {
            id: id.to_string(),
            cache: cache_path,
            reason: "the repository has no model.safetensors or model.safetensors.index.json"
                .into(),
        });
    };
    let tokenizer = if files.contains(TOKENIZER) {
        Some(fetch(TOKENIZER)?)
    } else {
        None
    };
    Ok(ModelFiles {
        config,
        weights,
        tokenizer,
    })
}

/// A local directory when `spec` is one, else a hub id.
pub fn resolve(spec: &str, opts: &LoadOptions) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        return local_files(path);
    }
    if path.exists()
        || spec.starts_with('.')
        || spec.starts_with('/')
        || spec.split('/').count() > 2
    {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a model directory"),
        ));
    }
    hub_files(spec, opts)
}

/// Files beside `config.json` that may declare `bos_token_id` / `eos_token_id`.
const SPECIAL_ID_FILES: &[&str] = &["config.json", "generation_config.json"];

/// The beginning- and end-of-sequence ids a Hugging Face checkpoint declares in `config.json`
/// and `generation_config.json` (in the directory of `config`): `bos_token_id` a number,
/// `eos_token_id` a number or a list; absent or null is none; a later file's BOS wins.
pub fn declared_special_ids(config: &Path) -> Result<(Option<u32>, Vec<u32>)> {
    let dir = config.parent().unwrap_or(Path::new("."));
    let (mut bos, mut eos) = (None, Vec::new());
    for name in SPECIAL_ID_FILES {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::json(path.display(), e))?;
        let bad = |key: &str| Error::Config {
            path: path.clone(),
            key: key.to_string(),
            reason: "not a token id (or, for eos_token_id, a list of them)".into(),
        };
        let id = |key: &str, v: &serde_json::Value| {
            v.as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad(key))
        };
        match json.get("bos_token_id") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => bos = Some(id("bos_token_id", v)?),
        }
        match json.get("eos_token_id") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(list)) => {
                for v in list {
                    eos.push(id("eos_token_id", v)?);
                }
            }
            Some(v) => eos.push(id("eos_token_id", v)?),
        }
    }
    Ok((bos, eos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ids_are_numbers_lists_or_absent_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        let ids = |config_json: &str, generation_json: Option<&str>| {
            std::fs::write(&config, config_json).unwrap();
            let gen = dir.path().join("generation_config.json");
            match generation_json {
                Some(g) => std::fs::write(&gen, g).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&gen);
                }
            }
            declared_special_ids(&config)
        };
        assert_eq!(
            ids(r#"{"eos_token_id": 2}"#, None).unwrap(),
            (None, vec![2])
        );
        assert_eq!(
            ids(
                r#"{"bos_token_id": 1, "eos_token_id": null}"#,
                Some(r#"{"eos_token_id": [0, 2]}"#)
            )
            .unwrap(),
            (Some(1), vec![0, 2])
        );
        let e = ids(r#"{}"#, Some(r#"{"eos_token_id": "</s>"}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("generation_config.json") && e.contains("eos_token_id"),
            "{e}"
        );
        assert!(ids(r#"{"eos_token_id": [1, -1]}"#, None).is_err());
        assert!(ids("{", None)
            .unwrap_err()
            .to_string()
            .contains("config.json"));
    }

    #[test]
    fn offline_hub_miss_names_id_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LoadOptions {
            cache_dir: Some(dir.path().to_path_buf()),
            offline: true,
            ..LoadOptions::default()
        };
        let err = hub_files("EleutherAI/pythia-14m", &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("EleutherAI/pythia-14m"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("offline"), "{err}");
    }

    #[test]
    fn offline_hub_hit_reads_the_cache_layout() {
        // hf-hub's cache layout: models--{org}--{name}/refs/main → snapshots/{commit}/files.
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join(CONFIG), "{}").unwrap();
        std::fs::write(
            snap.join(INDEX),
            r#"{"weight_map": {"a": "s-1.safetensors", "b": "s-2.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(snap.join("s-1.safetensors"), "").unwrap();
        let opts = LoadOptions {
            cache_dir: Some(dir.path().to_path_buf()),
            offline: true,
            ..LoadOptions::default()
        };
        // One shard missing: still an offline miss.
        assert!(matches!(
            hub_files("org/tiny", &opts),
            Err(Error::Offline { .. })
        ));
        std::fs::write(snap.join("s-2.safetensors"), "").unwrap();
        let files = hub_files("org/tiny", &opts).unwrap();
        assert_eq!(
            files.weights,
            vec![snap.join("s-1.safetensors"), snap.join("s-2.safetensors")]
        );
        assert!(files.tokenizer.is_none());
    }

    #[test]
    fn local_dir_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = local_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        std::fs::write(dir.path().join(CONFIG), "{}").unwrap();
        let err = local_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        std::fs::write(dir.path().join("pytorch_model.bin"), "").unwrap();
        let err = local_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("pytorch_model.bin"), "{err}");
        std::fs::write(dir.path().join(INDEX), r#"{"weight_map": {"a": "../x"}}"#).unwrap();
        let err = local_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("weight_map.a"), "{err}");
    }
}

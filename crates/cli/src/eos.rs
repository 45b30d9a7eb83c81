//! The end-of-sequence token ids a checkpoint declares: in a GGUF file
//! `tokenizer.ggml.eos_token_id` and, where present, `tokenizer.ggml.eot_token_id`; in a
//! Hugging Face checkpoint `eos_token_id` (a number or a list) of `config.json` and of
//! `generation_config.json` beside it. A checkpoint that declares none has none.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use metarep_model::gguf::Metadata;
use metarep_model::LoadOptions;

/// GGUF keys holding end-of-sequence ids.
const GGUF_KEYS: &[&str] = &["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"];

/// Hugging Face files (in the config's directory) that may name `eos_token_id`.
const HF_FILES: &[&str] = &["config.json", "generation_config.json"];

/// The end-of-sequence ids of the checkpoint `spec` (a `.gguf` file, a directory or a hub id,
/// as `HookedTransformer::from_pretrained` takes it), sorted, without repeats.
pub fn eos_ids(spec: &str, opts: &LoadOptions) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let path = Path::new(spec);
    let mut ids = if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        gguf_eos(path)?
    } else {
        let config = metarep_model::loading::resolve(spec, opts)?.config;
        let dir = config.parent().unwrap_or(Path::new("."));
        let mut ids = Vec::new();
        for name in HF_FILES {
            let file = dir.join(name);
            if file.is_file() {
                ids.extend(json_eos(&file)?);
            }
        }
        ids
    };
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The ids under [`GGUF_KEYS`] in the file's metadata.
fn gguf_eos(path: &Path) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let content = Content::read(&mut BufReader::new(file))
        .map_err(|e| format!("{}: not a readable GGUF file: {e}", path.display()))?;
    let meta = Metadata::new(path, &content);
    let mut ids = Vec::new();
    for key in GGUF_KEYS {
        if meta.get(key).is_some() {
            ids.push(id_u32(meta.usize(key)?, path, key)?);
        }
    }
    Ok(ids)
}

/// `eos_token_id` of a JSON file: absent or null is none; a number or a list of numbers.
fn json_eos(path: &Path) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let one = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                format!(
                    "{}: `eos_token_id` is not a token id or a list of them",
                    path.display()
                )
            })
    };
    match json.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(list)) => {
            Ok(list.iter().map(one).collect::<Result<_, _>>()?)
        }
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// `id` as a token id (u32); the error names the file and key.
fn id_u32(id: usize, path: &Path, key: &str) -> Result<u32, String> {
    u32::try_from(id).map_err(|_| format!("{}: `{key}` = {id} is not a token id", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eos_of(json: &str) -> Result<Vec<u32>, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("generation_config.json");
        std::fs::write(&file, json).unwrap();
        json_eos(&file).map_err(|e| e.to_string())
    }

    #[test]
    fn eos_token_id_is_a_number_a_list_or_absent() {
        assert_eq!(eos_of(r#"{"eos_token_id": 2}"#).unwrap(), vec![2]);
        assert_eq!(eos_of(r#"{"eos_token_id": [0, 2]}"#).unwrap(), vec![0, 2]);
        assert!(eos_of(r#"{"eos_token_id": null}"#).unwrap().is_empty());
        assert!(eos_of(r#"{"bos_token_id": 1}"#).unwrap().is_empty());
        let e = eos_of(r#"{"eos_token_id": "</s>"}"#).unwrap_err();
        assert!(
            e.contains("generation_config.json") && e.contains("eos_token_id"),
            "{e}"
        );
        assert!(eos_of(r#"{"eos_token_id": [1, -1]}"#).is_err());
        assert!(eos_of("{").unwrap_err().contains("generation_config.json"));
    }
}

//! Checkpoints: named tensors in `tensors.safetensors`, its SHA-256 in `tensors.sha256`, and a
//! serializable `state.json`, each written atomically (tensors first, state last, so a present
//! `state.json` marks a complete save). Loading verifies the checksum, so flipped bytes in the
//! tensors are an error naming the file instead of weights trained on. (Checkpoints written
//! before the checksum existed have no `tensors.sha256` and load unverified.)

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::fsutil::{atomic_write, ensure_dir};

/// File name of the tensors inside a checkpoint directory.
pub const TENSORS_FILE: &str = "tensors.safetensors";
/// File name of the JSON state inside a checkpoint directory.
pub const STATE_FILE: &str = "state.json";
/// File name of the tensors' hex SHA-256 inside a checkpoint directory.
pub const CHECKSUM_FILE: &str = "tensors.sha256";

/// Hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Saves `tensors` (unique names) and `state` into `dir`, creating it if needed.
pub fn save_checkpoint(
    dir: &Path,
    tensors: &[(String, Tensor)],
    state: &impl Serialize,
) -> Result<()> {
    let mut seen = HashSet::new();
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::Invalid(format!(
                "checkpoint {}: tensor name `{name}` appears twice",
                dir.display()
            )));
        }
        // Copy to a contiguous CPU tensor first so that serialization cannot fail later.
        cpu.push((name.as_str(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let tensors_path = dir.join(TENSORS_FILE);
    let bytes = safetensors::tensor::serialize(cpu.iter().map(|(n, t)| (*n, t)), None).map_err(
        |source| Error::Safetensors {
            path: tensors_path.clone(),
            source,
        },
    )?;
    let state_path = dir.join(STATE_FILE);
    let mut state_text =
        serde_json::to_string_pretty(state).map_err(|e| Error::json(state_path.display(), e))?;
    state_text.push('\n');
    ensure_dir(dir)?;
    atomic_write(&tensors_path, &bytes)?;
    atomic_write(
        &dir.join(CHECKSUM_FILE),
        format!("{}\n", sha256_hex(&bytes)).as_bytes(),
    )?;
    atomic_write(&state_path, state_text.as_bytes())
}

/// Saves a map of tensors and `state` into `dir` (names are written in sorted order).
pub fn save_checkpoint_map(
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    state: &impl Serialize,
) -> Result<()> {
    let mut list: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    save_checkpoint(dir, &list, state)
}

/// Loads the tensors (onto `device`) and the state saved by [`save_checkpoint`] from `dir`.
pub fn load_checkpoint<S: DeserializeOwned>(
    dir: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, S)> {
    if !dir.is_dir() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            reason: "directory does not exist".to_string(),
        });
    }
    let state_path = dir.join(STATE_FILE);
    let tensors_path = dir.join(TENSORS_FILE);
    for p in [&tensors_path, &state_path] {
        if !p.is_file() {
            return Err(Error::Checkpoint {
                path: p.clone(),
                reason: "file is missing (incomplete or not a checkpoint)".to_string(),
            });
        }
    }
    let bytes = std::fs::read(&tensors_path).map_err(|e| Error::io(&tensors_path, e))?;
    let checksum_path = dir.join(CHECKSUM_FILE);
    if checksum_path.is_file() {
        let want =
            std::fs::read_to_string(&checksum_path).map_err(|e| Error::io(&checksum_path, e))?;
        let got = sha256_hex(&bytes);
        if want.trim() != got {
            return Err(Error::Checkpoint {
                path: tensors_path,
                reason: format!(
                    "damaged: its SHA-256 is {got}, {} says {}",
                    CHECKSUM_FILE,
                    want.trim()
                ),
            });
        }
    }
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|source| Error::Safetensors {
            path: tensors_path.clone(),
            source,
        })?;
    let mut tensors = HashMap::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let t =
            candle_core::safetensors::Load::load(&view, device).map_err(|e| Error::Checkpoint {
                path: tensors_path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        tensors.insert(name, t);
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state = serde_json::from_str(&text).map_err(|e| Error::json(state_path.display(), e))?;
    Ok((tensors, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        step: u64,
        lr: f64,
    }

    #[test]
    fn a_flipped_byte_in_the_tensors_is_an_error_naming_the_file() {
        // Issue 23.5: a damaged checkpoint must never be loaded as weights.
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ck");
        let w = Tensor::arange(0f32, 64f32, &dev).unwrap();
        save_checkpoint(&ck, &[("w".into(), w)], &State { step: 1, lr: 0.1 }).unwrap();
        let path = ck.join(TENSORS_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let e = load_checkpoint::<State>(&ck, &dev).unwrap_err().to_string();
        assert!(e.contains(TENSORS_FILE) && e.contains("damaged"), "{e}");
        // Without the checksum file (a checkpoint from before it existed) it loads unverified.
        std::fs::remove_file(ck.join(CHECKSUM_FILE)).unwrap();
        assert!(load_checkpoint::<State>(&ck, &dev).is_ok());
    }

    #[test]
    fn round_trip_f32_f64_and_state() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6f32, &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::new(&[1.5f64, -2.25, 1e-300], &dev).unwrap();
        // A non-contiguous tensor is saved with its logical layout.
        let c = a.t().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ckpt/step-10");
        let state = State { step: 10, lr: 0.01 };
        save_checkpoint(
            &ck,
            &[
                ("a".into(), a.clone()),
                ("b".into(), b.clone()),
                ("c".into(), c.clone()),
            ],
            &state,
        )
        .unwrap();
        let (t, s): (HashMap<String, Tensor>, State) = load_checkpoint(&ck, &dev).unwrap();
        assert_eq!(s, state);
        assert_eq!(t.len(), 3);
        assert_eq!(t["a"].dtype(), DType::F32);
        assert_eq!(t["b"].dtype(), DType::F64);
        assert_eq!(
            t["a"].to_vec2::<f32>().unwrap(),
            a.to_vec2::<f32>().unwrap()
        );
        assert_eq!(
            t["b"].to_vec1::<f64>().unwrap(),
            b.to_vec1::<f64>().unwrap()
        );
        assert_eq!(
            t["c"].to_vec2::<f32>().unwrap(),
            c.to_vec2::<f32>().unwrap()
        );

        // Saving again over the same dir replaces it.
        let mut map = HashMap::new();
        map.insert("only".to_string(), b.clone());
        save_checkpoint_map(&ck, &map, &State { step: 11, lr: 0.0 }).unwrap();
        let (t, s): (HashMap<String, Tensor>, State) = load_checkpoint(&ck, &dev).unwrap();
        assert_eq!(s.step, 11);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn missing_and_corrupt_are_errors_naming_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = load_checkpoint::<State>(&missing, &Device::Cpu).unwrap_err();
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        let ck = dir.path().join("ck");
        let x = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        save_checkpoint(&ck, &[("x".into(), x.clone())], &State { step: 1, lr: 1.0 }).unwrap();
        std::fs::write(ck.join(TENSORS_FILE), b"garbage").unwrap();
        let err = load_checkpoint::<State>(&ck, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains(TENSORS_FILE), "{err}");

        save_checkpoint(&ck, &[("x".into(), x.clone())], &State { step: 1, lr: 1.0 }).unwrap();
        std::fs::write(ck.join(STATE_FILE), b"{not json").unwrap();
        let err = load_checkpoint::<State>(&ck, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains(STATE_FILE), "{err}");

        std::fs::remove_file(ck.join(STATE_FILE)).unwrap();
        let err = load_checkpoint::<State>(&ck, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains(STATE_FILE), "{err}");

        let dup = save_checkpoint(&ck, &[("x".into(), x.clone()), ("x".into(), x)], &1u8);
        assert!(dup.unwrap_err().to_string().contains("`x`"));
    }
}

//! GGUF checkpoints (llama.cpp's single-file format): the metadata becomes a model config, every
//! tensor is dequantized (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants, by
//! candle's `quantized` module) to the requested dtype under its Hugging Face name, and the
//! tokenizer is rebuilt from `tokenizer.ggml.*` ([`tokenizer`]).
//!
//! Architectures: `llama` (Llama, SmolLM, Mistral-style models) and `gemma3`. llama.cpp's
//! converter stores a llama's query and key projections with the rows of each head permuted
//! (for its interleaved rotary layout); they are permuted back here so that the rotate-half
//! rotary of the forward pass sees Hugging Face's layout ([`unpermute_qk`]). Gemma's are not
//! permuted (llama.cpp runs it with rotate-half rotary), but its converter stores every RMSNorm
//! weight as `1 + w`; the `w` of Hugging Face's checkpoints is given back here. What llama.cpp
//! hard-codes for Gemma 3 rather than storing is taken from there: every sixth layer is global,
//! the others slide with base 10 000, and queries are scaled by `1/√key_length` (by
//! `1/√(d_model/heads)` in the 62-layer 27B model).
//!
//! A truncated or corrupt file, an unknown architecture, a missing metadata key or a tensor of
//! an unsupported type is an error naming the file and the key or tensor.

pub mod header;
pub mod tokenizer;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::hf_config::parse_hf_config;
use crate::tokenizer::Tokenizer;

/// A GGUF file's model: its config, its tensors under Hugging Face names (dequantized), and
/// its tokenizer.
pub struct GgufModel {
    /// The model config built from the metadata.
    pub config: ModelConfig,
    /// Tensors by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub tensors: HashMap<String, Tensor>,
    /// The tokenizer from `tokenizer.ggml.*`.
    pub tokenizer: Tokenizer,
}

/// The metadata of an open GGUF file, read with errors that name the file and the key.
pub struct Metadata<'a> {
    path: &'a Path,
    content: &'a Content,
}

impl<'a> Metadata<'a> {
    /// The metadata of `content`, read from `path`.
    pub fn new(path: &'a Path, content: &'a Content) -> Self {
        Metadata { path, content }
    }

    /// An error about metadata key `key`.
    pub fn err(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    fn need(&self, key: &str) -> Result<&'a Value> {
        self.get(key)
            .ok_or_else(|| self.err(key, "missing from the GGUF metadata"))
    }

    /// `key` as an unsigned integer (any integer type).
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.need(key)?;
        let n = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.err(key, format!("expected a non-negative integer, got {v:?}")))
    }

    /// `key` as an unsigned integer, or `default` when absent.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            Some(_) => self.usize(key),
            None => Ok(default),
        }
    }

    /// `key` as a float (f32 or f64), or `default` when absent.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::F32(x)) => Ok(*x as f64),
            Some(Value::F64(x)) => Ok(*x),
            Some(v) => Err(self.err(key, format!("expected a float, got {v:?}"))),
        }
    }

    /// `key` as a string.
    pub fn string(&self, key: &str) -> Result<&'a str> {
        match self.need(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.err(key, format!("expected a string, got {v:?}"))),
        }
    }

    /// `key` as a boolean, or `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(key, format!("expected a boolean, got {v:?}"))),
        }
    }

    /// `key` as an array.
    pub fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.need(key)? {
            Value::Array(a) => Ok(a),
            v => Err(self.err(key, format!("expected an array, got {}", type_name(v)))),
        }
    }
}

/// A short name of a metadata value's type.
fn type_name(v: &Value) -> String {
    format!("{:?}", v.value_type())
}

/// Architectures this loader implements.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3"];

/// Reads the GGUF file at `path`: config, tensors (dequantized to `dtype` on `device`) and
/// tokenizer.
pub fn read_gguf(path: &Path, dtype: DType, device: &Device) -> Result<GgufModel> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| {
        header::unreadable_tensor(path).unwrap_or_else(|| {
            Error::Invalid(format!("{}: not a readable GGUF file: {e}", path.display()))
        })
    })?;
    let meta = Metadata::new(path, &content);
    let arch = meta.string("general.architecture")?;
    if !SUPPORTED_ARCHITECTURES.contains(&arch) {
        return Err(meta.err(
            "general.architecture",
            format!(
                "`{arch}` is not supported ({})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        ));
    }
    let tokenizer = tokenizer::from_metadata(&meta)?;
    let tied = !content.tensor_infos.contains_key("output.weight");
    let hf = hf_config(&meta, arch, tokenizer.vocab_size(), tied)?;
    let gemma = arch == "gemma3";
    let config = parse_hf_config(&hf.to_string(), path)?;
    let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let t = read_tensor(&content, &mut reader, path, name, device)?;
        let hf_name = hf_name(name, gemma).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: tensor `{name}` has no counterpart in a {arch} model",
                path.display()
            ))
        })?;
        let t = match name.rsplit_once('.').map(|(stem, _)| stem) {
            Some(stem) if gemma && stem.ends_with("norm") => (t - 1.0)?,
            Some(stem) if !gemma && stem.ends_with("attn_q") => unpermute_qk(&t, config.n_heads)?,
            Some(stem) if !gemma && stem.ends_with("attn_k") => {
                unpermute_qk(&t, config.n_kv_heads)?
            }
            _ => t,
        };
        tensors.insert(hf_name, t.to_dtype(dtype)?);
    }
    Ok(GgufModel {
        config,
        tensors,
        tokenizer,
    })
}

/// Reads and dequantizes tensor `name` (f32), checking its size first.
fn read_tensor(
    content: &Content,
    reader: &mut BufReader<File>,
    path: &Path,
    name: &str,
    device: &Device,
) -> Result<Tensor> {
    let bad =
        |reason: String| Error::Invalid(format!("{}: tensor `{name}`: {reason}", path.display()));
    let info = &content.tensor_infos[name];
    let elems = info
        .shape
        .dims()
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {:?} overflows", info.shape.dims())))?;
    if elems == 0 {
        return Err(bad("has no elements".into()));
    }
    let q = content
        .tensor(reader, name, device)
        .map_err(|e| bad(format!("{e} (type {:?})", info.ggml_dtype)))?;
    q.dequantize(device)
        .map_err(|e| bad(format!("cannot dequantize type {:?}: {e}", info.ggml_dtype)))
}

/// The Hugging Face config (as `config.json` would hold it) of a `llama` or `gemma3` GGUF.
fn hf_config(meta: &Metadata, arch: &str, vocab: usize, tied: bool) -> Result<serde_json::Value> {
    let key = |k: &str| format!("{arch}.{k}");
    let d_model = meta.usize(&key("embedding_length"))?;
    let heads = meta.usize(&key("attention.head_count"))?;
    if heads == 0 || !d_model.is_multiple_of(heads) {
        return Err(meta.err(
            &key("attention.head_count"),
            format!("{heads} heads do not divide embedding_length {d_model}"),
        ));
    }
    let head_dim = meta.usize_or(&key("attention.key_length"), d_model / heads)?;
    let rope_dims = meta.usize_or(&key("rope.dimension_count"), head_dim)?;
    if rope_dims != head_dim {
        return Err(meta.err(
            &key("rope.dimension_count"),
            format!("partial rotary ({rope_dims} of {head_dim} dims) is not supported"),
        ));
    }
    let rope_scaling = match meta.get(&key("rope.scaling.type")) {
        None => serde_json::Value::Null,
        Some(_) => match meta.string(&key("rope.scaling.type"))? {
            "none" => serde_json::Value::Null,
            "linear" => {
                let factor = meta.f64_or(&key("rope.scaling.factor"), f64::NAN)?;
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(meta.err(
                        &key("rope.scaling.factor"),
                        "linear rope scaling needs a positive factor",
                    ));
                }
                json!({"rope_type": "linear", "factor": factor})
            }
            other => {
                return Err(meta.err(
                    &key("rope.scaling.type"),
                    format!("rope scaling `{other}` is not supported (none, linear)"),
                ))
            }
        },
    };
    let vocab = meta.usize_or(&key("vocab_size"), vocab)?;
    let n_layers = meta.usize(&key("block_count"))?;
    let mut hf = json!({
        "model_type": "llama",
        "hidden_size": d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.usize_or(&key("attention.head_count_kv"), heads)?,
        "head_dim": head_dim,
        "intermediate_size": meta.usize(&key("feed_forward_length"))?,
        "rms_norm_eps": meta.f64_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
        "rope_theta": meta.f64_or(&key("rope.freq_base"), 10_000.0)?,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": meta.usize_or(&key("context_length"), 2048)?,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
    });
    if arch == "gemma3" {
        let scalar = if n_layers == 62 {
            d_model / heads
        } else {
            head_dim
        };
        let gemma = json!({
            "model_type": "gemma3_text",
            "hidden_activation": "gelu_pytorch_tanh",
            "sliding_window": meta.usize(&key("attention.sliding_window"))?,
            "sliding_window_pattern": 6,
            "rope_local_base_freq": 10_000.0,
            "query_pre_attn_scalar": scalar,
        });
        if let (Some(hf), Some(extra)) = (hf.as_object_mut(), gemma.as_object()) {
            hf.remove("hidden_act");
            hf.extend(extra.clone());
        }
    }
    Ok(hf)
}

/// The Hugging Face name of a llama.cpp tensor name (`gemma`: Gemma 3's norm names).
fn hf_name(gguf: &str, gemma: bool) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" if gemma => "pre_feedforward_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "post_attention_norm.weight" if gemma => "post_attention_layernorm.weight",
        "post_ffw_norm.weight" if gemma => "post_feedforward_layernorm.weight",
        "attn_q_norm.weight" if gemma => "self_attn.q_norm.weight",
        "attn_k_norm.weight" if gemma => "self_attn.k_norm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's permutation of a query or key projection `[heads · d_head, d_in]` (or a
/// bias `[heads · d_head]`): the converter reorders each head's rows from `[first half, second
/// half]` (rotate-half pairs `i, i + d/2`) to interleaved pairs `(2i, 2i + 1)`; this maps them
/// back.
pub fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::Invalid(format!(
            "cannot unpermute a projection of {rows} rows into {heads} heads of even size"
        )));
    }
    let half = rows / heads / 2;
    let rest: usize = dims[1..].iter().product();
    Ok(w.reshape((heads, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_converters_interleaving() {
        // llama.cpp's converter: w.reshape(h, 2, d/2/h, in).swapaxes(1, 2).reshape(w.shape).
        let (h, dh, d_in) = (3, 4, 2);
        let w = Tensor::arange(0f32, (h * dh * d_in) as f32, &Device::Cpu)
            .unwrap()
            .reshape((h * dh, d_in))
            .unwrap();
        let permuted = w
            .reshape((h, 2, dh / 2, d_in))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((h * dh, d_in))
            .unwrap();
        let back = unpermute_qk(&permuted, h).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert!(unpermute_qk(&w, 5).is_err());
    }

    #[test]
    fn tensor_names_map_to_hugging_face_names() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight", false).as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight", false).as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert!(hf_name("blk.x.attn_q.weight", false).is_none());
        assert!(hf_name("rope_freqs.weight", false).is_none());
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight", true).as_deref(),
            Some("model.layers.3.pre_feedforward_layernorm.weight")
        );
        assert!(hf_name("blk.3.post_ffw_norm.weight", false).is_none());
    }
}

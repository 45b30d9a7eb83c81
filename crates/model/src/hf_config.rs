//! Reading a Hugging Face `config.json` into a [`ModelConfig`], for each supported `model_type`.
//!
//! Both the classic keys (`rotary_pct`, `rotary_emb_base`, `rope_theta`, `rope_scaling`) and the
//! `rope_parameters` object written by transformers ≥ 5 are understood. Settings that would
//! change the computation in a way this crate does not implement (e.g. `rope_scaling` of type
//! `yarn`, Qwen2 `use_sliding_window`, GPT-2 `scale_attn_by_inverse_layer_idx`) are errors naming
//! the key, never silently ignored.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::{Activation, Family, LmHead, ModelConfig, NormKind, RopeScaling, Rotary};
use crate::error::{Error, Result};

/// The `model_type` values [`parse_hf_config`] accepts.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "gpt2",
    "gpt_neox",
    "llama",
    "mistral",
    "qwen2",
    "gemma3_text",
    "bert",
    "metarep",
];

/// Typed access to the keys of a config object, with errors naming the key and file.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    path: PathBuf,
}

impl<'a> Keys<'a> {
    fn err(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|u| Some(u as usize))
                .ok_or_else(|| self.err(key, format!("expected a non-negative integer, got {v}"))),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(key, "required key is missing"))
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("expected true or false, got {v}"))),
        }
    }

    fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(key, format!("expected a string, got {v}"))),
        }
    }

    fn activation(&self, key: &str, default: &str) -> Result<Activation> {
        let name = self.str_or(key, default)?;
        Activation::from_hf(name).ok_or_else(|| {
            self.err(
                key,
                format!("activation `{name}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish)"),
            )
        })
    }

    /// Requires `key` to be absent or equal to `expected`.
    fn require_bool(&self, key: &str, expected: bool, why: &str) -> Result<()> {
        if self.bool_or(key, expected)? != expected {
            return Err(self.err(key, format!("only {expected} is supported: {why}")));
        }
        Ok(())
    }
}

/// Parses `config.json` text (from `path`, used in errors) into a [`ModelConfig`].
pub fn parse_hf_config(text: &str, path: &Path) -> Result<ModelConfig> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::json(path.display(), e))?;
    let map = value.as_object().ok_or_else(|| Error::Config {
        path: path.to_path_buf(),
        key: "<root>".into(),
        reason: "config.json must be a JSON object".into(),
    })?;
    let keys = Keys {
        map,
        path: path.to_path_buf(),
    };
    let model_type = keys.str_or("model_type", "")?;
    let cfg = match model_type {
        "gpt2" => gpt2(&keys)?,
        "gpt_neox" => neox(&keys)?,
        "llama" | "mistral" | "qwen2" => llama(&keys, model_type)?,
        "gemma3_text" => gemma3(&keys)?,
        "bert" => bert(&keys)?,
        "metarep" => {
            let mut inner = map.clone();
            inner.remove("model_type");
            let cfg: ModelConfig = serde_json::from_value(Value::Object(inner))
                .map_err(|e| Error::json(path.display(), e))?;
            // Whatever family the model came from, metarep saved it under TransformerLens names.
            ModelConfig {
                family: Family::Metarep,
                ..cfg
            }
        }
        other => {
            return Err(Error::UnsupportedModelType {
                model_type: if other.is_empty() {
                    "<missing>".to_string()
                } else {
                    other.to_string()
                },
                supported: SUPPORTED_MODEL_TYPES.join(", "),
            })
        }
    };
    cfg.validate().map_err(|e| match e {
        Error::Config { key, reason, .. } => Error::Config {
            path: path.to_path_buf(),
            key,
            reason,
        },
        other => other,
    })?;
    Ok(cfg)
}

/// Serializes a config as metarep's own `config.json` (`model_type = "metarep"`).
pub fn metarep_config_json(cfg: &ModelConfig) -> Result<String> {
    let mut v = serde_json::to_value(cfg).map_err(|e| Error::json("model config", e))?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model_type".into(), Value::String("metarep".into()));
    }
    serde_json::to_string_pretty(&v).map_err(|e| Error::json("model config", e))
}

fn pad_token(keys: &Keys) -> Result<Option<u32>> {
    Ok(keys.opt_usize("pad_token_id")?.map(|p| p as u32))
}

fn gpt2(k: &Keys) -> Result<ModelConfig> {
    k.require_bool(
        "scale_attn_by_inverse_layer_idx",
        false,
        "per-layer attention scaling is not implemented",
    )?;
    k.require_bool(
        "scale_attn_weights",
        true,
        "attention is always scaled by 1/√d_head",
    )?;
    k.require_bool(
        "add_cross_attention",
        false,
        "decoder-only models have no cross-attention",
    )?;
    let d_model = k.usize("n_embd")?;
    let n_ctx = match k.opt_usize("n_positions")? {
        Some(n) => n,
        None => k.usize_or("n_ctx", 1024)?,
    };
    let base = base(
        k,
        Family::Gpt2,
        k.usize("n_layer")?,
        d_model,
        k.usize("n_head")?,
        n_ctx,
    )?;
    Ok(ModelConfig {
        d_mlp: k.usize_or("n_inner", 4 * d_model)?,
        eps: k.f64_or("layer_norm_epsilon", 1e-5)?,
        act: k.activation("activation_function", "gelu_new")?,
        tied_embeddings: k.bool_or("tie_word_embeddings", true)?,
        ..base
    })
}

/// The fields every family shares, read from `config.json` (GPT-2-style defaults otherwise).
fn base(
    k: &Keys,
    family: Family,
    n_layers: usize,
    d_model: usize,
    n_heads: usize,
    n_ctx: usize,
) -> Result<ModelConfig> {
    Ok(ModelConfig {
        family,
        pad_token_id: pad_token(k)?,
        ..ModelConfig::gpt2_like(n_layers, d_model, n_heads, k.usize("vocab_size")?, n_ctx)
    })
}

/// The `rope_parameters` object (transformers ≥ 5), if present.
fn rope_parameters<'a>(k: &Keys<'a>) -> Result<Option<Keys<'a>>> {
    match k.get("rope_parameters") {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(Keys {
            map,
            path: k.path.clone(),
        })),
        Some(v) => Err(k.err("rope_parameters", format!("expected an object, got {v}"))),
    }
}

/// Rotary settings from either `rope_parameters` or the classic keys (`base_key`, `rope_scaling`).
fn rotary(k: &Keys, d_head: usize, pct: f64, base_key: &str, default_base: f64) -> Result<Rotary> {
    let params = rope_parameters(k)?;
    let (base, pct, scaling_keys, scaling_name) = match &params {
        Some(p) => (
            p.f64_or("rope_theta", default_base)?,
            p.f64_or("partial_rotary_factor", pct)?,
            Some(Keys {
                map: p.map,
                path: p.path.clone(),
            }),
            "rope_parameters",
        ),
        None => {
            let scaling = match k.get("rope_scaling") {
                None => None,
                Some(Value::Object(map)) => Some(Keys {
                    map,
                    path: k.path.clone(),
                }),
                Some(v) => {
                    return Err(k.err("rope_scaling", format!("expected an object, got {v}")))
                }
            };
            (
                k.f64_or(base_key, default_base)?,
                pct,
                scaling,
                "rope_scaling",
            )
        }
    };
    let scaling = match scaling_keys {
        None => None,
        Some(s) => {
            let kind = match s.get("rope_type") {
                Some(_) => s.str_or("rope_type", "default")?,
                None => s.str_or("type", "default")?,
            };
            match kind {
                "default" => None,
                "linear" => Some(RopeScaling::Linear {
                    factor: s
                        .opt_f64("factor")?
                        .ok_or_else(|| k.err(scaling_name, "linear scaling needs `factor`"))?,
                }),
                "llama3" => Some(RopeScaling::Llama3 {
                    factor: s.f64_or("factor", 8.0)?,
                    low_freq_factor: s.f64_or("low_freq_factor", 1.0)?,
                    high_freq_factor: s.f64_or("high_freq_factor", 4.0)?,
                    original_max_position_embeddings: s
                        .usize_or("original_max_position_embeddings", 8192)?,
                }),
                other => {
                    return Err(k.err(
                        scaling_name,
                        format!("rope type `{other}` is not supported (default, linear, llama3)"),
                    ))
                }
            }
        }
    };
    Ok(Rotary {
        dim: ((d_head as f64) * pct) as usize,
        base,
        scaling,
    })
}

fn neox(k: &Keys) -> Result<ModelConfig> {
    let d_model = k.usize("hidden_size")?;
    let n_heads = k.usize("num_attention_heads")?;
    let d_head = d_model / n_heads.max(1);
    let pct = k.f64_or("rotary_pct", 0.25)?;
    let bias = k.bool_or("attention_bias", true)?;
    let n_ctx = k.usize_or("max_position_embeddings", 2048)?;
    let base = base(
        k,
        Family::GptNeox,
        k.usize("num_hidden_layers")?,
        d_model,
        n_heads,
        n_ctx,
    )?;
    Ok(ModelConfig {
        d_mlp: k.usize("intermediate_size")?,
        eps: k.f64_or("layer_norm_eps", 1e-5)?,
        act: k.activation("hidden_act", "gelu")?,
        learned_positions: false,
        rotary: Some(rotary(k, d_head, pct, "rotary_emb_base", 10000.0)?),
        parallel_residual: k.bool_or("use_parallel_residual", true)?,
        qkv_bias: bias,
        out_bias: bias,
        tied_embeddings: k.bool_or("tie_word_embeddings", false)?,
        ..base
    })
}

fn llama(k: &Keys, model_type: &str) -> Result<ModelConfig> {
    let (qkv_bias, out_bias) = match model_type {
        "qwen2" => (true, false),
        "mistral" => (false, false),
        _ => {
            let b = k.bool_or("attention_bias", false)?;
            (b, b)
        }
    };
    let sliding_window = match model_type {
        "mistral" => k.opt_usize("sliding_window")?,
        "qwen2" => {
            k.require_bool(
                "use_sliding_window",
                false,
                "Qwen2 per-layer sliding windows are not implemented",
            )?;
            None
        }
        _ => None,
    };
    if let Some(Value::Array(types)) = k.get("layer_types") {
        if let Some(t) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
            return Err(k.err(
                "layer_types",
                format!("only full_attention layers are supported, found {t}"),
            ));
        }
    }
    let base = gated_rms_decoder(
        k,
        Family::Llama,
        None,
        k.activation("hidden_act", "silu")?,
        2048,
    )?;
    let d_head = base.d_head;
    Ok(ModelConfig {
        rotary: Some(rotary(k, d_head, 1.0, "rope_theta", 10000.0)?),
        sliding_window,
        qkv_bias,
        out_bias,
        mlp_bias: k.bool_or("mlp_bias", false)?,
        tied_embeddings: k.bool_or("tie_word_embeddings", false)?,
        ..base
    })
}

/// What the Llama-style families share: RMSNorm, a gated MLP with activation `act`, rotary
/// positions (set by the caller), grouped-query heads of `head_dim` (default `d_head`, else
/// `hidden_size / num_attention_heads`).
fn gated_rms_decoder(
    k: &Keys,
    family: Family,
    d_head: Option<usize>,
    act: Activation,
    default_ctx: usize,
) -> Result<ModelConfig> {
    let d_model = k.usize("hidden_size")?;
    let n_heads = k.usize("num_attention_heads")?;
    let d_head = k.usize_or("head_dim", d_head.unwrap_or(d_model / n_heads.max(1)))?;
    let n_ctx = k.usize_or("max_position_embeddings", default_ctx)?;
    let base = base(
        k,
        family,
        k.usize("num_hidden_layers")?,
        d_model,
        n_heads,
        n_ctx,
    )?;
    Ok(ModelConfig {
        n_kv_heads: k.usize_or("num_key_value_heads", n_heads)?,
        d_head,
        d_mlp: k.usize("intermediate_size")?,
        norm: NormKind::RmsNorm,
        eps: k.f64_or("rms_norm_eps", 1e-6)?,
        act,
        gated_mlp: true,
        learned_positions: false,
        rotary: None,
        ..base
    })
}

/// Gemma 3's text decoder: Llama's layout plus QK-norms, sandwich norms, GeGLU, scaled
/// embeddings and interleaved sliding-window layers with their own rotary base.
/// `attn_logit_softcapping` is not read: transformers' Gemma 3 attention does not apply it
/// (the parity fixture sets it to show the outputs still agree).
fn gemma3(k: &Keys) -> Result<ModelConfig> {
    k.require_bool(
        "use_bidirectional_attention",
        false,
        "Gemma 3 is loaded as a causal decoder",
    )?;
    let act = match k.get("hidden_activation") {
        Some(_) => k.activation("hidden_activation", "gelu_pytorch_tanh")?,
        None => k.activation("hidden_act", "gelu_pytorch_tanh")?,
    };
    let base = gated_rms_decoder(k, Family::Gemma3, Some(256), act, 32_768)?;
    let (n_layers, d_head) = (base.n_layers, base.d_head);
    let full_attention_layers = match k.get("layer_types") {
        Some(Value::Array(types)) => {
            let mut full = Vec::new();
            for (l, t) in types.iter().enumerate() {
                match t.as_str() {
                    Some("full_attention") => full.push(l),
                    Some("sliding_attention") => {}
                    _ => {
                        return Err(k.err(
                            "layer_types",
                            format!(
                                "layer {l}: expected full_attention or sliding_attention, got {t}"
                            ),
                        ))
                    }
                }
            }
            if types.len() != n_layers {
                return Err(k.err(
                    "layer_types",
                    format!("{} entries for {n_layers} layers", types.len()),
                ));
            }
            full
        }
        Some(v) => return Err(k.err("layer_types", format!("expected a list, got {v}"))),
        None => {
            let every = k.usize_or("sliding_window_pattern", 6)?.max(1);
            (0..n_layers).filter(|l| (l + 1) % every == 0).collect()
        }
    };
    let global = rotary(k, d_head, 1.0, "rope_theta", 1_000_000.0)?;
    let local = Rotary {
        dim: global.dim,
        base: k.f64_or("rope_local_base_freq", 10_000.0)?,
        scaling: None,
    };
    let bias = k.bool_or("attention_bias", false)?;
    Ok(ModelConfig {
        rotary: Some(global),
        local_rotary: Some(local),
        sliding_window: Some(k.usize_or("sliding_window", 4096)?),
        full_attention_layers,
        qk_norm: true,
        post_sublayer_norms: true,
        embed_scale: Some((base.d_model as f64).sqrt()),
        attn_scale: Some(1.0 / k.f64_or("query_pre_attn_scalar", d_head as f64)?.sqrt()),
        final_softcap: k.opt_f64("final_logit_softcapping")?,
        qkv_bias: bias,
        out_bias: bias,
        mlp_bias: false,
        tied_embeddings: k.bool_or("tie_word_embeddings", true)?,
        ..base
    })
}

fn bert(k: &Keys) -> Result<ModelConfig> {
    let kind = k.str_or("position_embedding_type", "absolute")?;
    if kind != "absolute" {
        return Err(k.err(
            "position_embedding_type",
            format!("`{kind}` is not supported (absolute)"),
        ));
    }
    k.require_bool(
        "is_decoder",
        false,
        "BERT is loaded as a bidirectional encoder",
    )?;
    let n_ctx = k.usize_or("max_position_embeddings", 512)?;
    let base = base(
        k,
        Family::Bert,
        k.usize("num_hidden_layers")?,
        k.usize("hidden_size")?,
        k.usize("num_attention_heads")?,
        n_ctx,
    )?;
    Ok(ModelConfig {
        d_mlp: k.usize("intermediate_size")?,
        eps: k.f64_or("layer_norm_eps", 1e-12)?,
        act: k.activation("hidden_act", "gelu")?,
        post_norm: true,
        causal: false,
        n_token_types: k.usize_or("type_vocab_size", 2)?,
        final_norm: false,
        // BERT's MLM decoder is tied to the word embeddings; whether a head and a pooler exist
        // is decided by the checkpoint's tensors when loading.
        lm_head: LmHead::BertMlm,
        unembed_bias: true,
        pooler: true,
        ..base
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig> {
        parse_hf_config(text, Path::new("config.json"))
    }

    #[test]
    fn classic_pythia_keys() {
        // The config.json of EleutherAI/pythia-70m (transformers 4.x key names).
        let cfg = parse(
            r#"{"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
            "hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02,
            "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
            "model_type": "gpt_neox", "num_attention_heads": 8, "num_hidden_layers": 6,
            "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": false,
            "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": true,
            "use_parallel_residual": true, "vocab_size": 50304}"#,
        )
        .unwrap();
        assert_eq!(cfg.family, Family::GptNeox);
        assert_eq!(cfg.d_head, 64);
        assert_eq!(cfg.rotary.unwrap().dim, 16);
        assert!(cfg.parallel_residual && !cfg.tied_embeddings);
    }

    #[test]
    fn classic_llama3_rope_scaling() {
        let cfg = parse(
            r#"{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
            "vocab_size": 100, "rope_theta": 500000.0, "tie_word_embeddings": true,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#,
        )
        .unwrap();
        let r = cfg.rotary.unwrap();
        assert_eq!((r.dim, r.base), (16, 500000.0));
        assert!(matches!(r.scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 32.0));
        assert_eq!(cfg.kv_group(), 2);
    }

    #[test]
    fn unsupported_settings_name_their_key() {
        let err = parse(r#"{"model_type": "t5"}"#).unwrap_err().to_string();
        assert!(err.contains("`t5`") && err.contains("gpt2"), "{err}");
        let err = parse(r#"{"n_embd": 8}"#).unwrap_err().to_string();
        assert!(err.contains("<missing>"), "{err}");
        let err = parse(
            r#"{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100,
            "rope_scaling": {"type": "yarn", "factor": 4.0}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("rope_scaling") && err.contains("yarn"),
            "{err}"
        );
        let err = parse(
            r#"{"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100,
            "use_sliding_window": true}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("use_sliding_window"), "{err}");
        let err = parse(r#"{"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocab_size"), "{err}");
        let err = parse(
            r#"{"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1, "vocab_size": 5,
            "activation_function": "mish"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("activation_function") && err.contains("mish"),
            "{err}"
        );
    }

    #[test]
    fn metarep_config_round_trips() {
        let cfg = ModelConfig::gpt2_like(2, 16, 4, 32, 8);
        let text = metarep_config_json(&cfg).unwrap();
        assert_eq!(parse(&text).unwrap(), cfg);
    }
}

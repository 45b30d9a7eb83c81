//! SAELens-format export and import: a directory with `cfg.json` and
//! `sae_weights.safetensors` (tensors `W_enc` `[d_in, d_sae]`, `b_enc`, `W_dec` `[d_sae, d_in]`,
//! `b_dec`, and `threshold` for JumpReLU; `b_gate`, `r_mag`, `b_mag` instead of `b_enc` for
//! Gated), so SAEs move between metarep and SAELens in both directions.
//!
//! `cfg.json` follows SAELens 6's inference config: `architecture` (`standard`, `topk`,
//! `jumprelu`, `gated`), `d_in`, `d_sae`, `dtype`, `device`, `apply_b_dec_to_input`,
//! `normalize_activations` (`none`, `constant_norm_rescale`), `reshape_activations`, `metadata`
//! (model and hook names, passed through), and `k` for TopK. Older files with
//! `activation_fn_str = "topk"` and `activation_fn_kwargs.k` and a top-level `hook_name` are read
//! too.
//!
//! On export an expected-norm input scale `s` is folded into the weights as SAELens does
//! (`W_enc·s`, `W_dec/s`, `b_dec/s`), and a BatchTopK SAE becomes a JumpReLU with its global
//! threshold on every latent (SAELens saves BatchTopK the same way).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use metarep_core::fsutil::{atomic_write, ensure_dir};
use serde_json::{json, Map, Value};

use crate::config::{Architecture, DecoderNorm, InputNorm, SaeConfig};
use crate::error::{Error, Result};
use crate::sae::Sae;

/// File name of the config.
pub const CFG_FILE: &str = "cfg.json";
/// File name of the weights.
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";

/// Default JumpReLU bandwidth and initial threshold given to imported JumpReLU SAEs (SAELens's
/// training defaults; they matter only if the SAE is trained further).
const IMPORTED_JUMP: f64 = 0.001;

/// What SAELens stores besides the function: `metadata` (model, hook, ...) and
/// `reshape_activations`, carried through import and export unchanged.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaeLensInfo {
    /// The `metadata` object (`model_name`, `hook_name`, ...).
    pub metadata: Map<String, Value>,
    /// `reshape_activations` (`none` or `hook_z`).
    pub reshape_activations: String,
}

impl SaeLensInfo {
    /// Metadata naming a model and a hook point.
    pub fn for_hook(model_name: &str, hook_name: &str) -> Self {
        let mut metadata = Map::new();
        metadata.insert("model_name".into(), model_name.into());
        metadata.insert("hook_name".into(), hook_name.into());
        Self {
            metadata,
            reshape_activations: "none".into(),
        }
    }
}

/// Writes `sae` to `dir` in the SAELens format (atomically, file by file).
pub fn export(sae: &Sae, dir: &Path, info: &SaeLensInfo) -> Result<()> {
    let cfg = sae.config;
    let (scale, norm) = match cfg.input_norm {
        InputNorm::None => (1.0, "none"),
        InputNorm::ExpectedNorm => (sae.input_scale, "none"),
        InputNorm::PerRow => (1.0, "constant_norm_rescale"),
    };
    let f32 = |t: &Tensor| -> Result<Tensor> {
        Ok(t.detach().to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    };
    let w_enc = (f32(sae.w_enc.as_tensor())? * scale)?.t()?.contiguous()?;
    let w_dec = (f32(sae.w_dec.as_tensor())? / scale)?;
    let b_dec = (f32(sae.b_dec.as_tensor())? / scale)?;
    let mut tensors: Vec<(&str, Tensor)> =
        vec![("W_enc", w_enc), ("W_dec", w_dec), ("b_dec", b_dec)];
    let b_enc = f32(sae.b_enc.as_tensor())?;
    let mut extra = Map::new();
    let arch = match cfg.architecture {
        Architecture::Relu => {
            tensors.push(("b_enc", b_enc));
            "standard"
        }
        Architecture::TopK { k } => {
            tensors.push(("b_enc", b_enc));
            extra.insert("k".into(), k.into());
            "topk"
        }
        Architecture::BatchTopK { .. } => {
            tensors.push(("b_enc", b_enc));
            tensors.push((
                "threshold",
                Tensor::full(sae.batch_threshold as f32, cfg.d_sae, &Device::Cpu)?,
            ));
            "jumprelu"
        }
        Architecture::JumpRelu { .. } => {
            tensors.push(("b_enc", b_enc));
            let theta = sae
                .threshold()?
                .ok_or_else(|| Error::Invalid("JumpReLU SAE without threshold".into()))?;
            tensors.push(("threshold", f32(&theta)?));
            "jumprelu"
        }
        Architecture::Gated => {
            let get = |v: &Option<candle_core::Var>, name: &str| -> Result<Tensor> {
                f32(v
                    .as_ref()
                    .ok_or_else(|| Error::Invalid(format!("gated SAE without {name}")))?
                    .as_tensor())
            };
            tensors.push(("b_gate", b_enc));
            tensors.push(("r_mag", get(&sae.r_mag, "r_mag")?));
            tensors.push(("b_mag", get(&sae.b_mag, "b_mag")?));
            "gated"
        }
    };
    let mut cfg_json = json!({
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.pre_encoder_bias,
        "normalize_activations": norm,
        "reshape_activations": if info.reshape_activations.is_empty() { "none" } else { info.reshape_activations.as_str() },
        "metadata": Value::Object(info.metadata.clone()),
    });
    if let Some(obj) = cfg_json.as_object_mut() {
        obj.extend(extra);
    }
    ensure_dir(dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    let bytes = safetensors::tensor::serialize(tensors.iter().map(|(n, t)| (*n, t)), None)
        .map_err(|e| Error::file(&weights, e.to_string()))?;
    atomic_write(&weights, &bytes)?;
    let text = serde_json::to_string_pretty(&cfg_json)
        .map_err(|e| Error::file(dir.join(CFG_FILE), e.to_string()))?;
    atomic_write(&dir.join(CFG_FILE), text.as_bytes())?;
    Ok(())
}

/// Reads an SAELens-format directory; the SAE is f32 on the CPU.
pub fn import(dir: &Path) -> Result<(Sae, SaeLensInfo)> {
    let cfg_path = dir.join(CFG_FILE);
    let text =
        std::fs::read_to_string(&cfg_path).map_err(|e| Error::file(&cfg_path, e.to_string()))?;
    let cfg: Map<String, Value> = serde_json::from_str(&text)
        .map_err(|e| Error::file(&cfg_path, format!("not a JSON object: {e}")))?;
    let bad = |reason: String| Error::file(&cfg_path, reason);
    let usize_field = |name: &str| -> Result<usize> {
        cfg.get(name)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                bad(format!(
                    "field `{name}` is missing or not a non-negative integer"
                ))
            })
    };
    let (d_in, d_sae) = (usize_field("d_in")?, usize_field("d_sae")?);
    let arch_name = cfg
        .get("architecture")
        .and_then(Value::as_str)
        .unwrap_or("standard");
    let act_fn = cfg
        .get("activation_fn_str")
        .and_then(Value::as_str)
        .unwrap_or("relu");
    let k_field = || -> Result<usize> {
        cfg.get("k")
            .or_else(|| cfg.get("activation_fn_kwargs").and_then(|a| a.get("k")))
            .and_then(Value::as_f64)
            .filter(|k| *k >= 1.0 && k.fract() == 0.0)
            .map(|k| k as usize)
            .ok_or_else(|| bad("a topk SAE needs an integer `k` ≥ 1".into()))
    };
    let architecture = match (arch_name, act_fn) {
        ("topk", _) | ("standard", "topk") => Architecture::TopK { k: k_field()? },
        ("standard", "relu") => Architecture::Relu,
        ("jumprelu", _) => Architecture::JumpRelu {
            init_threshold: IMPORTED_JUMP,
            bandwidth: IMPORTED_JUMP,
        },
        ("gated", _) => Architecture::Gated,
        (a, f) => {
            return Err(bad(format!(
                "unsupported architecture `{a}` (activation `{f}`)"
            )))
        }
    };
    if cfg
        .get("rescale_acts_by_decoder_norm")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Err(bad(
            "rescale_acts_by_decoder_norm = true is not supported; fold the decoder norms first"
                .into(),
        ));
    }
    let input_norm = match cfg.get("normalize_activations").and_then(Value::as_str).unwrap_or("none") {
        "none" => InputNorm::None,
        "constant_norm_rescale" => InputNorm::PerRow,
        "expected_average_only_in" => {
            return Err(bad(
                "normalize_activations = expected_average_only_in: the scaling factor is not stored in the file; fold it into the weights before saving".into(),
            ))
        }
        other => return Err(bad(format!("unsupported normalize_activations `{other}`"))),
    };
    let pre_encoder_bias = cfg
        .get("apply_b_dec_to_input")
        .and_then(Value::as_bool)
        .unwrap_or(true);

    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(Error::file(&weights, "no such file"));
    }
    let raw = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| Error::file(&weights, format!("not a readable safetensors file: {e}")))?;
    let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = raw
            .get(name)
            .ok_or_else(|| Error::file(&weights, format!("has no tensor `{name}`")))?;
        if t.dims() != shape {
            return Err(Error::file(
                &weights,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                ),
            ));
        }
        if !t.dtype().is_float() {
            return Err(Error::file(
                &weights,
                format!("tensor `{name}` is {:?}, expected floats", t.dtype()),
            ));
        }
        Ok(t.to_dtype(DType::F32)?)
    };
    let mut tensors = HashMap::new();
    tensors.insert(
        "w_enc".to_string(),
        get("W_enc", &[d_in, d_sae])?.t()?.contiguous()?,
    );
    let w_dec = get("W_dec", &[d_sae, d_in])?;
    tensors.insert("b_dec".to_string(), get("b_dec", &[d_in])?);
    match architecture {
        Architecture::Gated => {
            tensors.insert("b_enc".to_string(), get("b_gate", &[d_sae])?);
            tensors.insert("r_mag".to_string(), get("r_mag", &[d_sae])?);
            tensors.insert("b_mag".to_string(), get("b_mag", &[d_sae])?);
        }
        _ => {
            tensors.insert("b_enc".to_string(), get("b_enc", &[d_sae])?);
        }
    }
    if let Architecture::JumpRelu { .. } = architecture {
        let theta = get("threshold", &[d_sae])?;
        let low = theta
            .le(0.0)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        if low > 0.0 {
            return Err(Error::file(
                &weights,
                format!("{low} JumpReLU thresholds are ≤ 0 (metarep stores ln θ)"),
            ));
        }
        tensors.insert("log_threshold".to_string(), theta.log()?);
    }
    let norms = w_dec.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()?;
    let unit = norms.iter().all(|n| (n - 1.0).abs() < 1e-3);
    tensors.insert("w_dec".to_string(), w_dec);
    let decoder_norm = if !unit && matches!(architecture, Architecture::Relu | Architecture::Gated)
    {
        DecoderNorm::Folded
    } else {
        DecoderNorm::Unit
    };
    let config = SaeConfig {
        d_in,
        d_sae,
        architecture,
        pre_encoder_bias,
        input_norm,
        decoder_norm,
    };
    let sae = Sae::from_tensors(config, &tensors)?;
    let mut metadata = match cfg.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for key in ["model_name", "hook_name", "hook_layer"] {
        if let (false, Some(v)) = (metadata.contains_key(key), cfg.get(key)) {
            metadata.insert(key.to_string(), v.clone());
        }
    }
    let reshape_activations = cfg
        .get("reshape_activations")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_string();
    Ok((
        sae,
        SaeLensInfo {
            metadata,
            reshape_activations,
        },
    ))
}

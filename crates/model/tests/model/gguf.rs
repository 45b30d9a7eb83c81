//! GGUF loading on a small synthetic llama written with llama.cpp's conventions (Q/K rows
//! permuted, GGUF tensor names, tokenizer in the metadata): the model loaded from the GGUF file
//! computes exactly what the same weights loaded under Hugging Face names compute, and bad
//! files are errors naming the file and the key or tensor.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use metarep_core::compare::max_abs_diff;
use metarep_core::rng::seeded;
use metarep_model::checkpoint_tensors::CheckpointTensors;
use metarep_model::families::load_weights;
use metarep_model::hf_config::parse_hf_config;
use metarep_model::{HookedTransformer, Input, LoadOptions};
use rand::Rng;

const D: usize = 32;
const HEADS: usize = 4;
const KV: usize = 2;
const DH: usize = D / HEADS;
const MLP: usize = 64;
const LAYERS: usize = 2;

/// A 260-token byte-level BPE vocabulary: the 256 byte symbols, three merged tokens and one
/// control token.
fn vocab() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let bytes: Vec<char> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .map(char::from)
        .collect();
    let mut printable: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    // GPT-2's byte-to-unicode map sends the other 68 bytes to U+0100 onwards.
    printable.extend((0..68u32).map(|i| char::from_u32(0x100 + i).unwrap().to_string()));
    let mut tokens = printable;
    tokens.extend(["Ġt", "he", "Ġthe", "<|bos|>"].map(String::from));
    let merges = ["Ġ t", "h e", "Ġt he"].map(String::from).to_vec();
    let mut types = vec![1; tokens.len()];
    *types.last_mut().unwrap() = 3;
    (tokens, merges, types)
}

/// Random weights under Hugging Face names.
fn hf_weights(vocab: usize) -> HashMap<String, Tensor> {
    let mut rng = seeded(11);
    let mut t = |shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-1.0..1.0) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let mut m = HashMap::new();
    m.insert("model.embed_tokens.weight".into(), t(&[vocab, D], 0.5));
    m.insert("model.norm.weight".into(), t(&[D], 1.0));
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (n, shape) in [
            ("input_layernorm.weight", vec![D]),
            ("post_attention_layernorm.weight", vec![D]),
            ("self_attn.q_proj.weight", vec![HEADS * DH, D]),
            ("self_attn.k_proj.weight", vec![KV * DH, D]),
            ("self_attn.v_proj.weight", vec![KV * DH, D]),
            ("self_attn.o_proj.weight", vec![D, HEADS * DH]),
            ("mlp.gate_proj.weight", vec![MLP, D]),
            ("mlp.up_proj.weight", vec![MLP, D]),
            ("mlp.down_proj.weight", vec![D, MLP]),
        ] {
            m.insert(format!("{p}.{n}"), t(&shape, 0.3));
        }
    }
    m
}

/// llama.cpp's converter permutation of a Q or K projection.
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (l, part) = rest.split_once('.').unwrap();
    let g = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("{other}"),
    };
    format!("blk.{l}.{g}")
}

fn metadata(tokens: &[String], merges: &[String], types: &[i32]) -> Vec<(String, Value)> {
    let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(LAYERS as u32)),
        ("llama.context_length".into(), Value::U32(64)),
        ("llama.embedding_length".into(), Value::U32(D as u32)),
        ("llama.feed_forward_length".into(), Value::U32(MLP as u32)),
        (
            "llama.attention.head_count".into(),
            Value::U32(HEADS as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(KV as u32),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.rope.dimension_count".into(), Value::U32(DH as u32)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(tokens.len() as u32 - 1),
        ),
    ]
}

/// Writes a GGUF file of `hf` weights (Q/K permuted, `dtype` blocks) with `meta`.
fn write_gguf(
    path: &Path,
    hf: &HashMap<String, Tensor>,
    meta: &[(String, Value)],
    dtype: GgmlDType,
) {
    let mut q = Vec::new();
    for (name, t) in hf {
        let t = if name.ends_with("q_proj.weight") {
            permute(t, HEADS)
        } else if name.ends_with("k_proj.weight") {
            permute(t, KV)
        } else {
            t.clone()
        };
        let qt = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
        q.push((gguf_name(name), QTensor::quantize(&t, qt).unwrap()));
    }
    let tensors: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta, &tensors).unwrap();
}

fn hf_model(hf: &HashMap<String, Tensor>, vocab: usize) -> HookedTransformer {
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": D, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV, "intermediate_size": MLP,
        "rms_norm_eps": 1e-5f32 as f64, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "vocab_size": vocab, "tie_word_embeddings": true, "head_dim": DH
    });
    let mut cfg = parse_hf_config(&config.to_string(), Path::new("<config>")).unwrap();
    let mut store = CheckpointTensors::from_map(hf.clone(), "hf", DType::F32, &Device::Cpu);
    let w = load_weights(&mut cfg, &mut store).unwrap();
    HookedTransformer::new(cfg, w).unwrap()
}

#[test]
fn a_gguf_llama_computes_what_its_hugging_face_weights_compute() {
    let (tokens, merges, types) = vocab();
    let hf = hf_weights(tokens.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(
        &path,
        &hf,
        &metadata(&tokens, &merges, &types),
        GgmlDType::F32,
    );
    let ours = HookedTransformer::from_pretrained(path.to_str().unwrap(), &LoadOptions::default())
        .unwrap();
    let reference = hf_model(&hf, tokens.len());
    assert_eq!(ours.config(), reference.config());
    let input = Input::from_ids(&[vec![5, 200, 7, 259, 3, 99, 4]], &Device::Cpu).unwrap();
    let (a, b) = (
        ours.forward(input.clone()).unwrap(),
        reference.forward(input).unwrap(),
    );
    assert_eq!(max_abs_diff(&a, &b).unwrap(), 0.0);
    // The tokenizer: digits one by one (smollm), merges, control tokens whole.
    let tok = ours.tokenizer().unwrap();
    let e = tok.encode(" the 42<|bos|>", false).unwrap();
    assert_eq!(e.tokens, ["Ġthe", "Ġ", "4", "2", "<|bos|>"]);
    assert_eq!(tok.decode(&e.ids, false).unwrap(), " the 42<|bos|>");
    assert_eq!(tok.bos_id(), Some(e.ids[4]));
    assert!(tok.eos_ids().is_empty(), "the metadata declares no EOS");
    // Quantized blocks dequantize to close values.
    let q8 = dir.path().join("q8.gguf");
    write_gguf(
        &q8,
        &hf,
        &metadata(&tokens, &merges, &types),
        GgmlDType::Q8_0,
    );
    let quant = HookedTransformer::from_gguf(&q8, &LoadOptions::default()).unwrap();
    let w = quant.w_q(0).unwrap();
    let gap = max_abs_diff(&w, &reference.w_q(0).unwrap()).unwrap();
    assert!(gap > 0.0 && gap < 5e-3, "Q8_0 round trip differs by {gap}");
}

#[test]
fn every_block_32_tensor_type_dequantizes_to_close_weights() {
    // Weights are uniform in ±0.3 (the projections): each type's rounding error is bounded by
    // half its step over a block's range (4 bits: 0.6/15/2 = 0.02; 5 bits: 0.01; 8 bits: 1.2e-3).
    let (tokens, merges, types) = vocab();
    let hf = hf_weights(tokens.len());
    let dir = tempfile::tempdir().unwrap();
    let exact = dir.path().join("f32.gguf");
    write_gguf(
        &exact,
        &hf,
        &metadata(&tokens, &merges, &types),
        GgmlDType::F32,
    );
    let reference = HookedTransformer::from_gguf(&exact, &LoadOptions::default()).unwrap();
    for (dtype, bound) in [
        (GgmlDType::F16, 2e-4),
        (GgmlDType::BF16, 2e-3),
        (GgmlDType::Q4_0, 0.045),
        (GgmlDType::Q4_1, 0.025),
        (GgmlDType::Q5_0, 0.025),
        (GgmlDType::Q5_1, 0.012),
        (GgmlDType::Q8_0, 5e-3),
    ] {
        let p = dir.path().join(format!("{dtype:?}.gguf"));
        write_gguf(&p, &hf, &metadata(&tokens, &merges, &types), dtype);
        let model = HookedTransformer::from_gguf(&p, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        for l in 0..LAYERS {
            for (name, got, want) in [
                ("W_Q", model.w_q(l).unwrap(), reference.w_q(l).unwrap()),
                ("W_in", model.w_in(l).unwrap(), reference.w_in(l).unwrap()),
                (
                    "W_out",
                    model.w_out(l).unwrap(),
                    reference.w_out(l).unwrap(),
                ),
            ] {
                let gap = max_abs_diff(&got, &want).unwrap();
                assert!(gap > 0.0 && gap < bound, "{dtype:?} {name} L{l}: {gap}");
            }
        }
    }
}

#[test]
fn bad_gguf_files_are_errors_naming_the_file_and_the_key() {
    let (tokens, merges, types) = vocab();
    let hf = hf_weights(tokens.len());
    let dir = tempfile::tempdir().unwrap();
    let load = |p: &Path| {
        HookedTransformer::from_gguf(p, &LoadOptions::default())
            .expect_err("loading must fail")
            .to_string()
    };
    let good = dir.path().join("good.gguf");
    write_gguf(
        &good,
        &hf,
        &metadata(&tokens, &merges, &types),
        GgmlDType::F32,
    );
    let bytes = std::fs::read(&good).unwrap();
    // Truncated anywhere: an error naming the file, never a panic.
    for cut in [0, 3, 20, 200, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = load(&p);
        assert!(e.contains(&p.display().to_string()), "cut at {cut}: {e}");
    }
    // Every metadata key the loader needs, removed in turn, is named.
    let meta = metadata(&tokens, &merges, &types);
    for key in [
        "general.architecture",
        "llama.block_count",
        "llama.embedding_length",
        "llama.attention.head_count",
        "llama.feed_forward_length",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
    ] {
        let p = dir.path().join("missing.gguf");
        let m: Vec<_> = meta.iter().filter(|(k, _)| k != key).cloned().collect();
        write_gguf(&p, &hf, &m, GgmlDType::F32);
        let e = load(&p);
        assert!(e.contains(key) && e.contains("missing.gguf"), "{key}: {e}");
    }
    // An unknown architecture, tokenizer model or pre-tokenizer is named.
    for (key, value) in [
        ("general.architecture", "mamba"),
        ("tokenizer.ggml.model", "bert"),
        ("tokenizer.ggml.pre", "deepseek-coder"),
    ] {
        let p = dir.path().join("odd.gguf");
        let m: Vec<_> = meta
            .iter()
            .map(|(k, v)| match k == key {
                true => (k.clone(), Value::String(value.into())),
                false => (k.clone(), v.clone()),
            })
            .collect();
        write_gguf(&p, &hf, &m, GgmlDType::F32);
        let e = load(&p);
        assert!(e.contains(key) && e.contains(value), "{e}");
    }
    // A tensor the architecture does not have is named.
    let mut extra = hf.clone();
    extra.insert(
        "model.layers.0.unknown.weight".into(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("extra.gguf");
    let mut q = Vec::new();
    for (name, t) in &extra {
        let g = if name.contains("unknown") {
            "blk.0.mystery.weight".to_string()
        } else {
            gguf_name(name)
        };
        q.push((g, QTensor::quantize(t, GgmlDType::F32).unwrap()));
    }
    let tensors: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&p).unwrap(), &m, &tensors).unwrap();
    assert!(load(&p).contains("blk.0.mystery.weight"));
    // A tensor of a type candle cannot read (IQ4_NL, ggml type 20) is named with its type.
    let entries = metarep_model::gguf::header::tensor_entries(&good).unwrap();
    assert_eq!(entries.len(), hf.len());
    let victim = &entries[entries.len() / 2];
    let mut patched = bytes.clone();
    let at = victim.type_offset as usize;
    patched[at..at + 4].copy_from_slice(&20u32.to_le_bytes());
    let p = dir.path().join("iq4.gguf");
    std::fs::write(&p, &patched).unwrap();
    let e = load(&p);
    assert!(
        e.contains(&format!("`{}`", victim.name)) && e.contains("IQ4_NL") && e.contains("iq4.gguf"),
        "{e}"
    );
}

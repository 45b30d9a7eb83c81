//! Parity with the Hugging Face PyTorch implementations (logits) and TransformerLens (hook
//! activations) on the checked-in tiny random models of `fixtures/parity/` (made by
//! `xtask/python/parity_fixtures.py`): every value within 1e-4 max abs in f32.

use crate::common;

use common::{case_input, load_case, max_abs_diff};
use metarep_model::{HookFilter, HookPoint, RunTo};

const TOL: f32 = 1e-4;

/// TransformerLens hooks metarep does not expose (documented in docs/hooks.md).
fn tl_only(name: &str) -> bool {
    name.starts_with("mlm_head.") || name.ends_with("hook_normalized_resid_post")
}

/// Checks logits and every recorded hook of `case`; returns how many hooks were compared.
fn check_case(case: &str) -> usize {
    let (model, refs) = load_case(case);
    let input = case_input(&refs);
    let mask = refs.get("attention_mask").map(|m| {
        m.to_dtype(candle_core::DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    });
    // [batch, pos, ...] tensors: compare real tokens only; [batch, head, q, k]: real queries.
    let valid_bp = |idx: &[usize]| mask.as_ref().is_none_or(|m| m[idx[0]][idx[1]] == 1);
    let valid_bhqk = |idx: &[usize]| mask.as_ref().is_none_or(|m| m[idx[0]][idx[2]] == 1);

    let mut points = Vec::new();
    for name in refs.keys().filter_map(|k| k.strip_prefix("act.")) {
        if tl_only(name) {
            continue;
        }
        let p: HookPoint = name.parse().unwrap_or_else(|e| panic!("{case}: {e}"));
        points.push((p, name.to_string()));
    }
    let filter = HookFilter::Points(points.iter().map(|(p, _)| *p).collect());
    let (logits, cache) = model.run_with_cache(input.clone(), filter).unwrap();
    let d = max_abs_diff(&logits, &refs["logits"], &valid_bp);
    assert!(d <= TOL, "{case}: logits differ by {d}");
    println!("{case}: logits max |diff| {d:.2e}");
    if let Some(hidden) = refs.get("hidden") {
        let ours = model
            .run(&input, &mut metarep_model::NoHooks, RunTo::Hidden)
            .unwrap();
        let d = max_abs_diff(&ours, hidden, &valid_bp);
        assert!(d <= TOL, "{case}: hidden states differ by {d}");
    }
    let mut worst = (0f32, String::new());
    for (p, name) in &points {
        let ours = cache.get(*p).unwrap();
        let reference = &refs[&format!("act.{name}")];
        let per_query = matches!(p, HookPoint::AttnScores(_) | HookPoint::Pattern(_));
        let d = if per_query {
            max_abs_diff(ours, reference, &valid_bhqk)
        } else {
            max_abs_diff(ours, reference, &valid_bp)
        };
        assert!(d <= TOL, "{case}: hook {name} differs by {d}");
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    println!(
        "{case}: {} hooks, worst max |diff| {:.2e} at {}",
        points.len(),
        worst.0,
        worst.1
    );
    points.len()
}

#[test]
fn gpt2_matches_hf_and_transformer_lens() {
    // Tied embeddings, n_inner ≠ 4·d_model, right padding on one row.
    assert!(check_case("gpt2") >= 20);
}

#[test]
fn neox_parallel_residual_partial_rotary_matches() {
    // rotary_pct 0.25, parallel residual, untied.
    assert!(check_case("neox_parallel") >= 20);
}

#[test]
fn neox_sequential_half_precision_checkpoint_matches() {
    // rotary_pct 0.5, sequential residual, tied, f16 weights on disk.
    assert!(check_case("neox_sequential") >= 20);
}

#[test]
fn llama_gqa_llama3_rope_sharded_matches() {
    // 4 query / 2 kv heads, llama3 rope scaling, untied, 7 safetensors shards + index.
    assert!(check_case("llama_gqa") >= 20);
}

#[test]
fn llama_tied_with_biases_and_wide_heads_matches() {
    // head_dim 8 with d_model 16 and 4 heads, attention biases, tied.
    assert!(check_case("llama_tied") >= 20);
}

#[test]
fn qwen2_bf16_matches() {
    // q/k/v biases, 4 query heads on 1 kv head, tied, bf16 weights on disk.
    assert!(check_case("qwen2") >= 20);
}

#[test]
fn mistral_sliding_window_matches() {
    // Window 3 over 7 positions (Hugging Face hidden states: TransformerLens has no window).
    assert_eq!(check_case("mistral"), 2);
}

#[test]
fn gemma3_qk_norm_sandwich_norms_sliding_and_global_layers_match() {
    // Window 3 over 7 positions on layers 0 and 2, layer 1 global with linearly scaled rope;
    // soft-capped scores and logits (Hugging Face's states, patterns and layer-1 outputs).
    // Hooks past the (excluded) block 0: resid_pre 1–2, patterns 1–2, attn/mlp out, resid_post.
    assert_eq!(check_case("gemma3"), 7);
}

#[test]
fn gemma3_saved_as_metarep_checkpoint_reloads_identically() {
    // The Gemma switches and the extra norms survive metarep's own (TransformerLens-named)
    // checkpoint format.
    let (model, refs) = load_case("gemma3");
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let back = metarep_model::HookedTransformer::from_dir(dir.path(), &Default::default()).unwrap();
    assert_eq!(back.config().family, metarep_model::Family::Metarep);
    let same_family = metarep_model::ModelConfig {
        family: metarep_model::Family::Metarep,
        ..model.config().clone()
    };
    assert_eq!(back.config(), &same_family);
    let input = case_input(&refs);
    let (a, b) = (
        model.forward(input.clone()).unwrap(),
        back.forward(input).unwrap(),
    );
    assert_eq!(max_abs_diff(&a, &b, &|_| true), 0.0);
}

#[test]
fn bert_encoder_matches() {
    // Padding mask, token types, MLM head; pooler and NSP head present in the checkpoint.
    assert!(check_case("bert") >= 20);
}

#[test]
fn manifest_hashes_match_the_checked_in_fixtures() {
    use sha2::{Digest, Sha256};
    let root = common::fixtures();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("MANIFEST.json")).unwrap())
            .unwrap();
    let entries = manifest["fixtures"].as_array().unwrap();
    let mut checked = 0;
    for e in entries {
        let file = e["file"].as_str().unwrap();
        // `../target/...`: fetched outside git (MiniLM); other helpers' fixtures may follow.
        if file.starts_with("../") {
            continue;
        }
        let bytes = std::fs::read(root.join(file)).unwrap_or_else(|err| panic!("{file}: {err}"));
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            sha,
            e["sha256"].as_str().unwrap(),
            "{file} changed since it was recorded"
        );
        assert!(!e["how"].as_str().unwrap().is_empty());
        checked += 1;
    }
    // 8 models (config, weights, reference; one sharded into 7 + index) and the tokenizer pair.
    assert!(
        checked >= 8 * 3 + 2,
        "only {checked} parity files in the manifest"
    );
}

//! Helpers shared by the integration tests: fixture paths and tensor comparison.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use metarep_model::{HookedTransformer, Input, LoadOptions};

/// `fixtures/` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The parity fixture directory of `case`.
pub fn parity_dir(case: &str) -> PathBuf {
    fixtures().join("parity").join(case)
}

/// Loads a parity fixture model (f32, CPU) and its reference tensors.
pub fn load_case(case: &str) -> (HookedTransformer, HashMap<String, Tensor>) {
    let dir = parity_dir(case);
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {case}: {e}"));
    let refs =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    (model, refs)
}

/// The fixture's input (tokens, and the padding mask / token types when recorded).
pub fn case_input(refs: &HashMap<String, Tensor>) -> Input {
    let mut input = Input::new(refs["input_ids"].clone());
    if let Some(m) = refs.get("attention_mask") {
        input = input.with_attention_mask(m.clone());
    }
    if let Some(t) = refs.get("token_type_ids") {
        input = input.with_token_types(t.clone());
    }
    input
}

/// Max |a − b| over the entries where `valid` holds, treating entries where the reference is
/// masked (≤ −1e30, TransformerLens's `-inf` or `finfo.min`) as requiring ours to be masked too.
pub fn max_abs_diff(ours: &Tensor, reference: &Tensor, valid: &dyn Fn(&[usize]) -> bool) -> f32 {
    assert_eq!(ours.dims(), reference.dims(), "shape mismatch");
    let dims = ours.dims().to_vec();
    let a = ours
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = reference
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut worst = 0f32;
    let mut idx = vec![0usize; dims.len()];
    for (x, y) in a.iter().zip(&b) {
        if valid(&idx) {
            if *y <= -1e30 {
                if *x > -1e30 {
                    return f32::INFINITY;
                }
            } else {
                let d = (x - y).abs();
                if d.is_nan() {
                    return f32::INFINITY;
                }
                worst = worst.max(d);
            }
        }
        for k in (0..dims.len()).rev() {
            idx[k] += 1;
            if idx[k] < dims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    worst
}

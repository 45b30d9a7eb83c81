//! Bad input is an error naming the tensor, key, id or hook — never a panic.

use crate::common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::parity_dir;
use metarep_model::hooks::HookSet;
use metarep_model::{Error, HookPoint, HookedTransformer, Input, LoadOptions};

/// A copy of the gpt2 parity fixture in a temp dir, with its tensors passed through `edit`.
fn edited_gpt2(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = parity_dir("gpt2");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn load(dir: &Path) -> metarep_model::Result<HookedTransformer> {
    HookedTransformer::from_dir(dir, &LoadOptions::default())
}

fn gpt2() -> HookedTransformer {
    load(&parity_dir("gpt2")).unwrap()
}

#[test]
fn missing_tensor_is_named() {
    let name = "h.1.mlp.c_fc.bias";
    let dir = edited_gpt2(|t| {
        let key = t.keys().find(|k| k.ends_with(name)).unwrap().clone();
        t.remove(&key);
    });
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(err, Error::MissingTensor { .. }), "{err}");
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn extra_tensor_is_named() {
    let dir = edited_gpt2(|t| {
        t.insert(
            "transformer.h.0.attn.surprise".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("transformer.h.0.attn.surprise") && err.contains("unexpected"),
        "{err}"
    );
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let dir = edited_gpt2(|t| {
        let key = t
            .keys()
            .find(|k| k.ends_with("wte.weight"))
            .unwrap()
            .clone();
        t.insert(
            key,
            Tensor::zeros((41, 16), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("wte.weight") && err.contains("[41, 16]") && err.contains("[40, 16]"),
        "{err}"
    );
}

#[test]
fn unsupported_model_type_is_named() {
    let dir = edited_gpt2(|_| {});
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type": "t5", "d_model": 16}"#,
    )
    .unwrap();
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("`t5`"), "{err}");
}

#[test]
fn bad_config_value_names_key_and_file() {
    let dir = edited_gpt2(|_| {});
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"n_head\": 4", "\"n_head\": \"four\""),
    )
    .unwrap();
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("n_head") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn corrupt_weights_file_is_named() {
    let dir = edited_gpt2(|_| {});
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn token_out_of_range_names_id_and_position() {
    let model = gpt2();
    let input = Input::from_ids(&[vec![1, 2, 3], vec![4, 40, 5]], &Device::Cpu).unwrap();
    let err = model.forward(input).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                id: 40,
                batch: 1,
                pos: 1,
                vocab: 40
            }
        ),
        "{err}"
    );
    let err = model
        .forward(Tensor::new(&[[-1i64, 2]], &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("out of range"), "{err}");
    let err = model
        .forward(Tensor::zeros((1, 17), DType::U32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("n_ctx = 16"), "{err}");
    let err = model
        .forward(Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("integer"), "{err}");
}

#[test]
fn unknown_hook_names_are_errors() {
    let model = gpt2();
    let input = Input::from_ids(&[vec![1, 2, 3]], &Device::Cpu).unwrap();
    let err = model
        .run_with_cache(input.clone(), "blocks.0.hook_nope")
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocks.0.hook_nope"), "{err}");
    let err = model
        .run_with_cache(input.clone(), "blocks.*.attn.hook_rot_q")
        .unwrap_err()
        .to_string();
    assert!(err.contains("hook_rot_q"), "{err}");
    let (_, cache) = model
        .run_with_cache(input, "blocks.0.hook_resid_pre")
        .unwrap();
    let err = cache.get(HookPoint::Z(0)).unwrap_err().to_string();
    assert!(err.contains("blocks.0.attn.hook_z"), "{err}");
    assert!(cache.get_name("blocks.0.hook_zz").is_err());
}

#[test]
fn replacement_of_the_wrong_shape_names_the_hook() {
    let model = gpt2();
    let input = Input::from_ids(&[vec![1, 2, 3]], &Device::Cpu).unwrap();
    let mut hooks = HookSet::new().add(HookPoint::MlpPost(1), |_, x| Ok(Some(x.narrow(2, 0, 3)?)));
    let err = model
        .run_with_hooks(input, &mut hooks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocks.1.mlp.hook_post") && err.contains("[1, 3, 3]"),
        "{err}"
    );
}

#[test]
fn bad_masks_and_layers_are_errors() {
    let model = gpt2();
    let input = Input::from_ids(&[vec![1, 2, 3]], &Device::Cpu).unwrap();
    let bad = input
        .clone()
        .with_attention_mask(Tensor::zeros((1, 3), DType::U32, &Device::Cpu).unwrap());
    assert!(model
        .forward(bad)
        .unwrap_err()
        .to_string()
        .contains("masks every token"));
    let bad = input
        .clone()
        .with_attention_mask(Tensor::ones((1, 4), DType::U32, &Device::Cpu).unwrap());
    assert!(model
        .forward(bad)
        .unwrap_err()
        .to_string()
        .contains("attention_mask"));
    let err = model
        .run(
            &input,
            &mut metarep_model::NoHooks,
            metarep_model::RunTo::Layer(3),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("stop_at_layer 3"), "{err}");
}

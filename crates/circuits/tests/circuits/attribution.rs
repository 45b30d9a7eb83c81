//! Direct logit attribution of a chosen answer token: the parts sum to the logit.

use candle_core::{DType, Device, Tensor};
use metarep_circuits::attribution::answer_attribution;
use metarep_model::{HookedTransformer, Input, ModelConfig};

#[test]
fn answer_attribution_parts_sum_to_the_logit() {
    let mut cfg = ModelConfig::gpt2_like(2, 16, 2, 12, 8);
    cfg.d_mlp = 24;
    let model = HookedTransformer::random(cfg, 4, DType::F32, &Device::Cpu).unwrap();
    let tokens = Tensor::new(&[[1u32, 5, 7, 2, 0], [3, 3, 9, 11, 4]], &Device::Cpu).unwrap();
    let (positions, targets) = ([3usize, 4], [6u32, 10]);
    let a = answer_attribution(&model, &tokens, &positions, &targets).unwrap();
    let logits = model.forward(Input::new(tokens.clone())).unwrap();
    let want = (logits
        .get(0)
        .unwrap()
        .get(3)
        .unwrap()
        .get(6)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        + logits
            .get(1)
            .unwrap()
            .get(4)
            .unwrap()
            .get(10)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()) as f64
        / 2.0;
    assert!((a.logit - want).abs() < 1e-4, "{} vs {want}", a.logit);
    assert_eq!(
        (a.heads.len(), a.heads[0].len(), a.neurons[1].len()),
        (2, 2, 24)
    );
    for l in 0..2 {
        let parts: f64 = a.neurons[l].iter().sum::<f64>() + a.mlp_bias[l];
        assert!(
            (parts - a.mlps[l]).abs() < 1e-4,
            "layer {l}: {parts} vs {}",
            a.mlps[l]
        );
    }
    assert!(answer_attribution(&model, &tokens, &[3, 5], &targets)
        .unwrap_err()
        .to_string()
        .contains("position 5"));
    assert!(answer_attribution(&model, &tokens, &positions, &[6, 12])
        .unwrap_err()
        .to_string()
        .contains("target token 12"));
    assert!(answer_attribution(&model, &tokens, &[3], &targets).is_err());
}

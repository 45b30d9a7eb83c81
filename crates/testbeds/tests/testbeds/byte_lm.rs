//! byte-lm: a short training run on real-looking text lowers the loss below the uniform 8 bits
//! per byte and returns a frozen model; bad settings and non-byte ids are errors.

use candle_core::{Device, Tensor, Var};
use metarep_model::{NoHooks, RunTo};
use metarep_testbeds::byte_lm::{encode, ByteLmSpec};

fn spec() -> ByteLmSpec {
    ByteLmSpec {
        layers: 1,
        d_model: 32,
        heads: 2,
        mlp: 64,
        n_ctx: 64,
        seq: 32,
        batch: 8,
        steps: 60,
        lr: 0.01,
        warmup: 5,
        seed: 0,
    }
}

#[test]
fn training_learns_the_text_and_returns_a_frozen_model() {
    let text = encode(&"the cat sat on the mat and the dog sat on the log. ".repeat(40));
    let (model, report) = spec().train(&text).unwrap();
    assert!(
        report.final_loss < 0.5 * (256f64).ln(),
        "loss {} → {}",
        report.first_loss,
        report.final_loss
    );
    // Frozen: a gradient through the model reaches its input only.
    let ids = Tensor::from_vec(text[..16].to_vec(), (1, 16), &Device::Cpu).unwrap();
    let e = Var::from_tensor(&model.token_embeddings(&ids).unwrap()).unwrap();
    let positions: Vec<usize> = (0..16).collect();
    let logits = model
        .run_embeddings(e.as_tensor(), &positions, &mut NoHooks, RunTo::Logits)
        .unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&e).is_some());
    assert!(
        grads.get(model.w_e()).is_none(),
        "the embedding still tracks gradients"
    );
}

#[test]
fn bad_settings_and_ids_are_errors() {
    let text = encode("short text, long enough for a span of thirty-three bytes at least");
    for bad in [
        ByteLmSpec { heads: 3, ..spec() },
        ByteLmSpec { seq: 65, ..spec() },
        ByteLmSpec { lr: 0.0, ..spec() },
        ByteLmSpec { batch: 0, ..spec() },
    ] {
        assert!(bad.train(&text).is_err(), "{bad:?}");
    }
    let err = spec().train(&text[..20]).unwrap_err().to_string();
    assert!(err.contains("cannot fill"), "{err}");
    let mut ids = text.clone();
    ids[3] = 300;
    let err = spec().train(&ids).unwrap_err().to_string();
    assert!(err.contains("300"), "{err}");
}

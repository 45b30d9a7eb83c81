//! The small-model trainer learns, resumes exactly from a checkpoint, logs metrics, and saves a
//! model that loads back through the ordinary checkpoint path.

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::{derive_seed, seeded};
use metarep_model::train::{cross_entropy, LmBatch, RunControl, TrainConfig, Trainer};
use metarep_model::{HookedTransformer, LoadOptions, ModelConfig};
use rand::Rng;

const VOCAB: usize = 12;

fn small_cfg() -> ModelConfig {
    let mut cfg = ModelConfig::gpt2_like(2, 32, 4, VOCAB, 16);
    cfg.d_mlp = 64;
    cfg
}

/// Sequences of random tokens whose second half repeats the first: the second half is
/// predictable only by attending back (an induction-style task).
fn repeat_batch(step: usize, seed: u64) -> metarep_model::Result<LmBatch> {
    let mut rng = seeded(derive_seed(seed, &format!("step/{step}")));
    let (b, half) = (16, 6);
    let mut rows: Vec<u32> = Vec::with_capacity(b * 2 * half);
    for _ in 0..b {
        let seg: Vec<u32> = (0..half)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect();
        rows.extend(&seg);
        rows.extend(&seg);
    }
    let seqs = Tensor::from_vec(rows, (b, 2 * half), &Device::Cpu)?;
    // Score only the predictable positions (targets in the second half).
    let mask: Vec<f32> = (0..b)
        .flat_map(|_| (0..2 * half - 1).map(|p| if p + 1 > half { 1.0 } else { 0.0 }))
        .collect();
    Ok(LmBatch::next_token(&seqs)?.with_loss_mask(Tensor::from_vec(
        mask,
        (b, 2 * half - 1),
        &Device::Cpu,
    )?))
}

fn tc(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        lr: 3e-3,
        warmup: 10,
        weight_decay: 0.01,
        clip: 1.0,
        checkpoint_every: 5,
        log_every: 1,
        eval_every: 0,
        seed: 3,
    }
}

#[test]
fn learns_to_copy_repeated_segments() {
    let mut trainer = Trainer::new(small_cfg(), 0, DType::F32, &Device::Cpu).unwrap();
    let mut evals = 0;
    let mut eval = |m: &HookedTransformer, _step: usize| {
        evals += 1;
        let b = repeat_batch(10_000, 99)?;
        let logits = m.forward(b.tokens.clone())?;
        let loss = cross_entropy(&logits, &b.targets, b.loss_mask.as_ref())?.to_scalar::<f32>()?;
        Ok(vec![("heldout_loss".to_string(), loss as f64)])
    };
    let cfg = TrainConfig {
        eval_every: 100,
        ..tc(300)
    };
    let report = trainer
        .train(
            &cfg,
            &mut repeat_batch,
            RunControl {
                eval: Some(&mut eval),
                ..RunControl::default()
            },
        )
        .unwrap();
    let chance = (VOCAB as f64).ln();
    assert!(report.first_loss > 0.8 * chance, "{report:?}");
    let heldout = report.eval[0].1;
    assert!(
        heldout < 0.25 * chance,
        "held-out loss {heldout} vs chance {chance}: {report:?}"
    );
    assert_eq!(evals, 3);
}

#[test]
fn resume_from_a_checkpoint_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("straight"), dir.path().join("interrupted"));
    let cfg = tc(20);
    let mut straight = Trainer::new(small_cfg(), 1, DType::F32, &Device::Cpu).unwrap();
    let r1 = straight
        .train(
            &cfg,
            &mut repeat_batch,
            RunControl {
                out: Some(&a),
                ..RunControl::default()
            },
        )
        .unwrap();
    let mut first = Trainer::new(small_cfg(), 1, DType::F32, &Device::Cpu).unwrap();
    first
        .train(
            &cfg,
            &mut repeat_batch,
            RunControl {
                out: Some(&b),
                stop_at: Some(12),
                ..RunControl::default()
            },
        )
        .unwrap();
    // A fresh process: new trainer, same init seed irrelevant (weights come from the checkpoint).
    let mut second = Trainer::new(small_cfg(), 999, DType::F32, &Device::Cpu).unwrap();
    let r2 = second
        .train(
            &cfg,
            &mut repeat_batch,
            RunControl {
                out: Some(&b),
                resume: true,
                ..RunControl::default()
            },
        )
        .unwrap();
    assert_eq!(r2.start_step, 12);
    assert_eq!(r1.final_loss, r2.final_loss);
    for ((n, p), (_, q)) in straight.params().iter().zip(second.params()) {
        let d = (p.as_tensor() - q.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{n} differs after resume");
    }
    let lines = |p: &std::path::Path| std::fs::read_to_string(p.join("metrics.jsonl")).unwrap();
    assert_eq!(lines(&a), lines(&b));
    assert_eq!(lines(&a).lines().count(), 20);
    // Resuming a different model is refused.
    let mut other = Trainer::new(
        ModelConfig::gpt2_like(1, 32, 4, VOCAB, 16),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let err = other
        .train(
            &cfg,
            &mut repeat_batch,
            RunControl {
                out: Some(&b),
                resume: true,
                ..RunControl::default()
            },
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("different model config"), "{err}");
    let err = other
        .train(
            &cfg,
            &mut repeat_batch,
            RunControl {
                out: Some(&dir.path().join("none")),
                resume: true,
                ..RunControl::default()
            },
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("none"), "{err}");
}

#[test]
fn trained_models_save_and_load_as_checkpoints() {
    let mut cfg = small_cfg();
    cfg.attn_only = true;
    cfg.d_mlp = 0;
    let mut trainer = Trainer::new(cfg, 2, DType::F32, &Device::Cpu).unwrap();
    trainer
        .train(&tc(5), &mut repeat_batch, RunControl::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    trainer.model().save_pretrained(dir.path()).unwrap();
    let loaded = HookedTransformer::from_dir(dir.path(), &LoadOptions::default()).unwrap();
    let batch = repeat_batch(0, 0).unwrap();
    let a = trainer.model().forward(batch.tokens.clone()).unwrap();
    let b = loaded.forward(batch.tokens).unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // The trainer's weights carry gradients (composite softmax), the loaded ones use the fused
    // kernel: equal up to rounding.
    assert!(d < 1e-5, "{d}");
    // The weights are stored under TransformerLens state-dict names and shapes.
    let st =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(st["blocks.1.attn.W_Q"].dims(), &[4, 32, 8]);
    assert_eq!(st["blocks.0.attn.W_O"].dims(), &[4, 8, 32]);
    assert!(
        st.contains_key("embed.W_E")
            && st.contains_key("pos_embed.W_pos")
            && !st.contains_key("unembed.W_U")
    );
    let bad = LmBatch::next_token(&Tensor::zeros((2, 1), DType::U32, &Device::Cpu).unwrap());
    assert!(bad.is_err());
}

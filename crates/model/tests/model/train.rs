//! The small-model trainer learns, resumes exactly from a checkpoint, logs metrics, and saves a
//! model that loads back through the ordinary checkpoint path.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use metarep_core::compare::max_abs_diff;
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::RunControl;
use metarep_model::train::{cross_entropy, LmBatch, LmTrainConfig, LmTrainer};
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

fn tc(steps: usize) -> LmTrainConfig {
    LmTrainConfig {
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
    let mut trainer = LmTrainer::new(small_cfg(), 0, DType::F32, &Device::Cpu).unwrap();
    let mut evals = 0;
    let mut eval = |m: &HookedTransformer, _step: usize| {
        evals += 1;
        let b = repeat_batch(10_000, 99)?;
        let logits = m.forward(b.tokens.clone())?;
        let loss = cross_entropy(&logits, &b.targets, b.loss_mask.as_ref())?.to_scalar::<f32>()?;
        Ok(vec![("heldout_loss".to_string(), loss as f64)])
    };
    let cfg = LmTrainConfig {
        eval_every: 100,
        ..tc(300)
    };
    let report = trainer
        .train(
            &cfg,
            &mut repeat_batch,
            Some(&mut eval),
            RunControl::default(),
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

/// A run into `out` stopped after `stop_at` steps.
fn run_until(out: &Path, stop_at: Option<usize>, resume: bool, init_seed: u64) -> LmTrainer {
    let mut t = LmTrainer::new(small_cfg(), init_seed, DType::F32, &Device::Cpu).unwrap();
    let control = RunControl {
        out: Some(out),
        resume,
        stop_at,
        ..RunControl::default()
    };
    t.train(&tc(20), &mut repeat_batch, None, control).unwrap();
    t
}

#[test]
fn a_run_killed_after_a_checkpoint_resumes_exactly_and_logs_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = ["straight", "killed", "ckpt"].map(|n| dir.path().join(n));
    let straight = run_until(&a, None, false, 1);
    // Killed at step 13, after the checkpoint of step 10: the log runs past the checkpoint.
    run_until(&b, Some(13), false, 1);
    run_until(&c, Some(10), false, 1);
    std::fs::remove_dir_all(b.join("checkpoint")).unwrap();
    std::fs::rename(c.join("checkpoint"), b.join("checkpoint")).unwrap();
    // A fresh process: the init seed is irrelevant (weights come from the checkpoint).
    let second = run_until(&b, None, true, 999);
    for ((n, p), (_, q)) in straight.params().iter().zip(second.params()) {
        let d = max_abs_diff(p.as_tensor(), q.as_tensor()).unwrap();
        assert_eq!(d, 0.0, "{n} differs after resume");
    }
    let lines = |p: &Path| std::fs::read_to_string(p.join("metrics.jsonl")).unwrap();
    assert_eq!(lines(&a), lines(&b));
    let steps: Vec<u64> = lines(&b)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (0..20).collect::<Vec<u64>>());
}

#[test]
fn resuming_another_model_or_config_or_nothing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("run");
    run_until(&b, Some(12), false, 1);
    fn resume(out: &Path) -> RunControl<'_> {
        RunControl {
            out: Some(out),
            resume: true,
            ..RunControl::default()
        }
    }
    let mut other = LmTrainer::new(
        ModelConfig::gpt2_like(1, 32, 4, VOCAB, 16),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let err = other
        .train(&tc(20), &mut repeat_batch, None, resume(&b))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.n_layers: 2 → 1"), "{err}");
    let mut same = LmTrainer::new(small_cfg(), 0, DType::F32, &Device::Cpu).unwrap();
    let changed = LmTrainConfig { lr: 1e-2, ..tc(20) };
    let err = same
        .train(&changed, &mut repeat_batch, None, resume(&b))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("train.lr: 0.003 → 0.01"), "{err}");
    let err = same
        .train(
            &tc(20),
            &mut repeat_batch,
            None,
            resume(&dir.path().join("none")),
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
    let mut trainer = LmTrainer::new(cfg, 2, DType::F32, &Device::Cpu).unwrap();
    trainer
        .train(&tc(5), &mut repeat_batch, None, RunControl::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    trainer.model().save_pretrained(dir.path()).unwrap();
    let loaded = HookedTransformer::from_dir(dir.path(), &LoadOptions::default()).unwrap();
    let batch = repeat_batch(0, 0).unwrap();
    let a = trainer.model().forward(batch.tokens.clone()).unwrap();
    let b = loaded.forward(batch.tokens).unwrap();
    let d = max_abs_diff(&a, &b).unwrap();
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

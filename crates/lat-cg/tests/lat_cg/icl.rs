//! Trained LATs on in-context linear regression: the von Oswald et al. one-layer result, exact
//! resume, and bad input.

use candle_core::{DType, Device};
use metarep_core::train::RunControl;
use metarep_lat_cg::icl::{
    gd_one_step_sensitivity, lat_loss, sensitivity_cosine, tuned_gd, VonOswaldSetting,
};
use metarep_lat_cg::train::{
    icl_batch, train, IclAttention, IclLatConfig, IclTrainConfig, TrainableLat,
};

#[test]
fn one_trained_layer_matches_one_optimally_tuned_gd_step() {
    let setting = VonOswaldSetting::default();
    let (model, report) = setting.train_lat(1, 0, &Device::Cpu, None).unwrap();
    let held_out = setting.tasks(999, setting.held_out).unwrap();
    let lat = lat_loss(&model, &held_out).unwrap();
    let (gd, gd_loss) = tuned_gd(1, &held_out).unwrap();
    let rel = (lat - gd_loss).abs() / gd_loss;
    let eta = match gd.step {
        metarep_eval::baselines::StepSize::Fixed(e) => e,
        other => panic!("grid gives fixed steps, got {other:?}"),
    };
    let cos = sensitivity_cosine(&model, &held_out[..2000], gd_one_step_sensitivity(eta)).unwrap();
    eprintln!("trained 1-layer LAT: loss {lat:.4} vs GD-1 {gd_loss:.4} (η {eta:.3}); rel {rel:.4}; sensitivity cosine {cos:.5}; {:.1}s", report.seconds);
    assert!(
        rel <= 0.05,
        "trained loss {lat} vs tuned GD {gd_loss}: {rel:.3} relative"
    );
    assert!(cos >= 0.99, "sensitivity cosine {cos}");
}

fn small() -> (IclLatConfig, IclTrainConfig) {
    let model = IclLatConfig {
        dim: 3,
        n_support: 6,
        layers: 2,
        heads: 1,
        attention: IclAttention::Linear,
    };
    let cfg = IclTrainConfig {
        steps: 60,
        batch: 16,
        lr: 1e-2,
        warmup: 5,
        weight_decay: 0.01,
        clip: 1.0,
        checkpoint_every: 10,
        log_every: 1,
        seed: 4,
    };
    (model, cfg)
}

fn sampler(seed: u64) -> metarep_lat_cg::Result<metarep_lat_cg::train::IclBatch> {
    let setting = VonOswaldSetting {
        dim: 3,
        n_support: 6,
        ..Default::default()
    };
    icl_batch(&setting.tasks(seed, 16)?, DType::F32, &Device::Cpu)
}

/// Whether two models' parameters are equal bit for bit.
fn same_params(a: &TrainableLat, b: &TrainableLat) -> bool {
    a.params.iter().zip(&b.params).all(|((_, x), (_, y))| {
        metarep_core::compare::max_abs_diff(x.as_tensor(), y.as_tensor()).unwrap() == 0.0
    })
}

#[test]
fn interrupted_and_resumed_training_equals_an_uninterrupted_run() {
    resume_equals_uninterrupted(IclAttention::Linear);
}

#[test]
fn the_softmax_variant_resumes_exactly_too() {
    resume_equals_uninterrupted(IclAttention::Softmax);
}

fn resume_equals_uninterrupted(attention: IclAttention) {
    let (mc, cfg) = small();
    let mc = IclLatConfig { attention, ..mc };
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = ["straight", "killed", "ckpt"].map(|n| dir.path().join(n));
    let run = |out: &std::path::Path, stop_at, resume, init_seed| {
        let model = TrainableLat::new(mc, 0.1, init_seed, DType::F32, &Device::Cpu).unwrap();
        let control = RunControl {
            out: Some(out),
            resume,
            stop_at,
            ..RunControl::default()
        };
        let report = train(&model, &cfg, sampler, control).unwrap();
        (model, report)
    };
    let (straight, full) = run(&a, None, false, 1);
    // Killed at step 37, after the checkpoint of step 30: the log runs past the checkpoint.
    run(&b, Some(37), false, 1);
    run(&c, Some(30), false, 1);
    std::fs::remove_dir_all(b.join("checkpoint")).unwrap();
    std::fs::rename(c.join("checkpoint"), b.join("checkpoint")).unwrap();
    // A fresh process builds a fresh model: another init, overwritten by the checkpoint.
    let (resumed, second) = run(&b, None, true, 77);
    assert_eq!(second.start_step, 30);
    assert_eq!(second.final_loss, full.final_loss);
    assert!(same_params(&straight, &resumed));
    let steps = |p: &std::path::Path| -> Vec<u64> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(
        steps(&b),
        (0..60).collect::<Vec<u64>>(),
        "each step logged once"
    );
    assert_eq!(steps(&a), steps(&b));
}

#[test]
fn the_softmax_variant_learns_in_context_and_differs_from_the_lat() {
    let setting = VonOswaldSetting {
        dim: 3,
        n_support: 6,
        ..Default::default()
    };
    let mut cfg = small().1;
    cfg.steps = 600;
    cfg.batch = 128;
    cfg.lr = 1e-2;
    let shape = setting.model(1, 2, IclAttention::Softmax);
    let model = TrainableLat::new(shape, 0.1, 2, DType::F32, &Device::Cpu).unwrap();
    let held = setting.tasks(99, 2000).unwrap();
    let before = lat_loss(&model, &held).unwrap();
    let sample = |s: u64| icl_batch(&setting.tasks(s, 128)?, DType::F32, &Device::Cpu);
    train(&model, &cfg, sample, RunControl::default()).unwrap();
    let after = lat_loss(&model, &held).unwrap();
    // Predicting 0 costs E[y²]/2 = d/6 = 0.5 here; one tuned GD step is the reference.
    let zero = held.iter().map(|t| 0.5 * t.y_query[0].powi(2)).sum::<f64>() / held.len() as f64;
    let (_, gd) = tuned_gd(1, &held).unwrap();
    eprintln!("softmax TF: loss {before:.4} → {after:.4}; zero predictor {zero:.4}, GD-1 {gd:.4}");
    assert!(after < 0.8 * zero, "{after} vs zero predictor {zero}");
    // The same initial weights with linear heads compute something else.
    let soft = TrainableLat::new(shape, 0.5, 3, DType::F32, &Device::Cpu).unwrap();
    let linear_shape = IclLatConfig {
        attention: IclAttention::Linear,
        ..shape
    };
    let linear = TrainableLat::new(linear_shape, 0.5, 3, DType::F32, &Device::Cpu).unwrap();
    let batch = icl_batch(&held[..64], DType::F32, &Device::Cpu).unwrap();
    let (a, b) = (
        soft.predict(&batch.tokens).unwrap(),
        linear.predict(&batch.tokens).unwrap(),
    );
    let gap = (a - &b).unwrap().abs().unwrap().max_all().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap();
    let (gap, scale) = (
        gap.to_scalar::<f32>().unwrap(),
        scale.to_scalar::<f32>().unwrap(),
    );
    assert!(
        gap > 1e-2 * scale,
        "softmax and linear heads agree: {gap} vs {scale}"
    );
}

#[test]
fn bad_training_input_is_an_error() {
    let (mc, cfg) = small();
    let model = TrainableLat::new(mc, 0.1, 1, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = train(
        &model,
        &cfg,
        sampler,
        RunControl {
            out: Some(dir.path()),
            resume: true,
            ..RunControl::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("checkpoint"), "{e}");
    let mut zero = cfg;
    zero.steps = 0;
    assert!(train(&model, &zero, sampler, RunControl::default()).is_err());
    assert!(TrainableLat::new(
        IclLatConfig { dim: 0, ..mc },
        0.1,
        1,
        DType::F32,
        &Device::Cpu
    )
    .is_err());
    // A checkpoint of another shape is refused by name.
    train(
        &model,
        &cfg,
        sampler,
        RunControl {
            out: Some(dir.path()),
            stop_at: Some(10),
            ..RunControl::default()
        },
    )
    .unwrap();
    let other = TrainableLat::new(
        IclLatConfig { layers: 1, ..mc },
        0.1,
        1,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let e = train(
        &other,
        &cfg,
        sampler,
        RunControl {
            out: Some(dir.path()),
            resume: true,
            ..RunControl::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("model.layers: 2 → 1"), "{e}");
}

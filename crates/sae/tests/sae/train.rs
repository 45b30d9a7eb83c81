//! Training: every architecture learns a sparse mixture; exact resume; dead-latent handling;
//! the optional loss terms.

use candle_core::{DType, Device, Tensor};
use metarep_core::parse_config;
use metarep_core::train::RunControl;
use metarep_sae::metrics::{evaluate, EvalConfig};
use metarep_sae::SaeTrainer;
use metarep_sae::{
    train, ActivationSource, Architecture, DecoderNorm, Sae, SaeConfig, SaeTrainConfig,
    TensorSource,
};

fn cfg(extra: &str) -> SaeTrainConfig {
    let log = if extra.contains("log_every") {
        ""
    } else {
        "log_every = 0\n"
    };
    let text = format!("seed = 1\nbatch = 128\nsteps = 600\nlr = 0.01\nwarmup = 20\n{log}{extra}");
    parse_config(&text, &[]).unwrap()
}

/// Train and test rows of one sparse mixture (same directions).
fn mixture(seed: u64) -> (Tensor, Tensor) {
    let x = metarep_sae::ground_truth::sparse_mixture(6144, 16, 32, 3, seed).unwrap();
    (
        x.narrow(0, 0, 3072).unwrap(),
        x.narrow(0, 3072, 3072).unwrap(),
    )
}

fn ev(sae: &Sae, x: &Tensor) -> f64 {
    let mut s = TensorSource::new(x.clone(), 0).unwrap();
    evaluate(sae, &mut s, &EvalConfig::default())
        .unwrap()
        .explained_variance
}

#[test]
fn every_architecture_learns_a_sparse_mixture() {
    let (train_x, test_x) = mixture(1);
    let cases = [
        (Architecture::Relu, "[loss]\nl1 = 0.03\n"),
        (
            Architecture::TopK { k: 4 },
            "dead_window = 1024\n[loss.aux_k]\nk_aux = 8\ncoeff = 0.03125\n",
        ),
        (
            Architecture::BatchTopK { k: 4 },
            "dead_window = 1024\n[loss.aux_k]\nk_aux = 8\ncoeff = 0.03125\n",
        ),
        (
            Architecture::JumpRelu {
                init_threshold: 0.05,
                bandwidth: 0.05,
            },
            "[loss]\nl0 = 0.002\n",
        ),
        (Architecture::Gated, "[loss]\nl1 = 0.05\n"),
    ];
    let mut failures = Vec::new();
    for (arch, extra) in cases {
        let config = SaeConfig::new(16, 4, arch).unwrap();
        let mut sae = Sae::new(config, 0, DType::F32, &Device::Cpu).unwrap();
        let null = metarep_sae::baselines::null_sae(config, &train_x.mean(0).unwrap(), 0).unwrap();
        let mut source = TensorSource::new(train_x.clone(), 3).unwrap();
        let report = train(&mut sae, &mut source, &cfg(extra), RunControl::default()).unwrap();
        let (trained, base) = (ev(&sae, &test_x), ev(&null, &test_x));
        println!(
            "{arch:?}: EV {trained:.3} (null {base:.3}), final loss {:.4}",
            report.final_loss
        );
        if !(trained > 0.85 && trained > base + 0.3) {
            failures.push(format!(
                "{arch:?}: explained variance {trained} (null {base})"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

fn params_of<T: candle_core::WithDType>(sae: &Sae) -> Vec<Vec<T>> {
    sae.params()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<T>().unwrap())
        .collect()
}

#[test]
fn stepping_a_trainer_by_hand_equals_train() {
    let (x, _) = mixture(4);
    let mut cfg = cfg("b_dec_init_mean = false\n[loss]\nl1 = 0.03\n");
    (cfg.steps, cfg.warmup) = (12, 2);
    let config = SaeConfig::new(16, 4, Architecture::Relu).unwrap();
    let mut by_train = Sae::new(config, 0, DType::F32, &Device::Cpu).unwrap();
    let mut by_hand = Sae::new(config, 0, DType::F32, &Device::Cpu).unwrap();
    let mut source = TensorSource::new(x.clone(), 3).unwrap();
    let report = train(&mut by_train, &mut source, &cfg, RunControl::default()).unwrap();
    let mut trainer = SaeTrainer::new(&by_hand, &cfg).unwrap();
    let mut source = TensorSource::new(x, 3).unwrap();
    source.start_epoch(0).unwrap();
    let mut last = f64::NAN;
    for step in 0..cfg.steps {
        let batch = source.next_batch(cfg.batch).unwrap().unwrap();
        last = trainer.step(&mut by_hand, &batch, step).unwrap().loss;
    }
    assert_eq!(params_of::<f32>(&by_hand), params_of::<f32>(&by_train));
    assert_eq!(last, report.final_loss);
    assert_eq!(trainer.dead_fraction(), report.dead_fraction);
}

/// Six steps of the fused trainer and of the autograd trainer on the same SAE and batches give
/// the same losses, parts, parameters and fire counters; returns the parts' names seen.
fn fused_trains_as_autograd(config: SaeConfig, cfg: &SaeTrainConfig, case: &str) -> Vec<String> {
    let (x, _) = mixture(5);
    let x = x.to_dtype(DType::F64).unwrap();
    let mut fused_sae = Sae::new(config, 0, DType::F64, &Device::Cpu).unwrap();
    let mut autograd_sae = Sae::new(config, 0, DType::F64, &Device::Cpu).unwrap();
    let mut fused = SaeTrainer::new(&fused_sae, cfg).unwrap();
    let mut autograd = SaeTrainer::new(&autograd_sae, cfg).unwrap();
    assert!(fused.fused.is_some(), "{case}: gets a fused step");
    autograd.fused = None;
    let mut source = TensorSource::new(x, 3).unwrap();
    source.start_epoch(0).unwrap();
    let mut names = Vec::new();
    for step in 0..6 {
        let batch = source.next_batch(cfg.batch).unwrap().unwrap();
        let a = fused.step(&mut fused_sae, &batch, step).unwrap();
        let b = autograd.step(&mut autograd_sae, &batch, step).unwrap();
        let case = format!("{case}, step {step}");
        assert!(
            (a.loss - b.loss).abs() < 1e-10,
            "{case}: {} vs {}",
            a.loss,
            b.loss
        );
        assert_eq!(a.parts.len(), b.parts.len(), "{case}");
        for ((na, va), (nb, vb)) in a.parts.iter().zip(&b.parts) {
            assert!(
                na == nb && (va - vb).abs() < 1e-10,
                "{case}: {na} {va} vs {nb} {vb}"
            );
            names.push(na.clone());
        }
        let flat = |sae: &Sae| params_of::<f64>(sae).concat();
        let (pa, pb) = (flat(&fused_sae), flat(&autograd_sae));
        let diff = pa
            .iter()
            .zip(&pb)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-9, "{case}: parameters differ by {diff}");
        assert_eq!(fused.since_fired, autograd.since_fired, "{case}");
        let thresholds = (fused_sae.batch_threshold, autograd_sae.batch_threshold);
        assert!(
            (thresholds.0 - thresholds.1).abs() < 1e-10,
            "{case}: {thresholds:?}"
        );
    }
    names
}

#[test]
fn the_fused_relu_step_trains_as_candle_autograd_does() {
    for (norm, pre) in [
        (DecoderNorm::Unit, true),
        (DecoderNorm::Folded, true),
        (DecoderNorm::Folded, false),
    ] {
        // A ramped L1 (the warm-up factor changes every step) and renormalised or free rows.
        let cfg = cfg("b_dec_init_mean = false\n[loss]\nl1 = 0.03\nl1_warmup = 4\n");
        let mut config = SaeConfig::new(16, 4, Architecture::Relu).unwrap();
        config.decoder_norm = norm;
        config.pre_encoder_bias = pre;
        let names = fused_trains_as_autograd(config, &cfg, &format!("ReLU {norm:?}, {pre}"));
        assert!(names.iter().any(|n| n == "l1"));
    }
    // Other architectures and loss terms keep the autograd path.
    let gated = Sae::new(
        SaeConfig::new(16, 4, Architecture::Gated).unwrap(),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(SaeTrainer::new(&gated, &cfg("[loss]\nl1 = 0.03\n"))
        .unwrap()
        .fused
        .is_none());
    let relu = Sae::new(
        SaeConfig::new(16, 4, Architecture::Relu).unwrap(),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let decorrelated = cfg("[loss]\nl1 = 0.03\n[loss.decorrelation]\ncoeff = 0.1\nrows = 8\n");
    assert!(SaeTrainer::new(&relu, &decorrelated)
        .unwrap()
        .fused
        .is_none());
}

#[test]
fn the_fused_topk_and_batch_topk_steps_train_as_candle_autograd_does() {
    // A dead window of one batch: latents that miss a step feed the auxiliary-K term next step.
    let aux = "b_dec_init_mean = false\ndead_window = 128\n[loss.aux_k]\nk_aux = 8\ncoeff = 0.1\n";
    let plain = "b_dec_init_mean = false\n";
    for arch in [
        Architecture::TopK { k: 3 },
        Architecture::BatchTopK { k: 3 },
    ] {
        for (pre, extra) in [(true, aux), (false, aux), (true, plain)] {
            let mut config = SaeConfig::new(16, 4, arch).unwrap();
            config.pre_encoder_bias = pre;
            let cfg = cfg(extra);
            let case = format!("{arch:?}, {pre}, {extra:?}");
            let names = fused_trains_as_autograd(config, &cfg, &case);
            assert_eq!(names.iter().any(|n| n == "aux_k"), extra == aux, "{case}");
        }
    }
    let topk = Sae::new(
        SaeConfig::new(16, 4, Architecture::TopK { k: 4 }).unwrap(),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let l1 = cfg("[loss]\nl1 = 0.03\n");
    assert!(SaeTrainer::new(&topk, &l1).unwrap().fused.is_none());
}

fn metrics_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_run() {
    let (x, _) = mixture(4);
    // TopK with dead latents and aux-K; ReLU with resampling (its RNG and the moment reset).
    let cases = [
        (Architecture::TopK { k: 3 }, "dead_window = 256\ncheckpoint_every = 7\nlog_every = 5\n[loss.aux_k]\nk_aux = 6\ncoeff = 0.1\n"),
        (Architecture::Relu, "dead_window = 256\ncheckpoint_every = 7\nlog_every = 5\n[loss]\nl1 = 3.0\n[resample]\nevery = 10\nuntil = 40\nencoder_scale = 0.2\n"),
    ];
    for (arch, extra) in cases {
        let mut c = cfg(extra);
        c.steps = 45; // 3072 rows / 128 = 24 batches per epoch: the run crosses an epoch
        let config = SaeConfig::new(16, 4, arch).unwrap();
        let run = |stop: Option<usize>, resume: bool, dir: &std::path::Path, sae: &mut Sae| {
            let mut source = TensorSource::new(x.clone(), 9).unwrap();
            train(
                sae,
                &mut source,
                &c,
                RunControl {
                    out: Some(dir),
                    resume,
                    stop_at: stop,
                    ..RunControl::default()
                },
            )
            .unwrap()
        };
        let full_dir = tempfile::tempdir().unwrap();
        let mut full = Sae::new(config, 5, DType::F32, &Device::Cpu).unwrap();
        let whole = run(None, false, full_dir.path(), &mut full);

        // Killed at step 33, after the checkpoint of step 28: the metrics file has lines past
        // the checkpoint; resuming must drop them, not duplicate them.
        let part_dir = tempfile::tempdir().unwrap();
        let ckpt_dir = tempfile::tempdir().unwrap();
        run(
            Some(33),
            false,
            part_dir.path(),
            &mut Sae::new(config, 5, DType::F32, &Device::Cpu).unwrap(),
        );
        run(
            Some(28),
            false,
            ckpt_dir.path(),
            &mut Sae::new(config, 5, DType::F32, &Device::Cpu).unwrap(),
        );
        std::fs::remove_dir_all(part_dir.path().join("checkpoint")).unwrap();
        std::fs::rename(
            ckpt_dir.path().join("checkpoint"),
            part_dir.path().join("checkpoint"),
        )
        .unwrap();
        let mut resumed = Sae::new(config, 99, DType::F32, &Device::Cpu).unwrap();
        let rest = run(None, true, part_dir.path(), &mut resumed);
        assert_eq!(rest.start_step, 28);
        assert_eq!(
            params_of::<f32>(&full),
            params_of::<f32>(&resumed),
            "{arch:?}: parameters differ"
        );
        assert_eq!(whole.final_loss, rest.final_loss);
        assert_eq!(
            whole.resampled > 0,
            matches!(arch, Architecture::Relu),
            "{arch:?}: {whole:?}"
        );
        let lines = metrics_lines(part_dir.path());
        assert_eq!(metrics_lines(full_dir.path()), lines, "{arch:?}: metrics");
        let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
        let expected: Vec<u64> = (0..45).filter(|s| s % 5 == 0 || *s == 44).collect();
        assert_eq!(steps, expected, "{arch:?}: each logged step exactly once");
    }
}

#[test]
fn dead_latents_feed_the_aux_loss_and_resampling_revives_them() {
    let (x, _) = mixture(5);
    // Heavily over-complete TopK: many latents never win, go dead after 512 tokens, and get the
    // auxiliary loss.
    let config = SaeConfig::new(16, 8, Architecture::TopK { k: 2 }).unwrap();
    let mut sae = Sae::new(config, 0, DType::F32, &Device::Cpu).unwrap();
    let mut c = cfg("dead_window = 512\nlog_every = 1\n[loss.aux_k]\nk_aux = 8\ncoeff = 0.03125\n");
    c.steps = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut source = TensorSource::new(x.clone(), 0).unwrap();
    train(
        &mut sae,
        &mut source,
        &c,
        RunControl {
            out: Some(dir.path()),
            ..Default::default()
        },
    )
    .unwrap();
    let lines = metrics_lines(dir.path());
    assert!(
        lines[0].get("loss_aux_k").is_none(),
        "nothing is dead at step 0"
    );
    let later = lines
        .iter()
        .filter(|l| l.get("loss_aux_k").is_some())
        .count();
    assert!(later > 0 && lines.last().unwrap()["dead_fraction"].as_f64().unwrap() > 0.0);

    // A ReLU SAE whose L1 kills latents: resampling points them at badly reconstructed inputs.
    let config = SaeConfig::new(16, 4, Architecture::Relu).unwrap();
    let mut sae = Sae::new(config, 0, DType::F32, &Device::Cpu).unwrap();
    let mut c = cfg("dead_window = 384\n[loss]\nl1 = 3.0\n[resample]\nevery = 25\nuntil = 60\nencoder_scale = 0.2\n");
    c.steps = 60;
    let mut source = TensorSource::new(x, 0).unwrap();
    let report = train(&mut sae, &mut source, &c, RunControl::default()).unwrap();
    assert!(report.resampled > 0, "{report:?}");
}

#[test]
fn optional_loss_terms_switch_on_and_train() {
    let (x, _) = mixture(6);
    let labels: Vec<u32> = (0..3072u32).map(|i| i % 3).collect();
    let labels = Tensor::from_vec(labels, 3072, &Device::Cpu).unwrap();
    let extra = "log_every = 1\n[loss]\nl1 = 0.03\n[loss.decorrelation]\ncoeff = 0.1\nrows = 64\n[loss.probe]\ncoeff = 0.5\nclasses = 3\n[loss.temporal]\ncoeff = 0.01\n";
    for arch in [Architecture::Relu, Architecture::TopK { k: 4 }] {
        let config = SaeConfig::new(16, 2, arch).unwrap();
        let mut sae = Sae::new(config, 0, DType::F32, &Device::Cpu).unwrap();
        let mut c = cfg(extra);
        c.steps = 10;
        let dir = tempfile::tempdir().unwrap();
        let mut source = TensorSource::new(x.clone(), 0)
            .unwrap()
            .with_labels(labels.clone())
            .unwrap()
            .with_window(8)
            .unwrap();
        train(
            &mut sae,
            &mut source,
            &c,
            RunControl {
                out: Some(dir.path()),
                ..Default::default()
            },
        )
        .unwrap();
        let last = metrics_lines(dir.path()).pop().unwrap();
        for key in [
            "loss_decorrelation",
            "loss_probe",
            "loss_temporal",
            "loss_l1",
            "probe_accuracy",
        ] {
            let v = last.get(key).and_then(|v| v.as_f64());
            assert!(v.is_some_and(f64::is_finite), "{arch:?}: {key} = {v:?}");
        }
    }
    // Temporal smoothness needs windows; the probe needs labels.
    let config = SaeConfig::new(16, 2, Architecture::Relu).unwrap();
    let mut sae = Sae::new(config, 0, DType::F32, &Device::Cpu).unwrap();
    let mut source = TensorSource::new(x.clone(), 0).unwrap();
    let e = train(
        &mut sae,
        &mut source,
        &cfg("[loss.temporal]\ncoeff = 1.0\n"),
        RunControl::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("window"), "{e}");
    let e = train(
        &mut sae,
        &mut source,
        &cfg("[loss.probe]\ncoeff = 1.0\nclasses = 3\n"),
        RunControl::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("labels"), "{e}");
    let e = train(
        &mut sae,
        &mut source,
        &cfg("[loss]\nl0 = 1.0\n"),
        RunControl::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("jumprelu"), "{e}");
}

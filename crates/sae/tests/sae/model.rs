//! The SAE forward pass against dense references, the fused AdamW against core's AdamW, and
//! SAELens export/import round trips.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use metarep_core::optim::AdamW;
use metarep_kernels::{adamw_update, AdamStep};
use metarep_sae::sae::TrainForward;
use metarep_sae::saelens::{export, import, SaeLensInfo};
use metarep_sae::{Architecture, DecoderNorm, InputNorm, Latents, Sae, SaeConfig};

fn data(rows: usize, d: usize, seed: u64) -> Tensor {
    metarep_sae::ground_truth::sparse_mixture(rows, d, 3 * d, 4, seed).unwrap()
}

fn perturb(sae: &Sae, seed: u64) {
    // Non-zero biases (and a non-trivial r_mag) so that every path is exercised.
    for (i, (_, v)) in sae.params().into_iter().enumerate() {
        if v.dims().len() == 1 {
            let n = v.dims()[0];
            let noise = metarep_sae::baselines::random_directions(1, n, seed + i as u64)
                .unwrap()
                .flatten_all()
                .unwrap();
            let t = (v.as_tensor().to_dtype(DType::F32).unwrap() + (noise * 0.3).unwrap()).unwrap();
            v.set(&t.to_dtype(v.dtype()).unwrap()).unwrap();
        }
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    metarep_core::compare::max_abs_diff(a, b).unwrap()
}

#[test]
fn sparse_topk_forward_and_gradients_equal_the_dense_computation() {
    let (d, n, k) = (12, 48, 5);
    let cfg = SaeConfig::new(d, n / d, Architecture::TopK { k }).unwrap();
    let sae = Sae::new(cfg, 3, DType::F64, &Device::Cpu).unwrap();
    perturb(&sae, 1);
    let x = data(40, d, 2).to_dtype(DType::F64).unwrap();
    let pass = sae.forward(&x, &TrainForward::default()).unwrap();
    let loss = (&pass.recon - &x)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();

    // Dense reference: pre = (x − b_dec) W_encᵀ + b_enc, keep the top k per row, ReLU, decode.
    let (we, be, wd, bd) = (
        sae.w_enc.as_tensor(),
        sae.b_enc.as_tensor(),
        sae.w_dec.as_tensor(),
        sae.b_dec.as_tensor(),
    );
    let pre = x
        .broadcast_sub(bd)
        .unwrap()
        .matmul(&we.t().unwrap())
        .unwrap()
        .broadcast_add(be)
        .unwrap();
    let pv = pre.to_vec2::<f64>().unwrap();
    let mask: Vec<f64> = pv
        .iter()
        .flat_map(|row| {
            let mut s = row.clone();
            s.sort_by(|a, b| b.partial_cmp(a).unwrap());
            let t = s[k - 1];
            row.iter().map(move |&v| if v >= t { 1.0 } else { 0.0 })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (40, n), &Device::Cpu).unwrap();
    let acts = (pre.relu().unwrap() * mask).unwrap();
    let recon = acts.matmul(wd).unwrap().broadcast_add(bd).unwrap();
    let dloss = (&recon - &x).unwrap().sqr().unwrap().sum_all().unwrap();
    let dgrads = dloss.backward().unwrap();

    assert!(max_abs_diff(&pass.recon, &recon) < 1e-12);
    for (name, v) in sae.params() {
        let e = max_abs_diff(
            grads.get(v.as_tensor()).unwrap(),
            dgrads.get(v.as_tensor()).unwrap(),
        );
        assert!(e < 1e-10, "gradient of {name} differs by {e}");
    }
    let dense = pass.latents.to_dense(n).unwrap();
    assert!(max_abs_diff(&dense, &acts) < 1e-12);
}

#[test]
fn dense_architectures_match_their_definitions() {
    let d = 8;
    let x = data(30, d, 4).to_dtype(DType::F64).unwrap();
    let arches = [
        Architecture::Relu,
        Architecture::JumpRelu {
            init_threshold: 0.05,
            bandwidth: 0.01,
        },
        Architecture::Gated,
    ];
    for arch in arches {
        let cfg = SaeConfig::new(d, 4, arch).unwrap();
        let sae = Sae::new(cfg, 5, DType::F64, &Device::Cpu).unwrap();
        perturb(&sae, 9);
        let pass = sae
            .forward(
                &x,
                &TrainForward {
                    sparsity: true,
                    aux_k: None,
                },
            )
            .unwrap();
        let (we, be, bd) = (
            sae.w_enc.as_tensor(),
            sae.b_enc.as_tensor(),
            sae.b_dec.as_tensor(),
        );
        let s = x
            .broadcast_sub(bd)
            .unwrap()
            .matmul(&we.t().unwrap())
            .unwrap();
        let want = match arch {
            Architecture::Relu => s.broadcast_add(be).unwrap().relu().unwrap(),
            Architecture::JumpRelu { .. } => {
                let pre = s.broadcast_add(be).unwrap();
                let theta = sae.threshold().unwrap().unwrap();
                (pre.broadcast_gt(&theta)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    * &pre)
                    .unwrap()
            }
            _ => {
                let gate = s
                    .broadcast_add(be)
                    .unwrap()
                    .gt(0.0)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap();
                let r = sae.r_mag.as_ref().unwrap().as_tensor().exp().unwrap();
                let mag = s
                    .broadcast_mul(&r)
                    .unwrap()
                    .broadcast_add(sae.b_mag.as_ref().unwrap().as_tensor())
                    .unwrap()
                    .relu()
                    .unwrap();
                (gate * mag).unwrap()
            }
        };
        let Latents::Dense(got) = &pass.latents else {
            panic!("dense codes expected")
        };
        assert!(max_abs_diff(got, &want) < 1e-12, "{arch:?}");
        let recon = want
            .matmul(sae.w_dec.as_tensor())
            .unwrap()
            .broadcast_add(bd)
            .unwrap();
        assert!(max_abs_diff(&pass.recon, &recon) < 1e-12, "{arch:?}");
        // Inference encoding equals the training codes.
        let enc = sae.encode(&x).unwrap().to_dense(cfg.d_sae).unwrap();
        assert!(max_abs_diff(&enc, &want) < 1e-6, "{arch:?} inference");
    }
}

#[test]
fn fused_adamw_equals_core_adamw() {
    let dev = Device::Cpu;
    let a = Var::from_tensor(&data(6, 5, 1)).unwrap();
    let b = Var::from_tensor(&a.as_tensor().copy().unwrap()).unwrap();
    let pa = vec![("w".to_string(), a.clone())];
    let pb = vec![("w".to_string(), b.clone())];
    let mut oa = AdamW::new(&pa, 0.01).unwrap();
    let mut ob = AdamW::new(&pb, 0.01).unwrap();
    for t in 1..=5 {
        let g = (data(6, 5, 10 + t as u64) - 0.3).unwrap();
        oa.step(&pa, std::slice::from_ref(&g), 0.05).unwrap();
        ob.t += 1;
        let step = AdamStep {
            lr: 0.05,
            beta1: ob.beta1,
            beta2: ob.beta2,
            eps: ob.eps,
            weight_decay: ob.weight_decay,
            t: ob.t,
        };
        adamw_update(b.as_tensor(), &g, &ob.m[0], &ob.v[0], &step).unwrap();
    }
    let e = max_abs_diff(a.as_tensor(), b.as_tensor());
    assert!(e < 1e-6, "{e}");
    assert!(max_abs_diff(&oa.v[0], &ob.v[0]) < 1e-9);
    let _ = dev;
}

fn round_trip(cfg: SaeConfig, tweak: impl Fn(&mut Sae)) {
    let mut sae = Sae::new(cfg, 7, DType::F32, &Device::Cpu).unwrap();
    perturb(&sae, 3);
    tweak(&mut sae);
    let dir = tempfile::tempdir().unwrap();
    let info = SaeLensInfo::for_hook("gpt2", "blocks.6.hook_resid_post");
    export(&sae, dir.path(), &info).unwrap();
    let (back, info2) = import(dir.path()).unwrap();
    assert_eq!(info2.metadata, info.metadata);
    let x = (data(25, cfg.d_in, 8) * 3.0).unwrap();
    let e = max_abs_diff(
        &sae.reconstruct(&x).unwrap(),
        &back.reconstruct(&x).unwrap(),
    );
    assert!(
        e < 1e-4,
        "{:?}: reconstructions differ by {e}",
        cfg.architecture
    );
    // And back again: the second export holds the same tensors (thresholds are stored as
    // ln θ inside metarep, so they come back within an ulp).
    let dir2 = tempfile::tempdir().unwrap();
    export(&back, dir2.path(), &info2).unwrap();
    let read = |p: &std::path::Path| {
        candle_core::safetensors::load(p.join("sae_weights.safetensors"), &Device::Cpu).unwrap()
    };
    let (first, second) = (read(dir.path()), read(dir2.path()));
    assert_eq!(first.len(), second.len());
    for (name, t) in &first {
        let e = max_abs_diff(t, &second[name]);
        let tol = if name == "threshold" { 1e-6 } else { 0.0 };
        assert!(
            e <= tol,
            "{:?}: tensor {name} changed by {e}",
            cfg.architecture
        );
    }
}

#[test]
fn saelens_round_trips_every_architecture() {
    let d = 6;
    for arch in [
        Architecture::Relu,
        Architecture::TopK { k: 3 },
        Architecture::JumpRelu {
            init_threshold: 0.1,
            bandwidth: 0.01,
        },
        Architecture::Gated,
    ] {
        round_trip(SaeConfig::new(d, 3, arch).unwrap(), |_| {});
    }
    // BatchTopK is exported as a JumpReLU with its global threshold.
    round_trip(
        SaeConfig::new(d, 3, Architecture::BatchTopK { k: 2 }).unwrap(),
        |s| s.batch_threshold = 0.2,
    );
    // An expected-norm input scale is folded into the weights; per-row scaling is kept.
    let mut cfg = SaeConfig::new(d, 3, Architecture::Relu).unwrap();
    cfg.input_norm = InputNorm::ExpectedNorm;
    round_trip(cfg, |s| s.input_scale = 2.5);
    cfg.input_norm = InputNorm::PerRow;
    round_trip(cfg, |_| {});
    cfg.pre_encoder_bias = false;
    cfg.decoder_norm = DecoderNorm::Unit;
    round_trip(cfg, |_| {});
}

#[test]
fn saelens_reads_the_older_topk_format_and_names_bad_files() {
    let (d, n) = (4, 8);
    let dir = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({
        "architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2},
        "d_in": d, "d_sae": n, "hook_name": "blocks.0.hook_resid_pre", "apply_b_dec_to_input": false,
        "normalize_activations": "none", "dtype": "float32"
    });
    std::fs::write(dir.path().join("cfg.json"), cfg.to_string()).unwrap();
    let w = |shape: (usize, usize)| Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap();
    let v = |len: usize| Tensor::zeros(len, DType::F32, &Device::Cpu).unwrap();
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("W_enc".into(), w((d, n)));
    t.insert("W_dec".into(), (w((n, d)) * 0.5).unwrap());
    t.insert("b_enc".into(), v(n));
    t.insert("b_dec".into(), v(d));
    let path = dir.path().join("sae_weights.safetensors");
    candle_core::safetensors::save(&t, &path).unwrap();
    let (sae, info) = import(dir.path()).unwrap();
    assert_eq!(sae.config.architecture, Architecture::TopK { k: 2 });
    assert!(!sae.config.pre_encoder_bias);
    assert_eq!(info.metadata["hook_name"], "blocks.0.hook_resid_pre");

    t.insert("W_dec".into(), w((n, d + 1)));
    candle_core::safetensors::save(&t, &path).unwrap();
    let e = import(dir.path()).unwrap_err().to_string();
    assert!(e.contains("W_dec") && e.contains("[8, 5]"), "{e}");
    t.remove("W_dec");
    candle_core::safetensors::save(&t, &path).unwrap();
    assert!(import(dir.path())
        .unwrap_err()
        .to_string()
        .contains("`W_dec`"));

    let mut bad = cfg.clone();
    bad["normalize_activations"] = "expected_average_only_in".into();
    std::fs::write(dir.path().join("cfg.json"), bad.to_string()).unwrap();
    assert!(import(dir.path())
        .unwrap_err()
        .to_string()
        .contains("scaling factor"));
    std::fs::write(dir.path().join("cfg.json"), "{\"d_in\": 4}").unwrap();
    assert!(import(dir.path())
        .unwrap_err()
        .to_string()
        .contains("d_sae"));
}

#[test]
fn config_errors_name_the_field() {
    let e = SaeConfig::new(8, 2, Architecture::TopK { k: 17 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("k must be in 1..=16"), "{e}");
    let mut c = SaeConfig::new(8, 2, Architecture::TopK { k: 4 }).unwrap();
    c.decoder_norm = DecoderNorm::Folded;
    assert!(c.validate().unwrap_err().to_string().contains("folded"));
    let e = SaeConfig::new(
        8,
        2,
        Architecture::JumpRelu {
            init_threshold: 0.0,
            bandwidth: 0.1,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("jumprelu"), "{e}");
    for expansion in [2, 32] {
        let c = SaeConfig::new(16, expansion, Architecture::Relu).unwrap();
        let sae = Sae::new(c, 0, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(sae.w_dec.dims(), &[16 * expansion, 16]);
        let norms = sae.decoder_norms().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            norms.iter().all(|n| (n - 0.1).abs() < 1e-5),
            "folded init norm 0.1"
        );
    }
    let sae = Sae::new(
        SaeConfig::new(4, 2, Architecture::Relu).unwrap(),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let e = sae
        .reconstruct(&Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[batch, 4]") && e.contains("[3, 5]"), "{e}");
}

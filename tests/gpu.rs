//! The CUDA path against the CPU path, on an NVIDIA GPU: forward passes of every family's parity
//! fixture (logits and every hook), the SAE kernels on wide rows, SAE training steps, and
//! capture to the activation store. Built only with `--features cuda`; every test is ignored
//! because it needs a GPU: `bash scripts/device-check.sh` runs them (with `--ignored`).

#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use metarep::capture::{capture, CaptureSpec, StoreReader, TokenDataset};
use metarep::core::parse_config;
use metarep::kernels as k;
use metarep::model::{HookFilter, HookPoint, HookedTransformer, LoadOptions, ModelConfig};
use metarep::sae::{
    ActivationSource, Architecture, Sae, SaeConfig, SaeTrainConfig, SaeTrainer, TensorSource,
};

#[path = "../crates/model/tests/common/mod.rs"]
mod common;
use common::case_input;

/// Forward values on the GPU vs the CPU, f32.
const FORWARD_TOL: f32 = 1e-4;

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA GPU at ordinal 0")
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Max |a − b| (both moved to the CPU, f32); entries that are `-inf` on both sides agree.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let flat = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    flat(a)
        .iter()
        .zip(&flat(b))
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() })
        .map(|d| if d.is_nan() { f32::INFINITY } else { d })
        .fold(0.0, f32::max)
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/device-check.sh"]
fn every_family_runs_on_the_gpu_as_on_the_cpu() {
    let cases = [
        "gpt2",
        "neox_parallel",
        "neox_sequential",
        "llama_gqa",
        "llama_tied",
        "mistral",
        "qwen2",
        "gemma3",
        "bert",
    ];
    for case in cases {
        let dir = fixtures().join("parity").join(case);
        let cpu = HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap();
        let opts = LoadOptions {
            device: gpu(),
            ..LoadOptions::default()
        };
        let cuda = HookedTransformer::from_dir(&dir, &opts).unwrap();
        let refs = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .unwrap();
        let input = case_input(&refs);
        // Plain forward: the fused device ops (no hooks wanted).
        let (a, b) = (
            cpu.forward(input.clone()).unwrap(),
            cuda.forward(input.clone()).unwrap(),
        );
        assert!(b.device().is_cuda(), "{case}: logits left the GPU");
        let d = max_diff(&a, &b);
        assert!(d <= FORWARD_TOL, "{case}: logits differ by {d}");
        // Every hook: the composite ops that expose each intermediate.
        let (la, ca) = cpu.run_with_cache(input.clone(), HookFilter::All).unwrap();
        let (lb, cb) = cuda.run_with_cache(input, HookFilter::All).unwrap();
        assert!(max_diff(&la, &lb) <= FORWARD_TOL, "{case}: cached logits");
        let points = HookFilter::All.resolve(cpu.config()).unwrap();
        let mut worst = 0f32;
        for p in &points {
            let (Ok(x), Ok(y)) = (ca.get(*p), cb.get(*p)) else {
                continue;
            };
            let d = max_diff(x, y);
            assert!(d <= FORWARD_TOL, "{case}: hook {} differs by {d}", p.name());
            worst = worst.max(d);
        }
        println!(
            "{case}: logits {d:.1e}, {} hooks, worst {worst:.1e}",
            points.len()
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/device-check.sh"]
fn sae_kernels_on_the_gpu_match_the_cpu_kernels() {
    let dev = gpu();
    let (b, d, n) = (64, 96, 24_576);
    let x = Tensor::randn(0f32, 1.0, (b, d), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 1.0, (n, d), &Device::Cpu).unwrap();
    let bias = Tensor::randn(0f32, 0.1, n, &Device::Cpu).unwrap();
    let on = |t: &Tensor| t.to_device(&dev).unwrap();
    let cpu = k::topk_of_product(&x, &w, &[(32, Some(&bias))]).unwrap();
    let cuda = k::topk_of_product(&on(&x), &on(&w), &[(32, Some(&on(&bias)))]).unwrap();
    let (ic, ig) = (
        cpu[0].indices.to_vec2::<u32>().unwrap(),
        cuda[0]
            .indices
            .to_device(&Device::Cpu)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap(),
    );
    assert_eq!(ic, ig, "top-32 of a 24 576-wide product");
    assert!(max_diff(&cpu[0].values, &cuda[0].values) <= 1e-3);

    let idx = &cpu[0].indices;
    let wv = Var::from_tensor(&w).unwrap();
    let wg = Var::from_tensor(&on(&w)).unwrap();
    let vals = cpu[0].values.clone();
    let probe = Tensor::randn(0f32, 1.0, (b, d), &Device::Cpu).unwrap();
    let loss = |idx: &Tensor, vals: &Tensor, w: &Var, x: &Tensor, probe: &Tensor| {
        let dec = k::sparse_decode(idx, vals, w).unwrap();
        let dot = k::gather_dot(idx, x, w).unwrap();
        ((dec * probe).unwrap().sum_all().unwrap() + dot.sum_all().unwrap()).unwrap()
    };
    let lc = loss(idx, &vals, &wv, &x, &probe);
    let lg = loss(&on(idx), &on(&vals), &wg, &on(&x), &on(&probe));
    // Relative: a sum of ~6e4 in f32 resolves to ~4e-3.
    let scale = lc.to_scalar::<f32>().unwrap().abs().max(1.0);
    assert!(max_diff(&lc, &lg) <= 1e-5 * scale, "{lc} vs {lg}");
    let (gc, gg) = (lc.backward().unwrap(), lg.backward().unwrap());
    let d = max_diff(gc.get(&wv).unwrap(), gg.get(&wg).unwrap());
    assert!(d <= 1e-3, "weight gradients differ by {d}");
}

fn sae_cfg(extra: &str) -> SaeTrainConfig {
    let text =
        format!("seed = 1\nbatch = 256\nsteps = 8\nlr = 0.003\nwarmup = 2\nlog_every = 0\nb_dec_init_mean = false\n{extra}");
    parse_config(&text, &[]).unwrap()
}

fn params_of(sae: &Sae) -> Vec<f32> {
    sae.params()
        .iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .to_device(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/device-check.sh"]
fn sae_training_steps_on_the_gpu_match_the_cpu() {
    let x = metarep::sae::ground_truth::sparse_mixture(4096, 64, 256, 4, 3).unwrap();
    for (arch, extra) in [
        (Architecture::TopK { k: 16 }, ""),
        (Architecture::Relu, "[loss]\nl1 = 0.01\n"),
    ] {
        let cfg = sae_cfg(extra);
        // 64 → 5 120 latents: wider than one sort piece of the GPU top-k.
        let config = SaeConfig::new(64, 80, arch).unwrap();
        let mut on_cpu = Sae::new(config, 0, DType::F32, &Device::Cpu).unwrap();
        let mut on_gpu = Sae::new(config, 0, DType::F32, &gpu()).unwrap();
        let mut tc = SaeTrainer::new(&on_cpu, &cfg).unwrap();
        let mut tg = SaeTrainer::new(&on_gpu, &cfg).unwrap();
        let mut source = TensorSource::new(x.clone(), 3).unwrap();
        source.start_epoch(0).unwrap();
        for step in 0..cfg.steps {
            let batch = source.next_batch(cfg.batch).unwrap().unwrap();
            let a = tc.step(&mut on_cpu, &batch, step).unwrap();
            let b = tg.step(&mut on_gpu, &batch, step).unwrap();
            let rel = (a.loss - b.loss).abs() / a.loss.abs().max(1e-12);
            assert!(
                rel < 1e-4,
                "{arch:?} step {step}: loss {} vs {}",
                a.loss,
                b.loss
            );
        }
        let (pa, pb) = (params_of(&on_cpu), params_of(&on_gpu));
        let d = pa
            .iter()
            .zip(&pb)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-4,
            "{arch:?}: parameters differ by {d} after {} steps",
            cfg.steps
        );
        println!(
            "{arch:?}: parameters agree within {d:.1e} after {} steps",
            cfg.steps
        );
    }
}

fn capture_with(model: &HookedTransformer, data: &TokenDataset, out: &Path) -> Tensor {
    let spec = CaptureSpec {
        hooks: vec![HookPoint::ResidPost(1)],
        dtype: "f32".into(),
        shard_tokens: 512,
        batch_contexts: 4,
        model_name: "gpu-check".into(),
        max_contexts: None,
    };
    let report = capture(model, data, out, &spec, |_, _| {}).unwrap();
    assert!(report.complete);
    let reader = StoreReader::open(&report.stores[0], 0, 1024).unwrap();
    let shards = reader.meta().shards.len();
    let parts: Vec<Tensor> = (0..shards).map(|i| reader.load_shard(i).unwrap()).collect();
    Tensor::cat(&parts, 0).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/device-check.sh"]
fn capture_from_a_gpu_model_stores_what_the_cpu_stores() {
    let mut cfg = ModelConfig::gpt2_like(2, 64, 4, 500, 64);
    cfg.d_mlp = 256;
    let cpu = HookedTransformer::random(cfg.clone(), 7, DType::F32, &Device::Cpu).unwrap();
    let cuda = HookedTransformer::random(cfg, 7, DType::F32, &gpu()).unwrap();
    let sequences: Vec<Vec<u32>> = (0..24)
        .map(|s| (0..64).map(|t| ((s * 131 + t * 17) % 500) as u32).collect())
        .collect();
    let data = TokenDataset {
        path: PathBuf::from("generated"),
        sha256: String::new(),
        sequences,
        dropped: 0,
    };
    let dir = tempfile::tempdir().unwrap();
    let a = capture_with(&cpu, &data, &dir.path().join("cpu"));
    let b = capture_with(&cuda, &data, &dir.path().join("cuda"));
    assert_eq!(a.dims(), &[24 * 64, 64]);
    let d = max_diff(&a, &b);
    assert!(d <= FORWARD_TOL, "stored activations differ by {d}");
}

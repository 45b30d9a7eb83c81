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
use metarep::model::{HookFilter, HookPoint, HookedTransformer, Input, LoadOptions, ModelConfig};
use metarep::sae::{
    ActivationSource, Architecture, Sae, SaeConfig, SaeTrainConfig, SaeTrainer, TensorSource,
};

#[path = "../crates/model/tests/model/common/mod.rs"]
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
    host(a)
        .iter()
        .zip(&host(b))
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
        // Left padding: queries that see no key at all come out the same.
        let ids = input.tokens.clone();
        let (rows, len) = ids.dims2().unwrap();
        let mut mask = vec![1u32; rows * len];
        mask[..len.min(2)].fill(0);
        let padded = Input::new(ids)
            .with_attention_mask(Tensor::from_vec(mask, (rows, len), &Device::Cpu).unwrap());
        let (pa, pb) = (
            cpu.forward(padded.clone()).unwrap(),
            cuda.forward(padded).unwrap(),
        );
        let dp = max_diff(&pa, &pb);
        assert!(
            dp <= FORWARD_TOL,
            "{case}: left-padded logits differ by {dp}"
        );
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

/// `t` moved to the CPU as a flat f32 vector.
fn host(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/device-check.sh"]
fn cuda_kernels_match_the_cpu_kernels_at_the_edges() {
    let dev = gpu();
    let on = |t: &Tensor| t.to_device(&dev).unwrap();
    // Top-k: ties go to the lower column, -inf entries come out inactive, every k.
    let mut row: Vec<f32> = (0..300).map(|i| ((i * 37) % 101) as f32).collect();
    row[5] = f32::NEG_INFINITY;
    row[250..].fill(f32::NEG_INFINITY);
    let x = Tensor::from_vec([row.clone(), row].concat(), (2, 300), &Device::Cpu).unwrap();
    let off = Tensor::randn(0f32, 1.0, 300, &Device::Cpu)
        .unwrap()
        .round()
        .unwrap();
    for k in [1, 7, 32, 249, 260, 300] {
        for offset in [None, Some(&off)] {
            let a = k::topk_per_row(&x, k, offset).unwrap();
            let b = k::topk_per_row(&on(&x), k, offset.map(&on).as_ref()).unwrap();
            let (ia, ib) = (
                a.indices.to_vec2::<u32>().unwrap(),
                b.indices
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .to_vec2::<u32>()
                    .unwrap(),
            );
            assert_eq!(ia, ib, "top-{k} (offset {})", offset.is_some());
            assert_eq!(host(&a.values), host(&b.values), "top-{k} values");
        }
    }
    // k beyond the kernel's shared memory: the sorted fallback.
    let wide = Tensor::randn(0f32, 1.0, (3, 5000), &Device::Cpu).unwrap();
    let a = k::topk_per_row(&wide, 4500, None).unwrap();
    let b = k::topk_per_row(&on(&wide), 4500, None).unwrap();
    assert_eq!(host(&a.values), host(&b.values), "top-4500");

    // Sparse ops with inactive slots, and an out-of-range index named.
    let (bsz, slots, n, d) = (5, 4, 40, 33);
    let w = Tensor::randn(0f32, 1.0, (n, d), &Device::Cpu).unwrap();
    let input = Tensor::randn(0f32, 1.0, (bsz, d), &Device::Cpu).unwrap();
    let vals = Tensor::randn(0f32, 1.0, (bsz, slots), &Device::Cpu).unwrap();
    let mut ids: Vec<u32> = (0..bsz * slots).map(|i| (i * 7 % n) as u32).collect();
    ids[3] = k::INACTIVE;
    ids[9] = k::INACTIVE;
    ids[10] = ids[11]; // a repeated latent in one row adds up
    let idx = Tensor::from_vec(ids.clone(), (bsz, slots), &Device::Cpu).unwrap();
    let pairs = [
        (
            k::sparse_decode(&idx, &vals, &w).unwrap(),
            k::sparse_decode(&on(&idx), &on(&vals), &on(&w)).unwrap(),
        ),
        (
            k::gather_dot(&idx, &input, &w).unwrap(),
            k::gather_dot(&on(&idx), &on(&input), &on(&w)).unwrap(),
        ),
        (
            k::scatter_outer(&idx, &vals, &input, n).unwrap(),
            k::scatter_outer(&on(&idx), &on(&vals), &on(&input), n).unwrap(),
        ),
    ];
    for (i, (a, b)) in pairs.iter().enumerate() {
        let diff = max_diff(a, b);
        assert!(diff <= 1e-5, "sparse op {i} differs by {diff}");
    }
    ids[6] = n as u32;
    let bad = Tensor::from_vec(ids, (bsz, slots), &dev).unwrap();
    let err = k::sparse_decode(&bad, &on(&vals), &on(&w))
        .unwrap_err()
        .to_string();
    assert!(err.contains("index 40 at (row 1, slot 2)"), "{err}");

    // AdamW and row normalisation (a zero row stays zero).
    let step = k::AdamStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        t: 3,
    };
    let p = Tensor::randn(0f32, 1.0, (64, 96), &Device::Cpu).unwrap();
    let g = Tensor::randn(0f32, 1.0, (64, 96), &Device::Cpu).unwrap();
    let m = Tensor::randn(0f32, 0.1, (64, 96), &Device::Cpu).unwrap();
    let v = Tensor::randn(0f32, 0.1, (64, 96), &Device::Cpu)
        .unwrap()
        .sqr()
        .unwrap();
    let (pc, mc, vc) = (p.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
    let (pg, mg, vg) = (on(&p), on(&m), on(&v));
    k::adamw_update(&pc, &g, &mc, &vc, &step).unwrap();
    k::adamw_update(&pg, &on(&g), &mg, &vg, &step).unwrap();
    for (name, a, b) in [("param", &pc, &pg), ("m", &mc, &mg), ("v", &vc, &vg)] {
        let diff = max_diff(a, b);
        assert!(diff <= 1e-6, "AdamW {name} differs by {diff}");
    }
    let zero_row = Tensor::zeros((1, 96), DType::F32, &Device::Cpu).unwrap();
    let rows = Tensor::cat(&[&p, &zero_row], 0).unwrap();
    let rg = on(&rows);
    k::normalize_rows_(&rows).unwrap();
    k::normalize_rows_(&rg).unwrap();
    assert!(max_diff(&rows, &rg) <= 1e-6, "normalised rows");
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/device-check.sh"]
fn masked_softmax_and_bias_kernels_match_the_composite() {
    use metarep::kernels::device_ops::{add_bias_rows, masked_softmax, swap_axes12};
    let dev = gpu();
    let (b, h, q, keys) = (2, 3, 5, 9);
    let scores = Tensor::randn(0f32, 2.0, (b, h, q, keys), &Device::Cpu).unwrap();
    let mut pad = vec![0f32; b * keys];
    pad[..3].fill(f32::NEG_INFINITY); // batch 0: the first 3 keys hidden
    let pad = Tensor::from_vec(pad, (b, 1, 1, keys), &Device::Cpu).unwrap();
    let per_query = Tensor::randn(0f32, 1.0, (1, 1, q, keys), &Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for (bias, causal) in [
            (None, Some(keys - q)),
            (Some(&pad), Some(0)),
            (Some(&per_query), None),
            (Some(&pad), None),
        ] {
            let x = scores.to_dtype(dtype).unwrap();
            let a = masked_softmax(&x, bias, causal, 0.125).unwrap();
            let bias_gpu = bias.map(|m| m.to_device(&dev).unwrap());
            let g = masked_softmax(
                &x.to_device(&dev).unwrap(),
                bias_gpu.as_ref(),
                causal,
                0.125,
            )
            .unwrap();
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
            let diff = max_diff(&a, &g);
            assert!(
                diff <= tol,
                "{dtype:?} causal {causal:?}: differs by {diff}"
            );
        }
    }
    let y = Tensor::randn(0f32, 1.0, (7, 10), &Device::Cpu).unwrap();
    let bias = Tensor::randn(0f32, 1.0, 10, &Device::Cpu).unwrap();
    let a = add_bias_rows(y.clone(), &bias).unwrap();
    let g = add_bias_rows(y.to_device(&dev).unwrap(), &bias.to_device(&dev).unwrap()).unwrap();
    assert!(max_diff(&a, &g) <= 1e-6);
    for dtype in [DType::F32, DType::BF16] {
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 64), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let a = swap_axes12(&x).unwrap();
        let g = swap_axes12(&x.to_device(&dev).unwrap()).unwrap();
        assert_eq!(g.dims(), &[2, 3, 5, 64]);
        assert_eq!(max_diff(&a, &g), 0.0, "{dtype:?} swap");
    }
}

//! The SAE validation suite on the tiny GPT-2 parity fixture: ε-sweeps batched over ε agree with
//! one run per ε, the report has every part, and bad settings are errors.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, D};
use metarep_model::hooks::HookSet;
use metarep_model::{HookPoint, HookedTransformer, Input, LoadOptions};
use metarep_sae::validation::{epsilon_sweep, validate, ValidationSettings};
use metarep_sae::{Architecture, Sae, SaeConfig};

fn model() -> HookedTransformer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/gpt2");
    HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap()
}

fn contexts(vocab: u32, n: u32) -> Vec<Vec<u32>> {
    (0..n)
        .map(|c| (0..12).map(|i| (i * 5 + c * 19 + 2) % vocab).collect())
        .collect()
}

#[test]
fn a_batched_sweep_equals_one_run_per_epsilon() {
    let model = model();
    let cfg = model.config().clone();
    let point = HookPoint::ResidPost(0);
    let ctx = contexts(cfg.d_vocab as u32, 3);
    let dir: Vec<f32> = (0..cfg.d_model)
        .map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3)
        .collect();
    let dir = Tensor::new(dir, &Device::Cpu).unwrap();
    let promoted = [3u32, 7, 11];
    let eps = [-1.0, 0.0, 0.5, 2.0];
    let sweep = epsilon_sweep(&model, point, &ctx, 1, &dir, &promoted, &eps).unwrap();
    for (k, &e) in eps.iter().enumerate() {
        let add = (&dir * e).unwrap();
        let mut hooks = HookSet::new().add(point, |_, act| Ok(Some(act.broadcast_add(&add)?)));
        let logits = model
            .run_with_hooks(Input::from_ids(&ctx, &Device::Cpu).unwrap(), &mut hooks)
            .unwrap();
        drop(hooks);
        let logits = logits.narrow(1, 1, 11).unwrap().contiguous().unwrap();
        let ids = Tensor::new(&promoted, &Device::Cpu).unwrap();
        let lift = (logits
            .index_select(&ids, D::Minus1)
            .unwrap()
            .mean(D::Minus1)
            .unwrap()
            - logits.mean(D::Minus1).unwrap())
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
        assert!(
            (sweep[k] - lift).abs() < 1e-4,
            "ε {e}: {} vs {lift}",
            sweep[k]
        );
    }
    assert!(epsilon_sweep(&model, point, &ctx, 1, &dir, &[], &eps).is_err());
}

#[test]
fn the_report_has_every_check_with_finite_values() {
    let model = model();
    let cfg = model.config().clone();
    let point = HookPoint::ResidPost(1);
    let sae = Sae::new(
        SaeConfig::new(cfg.d_model, 4, Architecture::TopK { k: 4 }).unwrap(),
        2,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let settings = ValidationSettings {
        top_latents: 3,
        random_latents: 2,
        random_directions: 2,
        top_n: 5,
        probe: metarep_sae::validation::ProbeSettings {
            steps: 30,
            ..Default::default()
        },
        ..Default::default()
    };
    let ctx = contexts(cfg.d_vocab as u32, 10);
    let r = validate(&model, &sae, point, &ctx, &settings).unwrap();
    assert_eq!(r.hook, "blocks.1.hook_resid_post");
    assert_eq!(r.positions, 10 * 11);
    assert_eq!((r.latents.len(), r.random.len(), r.probes.len()), (5, 2, 5));
    for c in r.latents.iter().chain(&r.random) {
        assert_eq!(c.sweep.len(), settings.eps.len());
        assert!(c.sweep.iter().all(|v| v.is_finite()));
        let p = c.purity.as_ref().unwrap();
        assert!(p.fraction > 0.0 && p.fraction <= 1.0 && p.base_rate > 0.0);
    }
    for p in &r.probes {
        assert!((0.0..=1.0).contains(&p.raw_accuracy) && (0.0..=1.0).contains(&p.code_accuracy));
        assert_eq!(p.flagged, p.gap_points.abs() > settings.leak_points);
    }
    let bad = ValidationSettings {
        eps: vec![1.0, 0.0],
        ..settings
    };
    let e = validate(&model, &sae, point, &ctx, &bad).unwrap_err();
    assert!(e.to_string().contains("ascending"), "{e}");
}

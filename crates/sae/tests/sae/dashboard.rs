//! A feature dashboard of an SAE on the tiny GPT-2 parity fixture, checked against a direct
//! computation: which latents are shown, their top contexts' activations and their logit
//! effects; bad contexts and mismatched widths are errors.

use std::path::PathBuf;

use candle_core::{DType, Device, D};
use metarep_model::hooks::HookSet;
use metarep_model::{HookPoint, HookedTransformer, Input, LoadOptions};
use metarep_sae::dashboard::{build_dashboard, render_page, DashboardSettings};
use metarep_sae::{Architecture, Sae, SaeConfig};

fn model() -> HookedTransformer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/gpt2");
    HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap()
}

fn contexts(vocab: u32) -> Vec<Vec<u32>> {
    (0..7u32)
        .map(|c| (0..10).map(|i| (i * 11 + c * 17 + 5) % vocab).collect())
        .collect()
}

/// `[contexts, positions, d_sae]` dense codes of the SAE on the hook's activations.
fn codes(model: &HookedTransformer, sae: &Sae, point: HookPoint, ctx: &[Vec<u32>]) -> Vec<f32> {
    let mut seen = None;
    let mut hooks = HookSet::new().add(point, |_, a| {
        seen = Some(a.clone());
        Ok(None)
    });
    model
        .run_with_hooks(Input::from_ids(ctx, &Device::Cpu).unwrap(), &mut hooks)
        .unwrap();
    drop(hooks);
    let act = seen.unwrap();
    let d = act.dim(D::Minus1).unwrap();
    let rows = act.reshape(((), d)).unwrap();
    let dense = sae
        .encode(&rows)
        .unwrap()
        .to_dense(sae.config.d_sae)
        .unwrap();
    dense.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn the_dashboard_shows_the_heaviest_latents_with_their_true_top_contexts_and_logit_effects() {
    let model = model();
    let cfg = model.config().clone();
    let point = HookPoint::ResidPost(0);
    let sae_cfg = SaeConfig::new(cfg.d_model, 4, Architecture::TopK { k: 3 }).unwrap();
    let sae = Sae::new(sae_cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let ctx = contexts(cfg.d_vocab as u32);
    let settings = DashboardSettings {
        top_latents: 3,
        random_latents: 2,
        examples: 4,
        before: 3,
        after: 2,
        batch: 3,
        ..Default::default()
    };
    let page = build_dashboard(&model, &sae, point, &ctx, &settings).unwrap();
    assert_eq!(page.cards.len(), 5);

    // Direct computation: mass over positions ≥ 1 of every context.
    let d_sae = sae.config.d_sae;
    let all = codes(&model, &sae, point, &ctx);
    let at = |c: usize, p: usize, l: usize| all[(c * 10 + p) * d_sae + l];
    let mut mass = vec![0f64; d_sae];
    for c in 0..ctx.len() {
        for p in 1..10 {
            for (l, m) in mass.iter_mut().enumerate() {
                *m += at(c, p, l) as f64;
            }
        }
    }
    let mut order: Vec<usize> = (0..d_sae).collect();
    order.sort_by(|&a, &b| mass[b].total_cmp(&mass[a]));
    let shown: Vec<usize> = page.cards.iter().map(|c| c.latent).collect();
    assert_eq!(&shown[..3], &order[..3]);

    let w_u = model.w_u().unwrap();
    let ln = model.weights().ln_final.as_ref().unwrap();
    for card in &page.cards {
        let l = card.latent;
        // The strongest context holds the latent's largest activation over positions ≥ 1.
        let best = (0..ctx.len())
            .flat_map(|c| (1..10).map(move |p| (c, p)))
            .map(|(c, p)| at(c, p, l))
            .fold(0f32, f32::max);
        let top = card.examples[0]
            .activations
            .iter()
            .copied()
            .fold(0f32, f32::max);
        assert!(
            (top - best).abs() <= 1e-5 * best.max(1.0),
            "latent {l}: {top} vs {best}"
        );
        assert!(card.examples.len() <= 4);
        let fired = (0..ctx.len())
            .flat_map(|c| (1..10).map(move |p| (c, p)))
            .filter(|&(c, p)| at(c, p, l) != 0.0)
            .count();
        assert!((card.density - fired as f64 / (ctx.len() * 9) as f64).abs() < 1e-12);
        assert_eq!(card.histogram.counts.iter().sum::<u64>(), fired as u64);
        // Logit effects: the centred decoder row times the final LayerNorm's scale, through W_U.
        let row = sae.w_dec.as_tensor().get(l).unwrap();
        let row = row.broadcast_sub(&row.mean_keepdim(0).unwrap()).unwrap();
        let logits = (row * &ln.w)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .matmul(w_u)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = logits.iter().copied().fold(f32::INFINITY, f32::min);
        assert!(
            (card.promoted[0].1 - max).abs() < 1e-4,
            "{:?} vs {max}",
            card.promoted
        );
        assert!((card.suppressed[0].1 - min).abs() < 1e-4);
    }
    let html = render_page(&page);
    assert_eq!(html.matches("<section class=\"latent\"").count(), 5);
}

#[test]
fn bad_contexts_and_widths_are_errors_naming_the_problem() {
    let model = model();
    let cfg = model.config().clone();
    let point = HookPoint::ResidPost(0);
    let sae = Sae::new(
        SaeConfig::new(cfg.d_model, 2, Architecture::TopK { k: 2 }).unwrap(),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let settings = DashboardSettings::default();
    let ragged = vec![vec![1u32, 2, 3], vec![1, 2]];
    let e = build_dashboard(&model, &sae, point, &ragged, &settings).unwrap_err();
    assert!(e.to_string().contains("all of one length"), "{e}");
    let e = build_dashboard(&model, &sae, point, &[vec![1u32]], &settings).unwrap_err();
    assert!(e.to_string().contains("skip_positions"), "{e}");
    let narrow = Sae::new(
        SaeConfig::new(cfg.d_model - 1, 2, Architecture::TopK { k: 2 }).unwrap(),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let e = build_dashboard(
        &model,
        &narrow,
        point,
        &contexts(cfg.d_vocab as u32),
        &settings,
    )
    .unwrap_err();
    assert!(e.to_string().contains("d_in"), "{e}");
}

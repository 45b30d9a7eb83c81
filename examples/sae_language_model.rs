//! A TopK SAE on the residual stream of the small grammar language model checked into
//! `fixtures/grammar-lm`: reconstruction, CE loss recovered when spliced in, and for each of the
//! grammar's latents (subject number, relative clause, tense, attractor, verb position) the SAE
//! latent that detects it best.
//!
//! ```sh
//! cargo run --release --example sae_language_model        # ≈ 15 s
//! ```
//!
//! `cargo xtask reproduce fig10` runs the sweep (expansions × k, through an activation store)
//! and writes tables and plots.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use metarep::core::rng::seeded;
use metarep::core::train::RunControl;
use metarep::eval::metrics::aurocs;
use metarep::eval::tasks::grammar::{GrammarSpec, LATENTS};
use metarep::model::{HookFilter, HookPoint, HookedTransformer, Input, LoadOptions};
use metarep::sae::splice::splice_scores;
use metarep::sae::{train, Architecture, Sae, SaeConfig, SaeTrainConfig, TensorSource};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Activations `[n · n_ctx, d]`, the token ids `[n, n_ctx]`, and one label vector per latent.
type Split = (Tensor, Tensor, Vec<Vec<bool>>);

fn main() -> BoxResult<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/grammar-lm");
    let model = HookedTransformer::from_dir(&dir, &LoadOptions::default())?;
    let about: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fig10.json"))?)?;
    let grammar: GrammarSpec = serde_json::from_value(about["grammar"].clone())?;
    let (n_ctx, d) = (model.config().n_ctx, model.config().d_model);
    let hook = HookPoint::ResidPost(1);

    // Residual-stream activations of 512 training and 64 held-out grammar sequences.
    let acts = |n: usize, seed: u64| -> BoxResult<Split> {
        let samples = grammar.samples(&mut seeded(seed), n, n_ctx)?;
        let ids: Vec<u32> = samples.iter().flat_map(|s| s.tokens.clone()).collect();
        let tokens = Tensor::from_vec(ids, (n, n_ctx), &Device::Cpu)?;
        let (_, cache) = model.run_with_cache(
            Input::new(tokens.clone()),
            HookFilter::patterns(&[hook.name()]),
        )?;
        let labels = (0..LATENTS.len())
            .map(|j| {
                samples
                    .iter()
                    .flat_map(|s| s.labels.iter().map(move |l| l[j]))
                    .collect()
            })
            .collect();
        Ok((cache.get(hook)?.reshape(((), d))?, tokens, labels))
    };
    let (x_train, _, _) = acts(512, 1)?;
    let (x_test, test_tokens, labels) = acts(64, 2)?;

    let mut sae = Sae::new(
        SaeConfig::new(d, 8, Architecture::TopK { k: 8 })?,
        0,
        DType::F32,
        &Device::Cpu,
    )?;
    // Unlisted settings take their defaults (reconstruction loss only, no resampling).
    let tc: SaeTrainConfig = serde_json::from_value(serde_json::json!(
        {"seed": 0, "batch": 1024, "steps": 600, "lr": 0.002, "warmup": 50, "log_every": 0}
    ))?;
    let report = train(
        &mut sae,
        &mut TensorSource::new(x_train, 0)?,
        &tc,
        RunControl::default(),
    )?;
    let splice = splice_scores(&model, &sae, hook, std::slice::from_ref(&test_tokens))?;
    let recon = sae.reconstruct(&x_test)?;
    let centred = x_test.broadcast_sub(&x_test.mean_keepdim(0)?)?;
    let ev = 1.0
        - (&x_test - &recon)?.sqr()?.sum_all()?.to_scalar::<f32>()?
            / centred.sqr()?.sum_all()?.to_scalar::<f32>()?;
    println!(
        "{} with TopK k = 8, 512 latents, {} steps ({:.1} s):",
        hook.name(),
        report.steps,
        report.seconds
    );
    println!(
        "  explained variance {ev:.4}; CE loss recovered {:.3} (vs zero ablation), KL {:.4} nats",
        splice.recovered_zero, splice.kl_sae
    );

    let codes = sae.encode(&x_test)?.to_dense(sae.config.d_sae)?;
    let cols = codes
        .t()?
        .contiguous()?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    let sets: Vec<&[bool]> = labels.iter().map(Vec::as_slice).collect();
    let mut best = vec![(0.5, 0usize); LATENTS.len()];
    for (i, col) in cols
        .iter()
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&v| v != c[0]))
    {
        for (b, a) in best.iter_mut().zip(aurocs(col, &sets)?) {
            if a > b.0 {
                *b = (a, i);
            }
        }
    }
    for (name, (a, i)) in LATENTS.iter().zip(best) {
        println!("  {name:<15} best SAE latent #{i:<4} AUROC {a:.3}");
    }
    Ok(())
}

//! A TopK SAE on a real model and real text: SmolLM2-135M-Instruct's `blocks.15.hook_resid_post`
//! over the corpus fixture. Reads contexts of 128 tokens from the training documents, keeps the
//! activations in memory (without each context's first token, an attention sink whose norm is
//! ≈ 130× the rest), trains a TopK SAE (8×, k = 32) and scores it on held-out contexts:
//! explained variance, CE loss recovered and KL with the SAE spliced in.
//!
//! Set-up (once, outside git): `cargo xtask fixtures smollm2` and `cargo xtask fixtures corpus`.
//! Run: `cargo run --release --example sae_smollm2 [-- FILE.gguf]` (≈ 3 min on 2 cores).
//!
//! `cargo xtask reproduce fig14` does the same through an activation store, with null-SAE
//! baselines, dashboards, the validation suite and more SAEs.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use metarep::core::train::RunControl;
use metarep::eval::corpus::{read_split, Split};
use metarep::model::{HookPoint, HookedTransformer, Input, LoadOptions, Tokenizer};
use metarep::sae::hook_rows::hook_rows;
use metarep::sae::metrics::VarianceSums;
use metarep::sae::splice::splice_scores;
use metarep::sae::{train, Architecture, Sae, SaeConfig, SaeTrainConfig, TensorSource};

mod common;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const N_CTX: usize = 128;

/// The first `n` contexts of `N_CTX` tokens of `split`'s documents, each document followed by
/// the end-of-text token.
fn contexts(tok: &Tokenizer, split: Split, n: usize) -> BoxResult<Vec<Vec<u32>>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/corpus");
    let docs = read_split(&dir, split)
        .map_err(|e| format!("{e} (fetch it: cargo xtask fixtures corpus)"))?;
    let eos = tok
        .eos_ids()
        .first()
        .copied()
        .ok_or("no end-of-text token")?;
    let mut ids = Vec::new();
    for doc in &docs {
        ids.extend(tok.encode(&doc.text, false)?.ids);
        ids.push(eos);
        if ids.len() >= n * N_CTX {
            break;
        }
    }
    Ok(ids
        .chunks_exact(N_CTX)
        .take(n)
        .map(<[u32]>::to_vec)
        .collect())
}

fn main() -> BoxResult<()> {
    metarep::core::threads::fix_cpu_threads();
    let model = HookedTransformer::from_gguf(&common::smollm2_gguf()?, &LoadOptions::default())?;
    let tok = model.tokenizer().ok_or("the GGUF file has no tokenizer")?;
    let (hook, d) = (HookPoint::ResidPost(15), model.config().d_model);
    let rows = |ctx: &[Vec<u32>]| -> BoxResult<Tensor> {
        let mut parts = Vec::new();
        for batch in ctx.chunks(8) {
            parts.push(hook_rows(
                &model,
                hook,
                &Input::from_ids(batch, &Device::Cpu)?,
                1,
                d,
            )?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    };
    let train_ctx = contexts(tok, Split::Train, 256)?;
    let held_ctx = contexts(tok, Split::HeldOut, 8)?;
    let x_train = rows(&train_ctx)?;
    let x_held = rows(&held_ctx)?;
    println!(
        "{} training rows, {} held-out rows of {}",
        x_train.dim(0)?,
        x_held.dim(0)?,
        hook.name()
    );

    let mut sae = Sae::new(
        SaeConfig::new(d, 8, Architecture::TopK { k: 32 })?,
        0,
        DType::F32,
        &Device::Cpu,
    )?;
    let tc: SaeTrainConfig = serde_json::from_value(serde_json::json!(
        {"seed": 0, "batch": 512, "steps": 1000, "lr": 0.002, "warmup": 50, "log_every": 0}
    ))?;
    let report = train(
        &mut sae,
        &mut TensorSource::new(x_train, 0)?,
        &tc,
        RunControl::default(),
    )?;
    let mut ev = VarianceSums::default();
    ev.add(&x_held, &sae.reconstruct(&x_held)?)?;
    let held: Vec<Tensor> = held_ctx
        .chunks(8)
        .map(|b| Ok(Input::from_ids(b, &Device::Cpu)?.tokens))
        .collect::<BoxResult<_>>()?;
    let splice = splice_scores(&model, &sae, hook, &held)?;
    println!(
        "TopK 8× k32, {} steps ({:.0} s): explained variance {:.4} (positions ≥ 1), CE {:.3} → {:.3} with the SAE (recovered {:.3} vs zero ablation), KL {:.3} nats",
        report.steps,
        report.seconds,
        ev.explained_variance(),
        splice.ce_clean,
        splice.ce_sae,
        splice.recovered_zero,
        splice.kl_sae
    );
    Ok(())
}

//! MegaContext's learned gist on real text: a byte-level Llama trained here on the corpus is the
//! frozen base model; GistNet learns to compress a 32-byte block into one embedding-space vector
//! by minimising the loss of the 32 bytes after it; on held-out windows the gist's ΔNLL (vs the
//! full block) is compared with the training-free one-slot baselines. Then a long held-out
//! document is streamed into a 256-slot working context to show the cover the budget forces.
//!
//! Set-up (once, outside git): `cargo xtask fixtures corpus`.
//! Run: `cargo run --release --example megacontext_gist` (≈ 3 min on 2 cores).
//!
//! `cargo xtask reproduce fig12` measures the same with more windows, horizons 32 and 128, the
//! last-k baselines at 4:1 to 32:1 and the plan's gates.

use std::path::PathBuf;

use metarep::core::train::RunControl;
use metarep::eval::corpus::{read_split, Split};
use metarep::megacontext::eval::{delta_nll, summarize, Method};
use metarep::megacontext::train::draw_windows;
use metarep::megacontext::{
    train_gistnet, CoverConfig, GistNet, GistNetConfig, GistTrainConfig, PositionRule, Skip,
    WindowShape, WorkingContext,
};
use metarep::testbeds::byte_lm::{encode, ByteLmSpec};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BoxResult<()> {
    metarep::core::threads::fix_cpu_threads();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/corpus");
    let read = |split| {
        read_split(&dir, split).map_err(|e| format!("{e} (fetch it: cargo xtask fixtures corpus)"))
    };
    let train_docs: Vec<Vec<u32>> = read(Split::Train)?
        .iter()
        .take(300)
        .map(|d| encode(&d.text))
        .collect();
    let held: Vec<Vec<u32>> = read(Split::HeldOut)?
        .iter()
        .map(|d| encode(&d.text))
        .collect();
    let text: Vec<u32> = train_docs.iter().flatten().copied().collect();
    println!(
        "training a byte-level Llama on {} bytes of the corpus…",
        text.len()
    );
    let spec = ByteLmSpec {
        layers: 2,
        d_model: 128,
        heads: 4,
        mlp: 512,
        n_ctx: 256,
        seq: 256,
        batch: 8,
        steps: 500,
        lr: 0.003,
        warmup: 50,
        seed: 0,
    };
    let (model, report) = spec.train(&text)?;
    println!(
        "  loss {:.3} → {:.3} nats/byte",
        report.first_loss, report.final_loss
    );

    let shape = WindowShape {
        prefix: 64,
        block: 32,
        horizon: 32,
    };
    let net = GistNet::new(
        GistNetConfig {
            d_model: 128,
            block: 32,
            width: 128,
            layers: 2,
            heads: 4,
            mlp: 512,
            skip: Skip::Last,
        },
        0,
        model.device(),
    )?;
    let tc = GistTrainConfig {
        steps: 400,
        batch: 16,
        lr: 2e-3,
        warmup: 20,
        shape,
        log_every: 0,
        ..GistTrainConfig::default()
    };
    println!(
        "training GistNet ({} parameters) through the frozen LM…",
        net.config().n_params()
    );
    let r = train_gistnet(&model, &net, &train_docs, &tc, RunControl::default())?;
    println!(
        "  NLL of the 32 bytes after the gist: {:.3} → {:.3}",
        r.first_loss, r.final_loss
    );

    let windows = draw_windows(&held, shape, 128, 1, "example held out")?;
    println!(
        "\nΔNLL@32 on {} held-out windows (nats per byte vs the full block):",
        windows.len()
    );
    for m in [
        Method::Gist(&net),
        Method::LastK(1),
        Method::MeanEmbedding,
        Method::Drop,
    ] {
        let d = delta_nll(&model, &windows, shape, PositionRule::SpanEnd, m, 32)?;
        let s = summarize(&m, 32, &d, 1.0)?;
        println!(
            "  {:<8} {} slot(s) per block: {:+.4} [{:+.4}, {:+.4}]",
            s.method,
            m.slots(32),
            s.mean,
            s.low,
            s.high
        );
    }

    let longest = held
        .iter()
        .max_by_key(|d| d.len())
        .ok_or("no held-out document")?;
    let mut wc = WorkingContext::new(CoverConfig {
        budget: 256,
        ..CoverConfig::default()
    })?;
    wc.push(longest.len() as u64);
    wc.check()?;
    let count = |level| wc.entries().iter().filter(|e| e.level == level).count();
    println!(
        "\na {}-byte held-out document in a 256-slot working context: {} level-2 gists (1 024 bytes \
         each), {} level-1 gists (32 bytes), {} raw blocks; {} slots used, covering bytes {}..{}",
        longest.len(),
        count(2),
        count(1),
        count(0),
        wc.used(),
        wc.start(),
        wc.len()
    );
    Ok(())
}

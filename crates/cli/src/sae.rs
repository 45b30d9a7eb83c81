//! `metarep sae`: train an SAE on activations and evaluate SAEs.
//!
//! `train` writes into `--out`: `metrics.jsonl` (one line per logged step), `checkpoint/`
//! (exact resume with `--resume`), `config.json` (the full SAE and training config) and, at the
//! end, `sae/` in the SAELens format (`cfg.json` + `sae_weights.safetensors`). `eval` reads
//! such an `sae/` directory — or any SAELens SAE — and prints the metrics of
//! [`metarep_sae::metrics::evaluate`].
//!
//! Activations (`--acts`): a `.npy` array or a `.safetensors` file (`--key` names the tensor;
//! default `activations`), `[rows, d_in]` or `[sequences, positions, d_in]`. Every setting
//! has a flag; any other field of the config (`[sae]` = `SaeSpec`, `[train]` = `TrainConfig`)
//! can be given in `--config FILE.toml` or as `--set train.loss.l1_warmup=1000`.

use std::error::Error;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use metarep_core::config::parse_config;
use metarep_core::fsutil::write_json_pretty;
use metarep_sae::metrics::{evaluate, EvalConfig};
use metarep_sae::saelens::{export, import, SaeLensInfo};
use metarep_sae::{load_activations, train, RunControl, Sae, SaeSpec, TrainConfig};
use serde::{Deserialize, Serialize};

/// `metarep sae` arguments.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Train an SAE on activations from a file.
    Train(Box<TrainArgs>),
    /// Evaluate an SAE (SAELens directory) on activations from a file.
    Eval(EvalArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Activations: `.npy` or `.safetensors` (an activation-store directory once
    /// metarep-capture provides one).
    #[arg(long)]
    acts: PathBuf,
    /// Tensor name inside a safetensors file.
    #[arg(long)]
    key: Option<String>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Architecture: relu, topk, batchtopk, jumprelu, gated.
    #[arg(long, default_value = "topk")]
    arch: String,
    /// Active latents per row (topk) or on average (batchtopk).
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Latents per input dimension.
    #[arg(long, default_value_t = 16)]
    expansion: usize,
    /// Optimisation steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Rows per batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// L1 coefficient (relu, gated).
    #[arg(long)]
    l1: Option<f64>,
    /// L0 coefficient (jumprelu).
    #[arg(long)]
    l0: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Input scaling: none, expected_norm, per_row.
    #[arg(long)]
    input_norm: Option<String>,
    /// Shuffle whole sequences (rank-3 activations) instead of single rows.
    #[arg(long)]
    windows: bool,
    /// A TOML file with `[sae]` and `[train]` tables (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Config overrides `key.path=value` (repeatable; applied last).
    #[arg(long = "set")]
    overrides: Vec<String>,
    /// Continue from `--out/checkpoint`.
    #[arg(long)]
    resume: bool,
    /// Hook point recorded in the exported cfg.json (e.g. `blocks.6.hook_resid_post`).
    #[arg(long, default_value = "")]
    hook: String,
    /// Model recorded in the exported cfg.json.
    #[arg(long, default_value = "")]
    model: String,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// SAELens-format SAE directory (e.g. `OUT/sae` of `metarep sae train`).
    #[arg(long)]
    sae: PathBuf,
    /// Activations: `.npy` or `.safetensors`.
    #[arg(long)]
    acts: PathBuf,
    /// Tensor name inside a safetensors file.
    #[arg(long)]
    key: Option<String>,
    /// Rows per batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Evaluate at most this many rows.
    #[arg(long)]
    max_rows: Option<usize>,
    /// Print the full report as JSON (with the density histogram).
    #[arg(long)]
    json: bool,
}

/// The config `metarep sae train` runs: `[sae]` and `[train]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainFile {
    sae: SaeSpec,
    train: TrainConfig,
}

/// Defaults of `metarep sae train` (each overridable by a flag, `--config` or `--set`).
const DEFAULTS: &str = r#"
[sae]
architecture = { kind = "topk", k = 32 }
expansion = 16

[train]
seed = 0
batch = 4096
steps = 2000
lr = 0.0003
warmup = 100
log_every = 20
checkpoint_every = 500
"#;

/// Runs `metarep sae`.
pub fn run(args: Args) -> Result<(), Box<dyn Error>> {
    match args.command {
        Command::Train(a) => run_train(*a),
        Command::Eval(a) => run_eval(a),
    }
}

/// The config: defaults, then `--config`, then the flags, then `--set`.
fn train_file(a: &TrainArgs, d_in: usize) -> Result<TrainFile, Box<dyn Error>> {
    let base = match &a.config {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?
        }
        None => DEFAULTS.to_string(),
    };
    let arch = match a.arch.as_str() {
        "relu" | "gated" => format!("{{ kind = \"{}\" }}", a.arch),
        "topk" | "batchtopk" => format!("{{ kind = \"{}\", k = {} }}", a.arch, a.k),
        "jumprelu" => {
            "{ kind = \"jumprelu\", init_threshold = 0.001, bandwidth = 0.001 }".to_string()
        }
        other => {
            return Err(format!(
                "unknown --arch `{other}` (relu, topk, batchtopk, jumprelu, gated)"
            )
            .into())
        }
    };
    let mut sets = vec![
        format!("sae.architecture={arch}"),
        format!("sae.expansion={}", a.expansion),
    ];
    let opt = |name: &str, v: Option<String>| v.map(|v| format!("{name}={v}"));
    sets.extend(
        [
            opt("train.steps", a.steps.map(|v| v.to_string())),
            opt("train.batch", a.batch.map(|v| v.to_string())),
            opt("train.lr", a.lr.map(|v| v.to_string())),
            opt("train.loss.l1", a.l1.map(|v| v.to_string())),
            opt("train.loss.l0", a.l0.map(|v| v.to_string())),
            opt("train.seed", a.seed.map(|v| v.to_string())),
            opt(
                "sae.input_norm",
                a.input_norm.as_ref().map(|v| format!("\"{v}\"")),
            ),
        ]
        .into_iter()
        .flatten(),
    );
    // TopK-style SAEs get the auxiliary-K loss for dead latents unless the config has one.
    if matches!(a.arch.as_str(), "topk" | "batchtopk") && !base.contains("aux_k") {
        sets.push(format!(
            "train.loss.aux_k={{ k_aux = {}, coeff = 0.03125 }}",
            (d_in / 2).max(1)
        ));
    }
    sets.extend(a.overrides.iter().cloned());
    Ok(parse_config(&base, &sets)?)
}

fn run_train(a: TrainArgs) -> Result<(), Box<dyn Error>> {
    let loaded = load_activations(&a.acts, a.key.as_deref())?;
    let (rows, d_in) = loaded.data.dims2()?;
    let file = train_file(&a, d_in)?;
    let config = file.sae.config(d_in)?;
    let mut sae = Sae::new(config, file.train.seed, DType::F32, &Device::Cpu)?;
    let mut source = loaded.into_source(file.train.seed, a.windows)?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("creating {}: {e}", a.out.display()))?;
    write_json_pretty(&a.out.join("config.json"), &file)?;
    println!(
        "training a {} SAE: d_in {d_in}, d_sae {}, on {rows} rows from {}",
        config.architecture.name(),
        config.d_sae,
        a.acts.display()
    );
    let report = train(
        &mut sae,
        &mut source,
        &file.train,
        RunControl {
            out: Some(&a.out),
            resume: a.resume,
            stop_at: None,
        },
    )?;
    let info = SaeLensInfo::for_hook(&a.model, &a.hook);
    let dir = a.out.join("sae");
    export(&sae, &dir, &info)?;
    println!(
        "{} steps, {} tokens, final loss {:.5}, dead {:.2}% ({:.1}s); SAE in {}",
        report.steps,
        report.tokens,
        report.final_loss,
        100.0 * report.dead_fraction,
        report.seconds,
        dir.display()
    );
    Ok(())
}

fn run_eval(a: EvalArgs) -> Result<(), Box<dyn Error>> {
    let (sae, _) = import(&a.sae)?;
    let mut source = load_activations(&a.acts, a.key.as_deref())?.into_source(0, false)?;
    let report = evaluate(
        &sae,
        &mut source,
        &EvalConfig {
            batch: a.batch,
            max_rows: a.max_rows,
            ..Default::default()
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_report(&a.sae, &report);
    Ok(())
}

fn print_report(sae: &Path, r: &metarep_sae::metrics::EvalReport) {
    println!("SAE {} on {} rows", sae.display(), r.rows);
    println!("  explained variance {:.5}", r.explained_variance);
    println!("  MSE                {:.6}", r.mse);
    println!("  L0                 {:.2}", r.l0);
    println!("  L1                 {:.4}", r.l1);
    println!("  dead latents       {:.2}%", 100.0 * r.dead_fraction);
    println!("  dense latents      {:.2}%", 100.0 * r.dense_fraction);
    println!(
        "  log10 density histogram ({} never fired):",
        r.density.never
    );
    for (i, c) in r.density.counts.iter().enumerate() {
        if *c > 0 {
            println!(
                "    [{:>5.1}, {:>5.1})  {c}",
                r.density.edges[i],
                r.density.edges[i + 1]
            );
        }
    }
}

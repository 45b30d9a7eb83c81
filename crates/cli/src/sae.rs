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
//! has a flag; any other field of the config (`[sae]` = `SaeSpec`, `[train]` = `SaeTrainConfig`)
//! can be given in `--config FILE.toml` or as `--set train.loss.l1_warmup=1000`.

use std::error::Error;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use metarep_capture::StoreMeta;
use metarep_core::config::parse_config_from;
use metarep_core::fsutil::write_json_pretty;
use metarep_core::train::RunControl;
use metarep_model::{HookPoint, HookedTransformer, Input};
use metarep_sae::metrics::{evaluate, EvalConfig};
use metarep_sae::saelens::{export, import, SaeLensInfo};
use metarep_sae::splice::{splice_scores, SpliceScores};
use metarep_sae::{
    load_activations, train, ActivationSource, Sae, SaeSpec, SaeTrainConfig, StoreSource,
};
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
    /// Write an HTML dashboard of an SAE's latents on a model over a text.
    Dashboard(crate::sae_dashboard::DashboardArgs),
    /// Run the SAE validation suite (purity, probe leakage, ε-sweeps) on a model over a text.
    Validate(crate::sae_validate::ValidateArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Activations: `.npy`, `.safetensors`, or an activation-store directory of `metarep
    /// capture` (`OUT/<hook>`, streamed through a shuffle buffer).
    #[arg(long)]
    acts: PathBuf,
    /// Shuffle-buffer rows when `--acts` is a store directory.
    #[arg(long, default_value_t = 1 << 18)]
    buffer_rows: usize,
    /// With a store directory: leave out each context's first N positions (1: an attention-sink
    /// first token, whose norm can dwarf the rest).
    #[arg(long, default_value_t = 0)]
    skip_positions: usize,
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
    /// With `--resume`: continue although the SAE or training config differs from the
    /// checkpoint's (refused otherwise, naming the differing keys).
    #[arg(long, requires = "resume")]
    accept_config_change: bool,
    /// Hook point recorded in the exported cfg.json (e.g. `blocks.6.hook_resid_post`;
    /// default: the store's hook when `--acts` is a store).
    #[arg(long, default_value = "")]
    hook: String,
    /// Model recorded in the exported cfg.json (default: the store's model).
    #[arg(long, default_value = "")]
    model: String,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// SAELens-format SAE directory (e.g. `OUT/sae` of `metarep sae train`).
    #[arg(long)]
    sae: PathBuf,
    /// Activations: `.npy`, `.safetensors` or an activation-store directory.
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
    /// With a store directory: leave out each context's first N positions.
    #[arg(long, default_value_t = 0)]
    skip_positions: usize,
    /// Also splice the SAE into this model (a model directory, a GGUF file or a hub id) and
    /// report CE loss recovered and KL against zero and mean ablation (needs `--tokens`).
    #[arg(long, requires = "tokens")]
    model: Option<String>,
    /// Hook to splice at (default: `metadata.hook_name` of the SAE's cfg.json).
    #[arg(long)]
    hook: Option<String>,
    /// Token sequences for `--model`: one per line, ids separated by commas or spaces, all of
    /// the same length ≥ 2 (inputs predict the next id).
    #[arg(long, requires = "model")]
    tokens: Option<PathBuf>,
    /// Sequences per forward pass for `--model`.
    #[arg(long, default_value_t = 8)]
    seqs_per_batch: usize,
    /// Print the full report as JSON (with the density histogram).
    #[arg(long)]
    json: bool,
}

/// The config `metarep sae train` runs: `[sae]` and `[train]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainFile {
    sae: SaeSpec,
    train: SaeTrainConfig,
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
        Command::Dashboard(a) => crate::sae_dashboard::run(a),
        Command::Validate(a) => crate::sae_validate::run(a),
    }
}

/// The config: defaults, then `--config`, then the flags, then `--set`.
fn train_file(a: &TrainArgs, d_in: usize) -> Result<TrainFile, Box<dyn Error>> {
    let (base, origin) = match &a.config {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            DEFAULTS.to_string(),
            "the defaults of sae train".to_string(),
        ),
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
    Ok(parse_config_from(&base, &sets, &origin)?)
}

fn run_train(mut a: TrainArgs) -> Result<(), Box<dyn Error>> {
    // A store directory is streamed; a file is loaded into memory.
    let (loaded, rows, d_in) = if a.acts.is_dir() {
        let meta = StoreMeta::read(&a.acts)?;
        if a.hook.is_empty() {
            a.hook = meta.hook.clone();
        }
        if a.model.is_empty() {
            a.model = meta.model.clone();
        }
        let kept =
            meta.tokens() / meta.context.max(1) * meta.context.saturating_sub(a.skip_positions);
        (None, kept, meta.d_in)
    } else {
        no_skip_for_files(a.skip_positions)?;
        let loaded = load_activations(&a.acts, a.key.as_deref())?;
        let (rows, d_in) = loaded.data.dims2()?;
        (Some(loaded), rows, d_in)
    };
    let file = train_file(&a, d_in)?;
    check_batch_fits(file.train.batch, rows, &a.acts)?;
    let config = file.sae.config(d_in)?;
    let seed = file.train.seed;
    let mut source: Box<dyn ActivationSource> = match loaded {
        Some(l) => Box::new(l.into_source(seed, a.windows)?),
        None => Box::new(
            StoreSource::open(&a.acts, seed, a.buffer_rows)?.skip_positions(a.skip_positions)?,
        ),
    };
    let mut sae = Sae::new(config, file.train.seed, DType::F32, crate::device::device())?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("creating {}: {e}", a.out.display()))?;
    // A resumed run's config is recorded only once the checkpoint has accepted it.
    if !a.resume {
        write_json_pretty(&a.out.join("config.json"), &file)?;
    }
    println!(
        "training a {} SAE: d_in {d_in}, d_sae {}, on {rows} rows from {}",
        config.architecture.name(),
        config.d_sae,
        a.acts.display()
    );
    let report = train(
        &mut sae,
        source.as_mut(),
        &file.train,
        RunControl {
            out: Some(&a.out),
            resume: a.resume,
            stop_at: None,
            accept_config_change: a.accept_config_change,
        },
    )?;
    if a.resume {
        write_json_pretty(&a.out.join("config.json"), &file)?;
    }
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

/// `--skip-positions` reads the store's context layout, which a plain file does not have.
fn no_skip_for_files(skip: usize) -> Result<(), Box<dyn Error>> {
    if skip > 0 {
        return Err(format!(
            "--skip-positions {skip} needs --acts to be an activation-store directory (a file has no context positions)"
        )
        .into());
    }
    Ok(())
}

/// A batch larger than the data would silently hold every row while `config.json` records the
/// larger size: an error naming both.
fn check_batch_fits(batch: usize, rows: usize, acts: &Path) -> Result<(), Box<dyn Error>> {
    if batch > rows {
        return Err(format!(
            "batch {batch} (--batch / train.batch) exceeds the {rows} rows in {}: give a batch of at most {rows}",
            acts.display()
        )
        .into());
    }
    Ok(())
}

fn run_eval(a: EvalArgs) -> Result<(), Box<dyn Error>> {
    let (sae, info) = import(&a.sae)?;
    let sae = sae.to_device(crate::device::device())?;
    let mut source: Box<dyn ActivationSource> = if a.acts.is_dir() {
        Box::new(
            StoreSource::open(&a.acts, 0, a.batch.max(1 << 16))?
                .skip_positions(a.skip_positions)?,
        )
    } else {
        no_skip_for_files(a.skip_positions)?;
        Box::new(load_activations(&a.acts, a.key.as_deref())?.into_source(0, false)?)
    };
    let report = evaluate(
        &sae,
        source.as_mut(),
        &EvalConfig {
            batch: a.batch,
            max_rows: a.max_rows,
            ..Default::default()
        },
    )?;
    let spliced = match (&a.model, &a.tokens) {
        (Some(model), Some(tokens)) => {
            let hook = hook_of(&info, a.hook.as_deref())?;
            Some(splice(&sae, model, &hook, tokens, a.seqs_per_batch)?)
        }
        _ => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(s) = &spliced {
            v["splice"] = serde_json::to_value(s)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_report(&a.sae, &report);
    if let Some(s) = &spliced {
        println!(
            "  spliced into the model at {} ({} predicted tokens):",
            s.hook, s.tokens
        );
        println!(
            "    CE clean {:.4}, with SAE {:.4}, zero-ablated {:.4}, mean-ablated {:.4}",
            s.ce_clean, s.ce_sae, s.ce_zero, s.ce_mean
        );
        println!(
            "    CE loss recovered {:.4} (vs zero), {:.4} (vs mean)",
            s.recovered_zero, s.recovered_mean
        );
        println!(
            "    KL to clean: SAE {:.5}, zero {:.5}, mean {:.5}",
            s.kl_sae, s.kl_zero, s.kl_mean
        );
    }
    Ok(())
}

/// The hook an SAE is used at: `flag` if given, else its cfg.json's `metadata.hook_name`.
pub(crate) fn hook_of(info: &SaeLensInfo, flag: Option<&str>) -> Result<String, Box<dyn Error>> {
    match flag {
        Some(h) => Ok(h.to_string()),
        None => Ok(info
            .metadata
            .get("hook_name")
            .and_then(|v| v.as_str())
            .filter(|h| !h.is_empty())
            .ok_or("the SAE's cfg.json names no hook (metadata.hook_name): pass --hook")?
            .to_string()),
    }
}

/// CE loss recovered and KL of `sae` spliced into the model at `hook`, on the sequences of
/// `tokens` in batches of `per_batch`.
fn splice(
    sae: &Sae,
    model: &str,
    hook: &str,
    tokens: &Path,
    per_batch: usize,
) -> Result<SpliceScores, Box<dyn Error>> {
    let model = HookedTransformer::from_pretrained(model, &crate::device::load_options())?;
    let point = HookPoint::parse_for(hook, model.config())?;
    let rows = read_token_rows(tokens)?;
    let batches = rows
        .chunks(per_batch.max(1))
        .map(|c| Input::from_ids(c, &Device::Cpu).map(|i| i.tokens))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(splice_scores(&model, sae, point, &batches)?)
}

/// Token-id rows of a text file: one sequence per line, ids separated by commas or whitespace,
/// equal lengths ≥ 2; blank lines are skipped.
fn read_token_rows(path: &Path) -> Result<Vec<Vec<u32>>, Box<dyn Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows: Vec<Vec<u32>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} line {}: not a token id ({e})", path.display(), i + 1))?;
        if row.len() < 2 || rows.first().is_some_and(|r| r.len() != row.len()) {
            return Err(format!(
                "{} line {}: {} ids; every sequence needs the same length ≥ 2",
                path.display(),
                i + 1,
                row.len()
            )
            .into());
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(format!("{}: no token sequences", path.display()).into());
    }
    Ok(rows)
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

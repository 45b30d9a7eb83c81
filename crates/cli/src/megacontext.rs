//! `metarep megacontext eval`: reads a long text chunk by chunk through a fixed slot budget and
//! prints its next-token loss as JSON, for the working context's oldest-first cover with a
//! trained GistNet's gists and for plain truncation to the newest tokens that fit
//! (`metarep_megacontext::stream_nll`).

use std::path::PathBuf;

use metarep_megacontext::{stream_nll, CoverConfig, GistNet, Policy, PositionRule, StreamConfig};
use metarep_model::{HookedTransformer, LoadOptions};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Arguments of `metarep megacontext`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Next-token loss of a text read through a W-slot working context.
    Eval(EvalArgs),
}

/// Arguments of `metarep megacontext eval`.
#[derive(clap::Args)]
struct EvalArgs {
    /// The frozen base model: a GGUF file, a model directory or a hub id.
    #[arg(long)]
    model: String,
    /// A GistNet checkpoint directory (`GistNet::save`, or `gistnet_final/` of `reproduce
    /// fig12`).
    #[arg(long, value_name = "DIR")]
    gistnet: PathBuf,
    /// The text to read (UTF-8).
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Token ids are the text's bytes (for byte-level models, which carry no tokenizer).
    #[arg(long)]
    bytes: bool,
    /// Slot budget W.
    #[arg(long, default_value_t = 512)]
    budget: usize,
    /// The newest tokens always kept raw.
    #[arg(long, default_value_t = 64)]
    recent: usize,
    /// Highest gist level.
    #[arg(long, default_value_t = 2)]
    max_level: u8,
    /// Tokens predicted per step.
    #[arg(long, default_value_t = 32)]
    chunk: usize,
    /// Tokens read before the first scored chunk.
    #[arg(long, default_value_t = 512)]
    warmup: usize,
    /// Position ids: `span_end` (a gist at its span's last token) or `slot`.
    #[arg(long, default_value = "span_end")]
    rule: String,
}

/// Runs `metarep megacontext`.
pub fn run(args: Args) -> Res<()> {
    match args.command {
        Cmd::Eval(a) => eval(a),
    }
}

fn eval(a: EvalArgs) -> Res<()> {
    let rule = match a.rule.as_str() {
        "span_end" => PositionRule::SpanEnd,
        "slot" => PositionRule::Slot,
        other => return Err(format!("--rule {other}: expected span_end or slot").into()),
    };
    let text =
        std::fs::read_to_string(&a.text).map_err(|e| format!("{}: {e}", a.text.display()))?;
    let model = HookedTransformer::from_pretrained(&a.model, &LoadOptions::default())?;
    let net = GistNet::load(&a.gistnet, model.device())?;
    let tokens: Vec<u32> = if a.bytes {
        text.bytes().map(u32::from).collect()
    } else {
        let tok = model
            .tokenizer()
            .ok_or("the model carries no tokenizer: give --bytes for a byte-level model")?;
        tok.encode(&text, false)?.ids
    };
    let config = StreamConfig {
        cover: CoverConfig {
            block: net.config().block as u32,
            budget: a.budget,
            recent: a.recent,
            max_level: a.max_level,
        },
        rule,
        chunk: a.chunk,
        warmup: a.warmup,
    };
    let mut out = serde_json::Map::new();
    out.insert("tokens".into(), tokens.len().into());
    for (name, policy) in [("cover", Policy::Cover), ("truncate", Policy::Truncate)] {
        let loss = stream_nll(&model, &net, &tokens, &config, policy, None)?;
        out.insert(name.into(), serde_json::to_value(loss)?);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

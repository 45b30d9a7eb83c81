//! `metarep megacontext`: a long text in a gist tree with learned gists, read and continued
//! through a fixed slot budget.
//!
//! - `ingest` appends a text to an on-disk gist tree whose gists GistNet makes (created on
//!   first use; committed chunk by chunk, so an interrupted ingest resumes where it stopped);
//! - `eval` prints the next-token loss of a text (or a tree's document) read through the working
//!   context — oldest-first cover, truncation, and the focus loop with a LensNet — as JSON;
//! - `generate` continues a text (or a tree's document) longer than the model's context.

use std::path::{Path, PathBuf};

use metarep_gist_tree::{GistDType, Provenance, Reader, TreeConfig, Writer, WriterOptions};
use metarep_megacontext::generate::{generate, GenerateConfig};
use metarep_megacontext::stream::{stream_gists, Gists};
use metarep_megacontext::{
    CoverConfig, FocusConfig, GistNet, GistNetSummarizer, LensNet, Policy, PositionRule, Scorer,
    StreamConfig,
};
use metarep_model::generate::Sampling;
use metarep_model::HookedTransformer;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Arguments of `metarep megacontext`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Append a text to an on-disk gist tree with GistNet's gists (resumable).
    Ingest(IngestArgs),
    /// Next-token loss of a text read through a W-slot working context.
    Eval(EvalArgs),
    /// Continue a text read through a W-slot working context.
    Generate(GenerateArgs),
}

/// The frozen base model and GistNet.
#[derive(clap::Args)]
struct Nets {
    /// The frozen base model: a GGUF file, a model directory or a hub id.
    #[arg(long)]
    model: String,
    /// A GistNet checkpoint directory (`GistNet::save`, or `gistnet_final/` of `reproduce
    /// fig12`).
    #[arg(long, value_name = "DIR")]
    gistnet: PathBuf,
    /// Token ids are the text's bytes (for byte-level models, which carry no tokenizer).
    #[arg(long)]
    bytes: bool,
}

/// The document: a text file, or the document a gist tree holds.
#[derive(clap::Args)]
struct Doc {
    /// The text to read (UTF-8).
    #[arg(long, value_name = "FILE", conflicts_with = "tree")]
    text: Option<PathBuf>,
    /// A gist tree (`megacontext ingest`): its tokens, and its stored gists, read with access
    /// telemetry.
    #[arg(long, value_name = "DIR")]
    tree: Option<PathBuf>,
}

/// The working context and the focus loop.
#[derive(clap::Args)]
struct Context {
    /// Slot budget W.
    #[arg(long, default_value_t = 512)]
    budget: usize,
    /// The newest tokens always kept raw.
    #[arg(long, default_value_t = 64)]
    recent: usize,
    /// Highest gist level.
    #[arg(long, default_value_t = 2)]
    max_level: u8,
    /// Position ids: `span_end` (a gist at its span's last token) or `slot`.
    #[arg(long, default_value = "span_end")]
    rule: String,
    /// A LensNet checkpoint (`lensnet_final/` of `reproduce fig12`): adds the focus loop.
    #[arg(long, value_name = "DIR")]
    lensnet: Option<PathBuf>,
    /// Most moves per focus step.
    #[arg(long, default_value_t = 4)]
    max_moves: usize,
    /// Steps a node a focus move made stays frozen.
    #[arg(long, default_value_t = 4)]
    cooldown: usize,
}

/// Arguments of `metarep megacontext ingest`.
#[derive(clap::Args)]
struct IngestArgs {
    #[command(flatten)]
    nets: Nets,
    /// The text to append (UTF-8).
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// The tree directory (created when it holds no tree).
    #[arg(long, value_name = "DIR")]
    tree: PathBuf,
    /// Tokens per commit.
    #[arg(long, default_value_t = 4096)]
    chunk: usize,
    /// Stored gist dtype for a new tree: f16, bf16 or f32.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Source id in every record's provenance.
    #[arg(long, default_value_t = 0)]
    source: u64,
}

/// Arguments of `metarep megacontext eval`.
#[derive(clap::Args)]
struct EvalArgs {
    #[command(flatten)]
    nets: Nets,
    #[command(flatten)]
    doc: Doc,
    #[command(flatten)]
    context: Context,
    /// Tokens predicted per step.
    #[arg(long, default_value_t = 32)]
    chunk: usize,
    /// Tokens read before the first scored chunk.
    #[arg(long, default_value_t = 512)]
    warmup: usize,
}

/// Arguments of `metarep megacontext generate`.
#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    nets: Nets,
    #[command(flatten)]
    doc: Doc,
    #[command(flatten)]
    context: Context,
    /// Text appended to the document before generating.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sample at this temperature (> 0) instead of decoding greedily.
    #[arg(long)]
    temperature: Option<f64>,
    /// With --temperature: seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `metarep megacontext`.
pub fn run(args: Args) -> Res<()> {
    match args.command {
        Cmd::Ingest(a) => ingest(a),
        Cmd::Eval(a) => eval(a),
        Cmd::Generate(a) => generate_cmd(a),
    }
}

/// The model, GistNet, and the text's encoder and decoder.
struct Loaded {
    model: HookedTransformer,
    net: GistNet,
    bytes: bool,
}

impl Loaded {
    fn new(n: &Nets) -> Res<Self> {
        let model = HookedTransformer::from_pretrained(&n.model, &crate::device::load_options())?;
        let net = GistNet::load(&n.gistnet, model.device())?;
        let (d, gd) = (model.config().d_model, net.config().d_model);
        if d != gd {
            return Err(format!(
                "GistNet {} makes gists of width {gd}, the model's d_model is {d}",
                n.gistnet.display()
            )
            .into());
        }
        Ok(Loaded {
            model,
            net,
            bytes: n.bytes,
        })
    }

    fn encode(&self, text: &str) -> Res<Vec<u32>> {
        if self.bytes {
            return Ok(text.bytes().map(u32::from).collect());
        }
        Ok(self.tokenizer()?.encode(text, false)?.ids)
    }

    fn decode(&self, ids: &[u32]) -> Res<String> {
        if self.bytes {
            let b: Vec<u8> = ids.iter().map(|t| (*t).min(255) as u8).collect();
            return Ok(String::from_utf8_lossy(&b).into_owned());
        }
        Ok(self.tokenizer()?.decode(ids, false)?)
    }

    fn tokenizer(&self) -> Res<&metarep_model::Tokenizer> {
        self.model.tokenizer().ok_or_else(|| {
            "the model carries no tokenizer: give --bytes for a byte-level model".into()
        })
    }
}

fn read_text(path: &Path) -> Res<String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn ingest(a: IngestArgs) -> Res<()> {
    if a.chunk == 0 {
        return Err("--chunk must be ≥ 1".into());
    }
    let l = Loaded::new(&a.nets)?;
    let text = read_text(&a.text)?;
    let tokens = l.encode(&text)?;
    let summarizer = Box::new(GistNetSummarizer::new(l.net.clone(), l.model.clone(), 1));
    let opts = WriterOptions::default();
    let mut w = if a.tree.join("tree.json").exists() {
        let (w, report) = Writer::open(&a.tree, opts, summarizer)?;
        if !report.is_clean() {
            eprintln!("{}", report.summary());
        }
        w
    } else {
        let config = TreeConfig {
            block: l.net.config().block as u32,
            width: l.model.config().d_model as u32,
            dtype: GistDType::parse(&a.dtype)?,
            ..TreeConfig::default()
        };
        Writer::create(&a.tree, config, opts, summarizer)?
    };
    let c = w.config();
    if c.width as usize != l.model.config().d_model || c.block as usize != l.net.config().block {
        return Err(format!(
            "the tree in {} has width {} and arity {}; this model and GistNet make gists of \
             width {} over blocks of {}",
            a.tree.display(),
            c.width,
            c.block,
            l.model.config().d_model,
            l.net.config().block
        )
        .into());
    }
    // Resume: the tree must hold a prefix of this text.
    let have = w.token_count();
    let held = w.snapshot()?.tokens(0..have)?;
    if have as usize > tokens.len() || held[..] != tokens[..have as usize] {
        return Err(format!(
            "the tree in {} holds {have} tokens that are not the first {have} of {} ({} tokens)",
            a.tree.display(),
            a.text.display(),
            tokens.len()
        )
        .into());
    }
    let prov = Provenance::source(a.source, 0, text.len() as u64);
    let rest = &tokens[have as usize..];
    let bar = metarep_core::progress::bar(rest.len() as u64, "ingest tokens");
    let start = std::time::Instant::now();
    for part in rest.chunks(a.chunk) {
        w.append(part, &prov)?;
        w.commit()?;
        bar.inc(part.len() as u64);
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "tree": a.tree,
        "tokens": w.token_count(),
        "resumed_at": have,
        "appended": rest.len(),
        "version": w.version(),
        "seconds": secs,
        "tokens_per_second": rest.len() as f64 / secs.max(1e-9),
    });
    w.close()?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn rule(s: &str) -> Res<PositionRule> {
    match s {
        "span_end" => Ok(PositionRule::SpanEnd),
        "slot" => Ok(PositionRule::Slot),
        other => Err(format!("--rule {other}: expected span_end or slot").into()),
    }
}

fn cover(c: &Context, net: &GistNet) -> CoverConfig {
    CoverConfig {
        block: net.config().block as u32,
        budget: c.budget,
        recent: c.recent,
        max_level: c.max_level,
    }
}

fn focus(c: &Context) -> FocusConfig {
    FocusConfig {
        max_moves: c.max_moves,
        margin: 0.0,
        cooldown: c.cooldown,
    }
}

fn lensnet(c: &Context, model: &HookedTransformer) -> Res<Option<LensNet>> {
    let Some(dir) = &c.lensnet else {
        return Ok(None);
    };
    let lens = LensNet::load(dir, model.device())?;
    if lens.config().max_level < c.max_level {
        return Err(format!(
            "LensNet {} reads levels ≤ {}, below --max-level {}",
            dir.display(),
            lens.config().max_level,
            c.max_level
        )
        .into());
    }
    Ok(Some(lens))
}

/// The document's gists: from the tree (opened for reading, with telemetry), or made by
/// GistNet over the text plus `extra`.
fn with_gists<T>(
    l: &Loaded,
    doc: &Doc,
    extra: &str,
    f: impl FnOnce(&mut Gists) -> Res<T>,
) -> Res<T> {
    let extra = if extra.is_empty() {
        Vec::new()
    } else {
        l.encode(extra)?
    };
    match (&doc.text, &doc.tree) {
        (Some(path), None) => {
            let mut tokens = l.encode(&read_text(path)?)?;
            tokens.extend(extra);
            f(&mut Gists::new(&l.model, &l.net, &tokens))
        }
        (None, Some(dir)) => {
            let reader = Reader::open(dir, true)?;
            let snap = reader.snapshot()?;
            let mut gists = Gists::from_tree(&l.model, &l.net, &snap)?;
            gists.extend(&extra);
            f(&mut gists)
        }
        _ => Err("give --text FILE or --tree DIR".into()),
    }
}

fn eval(a: EvalArgs) -> Res<()> {
    let l = Loaded::new(&a.nets)?;
    let config = StreamConfig {
        cover: cover(&a.context, &l.net),
        rule: rule(&a.context.rule)?,
        chunk: a.chunk,
        warmup: a.warmup,
    };
    let mut lens = lensnet(&a.context, &l.model)?;
    let out = with_gists(&l, &a.doc, "", |gists| {
        let mut out = serde_json::Map::new();
        out.insert("tokens".into(), gists.tokens().len().into());
        for name in ["cover", "truncate", "lensnet_focus"] {
            let policy = match (name, lens.as_mut()) {
                ("cover", _) => Policy::Cover,
                ("truncate", _) => Policy::Truncate,
                (_, Some(scorer)) => Policy::Focus {
                    scorer,
                    config: focus(&a.context),
                },
                (_, None) => continue,
            };
            let loss = stream_gists(gists, &config, policy)?;
            out.insert(name.into(), serde_json::to_value(loss)?);
        }
        Ok(out)
    })?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn generate_cmd(a: GenerateArgs) -> Res<()> {
    let l = Loaded::new(&a.nets)?;
    let sampling = match a.temperature {
        Some(temperature) => Sampling::Sample {
            temperature,
            top_k: None,
            top_p: None,
            seed: a.seed,
        },
        None => Sampling::Greedy,
    };
    let config = GenerateConfig {
        cover: cover(&a.context, &l.net),
        rule: rule(&a.context.rule)?,
        max_new: a.max_new_tokens,
        sampling,
    };
    let mut lens = lensnet(&a.context, &l.model)?;
    let start = std::time::Instant::now();
    let (g, read) = with_gists(&l, &a.doc, &a.prompt, |gists| {
        let read = gists.tokens().len();
        let focus = lens
            .as_mut()
            .map(|s| (s as &mut dyn Scorer, focus(&a.context)));
        Ok((generate(gists, &config, focus)?, read))
    })?;
    let secs = start.elapsed().as_secs_f64();
    println!("{}", l.decode(&g.tokens)?);
    let summary = serde_json::json!({
        "document_tokens": read,
        "new_tokens": g.tokens.len(),
        "mean_slots": g.mean_slots,
        "mean_tokens_covered": g.mean_span,
        "focus": g.focus,
        "seconds": secs,
    });
    eprintln!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

//! `metarep gist-tree ...`: build and check a gist tree from the shell. Every command takes
//! `--tree DIR`; reads print JSON. Gists are made by the deterministic mean-pooling summariser
//! (seed 0), or, with `--gistnet DIR --model SPEC`, by a trained GistNet over the base model's
//! token embeddings (the tree's width must be the model's `d_model`).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use metarep_gist_tree::prune::{select_by_signal, Signal};
use metarep_gist_tree::stats::TreeStats;
use metarep_gist_tree::telemetry::AccessStats;
use metarep_gist_tree::{
    FsyncPolicy, GistDType, LayoutTags, MeanPool, NodeRef, Provenance, Reader, Snapshot,
    Summarizer, TreeConfig, TreeMeta, Writer, WriterOptions,
};
use metarep_megacontext::{GistNet, GistNetSummarizer};
use metarep_model::HookedTransformer;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Seed of the CLI's mean-pooling summariser.
const POOL_SEED: u64 = 0;

/// Arguments of `metarep gist-tree`.
#[derive(Args)]
pub struct GistTreeArgs {
    /// The tree directory.
    #[arg(long, global = true, value_name = "DIR")]
    tree: Option<PathBuf>,
    /// When the writer fsyncs: `commit`, `off` or `every:N`.
    #[arg(long, global = true, default_value = "commit")]
    fsync: String,
    /// Let a writing command's recovery cut records although other evidence (`commits.end`,
    /// the index checkpoint, later records) says their versions were committed: gives up
    /// versions missing from a damaged commit log. `verify` lists such damage first.
    #[arg(long, global = true)]
    discard_uncommitted: bool,
    /// Make gists with this GistNet checkpoint directory (`metarep_megacontext::GistNet::save`)
    /// instead of mean pooling; needs `--model`.
    #[arg(long, global = true, value_name = "DIR", requires = "model")]
    gistnet: Option<PathBuf>,
    /// The base model whose token embeddings GistNet reads (a GGUF file, a Hugging Face
    /// directory or hub id).
    #[arg(long, global = true, value_name = "SPEC")]
    model: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

/// Token input: inline ids or a file of whitespace-separated ids (`-` for stdin).
#[derive(Args)]
struct TokenInput {
    /// Token ids, whitespace- or comma-separated (e.g. "1 2 3").
    #[arg(long, conflicts_with = "file")]
    tokens: Option<String>,
    /// File of whitespace-separated token ids (`-` reads stdin).
    #[arg(long)]
    file: Option<PathBuf>,
}

/// Provenance flags.
#[derive(Args)]
struct ProvArgs {
    /// Source document id.
    #[arg(long, default_value_t = 0)]
    source: u64,
    /// Byte span start in the source.
    #[arg(long, default_value_t = 0)]
    byte_start: u64,
    /// Byte span end in the source.
    #[arg(long, default_value_t = 0)]
    byte_end: u64,
    /// Layout tags, comma-separated (heading, table, formula, code, dialogue, list, quote).
    #[arg(long, default_value = "")]
    tags: String,
    /// Retrieval score.
    #[arg(long)]
    score: Option<f32>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an empty tree.
    Init {
        /// Arity B (tokens per block, children per gist).
        #[arg(long, default_value_t = 32)]
        block: u32,
        /// Gist width d.
        #[arg(long, default_value_t = 256)]
        width: u32,
        /// Gist dtype: f16, bf16 or f32.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Segment file size before rotation, MiB.
        #[arg(long, default_value_t = 256)]
        segment_mib: u64,
    },
    /// Append tokens and commit.
    Append {
        #[command(flatten)]
        input: TokenInput,
        #[command(flatten)]
        prov: ProvArgs,
    },
    /// Print one node as JSON.
    Get {
        /// The node, `LEVEL:INDEX`.
        #[arg(long)]
        node: String,
        /// Version to read (default: newest).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Print tokens `[start, end)` (level 0) or gists of a level as JSON.
    Range {
        /// First token (level 0) or node index.
        #[arg(long)]
        start: u64,
        /// End (exclusive).
        #[arg(long)]
        end: u64,
        /// 0 for tokens, k ≥ 1 for gists.
        #[arg(long, default_value_t = 0)]
        level: u8,
        /// Version to read (default: newest).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Replace tokens starting at `--start` (same length) and commit.
    Edit {
        /// First token to replace.
        #[arg(long)]
        start: u64,
        #[command(flatten)]
        input: TokenInput,
        #[command(flatten)]
        prov: ProvArgs,
    },
    /// Name a version (pins it against compaction), drop a name, or list names and versions.
    Snapshot {
        /// Name to give.
        #[arg(long)]
        name: Option<String>,
        /// Version to name (default: newest).
        #[arg(long)]
        version: Option<u64>,
        /// Name to remove.
        #[arg(long)]
        drop: Option<String>,
    },
    /// Soft-delete subtrees: given nodes, or those of a level whose utility is below a threshold.
    Prune {
        /// Nodes to prune, `LEVEL:INDEX` (repeatable).
        #[arg(long)]
        node: Vec<String>,
        /// Level to select from by utility.
        #[arg(long)]
        level: Option<u8>,
        /// Prune nodes whose utility is below this.
        #[arg(long)]
        below: Option<f64>,
        /// Utility signal: accesses, recency or score.
        #[arg(long, default_value = "accesses")]
        signal: String,
        /// Print the selection without pruning.
        #[arg(long)]
        dry_run: bool,
    },
    /// Undo the prune of a node.
    Restore {
        /// The pruned root, `LEVEL:INDEX` (repeatable).
        #[arg(long, required = true)]
        node: Vec<String>,
    },
    /// Reclaim space of versions no reader pins.
    Compact,
    /// Check every record, file and checkpoint; exit 1 on any problem.
    Verify,
    /// Sizes, versions, pruned subtrees and access telemetry as JSON.
    Stats {
        /// Hottest nodes to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
}

fn tree_dir(args: &GistTreeArgs) -> Res<&Path> {
    args.tree
        .as_deref()
        .ok_or_else(|| "missing --tree DIR".into())
}

fn opts(args: &GistTreeArgs) -> Res<WriterOptions> {
    Ok(WriterOptions {
        fsync: FsyncPolicy::parse(&args.fsync)?,
        discard_uncommitted: args.discard_uncommitted,
        ..WriterOptions::default()
    })
}

/// The summariser writing commands use: GistNet when `--gistnet` is given, else mean pooling.
fn summarizer(args: &GistTreeArgs, width: u32) -> Res<Box<dyn Summarizer + Send>> {
    let (Some(dir), Some(spec)) = (&args.gistnet, &args.model) else {
        return Ok(Box::new(MeanPool::new(width as usize, POOL_SEED)?));
    };
    let model = HookedTransformer::from_pretrained(spec, &crate::device::load_options())?;
    let net = GistNet::load(dir, model.device())?;
    let (d, gd) = (model.config().d_model, net.config().d_model);
    if gd != d || width as usize != d {
        return Err(format!(
            "GistNet {} makes gists of width {gd}, the model's d_model is {d}, the tree's \
             width {width}: all three must agree",
            dir.display()
        )
        .into());
    }
    Ok(Box::new(GistNetSummarizer::new(net, model, 1)))
}

fn open_writer(args: &GistTreeArgs) -> Res<Writer> {
    let dir = tree_dir(args)?;
    let meta = TreeMeta::load(dir)?;
    let (w, report) = Writer::open(dir, opts(args)?, summarizer(args, meta.config.width)?)?;
    if !report.is_clean() {
        eprintln!("{}", report.summary());
    }
    Ok(w)
}

fn read_tokens(input: &TokenInput) -> Res<Vec<u32>> {
    let text = match (&input.tokens, &input.file) {
        (Some(t), None) => t.clone(),
        (None, Some(p)) if p.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())?,
        (None, Some(p)) => {
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?
        }
        _ => return Err("give --tokens or --file".into()),
    };
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| format!("`{s}` is not a token id (u32)").into())
        })
        .collect()
}

fn provenance(p: &ProvArgs) -> Res<Provenance> {
    Ok(Provenance {
        score: p.score,
        tags: LayoutTags::parse(&p.tags)?,
        ..Provenance::source(p.source, p.byte_start, p.byte_end)
    })
}

fn snapshot(args: &GistTreeArgs, version: Option<u64>) -> Res<Snapshot> {
    let r = Reader::open(tree_dir(args)?, true)?;
    Ok(match version {
        Some(v) => r.snapshot_at(v)?,
        None => r.snapshot()?,
    })
}

fn print_json(v: &impl serde::Serialize) -> Res<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn parse_nodes(nodes: &[String]) -> Res<Vec<NodeRef>> {
    Ok(nodes
        .iter()
        .map(|n| NodeRef::parse(n))
        .collect::<metarep_gist_tree::Result<_>>()?)
}

/// Runs a `gist-tree` command; `Ok(false)` means a check failed (verify).
pub fn run(args: GistTreeArgs) -> Res<bool> {
    match &args.command {
        Cmd::Init {
            block,
            width,
            dtype,
            segment_mib,
        } => {
            let cfg = TreeConfig {
                block: *block,
                width: *width,
                dtype: GistDType::parse(dtype)?,
                segment_bytes: segment_mib << 20,
            };
            // Checked before the summariser allocates its width-sized table.
            cfg.validate()?;
            Writer::create(
                tree_dir(&args)?,
                cfg,
                opts(&args)?,
                summarizer(&args, *width)?,
            )?
            .close()?;
            print_json(&serde_json::json!({ "created": tree_dir(&args)?, "config": cfg }))?;
        }
        Cmd::Append { input, prov } => {
            let tokens = read_tokens(input)?;
            let mut w = open_writer(&args)?;
            w.append(&tokens, &provenance(prov)?)?;
            let v = w.commit()?;
            print_json(&serde_json::json!({ "version": v, "tokens": w.token_count() }))?;
            w.close()?;
        }
        Cmd::Get { node, version } => {
            let s = snapshot(&args, *version)?;
            print_json(&s.get(NodeRef::parse(node)?)?)?;
        }
        Cmd::Range {
            start,
            end,
            level,
            version,
        } => {
            let s = snapshot(&args, *version)?;
            if *level == 0 {
                print_json(&serde_json::json!({
                    "version": s.version(), "start": start, "tokens": s.tokens(*start..*end)?,
                }))?;
            } else {
                let flat = s.gists(*level, *start..*end)?;
                let rows: Vec<&[f32]> = flat.chunks(s.config().width as usize).collect();
                print_json(&serde_json::json!({
                    "version": s.version(), "level": level, "start": start, "gists": rows,
                }))?;
            }
        }
        Cmd::Edit { start, input, prov } => {
            let tokens = read_tokens(input)?;
            let mut w = open_writer(&args)?;
            w.edit(*start, &tokens, &provenance(prov)?)?;
            let v = w.commit()?;
            print_json(&serde_json::json!({ "version": v }))?;
            w.close()?;
        }
        Cmd::Snapshot {
            name,
            version,
            drop,
        } => {
            let mut w = open_writer(&args)?;
            if let Some(n) = name {
                let v = version.unwrap_or(w.version());
                w.tag(n, v)?;
            }
            if let Some(n) = drop {
                w.untag(n)?;
            }
            let h = w.history();
            print_json(&serde_json::json!({
                "head": w.version(), "oldest": h.oldest(), "snapshots": h.tags,
            }))?;
            w.close()?;
        }
        Cmd::Prune {
            node,
            level,
            below,
            signal,
            dry_run,
        } => {
            let mut w = open_writer(&args)?;
            let mut chosen = parse_nodes(node)?;
            if let Some(t) = below.filter(|t| !t.is_finite()) {
                return Err(format!("--below {t} is not a finite threshold").into());
            }
            match (level, below) {
                (Some(l), Some(t)) => {
                    let access = AccessStats::load(w.dir(), w.meta())?;
                    let snap = w.snapshot()?;
                    chosen.extend(select_by_signal(
                        &snap,
                        *l,
                        *t,
                        Signal::parse(signal)?,
                        &access,
                    )?);
                }
                (None, None) => {}
                _ => return Err("give both --level and --below to prune by utility".into()),
            }
            if chosen.is_empty() {
                return Err("nothing to prune: give --node or --level with --below".into());
            }
            let names: Vec<String> = chosen.iter().map(|n| n.to_string()).collect();
            if *dry_run {
                print_json(&serde_json::json!({ "would_prune": names }))?;
                return Ok(true);
            }
            for n in &chosen {
                w.prune(*n)?;
            }
            let v = w.commit()?;
            print_json(&serde_json::json!({ "version": v, "pruned": names }))?;
            w.close()?;
        }
        Cmd::Restore { node } => {
            let mut w = open_writer(&args)?;
            for n in parse_nodes(node)? {
                w.restore(n)?;
            }
            let v = w.commit()?;
            print_json(&serde_json::json!({ "version": v, "restored": node }))?;
            w.close()?;
        }
        Cmd::Compact => {
            let mut w = open_writer(&args)?;
            print_json(&w.compact()?)?;
            w.close()?;
        }
        Cmd::Verify => {
            let report = metarep_gist_tree::verify(tree_dir(&args)?)?;
            print_json(&report)?;
            return Ok(report.ok());
        }
        Cmd::Stats { top } => print_json(&TreeStats::collect(tree_dir(&args)?, *top)?)?,
    }
    Ok(true)
}

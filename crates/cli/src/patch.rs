//! `metarep patch`: activation patching clean → corrupted (see `metarep_circuits::patching`) on
//! prompt pairs from a JSONL file; prints the residual-stream (layer × position) and head
//! (layer × head) tables of the share of the logit difference each patch restores, and with
//! `--out DIR` writes them as markdown and SVG heat maps.
//!
//! One pair per line; prompts are text (tokenized with the model's tokenizer) or token-id
//! arrays, answers a single token's text or id, and every pair must have the same length:
//!
//! ```text
//! {"clean": "12 + 7 =", "corrupted": "12 + 8 =", "answer": "▁19", "alternative": "▁20"}
//! {"clean": [0, 27, 20, 79, 16], "corrupted": [0, 27, 20, 80, 16], "answer": 65, "alternative": 66}
//! ```

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use metarep_circuits::patching::{patch, PatchReport, PatchSet};
use metarep_eval::plot::Heatmap;
use metarep_model::{HookedTransformer, Tokenizer};
use serde::Deserialize;

/// Arguments of `metarep patch`.
#[derive(clap::Args)]
pub struct Args {
    /// A model directory (config.json + safetensors), a GGUF file or a Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// JSONL prompt pairs: `clean`, `corrupted`, `answer`, `alternative`.
    #[arg(long)]
    pairs: PathBuf,
    /// A token (by its text, e.g. `<|endoftext|>`) put before every text prompt.
    #[arg(long)]
    prepend: Option<String>,
    /// Write `patch.md`, `patch_resid.svg` and `patch_heads.svg` here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Refuse inputs longer than the model's context length (n_ctx); without it, rotary models
    /// run them with a warning (learned positions always refuse).
    #[arg(long)]
    strict: bool,
}

/// A prompt as text or token ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A single token as its text or its id.
#[derive(Deserialize)]
#[serde(untagged)]
enum Token {
    Text(String),
    Id(u32),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pair {
    clean: Prompt,
    corrupted: Prompt,
    answer: Token,
    alternative: Token,
}

type BoxError = Box<dyn std::error::Error>;

fn tokenizer<'a>(tok: Option<&'a Tokenizer>, what: &str) -> Result<&'a Tokenizer, BoxError> {
    tok.ok_or_else(|| {
        format!("{what} is text but the model has no tokenizer.json: give token ids").into()
    })
}

fn prompt_ids(
    p: &Prompt,
    tok: Option<&Tokenizer>,
    prepend: Option<u32>,
    at: &str,
) -> Result<Vec<u32>, BoxError> {
    Ok(match p {
        Prompt::Ids(ids) => ids.clone(),
        Prompt::Text(t) => {
            let mut ids: Vec<u32> = prepend.into_iter().collect();
            ids.extend(tokenizer(tok, at)?.encode(t, false)?.ids);
            ids
        }
    })
}

fn token_id(t: &Token, tok: Option<&Tokenizer>, at: &str) -> Result<u32, BoxError> {
    match t {
        Token::Id(id) => Ok(*id),
        Token::Text(s) => tokenizer(tok, at)?
            .token_to_id(s)
            .ok_or_else(|| format!("{at}: `{s}` is not a single token of the vocabulary").into()),
    }
}

/// Reads the pairs into a [`PatchSet`].
fn load_pairs(
    path: &Path,
    tok: Option<&Tokenizer>,
    prepend: Option<u32>,
) -> Result<PatchSet, BoxError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let (mut clean, mut corrupted, mut answer, mut alternative) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut len = None;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = format!("{}:{}", path.display(), i + 1);
        let pair: Pair = serde_json::from_str(line).map_err(|e| format!("{at}: {e}"))?;
        let c = prompt_ids(&pair.clean, tok, prepend, &format!("{at} clean"))?;
        let k = prompt_ids(&pair.corrupted, tok, prepend, &format!("{at} corrupted"))?;
        let n = *len.get_or_insert(c.len());
        if c.len() != n || k.len() != n || n == 0 {
            return Err(format!(
                "{at}: clean and corrupted prompts take {} and {} tokens; every prompt must take {n}",
                c.len(),
                k.len()
            )
            .into());
        }
        clean.extend(c);
        corrupted.extend(k);
        answer.push(token_id(&pair.answer, tok, &format!("{at} answer"))?);
        alternative.push(token_id(
            &pair.alternative,
            tok,
            &format!("{at} alternative"),
        )?);
    }
    let (b, n) = (answer.len(), len.unwrap_or(0));
    if b == 0 {
        return Err(format!("{}: no prompt pairs", path.display()).into());
    }
    let dev = &Device::Cpu;
    Ok(PatchSet {
        clean: Tensor::from_vec(clean, (b, n), dev)?,
        corrupted: Tensor::from_vec(corrupted, (b, n), dev)?,
        answer: Tensor::from_vec(answer, b, dev)?,
        alternative: Tensor::from_vec(alternative, b, dev)?,
    })
}

/// Writes `patch_resid.svg` (layer × position, named by the first clean prompt's tokens when
/// the model has a tokenizer) and `patch_heads.svg` (layer × head), each with its PNG.
fn write_maps(
    out: &Path,
    report: &PatchReport,
    set: &PatchSet,
    tok: Option<&Tokenizer>,
) -> Result<(), BoxError> {
    let units = "share of the logit difference restored";
    let first = set.clean.get(0)?.to_vec1::<u32>()?;
    let positions = first.iter().enumerate().map(|(i, &id)| {
        tok.and_then(|t| t.id_to_token(id))
            .unwrap_or_else(|| i.to_string())
    });
    Heatmap::layer_by_position(
        "residual stream patched clean → corrupted (first prompt's tokens)",
        "hook_resid_pre",
        units,
        positions,
        &report.resid,
    )
    .write_svg(out.join("patch_resid.svg"))?;
    Heatmap::layer_by_head(
        "head outputs (hook_z) patched clean → corrupted",
        units,
        &report.heads,
    )
    .write_svg(out.join("patch_heads.svg"))?;
    Ok(())
}

/// Runs `metarep patch`.
pub fn run(args: Args) -> Result<(), BoxError> {
    let model = HookedTransformer::from_pretrained(&args.model, &crate::device::load_options())?
        .with_strict_positions(args.strict);
    let tok = model.tokenizer();
    let prepend =
        match &args.prepend {
            Some(t) => Some(tokenizer(tok, "--prepend")?.token_to_id(t).ok_or_else(|| {
                format!("--prepend: `{t}` is not a token of the model's vocabulary")
            })?),
            None => None,
        };
    let set = load_pairs(&args.pairs, tok, prepend)?;
    let vocab = model.config().d_vocab as u32;
    for ids in [&set.clean, &set.corrupted, &set.answer, &set.alternative] {
        if let Some(bad) = ids
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .find(|&i| i >= vocab)
        {
            return Err(format!("token id {bad} is outside the vocabulary of {vocab}").into());
        }
    }
    let report = patch(&model, &set)?;
    let md = report.to_markdown();
    print!("{md}");
    if let Some(out) = &args.out {
        metarep_core::ensure_dir(out)?;
        metarep_core::fsutil::atomic_write(&out.join("patch.md"), md.as_bytes())?;
        write_maps(out, &report, &set, tok)?;
    }
    Ok(())
}

//! `metarep generate`: continues a prompt with the model's key/value-cached generation
//! (`HookedTransformer::generate`) and streams the new text to stdout as tokens arrive
//! (flushed per token, never splitting a character). Greedy unless `--temperature` is given;
//! ends at the checkpoint's end-of-sequence tokens, at a `--stop` string (not printed) or after
//! `--max-new-tokens`. A summary goes to stderr.

use std::io::Write;
use std::time::Instant;

use metarep_model::generate::{GenerateOptions, Sampling};
use metarep_model::{HookedTransformer, LoadOptions, NoHooks};

use crate::text_stream::TextStream;

/// Arguments of `metarep generate`.
#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file, a model directory (config.json + safetensors) or a Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// The text to continue (tokenized with the model's tokenizer).
    #[arg(long)]
    prompt: String,
    /// At most this many new tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sample at this temperature (> 0) instead of decoding greedily.
    #[arg(long)]
    temperature: Option<f64>,
    /// With --temperature: sample among the k most likely tokens only.
    #[arg(long, requires = "temperature")]
    top_k: Option<usize>,
    /// With --temperature: sample from the smallest most-likely set holding this probability.
    #[arg(long, requires = "temperature")]
    top_p: Option<f64>,
    /// With --temperature: seed of the draws.
    #[arg(long, requires = "temperature", default_value_t = 0)]
    seed: u64,
    /// Stop when the generated text contains this string (repeatable; not printed).
    #[arg(long)]
    stop: Vec<String>,
    /// Hub revision.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Read the hub cache only, never the network.
    #[arg(long)]
    offline: bool,
    /// Refuse a prompt and --max-new-tokens that together run past the model's context length
    /// (n_ctx); without it, rotary models run past it with a warning (learned positions always
    /// refuse).
    #[arg(long)]
    strict: bool,
}

/// Returned by the token callback to end generation at a stop string (never shown).
const STOP_STRING: &str = "metarep generate: stop string reached";

/// Runs `metarep generate`.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.max_new_tokens == 0 {
        return Err("--max-new-tokens must be at least 1".into());
    }
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::Sample {
            temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
    };
    sampling
        .validate()
        .map_err(|e| format!("--temperature/--top-k/--top-p: {e}"))?;
    let opts = LoadOptions {
        revision: args.revision.clone(),
        offline: args.offline || LoadOptions::default().offline,
        ..crate::device::load_options()
    };
    let model =
        HookedTransformer::from_pretrained(&args.model, &opts)?.with_strict_positions(args.strict);
    let tok = model
        .tokenizer()
        .ok_or_else(|| format!("{} has no tokenizer: cannot encode --prompt", args.model))?;
    let prompt = tok.encode(&args.prompt, true)?.ids;
    if prompt.is_empty() {
        return Err("--prompt encodes to no tokens".into());
    }
    if args.strict {
        // The last new token is never fed back, so the model sees one position fewer.
        let need = prompt.len() + args.max_new_tokens - 1;
        model.check_positions(need).map_err(|e| {
            format!(
                "--strict: the prompt's {} tokens and --max-new-tokens {} need {need} positions: {e}",
                prompt.len(),
                args.max_new_tokens
            )
        })?;
    }
    let eos = tok.eos_ids().to_vec();
    let gen = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_tokens: eos.clone(),
    };
    let mut stream = TextStream::new(tok, &args.stop);
    let mut out = std::io::stdout().lock();
    let (mut count, mut end) = (0usize, End::Length);
    let start = Instant::now();
    let result = model.generate(&prompt, &gen, &mut NoHooks, |id| {
        count += 1;
        if eos.contains(&id) {
            end = End::Eos;
            return Ok(());
        }
        let chunk = stream.push(id)?;
        print_flushed(&mut out, &chunk.text)?;
        if chunk.stopped {
            end = End::StopString;
            return Err(metarep_model::Error::Invalid(STOP_STRING.into()));
        }
        Ok(())
    });
    match result {
        Ok(_) => print_flushed(&mut out, &stream.finish()?.text)?,
        Err(metarep_model::Error::Invalid(m)) if m == STOP_STRING && end == End::StopString => {}
        Err(e) => return Err(e.into()),
    }
    writeln!(out)?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "[{} prompt tokens, {count} generated in {secs:.2} s ({:.1} tokens/s); stopped at {}]",
        prompt.len(),
        count as f64 / secs.max(1e-9),
        match end {
            End::Eos => "an end-of-sequence token",
            End::StopString => "a stop string",
            End::Length => "--max-new-tokens",
        }
    );
    Ok(())
}

/// Why generation ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The checkpoint's end-of-sequence token.
    Eos,
    /// A `--stop` string.
    StopString,
    /// `--max-new-tokens` reached.
    Length,
}

/// Writes `text` and flushes, as a model error (the callback's error type).
fn print_flushed(out: &mut impl Write, text: &str) -> metarep_model::Result<()> {
    let io = |e| metarep_model::Error::io(std::path::Path::new("<stdout>"), e);
    out.write_all(text.as_bytes()).map_err(io)?;
    out.flush().map_err(io)
}

//! `metarep`: the command-line tool of metarep, one subcommand group per module.
//!
//! ```text
//! metarep ablate --model DIR --config ABLATIONS.toml --tokens FILE.ids [--reference FILE.ids] [--out T.md]
//! metarep capture --model DIR --data FILE --hooks 'blocks.6.hook_resid_post' --out DIR [--dtype f16]
//! metarep forward --model DIR_OR_HUB_ID (--text "..." | --tokens 1,2,3) --out FILE.safetensors \
//!     [--cache 'blocks.*.hook_resid_post'] [--dtype f32|f16|bf16]
//! metarep generate --model FILE.gguf --prompt "..." [--max-new-tokens N] \
//!     [--temperature T [--top-k K] [--top-p P] [--seed S]] [--stop TEXT]
//! metarep patch --model DIR --pairs PAIRS.jsonl [--prepend TOKEN] [--out DIR]
//! metarep gist-tree init|append|get|range|edit|snapshot|prune|restore|compact|verify|stats --tree DIR
//! metarep megacontext ingest|eval|generate --model M --gistnet DIR (--text FILE | --tree DIR) [--bytes] [--lensnet DIR] [--budget 512]
//! metarep sae train --acts FILE --arch topk --k 32 --expansion 16 --out DIR [--steps N] ...
//! metarep sae eval --sae DIR --acts FILE [--json]
//! metarep sae dashboard --sae DIR --model FILE.gguf --text FILE.txt --out PAGE.html [--contexts N]
//! metarep sae validate --sae DIR --model FILE.gguf --text FILE.txt [--out REPORT.json]
//! metarep second-order [STAGE] --model DIR --run RUN [--config FILE.toml] [--force]
//! ```
//!
//! Every command takes `--device cpu|cuda|cuda:N` (default `cpu`; CUDA needs a build with
//! `--features cuda`). Every `--model` takes a model directory (config.json + safetensors), a
//! GGUF file or a Hugging Face hub id. An input longer than the model's context length (`n_ctx`) is an error
//! for learned positions and, for rotary ones, runs with a warning — an error under `--strict`
//! (ablate, capture, forward, generate, patch).
//!
//! Exit status: 0 on success, 1 when a check fails (`gist-tree verify`), 2 on an error.

mod ablate;
mod capture;
mod device;
mod forward;
mod generate;
mod gist_tree;
mod megacontext;
mod patch;
mod sae;
mod sae_dashboard;
mod sae_model;
mod sae_validate;
mod second_order;
mod text_stream;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "metarep",
    version,
    about = "metarep: transformer research in Rust"
)]
struct Cli {
    /// Where models and SAEs run: `cpu`, `cuda` or `cuda:N` (CUDA needs `--features cuda`).
    #[arg(long, global = true, default_value = "cpu")]
    device: metarep_core::device::DeviceSpec,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ablate heads and neurons in stages (zero, mean, resample) and report the changes.
    Ablate(ablate::Args),
    /// Store hook activations over a token dataset as sharded safetensors (resumable).
    Capture(capture::Args),
    /// Run a model on one input; write logits and chosen activations to safetensors.
    Forward(forward::Args),
    /// Continue a prompt (greedy or sampled), streaming the text as tokens arrive.
    Generate(generate::Args),
    /// Patch activations clean → corrupted per layer, position and head; report the share
    /// of the logit difference restored.
    Patch(patch::Args),
    /// Build, read and check a disk-backed gist tree (MegaContext).
    GistTree(gist_tree::GistTreeArgs),
    /// MegaContext's learned half: read a long text through a fixed slot budget.
    Megacontext(megacontext::Args),
    /// Train and evaluate sparse autoencoders.
    Sae(sae::Args),
    /// Second-order neuron effects: the resumable pipeline, one stage or all.
    SecondOrder(second_order::Args),
}

/// Restores the default action of SIGPIPE, which Rust programs ignore (a reader that closed
/// its end, as `metarep ... | head` does, would otherwise make the next `println!` panic): the
/// process ends quietly, as other command-line tools do. Every writer in metarep is safe
/// against being stopped at any point (the same as a SIGKILL).
#[cfg(unix)]
fn end_quietly_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to the default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_on_closed_pipe() {}

fn main() -> ExitCode {
    end_quietly_on_closed_pipe();
    metarep_core::threads::fix_cpu_threads();
    let cli = Cli::parse();
    if let Err(e) = device::choose(&cli.device) {
        eprintln!("error: --device {}: {e}", cli.device);
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Ablate(args) => ablate::run(args).map(|()| true),
        Command::Capture(args) => capture::run(args).map(|()| true),
        Command::Forward(args) => forward::run(args).map(|()| true),
        Command::Generate(args) => generate::run(args).map(|()| true),
        Command::GistTree(args) => gist_tree::run(args),
        Command::Megacontext(args) => megacontext::run(args).map(|()| true),
        Command::Patch(args) => patch::run(args).map(|()| true),
        Command::Sae(args) => sae::run(args).map(|()| true),
        Command::SecondOrder(args) => second_order::run(args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

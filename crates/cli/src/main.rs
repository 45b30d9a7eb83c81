//! `metarep`: the command-line interface to metarep, one subcommand group per module.
//!
//! ```text
//! metarep forward --model DIR_OR_HUB_ID (--text "..." | --tokens 1,2,3) --out FILE.safetensors \
//!     [--cache 'blocks.*.hook_resid_post'] [--dtype f32|f16|bf16]
//! ```

mod forward;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "metarep",
    version,
    about = "metarep: transformer research in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model on one input; write logits and chosen activations to safetensors.
    Forward(forward::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Forward(args) => forward::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

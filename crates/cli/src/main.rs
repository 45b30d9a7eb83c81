//! `metarep`: the command-line interface to metarep, one subcommand group per module.
//!
//! ```text
//! metarep sae train --acts FILE --arch topk --k 32 --expansion 16 --out DIR [--steps N] ...
//! metarep sae eval --sae DIR --acts FILE [--json]
//! ```

mod sae;

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
    /// Train and evaluate sparse autoencoders.
    Sae(sae::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sae(args) => sae::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `cargo xtask`: reproduce registered results, run benchmarks.
//!
//! ```text
//! cargo xtask reproduce --list
//! cargo xtask reproduce fig1 [--check] [--config FILE] [--set key=value ...] [--out results]
//! cargo xtask reproduce all --check [--quick] [--jobs 2]
//! cargo xtask bench lat_cg
//! cargo xtask bench gist_tree --set size_gib=0.25
//! cargo xtask fixtures parity|minilm|minilm-reference
//! cargo xtask gallery [--results results] [--out results/index.html]
//! ```

mod bench;
#[cfg(test)]
mod browser;
mod checks;
mod detector_maps;
mod device;
mod error;
mod fig1;
mod fig10;
mod fig11;
mod fig12;
mod fig13;
mod fig14;
mod fig15;
mod fig16;
mod fig17;
mod fig18;
mod fig2;
mod fig3;
mod fig4;
mod fig5;
mod fig6;
mod fig7;
mod fig8;
mod fig9;
mod fixtures;
mod gallery;
mod jobs;
mod measure_cache;
mod output;
mod registry;
mod routes_ablations;
mod routes_knobs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "metarep developer tasks: reproduce results, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reproduce a registered result (writes results/<id>/).
    Reproduce {
        /// Result id (see --list), or `all`.
        id: Option<String>,
        /// Print the registry and exit.
        #[arg(long)]
        list: bool,
        /// Exit non-zero when an acceptance threshold fails.
        #[arg(long)]
        check: bool,
        /// Use `configs/<id>.quick.toml` where one exists (smaller runs, same checks; CI uses it).
        #[arg(long)]
        quick: bool,
        /// Config file (default: configs/<id>.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Config overrides `key.path=value` (repeatable).
        #[arg(long = "set")]
        overrides: Vec<String>,
        /// Output root.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// With `all`: experiments run at once, each in its own process with an equal share of
        /// the threads (`RAYON_NUM_THREADS`, else every core; at least one each); each one's
        /// output is printed whole, in registry order, once it and those before it have
        /// finished.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
    },
    /// Run a benchmark (writes results/bench/<name>.json).
    Bench {
        /// Benchmark name (an unknown name lists the known ones).
        name: String,
        /// Output root.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Benchmark settings `key=value` (repeatable; each benchmark lists its keys).
        #[arg(long = "set")]
        settings: Vec<String>,
        /// Hide the CPU's AVX-512 from every process of the benchmark (CPUID faulting; needs
        /// `cpuid_fault` in /proc/cpuinfo and a C compiler): a stand-in for a machine without
        /// AVX-512.
        #[arg(long)]
        hide_avx512: bool,
    },
    /// Build or fetch test fixtures (an unknown name lists the known ones).
    Fixtures {
        /// Fixture set name.
        name: String,
    },
    /// Write one self-contained HTML page over the reproduced results (figures, metrics,
    /// commands, manifests, tables).
    Gallery {
        /// Results root (as `reproduce --out`).
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// The page to write.
        #[arg(long, default_value = "results/index.html")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    metarep_core::threads::fix_cpu_threads();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Reproduce {
            id,
            list,
            check,
            quick,
            config,
            overrides,
            out,
            jobs,
        } => {
            if list {
                print!("{}", registry::listing());
                return ExitCode::SUCCESS;
            }
            match id {
                None => Err("give a result id or --list".into()),
                Some(id) => {
                    let flags = registry::Flags { check, quick, jobs };
                    registry::reproduce(&id, flags, config.as_deref(), &overrides, &out)
                }
            }
        }
        Command::Bench { hide_avx512, .. } if hide_avx512 => return bench::hide_avx512::rerun(),
        Command::Bench {
            name,
            out,
            settings,
            ..
        } => bench::run(&name, &out, &settings),
        Command::Fixtures { name } => fixtures::run(&name),
        Command::Gallery { results, out } => gallery::run(&results, &out),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("check failed: an acceptance threshold was not met (see metrics.json)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

//! fig15: circuits and tokenization in the real SmolLM2-135M-Instruct (GGUF Q4_1, dequantized
//! to f32; `cargo xtask fixtures smollm2`): indirect object identification with patching, direct
//! logit attribution and path patching ([`ioi`]), few-shot arithmetic by tokenization class
//! and operand length ([`arith`]), and second-order neuron effects on IOI ([`second_order`]).

mod arith;
mod ioi;
mod second_order;

use std::path::Path;

use metarep_model::HookedTransformer;
use serde::{Deserialize, Serialize};

use crate::checks::{self, CheckedConfig};
use crate::device::load_options;
use crate::error::BoxError;
use crate::fixtures::gguf::smollm2_file;
use crate::output::ResultDir;

/// `configs/fig15.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig15Config {
    /// Seed of every draw (names, problems, bootstrap).
    seed: u64,
    ioi: ioi::IoiConfig,
    arithmetic: arith::ArithConfig,
    second_order: second_order::SecondOrderConfig,
}

impl CheckedConfig for Fig15Config {
    fn check(&self) -> Result<(), BoxError> {
        self.ioi.check()?;
        self.arithmetic.check()?;
        self.second_order.check()
    }
}

/// Runs fig15 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig15Config = checks::load_checked(config, overrides)?;
    let gguf = smollm2_file(&crate::fixtures::repo_root())?;
    let mut out = ResultDir::start(dir, &cfg, vec![cfg.seed])?;
    out.extra("smollm2_sha256", &crate::fixtures::sha256_file(&gguf)?)?;
    let model = HookedTransformer::from_gguf(&gguf, &load_options())?;
    let pass = ioi::run(cfg.seed, &cfg.ioi, &model, &mut out)?;
    arith::run(cfg.seed, &cfg.arithmetic, &model, &mut out)?;
    let exact = second_order::run(cfg.seed, &cfg.second_order, &model, dir, &mut out)?;
    out.finish(pass && exact)
}

//! fig11: second-order effects of MLP neurons on the arith fixture (seed 0), through every
//! later attention head to the final normalised stream, projected on the correctness direction;
//! per-neuron principal components and their sparse decompositions over a math lexicon;
//! ablations. Runs the whole `metarep_second_order` pipeline into `results/fig11/run/` (fresh
//! each time) and copies its report; checks the decomposition's exactness on a batch.

use std::path::Path;

use metarep_core::config::load_config;
use metarep_model::HookedTransformer;
use metarep_second_order::report::summary;
use metarep_second_order::{decomposition_gap, Pipeline, PipelineConfig, RunFiles, Stage};
use serde::{Deserialize, Serialize};

use crate::device::load_options;
use crate::error::BoxError;
use crate::output::ResultDir;

/// The decomposition must reproduce the logits to this (f32).
const EXACT_TOL: f64 = 1e-4;

/// `configs/fig11.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig11Config {
    /// Model directory (relative to the repository root).
    pub model: String,
    /// Pipeline settings (paths relative to the repository root).
    pub pipeline: PipelineConfig,
}

/// Runs fig11 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig11Config = load_config(config, overrides)?;
    let mut out = ResultDir::start(dir, &cfg, vec![cfg.pipeline.seed])?;
    let (model, files) = run_pipeline(&cfg, dir, &mut out)?;
    // Exactness of the decomposition on the first batch of prompts.
    let b = cfg.pipeline.batch.min(files.reps.len());
    let tokens = files.reps.tokens.narrow(0, 0, b)?;
    let gap = decomposition_gap(&model, &tokens, &files.reps.positions[..b])?;
    let kept = report(&files, &dir.join("run"), gap)?;
    record(&files, kept, gap, &mut out);
    let info = &files.directions.info;
    let separates = info.validation_scores.0 > info.validation_scores.1;
    out.finish(gap < EXACT_TOL && separates && !files.analyses.is_empty())
}

/// Runs the whole pipeline into `dir/run` (fresh) and copies its report, tables and figure.
fn run_pipeline(
    cfg: &Fig11Config,
    dir: &Path,
    out: &mut ResultDir,
) -> Result<(HookedTransformer, RunFiles), BoxError> {
    let root = crate::fixtures::repo_root();
    let model_dir = root.join(&cfg.model);
    let model = HookedTransformer::from_dir(&model_dir, &load_options())
        .map_err(|e| format!("{e} (build it: cargo xtask fixtures arith)"))?;
    out.extra(
        "model_sha256",
        &crate::fixtures::sha256_file(&model_dir.join("model.safetensors"))?,
    )?;
    let mut pcfg = cfg.pipeline.clone();
    pcfg.lexicon = root.join(&pcfg.lexicon);
    pcfg.data = pcfg.data.map(|d| root.join(d));
    let run_dir = dir.join("run");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    let pipeline = Pipeline::open(&model, pcfg, &run_dir)?;
    pipeline.run_to(Stage::Report, false, |line| println!("  {line}"))?;
    let files = RunFiles::load(&run_dir)?;
    out.extra(
        "dataset_sha256",
        &crate::fixtures::sha256_file(&run_dir.join("eval.jsonl"))?,
    )?;
    std::fs::copy(run_dir.join("report.md"), dir.join("fig11_report.md"))?;
    for f in [
        "layers.csv",
        "neurons.csv",
        "ablations.csv",
        "pc1_explained.svg",
    ] {
        std::fs::copy(run_dir.join(f), dir.join(format!("fig11_{f}")))?;
    }
    Ok((model, files))
}

/// Prints the run's summary; returns how many lexicon entries were kept.
fn report(files: &RunFiles, run_dir: &Path, gap: f64) -> Result<usize, BoxError> {
    let s = summary(files);
    let lexicon: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("lexicon.json"))?)?;
    let kept = lexicon["kept"].as_array().map_or(0, Vec::len);
    let skipped = lexicon["skipped"].as_array().map_or(0, Vec::len);
    println!("  lexicon: {kept} entries kept, {skipped} skipped (not representable by the tokenizer, or duplicates)");
    let info = &files.directions.info;
    println!(
        "  {} problems, accuracy {:.3}; direction from {} correct / {} incorrect (validation scores {:.3} vs {:.3}, cosine with logit-diff direction {:.3})",
        files.reps.len(), s.accuracy, info.correct, info.incorrect, info.validation_scores.0,
        info.validation_scores.1, info.cosine_with_logit_diff
    );
    println!(
        "  selected layers {:?}; {} neurons; decomposition vs logits max |gap| {gap:.1e}",
        files.layers.selected,
        files.analyses.len()
    );
    println!(
        "  layer concentration {:.3}, neuron concentration {:.3}; PC1 explains {:.3}, significant vs shuffled prompts on {:.3}, top-k mass {:.3}, text cosine {:.3} (means over neurons)",
        s.layer_concentration, s.neuron_concentration, s.mean_pc1_explained, s.mean_significant_fraction,
        s.mean_top_k_mass, s.mean_text_cosine
    );
    for r in &files.ablations {
        println!(
            "    {:<26} score {:+.3} (Δ {:+.3}, mean |Δ| {:.3}), first-token accuracy {:.3} (Δ {:+.3})",
            r.name, r.score, r.delta_score, r.mean_abs_score_change, r.accuracy, r.delta_accuracy
        );
    }
    Ok(kept)
}

/// The metrics.
fn record(files: &RunFiles, kept: usize, gap: f64, out: &mut ResultDir) {
    let s = summary(files);
    let m = &mut out.metrics;
    m.set_number("accuracy", s.accuracy);
    m.set_number("lexicon_entries_kept", kept as f64);
    m.set_number("decomposition_max_gap", gap);
    m.set_number("layer_concentration", s.layer_concentration);
    m.set_number("neuron_concentration", s.neuron_concentration);
    m.set_number("mean_pc1_explained", s.mean_pc1_explained);
    m.set_number("mean_significant_fraction", s.mean_significant_fraction);
    m.set_number("top_layers_share", s.top_layers_share);
    m.set_number("mean_top_k_mass", s.mean_top_k_mass);
    m.set_number("mean_text_cosine", s.mean_text_cosine);
    for r in &files.ablations {
        let key = r.name.replace([' ', '-'], "_");
        m.set_number(format!("ablation_{key}_delta_score"), r.delta_score);
        m.set_number(format!("ablation_{key}_delta_accuracy"), r.delta_accuracy);
        m.set_number(
            format!("ablation_{key}_mean_abs_score_change"),
            r.mean_abs_score_change,
        );
    }
}

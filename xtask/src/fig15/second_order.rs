//! fig15, second-order part: the nine-stage `metarep_second_order` pipeline on SmolLM2 with the
//! IOI task. IOI because the model does it (the IOI part measures IO over S on ≈ 98% of prompts),
//! its answer is one token (the read-out edits act on the first answer token, which is then the
//! whole answer), and its circuit moves names by attention — the path second-order effects are
//! made of. Neurons are ranked over every MLP layer followed by an attention layer, so where the
//! second-order mass sits is measured, not chosen: the plan expects it in a few
//! middle-to-late layers. The lexicon is the English word list, single tokens only, so the OMP
//! decompositions read as words. Ablations of the top neurons are set against as many random
//! neurons of the same layers.

use std::path::Path;

use metarep_circuits::ioi::{ioi_prompts, single_token_names, NAMES, TEMPLATES};
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::plot::{LinePlot, Series, SeriesStyle};
use metarep_model::HookedTransformer;
use metarep_second_order::data::Problem;
use metarep_second_order::report::{heaviest_layers, layer_mass_shares, summary, TOP_LAYERS};
use metarep_second_order::{decomposition_gap, Pipeline, PipelineConfig, RunFiles, Stage};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::error::BoxError;
use crate::output::ResultDir;

/// The read-out decomposition must reproduce SmolLM2's logits to this (f32, 30 layers).
const EXACT_TOL: f64 = 1e-3;

/// `[second_order]` of `configs/fig15.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondOrderConfig {
    /// IOI prompts per template × order (new draws, not the IOI part's prompts).
    per_cell: usize,
    /// Neurons kept over all layers (stage 4).
    top_neurons: usize,
    /// Prompts per neuron PCA (stage 6).
    pca_k: usize,
    /// OMP atoms (stage 7).
    omp_atoms: usize,
    /// Random-neuron draws of the ablation control (stage 8).
    random_controls: usize,
    /// Prompts per forward pass.
    batch: usize,
}

impl SecondOrderConfig {
    /// Checks the section (keys named `second_order.*`).
    pub fn check(&self) -> Result<(), BoxError> {
        for (key, v) in [
            ("second_order.per_cell", self.per_cell),
            ("second_order.top_neurons", self.top_neurons),
            ("second_order.pca_k", self.pca_k),
            ("second_order.omp_atoms", self.omp_atoms),
            ("second_order.random_controls", self.random_controls),
            ("second_order.batch", self.batch),
        ] {
            checks::at_least_one(key, v)?;
        }
        Ok(())
    }
}

/// Runs the pipeline into `dir/second_order_run` (fresh) on new IOI prompts; records into `out`
/// and returns whether the read-out decomposition reproduced the logits.
pub fn run(
    seed: u64,
    cfg: &SecondOrderConfig,
    model: &HookedTransformer,
    dir: &Path,
    out: &mut ResultDir,
) -> Result<bool, BoxError> {
    let run_dir = dir.join("second_order_run");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    std::fs::create_dir_all(&run_dir)?;
    let data = run_dir.join("problems.jsonl");
    write_problems(seed, cfg, model, &data)?;
    let root = crate::fixtures::repo_root();
    let pcfg = PipelineConfig {
        data: Some(data),
        problems: 0,
        max_digits: 0,
        seed,
        frame_token: None,
        top_layers: model.config().n_layers - 1,
        top_neurons: cfg.top_neurons,
        pca_k: cfg.pca_k,
        omp_atoms: cfg.omp_atoms,
        lexicon: root.join("fixtures/lexicon/english.txt"),
        single_token_lexicon: true,
        random_controls: cfg.random_controls,
        batch: cfg.batch,
        effects_dtype: "f16".into(),
    };
    let pipeline = Pipeline::open(model, pcfg, &run_dir.join("run"))?;
    println!("  second-order pipeline on SmolLM2 (IOI):");
    pipeline.run_to(Stage::Report, false, |line| println!("    {line}"))?;
    let files = RunFiles::load(&pipeline.dir)?;
    let b = cfg.batch.min(files.reps.len());
    let gap = decomposition_gap(
        model,
        &files.reps.tokens.narrow(0, 0, b)?,
        &files.reps.positions[..b],
    )?;
    for f in ["report.md", "layers.csv", "neurons.csv", "ablations.csv"] {
        std::fs::copy(
            pipeline.dir.join(f),
            dir.join(format!("fig15_second_order_{f}")),
        )?;
    }
    out.plot("fig15_second_order_layers", &layer_plot(&files))?;
    report(&files, model.config().n_layers, gap, out);
    Ok(gap < EXACT_TOL)
}

/// Writes the IOI prompts as pipeline problems: the prompt up to the indirect object, which is
/// the answer (one token, with its leading space).
fn write_problems(
    seed: u64,
    cfg: &SecondOrderConfig,
    model: &HookedTransformer,
    path: &Path,
) -> Result<(), BoxError> {
    let tok = model
        .tokenizer()
        .ok_or("the SmolLM2 GGUF carries no tokenizer")?;
    let names = single_token_names(tok, NAMES)?;
    let mut rng = seeded(derive_seed(seed, "fig15/second-order/names"));
    let prompts = ioi_prompts(tok, None, TEMPLATES, &names, cfg.per_cell, &mut rng)?;
    let mut lines = String::new();
    for p in &prompts {
        let problem = Problem {
            prompt: p.text.clone(),
            answer: format!(" {}", tok.decode(&[p.io], false)?.trim()),
        };
        lines.push_str(&serde_json::to_string(&problem)?);
        lines.push('\n');
    }
    std::fs::write(path, lines)?;
    Ok(())
}

/// Each MLP layer's share of the second-order mass, and where the selected neurons sit.
fn layer_plot(files: &RunFiles) -> LinePlot {
    let shares = layer_mass_shares(&files.index);
    let n = files.neurons.selected.len().max(1) as f64;
    let selected: Vec<(f64, f64)> = (0..shares.len())
        .map(|l| {
            let k = files.neurons.selected.iter().filter(|s| s.0 == l).count();
            (l as f64, k as f64 / n)
        })
        .collect();
    LinePlot::new("SmolLM2 on IOI: second-order mass by MLP layer")
        .x_label("MLP layer")
        .y_label("share")
        .series(Series {
            name: "share of all neurons' second-order mass".into(),
            points: shares
                .iter()
                .enumerate()
                .map(|(l, &s)| (l as f64, s))
                .collect(),
            style: SeriesStyle::Solid,
            color: Some(0),
        })
        .series(Series {
            name: "share of the selected neurons".into(),
            points: selected,
            style: SeriesStyle::Dashed,
            color: Some(1),
        })
}

/// Whether the heaviest layers are where the plan expects: together more than twice a uniform
/// share, and each in the middle-to-late part of the model (layer ≥ n_layers / 3).
/// `top`: the heaviest layers and their shares ([`heaviest_layers`]).
fn concentrated_middle_to_late(top: &[(usize, f64)], n_layers: usize) -> bool {
    let with_paths = n_layers.saturating_sub(1).max(1) as f64;
    let share: f64 = top.iter().map(|t| t.1).sum();
    share > 2.0 * top.len() as f64 / with_paths && top.iter().all(|t| 3 * t.0 >= n_layers)
}

/// Prints and records the run's numbers.
fn report(files: &RunFiles, n_layers: usize, gap: f64, out: &mut ResultDir) {
    let s = summary(files);
    let info = &files.directions.info;
    let top = heaviest_layers(&files.index, TOP_LAYERS);
    let expected = concentrated_middle_to_late(&top, n_layers);
    println!(
        "    {} prompts, exact-answer accuracy {:.3}; direction from {} correct / {} incorrect (validation scores {:.3} vs {:.3}); decomposition vs logits max |gap| {gap:.1e}",
        files.reps.len(), s.accuracy, info.correct, info.incorrect, info.validation_scores.0,
        info.validation_scores.1
    );
    println!(
        "    heaviest layers {} carry {:.3} of the second-order mass (uniform: {:.3}); middle-to-late concentration as the plan expects: {expected}",
        top.iter().map(|(l, v)| format!("L{l} {v:.3}")).collect::<Vec<_>>().join(", "),
        s.top_layers_share,
        TOP_LAYERS as f64 / (n_layers - 1) as f64
    );
    let above_chance = files
        .analyses
        .iter()
        .filter(|a| a.significant_fraction > 0.05)
        .count();
    println!(
        "    per neuron: PC1 explains {:.3}, significant vs shuffled prompts on {:.3} of prompts ({above_chance} of {} neurons above the null's 0.05), OMP word cosine {:.3}",
        s.mean_pc1_explained, s.mean_significant_fraction, files.analyses.len(), s.mean_text_cosine
    );
    for r in &files.ablations {
        println!(
            "      {:<26} accuracy {:.3} (Δ {:+.3}{}), score Δ {:+.3}",
            r.name,
            r.accuracy,
            r.delta_accuracy,
            if r.draws > 1 {
                let draws: Vec<String> = r
                    .per_draw_delta_accuracy
                    .iter()
                    .map(|d| format!("{d:+.3}"))
                    .collect();
                format!(
                    " ± {:.3} sd over {} draws: {}",
                    r.delta_accuracy_sd,
                    r.draws,
                    draws.join(" ")
                )
            } else {
                String::new()
            },
            r.delta_score
        );
    }
    let mut best: Vec<_> = files.analyses.iter().collect();
    best.sort_by(|a, b| b.pc.explained.total_cmp(&a.pc.explained));
    for a in best.iter().take(5) {
        let words: Vec<String> = a
            .text
            .iter()
            .take(6)
            .map(|(w, c)| format!("{w} ({c:+.2})"))
            .collect();
        println!(
            "      L{}N{}: PC1 {:.2}, significant {:.2}, words (cosine {:.2}): {}",
            a.layer,
            a.neuron,
            a.pc.explained,
            a.significant_fraction,
            a.text_cosine,
            words.join(", ")
        );
    }
    let m = &mut out.metrics;
    m.set_number("second_order_accuracy", s.accuracy);
    m.set_number("second_order_decomposition_max_gap", gap);
    m.set_number("second_order_top_layers_share", s.top_layers_share);
    for (rank, (l, v)) in top.iter().enumerate() {
        m.set_number(format!("second_order_heaviest_layer_{rank}"), *l as f64);
        m.set_number(format!("second_order_heaviest_layer_{rank}_share"), *v);
    }
    m.set_bool("second_order_middle_to_late", expected);
    m.set_number("second_order_mean_pc1_explained", s.mean_pc1_explained);
    m.set_number(
        "second_order_mean_significant_fraction",
        s.mean_significant_fraction,
    );
    m.set_number("second_order_neurons_above_null", above_chance as f64);
    m.set_number("second_order_mean_text_cosine", s.mean_text_cosine);
    for r in &files.ablations {
        let key = r.name.replace([' ', '-'], "_");
        m.set_number(
            format!("second_order_ablation_{key}_delta_accuracy"),
            r.delta_accuracy,
        );
        m.set_number(
            format!("second_order_ablation_{key}_delta_score"),
            r.delta_score,
        );
    }
}

//! Stage 9, the report of a finished run: `report.md` (summary, layer selection, layer
//! concentration, ablations, the top neurons with their lexicon decompositions), the tables
//! as CSV (`layers.csv`, `neurons.csv`, `ablations.csv`) and `pc1_explained.svg` (variance
//! explained by PC1 and the top-k share of effect mass per neuron, best first).

use std::fmt::Write as _;
use std::path::Path;

use metarep_eval::plot::{write_checked, LinePlot, Series, SeriesStyle};
use metarep_eval::table::{Cell, Table};

use crate::effect_chunks::EffectIndex;
use crate::error::{Error, Result};
use crate::run_files::RunFiles;

/// Summary numbers of a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Exact-answer accuracy.
    pub accuracy: f64,
    /// Share of all layers' second-order mass in the selected layers.
    pub layer_concentration: f64,
    /// Share of the selected layers' mass carried by the selected neurons.
    pub neuron_concentration: f64,
    /// Mean over neurons of the variance explained by PC1.
    pub mean_pc1_explained: f64,
    /// Mean over neurons of the fraction of prompts on which its effect is significant against
    /// the shuffled-prompt null (≈ 0.05 for effects that ignore the prompt's structure).
    pub mean_significant_fraction: f64,
    /// Share of all layers' second-order mass in the [`TOP_LAYERS`] heaviest layers.
    pub top_layers_share: f64,
    /// Mean over neurons of the top-k share of effect mass.
    pub mean_top_k_mass: f64,
    /// Mean over neurons of the OMP reconstruction cosine.
    pub mean_text_cosine: f64,
}

/// How many of the heaviest layers [`Summary::top_layers_share`] adds up.
pub const TOP_LAYERS: usize = 3;

/// Each MLP layer's share of the second-order mass of all layers (`[n_layers]`, zeros when
/// there is none).
pub fn layer_mass_shares(index: &EffectIndex) -> Vec<f64> {
    let total: f64 = index.mass_per_layer.iter().sum();
    index
        .mass_per_layer
        .iter()
        .map(|&m| if total > 0.0 { m / total } else { 0.0 })
        .collect()
}

/// The `k` layers with the largest second-order mass and their shares, heaviest first.
pub fn heaviest_layers(index: &EffectIndex, k: usize) -> Vec<(usize, f64)> {
    let mut shares: Vec<(usize, f64)> = layer_mass_shares(index).into_iter().enumerate().collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares.truncate(k);
    shares
}

/// Summarises `run`.
pub fn summary(run: &RunFiles) -> Summary {
    let total: f64 = run.index.mass_per_layer.iter().sum();
    let selected: f64 = run
        .layers
        .selected
        .iter()
        .map(|&l| run.index.mass_per_layer.get(l).copied().unwrap_or(0.0))
        .sum();
    let stored: f64 = run.index.selected_mass_per_layer.iter().sum();
    let mean = |f: &dyn Fn(&crate::analysis::NeuronAnalysis) -> f64| {
        run.analyses.iter().map(f).sum::<f64>() / run.analyses.len().max(1) as f64
    };
    Summary {
        accuracy: run.reps.accuracy(),
        layer_concentration: if total > 0.0 { selected / total } else { 0.0 },
        neuron_concentration: if selected > 0.0 {
            stored / selected
        } else {
            0.0
        },
        mean_pc1_explained: mean(&|a| a.pc.explained),
        mean_significant_fraction: mean(&|a| a.significant_fraction),
        top_layers_share: heaviest_layers(&run.index, TOP_LAYERS)
            .iter()
            .map(|&(_, share)| share)
            .sum(),
        mean_top_k_mass: mean(&|a| a.top_k_mass),
        mean_text_cosine: mean(&|a| a.text_cosine),
    }
}

fn write_table(dir: &Path, name: &str, t: &Table) -> Result<()> {
    t.write_csv(dir.join(format!("{name}.csv")))
        .map_err(|e| Error::Invalid(format!("writing {name}.csv: {e}")))
}

/// Writes the report files of the run in `dir`.
pub fn write_report(dir: &Path) -> Result<()> {
    let run = RunFiles::load(dir)?;
    let s = summary(&run);
    let table_err = |e: metarep_eval::Error| Error::Invalid(format!("report table: {e}"));
    let mut layers = Table::new(vec![
        "layer",
        "Δ correctness score (mean-ablated)",
        "later attention",
        "selected",
        "second-order mass share",
    ]);
    let shares = layer_mass_shares(&run.index);
    for e in &run.layers.layers {
        layers
            .push_row(vec![
                Cell::Int(e.layer as i64),
                Cell::Num(e.delta_score),
                Cell::Bool(e.has_later_attention),
                Cell::Bool(run.layers.selected.contains(&e.layer)),
                Cell::Num(shares.get(e.layer).copied().unwrap_or(0.0)),
            ])
            .map_err(table_err)?;
    }
    let mut neurons = Table::new(vec![
        "layer",
        "neuron",
        "combined rank",
        "mean |act|",
        "variance",
        "mean |direct|",
        "PC1 explained",
        "significant (vs shuffled)",
        "top-k mass",
        "text cosine",
        "top lexicon entries",
    ]);
    for a in &run.analyses {
        let stats = run
            .neurons
            .ranked
            .iter()
            .find(|s| s.layer == a.layer && s.neuron == a.neuron);
        let top: Vec<String> = a
            .text
            .iter()
            .take(5)
            .map(|(w, c)| format!("{w} ({c:+.2})"))
            .collect();
        neurons
            .push_row(vec![
                Cell::Int(a.layer as i64),
                Cell::Int(a.neuron as i64),
                Cell::Num(stats.map_or(f64::NAN, |s| s.combined_rank)),
                Cell::Num(stats.map_or(f64::NAN, |s| s.mean_abs)),
                Cell::Num(stats.map_or(f64::NAN, |s| s.variance)),
                Cell::Num(stats.map_or(f64::NAN, |s| s.direct)),
                Cell::Num(a.pc.explained),
                Cell::Num(a.significant_fraction),
                Cell::Num(a.top_k_mass),
                Cell::Num(a.text_cosine),
                Cell::from(top.join("; ")),
            ])
            .map_err(table_err)?;
    }
    let mut abl = Table::new(vec![
        "ablation",
        "score",
        "Δ score",
        "mean |Δ score|",
        "first-token accuracy",
        "Δ accuracy",
    ]);
    for r in &run.ablations {
        abl.push_row(vec![
            Cell::from(r.name.clone()),
            Cell::Num(r.score),
            Cell::Num(r.delta_score),
            Cell::Num(r.mean_abs_score_change),
            Cell::Num(r.accuracy),
            Cell::Num(r.delta_accuracy),
        ])
        .map_err(table_err)?;
    }
    write_table(dir, "layers", &layers)?;
    write_table(dir, "neurons", &neurons)?;
    write_table(dir, "ablations", &abl)?;

    let mut order: Vec<usize> = (0..run.analyses.len()).collect();
    order.sort_by(|&a, &b| {
        run.analyses[b]
            .pc
            .explained
            .total_cmp(&run.analyses[a].pc.explained)
    });
    let series = |name: &str, f: &dyn Fn(usize) -> f64, style, color| Series {
        name: name.into(),
        points: order
            .iter()
            .enumerate()
            .map(|(r, &i)| (r as f64, f(i)))
            .collect(),
        style,
        color: Some(color),
    };
    let plot = LinePlot::new("second-order effects per neuron (sorted by PC1 share)")
        .x_label("neuron (rank)")
        .y_label("fraction")
        .series(series(
            "PC1 variance explained (top-k)",
            &|i| run.analyses[i].pc.explained,
            SeriesStyle::Solid,
            0,
        ))
        .series(series(
            "top-k share of effect mass",
            &|i| run.analyses[i].top_k_mass,
            SeriesStyle::Dashed,
            1,
        ))
        .series(series(
            "OMP text cosine",
            &|i| run.analyses[i].text_cosine,
            SeriesStyle::Dashed,
            2,
        ));
    write_checked(&plot, dir.join("pc1_explained.svg"))
        .map_err(|e| Error::Invalid(format!("writing pc1_explained.svg: {e}")))?;

    let info = &run.directions.info;
    let mut md = String::new();
    let _ = writeln!(md, "# Second-order neuron effects\n");
    let _ = writeln!(
        md,
        "{} problems, exact-answer accuracy {:.3}; correctness direction from {} correct and {} incorrect training problems (cosine with the logit-difference direction {:.3}; validation scores correct {:.3} vs incorrect {:.3}).\n",
        run.reps.len(), s.accuracy, info.correct, info.incorrect, info.cosine_with_logit_diff,
        info.validation_scores.0, info.validation_scores.1
    );
    let _ = writeln!(
        md,
        "Selected layers {:?}; layer concentration {:.3} (share of all second-order mass in them), selected neurons carry {:.3} of their layers' mass; the {TOP_LAYERS} heaviest layers {} carry {:.3} of all layers' mass. Per neuron (means): PC1 explains {:.3} of the top-k variance, significant against the shuffled-prompt null on {:.3} of prompts (≈ 0.05 when the effect ignores the prompt's structure), top-k share of effect mass {:.3}, OMP text cosine {:.3}. Later MLPs are not on the second-order path.\n",
        run.layers.selected, s.layer_concentration, s.neuron_concentration,
        heaviest_layers(&run.index, TOP_LAYERS)
            .iter()
            .map(|(l, share)| format!("L{l} ({share:.3})"))
            .collect::<Vec<_>>()
            .join(", "),
        s.top_layers_share, s.mean_pc1_explained,
        s.mean_significant_fraction, s.mean_top_k_mass, s.mean_text_cosine
    );
    let _ = writeln!(md, "## Layers\n\n{}", layers.to_markdown());
    let _ = writeln!(md, "## Ablations\n\n{}", abl.to_markdown());
    let mut top = Table::new(vec![
        "layer",
        "neuron",
        "PC1 explained",
        "text cosine",
        "top lexicon entries",
    ]);
    for &i in order.iter().take(15) {
        let a = &run.analyses[i];
        let words: Vec<String> = a
            .text
            .iter()
            .take(6)
            .map(|(w, c)| format!("{w} ({c:+.2})"))
            .collect();
        top.push_row(vec![
            Cell::Int(a.layer as i64),
            Cell::Int(a.neuron as i64),
            Cell::Num(a.pc.explained),
            Cell::Num(a.text_cosine),
            Cell::from(words.join("; ")),
        ])
        .map_err(table_err)?;
    }
    let _ = writeln!(md, "## Top neurons by PC1 share\n\n{}", top.to_markdown());
    metarep_core::fsutil::atomic_write(&dir.join("report.md"), md.as_bytes())?;
    Ok(())
}

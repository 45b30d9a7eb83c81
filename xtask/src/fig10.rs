//! fig10: SAEs on a language model whose generating latents are known. A small GPT-2-style
//! model is trained (metarep-model's trainer) on the agreement grammar of
//! `metarep_eval::tasks::grammar`; `hook_resid_post` of a middle layer is captured to an
//! activation store (metarep-capture); TopK SAEs over a sweep of expansions and k train from
//! the store; each is scored by explained variance, L0, CE loss recovered when spliced in, and
//! by how well its best latent detects each grammar latent (AUROC), next to random directions.

use std::path::Path;

use candle_core::{DType, Tensor};
use metarep_capture::{capture, store_dir, CaptureSpec, TokenDataset};
use metarep_core::config::load_config;
use metarep_core::rng::{derive_seed, seeded};
use metarep_core::train::RunControl;
use metarep_eval::plot::{write_checked, LinePlot, Series, SeriesStyle};
use metarep_eval::table::{Cell, Table};
use metarep_eval::tasks::grammar::{GrammarSpec, LATENTS};
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input};
use metarep_sae::baselines::{null_sae, random_directions};
use metarep_sae::metrics::VarianceSums;
use metarep_sae::splice::{splice_scores, SpliceScores};
use metarep_sae::{train, Architecture, InputNorm, Sae, SaeSpec, StoreSource};
use metarep_testbeds::grammar_lm::{
    agreement, tokens_tensor, train_lm, Agreement, LatentQuestions, LmSpec,
};
use serde::{Deserialize, Serialize};

use crate::device::{device, load_options};
use crate::error::BoxError;
use crate::output::ResultDir;

/// Agreement the language model must reach.
const AGREEMENT_TARGET: f64 = 0.9;
/// Explained variance every SAE must reach (the fig9 target).
const EV_TARGET: f64 = 0.95;

/// The SAE sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// `d_sae / d_model` values.
    pub expansions: Vec<usize>,
    /// TopK k values.
    pub ks: Vec<usize>,
    /// SAE training settings (shared).
    pub train: metarep_sae::SaeTrainConfig,
}

/// `configs/fig10.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig10Config {
    /// Seed of the corpus, the model and the SAEs.
    pub seed: u64,
    /// The grammar.
    pub grammar: GrammarSpec,
    /// The language model.
    pub lm: LmSpec,
    /// Layer whose `hook_resid_post` is captured.
    pub layer: usize,
    /// Sequences captured for SAE training.
    pub capture_sequences: usize,
    /// Held-out sequences for every score.
    pub eval_sequences: usize,
    /// The sweep.
    pub sweep: Sweep,
}

/// Directory of the checked-in model.
pub fn fixture_dir() -> std::path::PathBuf {
    crate::fixtures::repo_root().join("fixtures/grammar-lm")
}

/// One trained SAE's scores.
#[derive(Debug, Clone, Serialize)]
struct Row {
    expansion: usize,
    k: usize,
    explained_variance: f64,
    l0: f64,
    dead_fraction: f64,
    ce_recovered_zero: f64,
    ce_recovered_mean: f64,
    kl: f64,
    /// Best latent's AUROC per grammar latent.
    auroc: Vec<f64>,
    train_seconds: f64,
}

/// Scores of one SAE on the held-out tokens: explained variance, L0, the splice scores and
/// the best latent's AUROC per grammar latent.
fn score(sae: &Sae, s: &Setup) -> Result<(f64, f64, SpliceScores, Vec<f64>), BoxError> {
    let latents = sae.encode(&s.x)?;
    let mut sums = VarianceSums::default();
    sums.add(&s.x, &sae.reconstruct(&s.x)?)?;
    let (l0, _) = latents.l0_l1()?;
    let splice = splice_scores(&s.model, sae, s.hook, std::slice::from_ref(&s.eval_tokens))?;
    let auroc = s
        .questions
        .best(&latents.to_dense(sae.config.d_sae)?, false)?;
    Ok((sums.explained_variance(), l0, splice, auroc))
}

/// What the sections share: the model, the hook and the held-out evaluation set.
struct Setup<'a> {
    cfg: &'a Fig10Config,
    model: HookedTransformer,
    hook: HookPoint,
    /// Held-out token ids `[sequences, n_ctx]`.
    eval_tokens: Tensor,
    /// Their activations at the hook `[tokens, d_model]`.
    x: Tensor,
    questions: LatentQuestions,
}

/// Runs fig10 and writes `dir`.
pub fn run(config: &Path, overrides: &[String], dir: &Path) -> Result<bool, BoxError> {
    let cfg: Fig10Config = load_config(config, overrides)?;
    cfg.grammar.validate()?;
    let mut out = ResultDir::start(dir, &cfg, vec![cfg.seed])?;
    let model = language_model(&cfg, config)?;
    let mut rng = seeded(derive_seed(cfg.seed, "fig10/eval"));
    let eval = cfg
        .grammar
        .samples(&mut rng, cfg.eval_sequences, cfg.lm.n_ctx)?;
    let agree = agreement(&model, &cfg.grammar, &eval)?;
    println!(
        "  agreement: {:.3} of main verbs, {:.3} with an attractor ({})",
        agree.all, agree.attractor, agree.attractor_cases
    );
    let hook = HookPoint::ResidPost(cfg.layer);
    let acts = capture_store(&cfg, &model, hook, dir)?;
    let eval_tokens = tokens_tensor(&eval)?;
    let (_, cache) = model.run_with_cache(
        Input::new(eval_tokens.clone()),
        HookFilter::patterns(&[hook.name()]),
    )?;
    let x = cache.get(hook)?.reshape(((), cfg.lm.d_model))?;
    let setup = Setup {
        cfg: &cfg,
        model,
        hook,
        eval_tokens,
        x,
        questions: LatentQuestions::new(&eval),
    };
    let rows = sae_sweep(&setup, &acts)?;
    let (baselines, random) = baselines(&setup, &mut out)?;
    out.table("fig10", &table(&rows, &baselines)?)?;
    plots(&rows, dir)?;
    let widest = setup
        .cfg
        .sweep
        .expansions
        .iter()
        .max()
        .copied()
        .unwrap_or(1);
    record(&rows, &random, widest, agree, &mut out);
    let pass = agree.all >= AGREEMENT_TARGET
        && !rows.is_empty()
        && rows.iter().all(|r| r.explained_variance > EV_TARGET);
    out.finish(pass)
}

/// The checked-in fixture (checked against the `[lm]` settings) or a freshly trained model.
fn language_model(cfg: &Fig10Config, config: &Path) -> Result<HookedTransformer, BoxError> {
    if !cfg.lm.fixture {
        let (model, report) = train_lm(&cfg.grammar, &cfg.lm, cfg.seed)?;
        println!(
            "  language model: {} steps, loss {:.3} → {:.3} ({:.0} s)",
            report.steps, report.first_loss, report.final_loss, report.seconds
        );
        return Ok(model);
    }
    let m = HookedTransformer::from_dir(&fixture_dir(), &load_options())?;
    if m.config() != &cfg.lm.model_config(&cfg.grammar) {
        return Err(format!(
            "{} does not match the [lm] settings of {} (rebuild it: cargo xtask fixtures grammar-lm)",
            fixture_dir().display(),
            config.display()
        )
        .into());
    }
    println!("  language model: {}", fixture_dir().display());
    Ok(m)
}

/// Captures the SAE training activations at `hook` into a fresh store under `dir/acts`;
/// returns the store directory.
fn capture_store(
    cfg: &Fig10Config,
    model: &HookedTransformer,
    hook: HookPoint,
    dir: &Path,
) -> Result<std::path::PathBuf, BoxError> {
    let mut rng = seeded(derive_seed(cfg.seed, "fig10/capture"));
    let corpus = cfg
        .grammar
        .samples(&mut rng, cfg.capture_sequences, cfg.lm.n_ctx)?;
    let ids = dir.join("corpus.ids");
    let lines: Vec<String> = corpus
        .iter()
        .map(|s| {
            let ids: Vec<String> = s.tokens.iter().map(u32::to_string).collect();
            ids.join(" ")
        })
        .collect();
    std::fs::write(&ids, lines.join("\n"))?;
    let data = TokenDataset::load(&ids, None, cfg.lm.n_ctx)?;
    let acts = dir.join("acts");
    // A store left by an earlier run (maybe of another config) is not reused.
    if acts.exists() {
        std::fs::remove_dir_all(&acts)?;
    }
    let spec = CaptureSpec {
        hooks: vec![hook],
        dtype: "f32".into(),
        shard_tokens: 1 << 16,
        batch_contexts: 64,
        model_name: "grammar-lm".into(),
        max_contexts: None,
    };
    let report = capture(model, &data, &acts, &spec, |_, _| {})?;
    println!(
        "  captured {} tokens of {} in {:.1} s",
        report.tokens_total,
        hook.name(),
        report.seconds
    );
    Ok(store_dir(&acts, hook))
}

/// Trains and scores one TopK SAE per (expansion, k) from the store.
fn sae_sweep(s: &Setup, store: &Path) -> Result<Vec<Row>, BoxError> {
    let cfg = s.cfg;
    println!(
        "   exp  k    EV      L0     CE rec (zero, mean)  KL      AUROC per latent ({})",
        LATENTS.join(", ")
    );
    let mut rows = Vec::new();
    for &expansion in &cfg.sweep.expansions {
        for &k in &cfg.sweep.ks {
            let sae_cfg = topk_spec(expansion, k).config(cfg.lm.d_model)?;
            let seed = derive_seed(cfg.seed, &format!("fig10/sae/{expansion}/{k}"));
            let mut sae = Sae::new(sae_cfg, seed, DType::F32, &device())?;
            let mut source = StoreSource::open(store, cfg.seed, 1 << 16)?;
            let tr = train(
                &mut sae,
                &mut source,
                &cfg.sweep.train,
                RunControl::default(),
            )?;
            let (explained_variance, l0, splice, auroc) = score(&sae, s)?;
            let row = Row {
                expansion,
                k,
                explained_variance,
                l0,
                dead_fraction: tr.dead_fraction,
                ce_recovered_zero: splice.recovered_zero,
                ce_recovered_mean: splice.recovered_mean,
                kl: splice.kl_sae,
                auroc,
                train_seconds: tr.seconds,
            };
            println!(
                "   {:<4} {:<4} {:.4}  {:<6.2} {:.3}, {:.3}        {:.4}  {}  ({:.0} s)",
                expansion,
                k,
                row.explained_variance,
                row.l0,
                row.ce_recovered_zero,
                row.ce_recovered_mean,
                row.kl,
                fmt_aurocs(&row.auroc),
                row.train_seconds
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A TopK SAE spec of `expansion` × d_model latents.
fn topk_spec(expansion: usize, k: usize) -> SaeSpec {
    SaeSpec {
        architecture: Architecture::TopK { k },
        expansion,
        pre_encoder_bias: true,
        input_norm: InputNorm::default(),
        decoder_norm: None,
    }
}

/// Baselines: a null SAE as wide as the widest (first k), random directions as many as its
/// latents, and the residual stream's own coordinates (either sign). Returns the AUROC rows
/// and the random directions' AUROCs.
#[allow(clippy::type_complexity)]
fn baselines(
    s: &Setup,
    out: &mut ResultDir,
) -> Result<(Vec<(String, Vec<f64>)>, Vec<f64>), BoxError> {
    let (cfg, d) = (s.cfg, s.cfg.lm.d_model);
    let widest = cfg.sweep.expansions.iter().max().copied().unwrap_or(1) * d;
    let k0 = cfg.sweep.ks.first().copied().unwrap_or(1);
    let null_cfg = topk_spec(widest / d, k0).config(d)?;
    let null = null_sae(null_cfg, &s.x.mean(0)?, cfg.seed)?;
    let (null_ev, null_l0, null_splice, null_auroc) = score(&null, s)?;
    println!(
        "   null SAE ({widest}, k = {k0}): EV {null_ev:.4}, L0 {null_l0:.2}, CE recovered {:.3}, {:.3} (CE clean {:.3}, zero {:.3}, mean {:.3}, SAE {:.3}); AUROC {}",
        null_splice.recovered_zero,
        null_splice.recovered_mean,
        null_splice.ce_clean,
        null_splice.ce_zero,
        null_splice.ce_mean,
        null_splice.ce_sae,
        fmt_aurocs(&null_auroc)
    );
    out.metrics.set_number("null_explained_variance", null_ev);
    out.metrics
        .set_number("null_ce_recovered_zero", null_splice.recovered_zero);
    let dirs = random_directions(widest, d, cfg.seed)?;
    let random = s
        .questions
        .best(&s.x.matmul(&dirs.to_device(s.x.device())?.t()?)?, true)?;
    println!(
        "   random directions ({widest}, either sign): {}",
        fmt_aurocs(&random)
    );
    let basis = s.questions.best(&s.x, true)?;
    println!(
        "   residual coordinates ({d}, either sign): {}",
        fmt_aurocs(&basis)
    );
    let rows = vec![
        (format!("null SAE ({widest}, k = {k0})"), null_auroc),
        (format!("random directions ({widest}, ±)"), random.clone()),
        (format!("residual coordinates ({d}, ±)"), basis),
    ];
    Ok((rows, random))
}

/// The metrics (`widest`: the largest expansion).
fn record(rows: &[Row], random: &[f64], widest: usize, agree: Agreement, out: &mut ResultDir) {
    out.metrics.set_number("agreement", agree.all);
    out.metrics
        .set_number("agreement_attractor", agree.attractor);
    for r in rows {
        let key = format!("x{}_k{}", r.expansion, r.k);
        out.metrics
            .set_number(format!("{key}_explained_variance"), r.explained_variance);
        out.metrics.set_number(format!("{key}_l0"), r.l0);
        out.metrics
            .set_number(format!("{key}_ce_recovered_zero"), r.ce_recovered_zero);
        for (name, a) in LATENTS.iter().zip(&r.auroc) {
            out.metrics.set_number(format!("{key}_auroc_{name}"), *a);
        }
    }
    for (name, a) in LATENTS.iter().zip(random) {
        out.metrics.set_number(format!("random_auroc_{name}"), *a);
    }
    // Reported, not checked: whether, for every grammar latent, some widest SAE's latent
    // detects it better than every random direction (on this model it does not; see
    // docs/results.md). Checked: the model learned agreement and every SAE reconstructs.
    let widest_rows: Vec<&Row> = rows.iter().filter(|r| r.expansion == widest).collect();
    let beats_random =
        (0..LATENTS.len()).all(|j| widest_rows.iter().any(|r| r.auroc[j] > random[j]));
    out.metrics
        .set_bool("sae_beats_random_directions", beats_random);
}

fn fmt_aurocs(a: &[f64]) -> String {
    a.iter()
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn table(rows: &[Row], baselines: &[(String, Vec<f64>)]) -> Result<Table, BoxError> {
    let mut headers = vec![
        "expansion".to_string(),
        "k".into(),
        "explained variance".into(),
        "L0".into(),
        "dead fraction".into(),
        "CE recovered (zero)".into(),
        "CE recovered (mean)".into(),
        "KL".into(),
    ];
    headers.extend(LATENTS.iter().map(|l| format!("AUROC {l}")));
    headers.push("train s".into());
    let mut t = Table::new(headers);
    for r in rows {
        let mut cells = vec![
            Cell::Int(r.expansion as i64),
            Cell::Int(r.k as i64),
            Cell::Num(r.explained_variance),
            Cell::Num(r.l0),
            Cell::Num(r.dead_fraction),
            Cell::Num(r.ce_recovered_zero),
            Cell::Num(r.ce_recovered_mean),
            Cell::Num(r.kl),
        ];
        cells.extend(r.auroc.iter().map(|a| Cell::Num(*a)));
        cells.push(Cell::Num(r.train_seconds));
        t.push_row(cells)?;
    }
    for (name, auroc) in baselines {
        let mut cells = vec![Cell::from(name.clone())];
        cells.extend((0..7).map(|_| Cell::from("")));
        cells.extend(auroc.iter().map(|a| Cell::Num(*a)));
        cells.push(Cell::from(""));
        t.push_row(cells)?;
    }
    Ok(t)
}

/// L0 against explained variance and against CE loss recovered, one series per expansion.
fn plots(rows: &[Row], dir: &Path) -> Result<(), BoxError> {
    let mut expansions: Vec<usize> = rows.iter().map(|r| r.expansion).collect();
    expansions.dedup();
    for (name, y_label, y) in [
        (
            "fig10_ev",
            "explained variance",
            (|r: &Row| r.explained_variance) as fn(&Row) -> f64,
        ),
        (
            "fig10_ce",
            "CE loss recovered (vs zero ablation)",
            |r: &Row| r.ce_recovered_zero,
        ),
    ] {
        let mut p = LinePlot::new(format!(
            "fig10: TopK SAEs on the grammar LM — L0 vs {y_label}"
        ))
        .x_label("L0 (active latents per token)")
        .y_label(y_label)
        .log_x(true);
        for (i, &e) in expansions.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.expansion == e)
                .map(|r| (r.l0.max(0.5), y(r)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            p = p.series(Series {
                name: format!("{e}× latents"),
                points,
                style: SeriesStyle::Solid,
                color: Some(i),
            });
        }
        write_checked(&p, dir.join(format!("{name}.svg")))?;
    }
    Ok(())
}

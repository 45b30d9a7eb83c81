//! The fig9 experiment: for every system × mixing, generate trajectories, split them into
//! train and test trajectories, train each configured SAE on the train observations and report
//! on the test observations: explained variance, L0, dead latents, direction recovery (MMCS),
//! activation recovery (matched F1) and causal edits — next to an untrained null SAE of the
//! same shape and random directions.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use metarep_core::rng::derive_seed;
use serde::{Deserialize, Serialize};

use crate::baselines::{null_sae, random_directions};
use crate::config::SaeSpec;
use crate::error::{Error, Result};
use crate::ground_truth::mixing::{Mixing, MixingSpec};
use crate::ground_truth::recovery::{
    causal_edits, matched_f1, max_cosines, mean, CausalConfig, Readout,
};
use crate::ground_truth::systems::SystemSpec;
use crate::metrics::{evaluate, EvalConfig};
use crate::sae::Sae;
use crate::source::TensorSource;
use metarep_core::train::RunControl;

use crate::train::{train, SaeTrainConfig};

/// One SAE configuration to train on every dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedSae {
    /// Label in tables.
    pub name: String,
    /// Architecture and width.
    pub sae: SaeSpec,
    /// Training settings.
    pub train: SaeTrainConfig,
}

/// The whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroundTruthConfig {
    /// Seed of the systems, mixings and SAEs.
    pub seed: u64,
    /// Trajectories per system.
    pub trajectories: usize,
    /// Fraction of trajectories held out for evaluation.
    pub test_fraction: f64,
    /// Systems.
    pub systems: Vec<SystemSpec>,
    /// Mixings (each applied to every system).
    pub mixings: Vec<MixingSpec>,
    /// SAEs (each trained on every system × mixing).
    pub saes: Vec<NamedSae>,
    /// Causal test settings.
    #[serde(default)]
    pub causal: CausalConfig,
}

/// Scores of one SAE on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Explained variance on the test observations.
    pub explained_variance: f64,
    /// Mean active latents per row.
    pub l0: f64,
    /// Fraction of latents that never fire on the test set.
    pub dead_fraction: f64,
    /// Mean max cosine between true feature directions and decoder rows.
    pub mmcs: f64,
    /// Fraction of features whose best decoder cosine is ≥ 0.9.
    pub recovered_09: f64,
    /// Mean matched-latent F1.
    pub f1: f64,
    /// Causal edits passing.
    pub causal_pass: f64,
    /// Mean sign-corrected change of the edited feature.
    pub causal_on_target: f64,
    /// Mean largest change of any other feature.
    pub causal_off_target: f64,
}

/// One row of the results: a system, a mixing, an SAE, its scores and the baselines'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruthRow {
    /// `bfs`, `dfs` or `stack`.
    pub system: String,
    /// Non-linear strength of the mixing.
    pub nonlinear: f64,
    /// SAE label.
    pub sae: String,
    /// True features.
    pub features: usize,
    /// Train and test rows.
    pub rows: (usize, usize),
    /// Trained SAE.
    pub trained: Scores,
    /// Untrained null SAE of the same shape.
    pub null: Scores,
    /// MMCS of as many random directions as the SAE has latents.
    pub random_mmcs: f64,
    /// Training wall time (s).
    pub train_seconds: f64,
}

impl GroundTruthRow {
    /// `system/γ/sae`, a directory-safe id.
    pub fn id(&self) -> String {
        format!("{}_nl{}_{}", self.system, self.nonlinear, self.sae)
    }
}

/// Runs every system × mixing × SAE, the SAEs and their scoring on `device` (the systems and
/// mixings are drawn on the CPU); training logs go to `out/<id>/metrics.jsonl` when `out` is
/// given. `progress` is called with a line per finished row.
pub fn run(
    cfg: &GroundTruthConfig,
    device: &Device,
    out: Option<&Path>,
    mut progress: impl FnMut(&GroundTruthRow),
) -> Result<Vec<GroundTruthRow>> {
    if !(0.0 < cfg.test_fraction && cfg.test_fraction < 1.0) || cfg.trajectories < 2 {
        return Err(Error::Config(
            "need ≥ 2 trajectories and 0 < test_fraction < 1".into(),
        ));
    }
    let mut rows = Vec::new();
    for system in &cfg.systems {
        let traj = system.generate(cfg.trajectories, derive_seed(cfg.seed, system.name()))?;
        let f = traj.n_features();
        let n_test = ((cfg.trajectories as f64 * cfg.test_fraction).round() as usize)
            .clamp(1, cfg.trajectories - 1);
        let split = traj.trajectories[cfg.trajectories - n_test].start;
        let (train_states, test_states) = traj.states.split_at(split * f);
        for mixing in &cfg.mixings {
            let mix = Mixing::new(
                *mixing,
                f,
                derive_seed(
                    cfg.seed,
                    &format!("{}/mixing/{}", system.name(), mixing.nonlinear),
                ),
            )?;
            let obs = mix
                .observe(
                    &traj,
                    derive_seed(
                        cfg.seed,
                        &format!("{}/noise/{}", system.name(), mixing.nonlinear),
                    ),
                )?
                .to_device(device)?;
            let (train_obs, test_obs) = (
                obs.narrow(0, 0, split)?,
                obs.narrow(0, split, traj.rows() - split)?,
            );
            let truth = mix.directions()?.to_device(device)?;
            let readout = Readout::fit(&train_obs, train_states, f)?;
            for named in &cfg.saes {
                let config = named.sae.config(mixing.d_obs)?;
                let seed = derive_seed(
                    cfg.seed,
                    &format!("{}/{}/{}", system.name(), mixing.nonlinear, named.name),
                );
                let mut sae = Sae::new(config, seed, DType::F32, device)?;
                let mut source = TensorSource::new(train_obs.clone(), seed)?;
                let mut row = GroundTruthRow {
                    system: system.name().to_string(),
                    nonlinear: mixing.nonlinear,
                    sae: named.name.clone(),
                    features: f,
                    rows: (split, traj.rows() - split),
                    trained: empty_scores(),
                    null: empty_scores(),
                    random_mmcs: f64::NAN,
                    train_seconds: 0.0,
                };
                let dir = out.map(|o| o.join(row.id()));
                let report = train(
                    &mut sae,
                    &mut source,
                    &named.train,
                    RunControl {
                        out: dir.as_deref(),
                        ..RunControl::default()
                    },
                )?;
                row.train_seconds = report.seconds;
                row.trained = score(&sae, &test_obs, test_states, &truth, &readout, &cfg.causal)?;
                let null = null_sae(config, &train_obs.mean(0)?, seed)?;
                row.null = score(&null, &test_obs, test_states, &truth, &readout, &cfg.causal)?;
                let random = random_directions(config.d_sae, mixing.d_obs, seed)?;
                row.random_mmcs = mean(&max_cosines(&random, &truth)?.0);
                progress(&row);
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

fn empty_scores() -> Scores {
    Scores {
        explained_variance: f64::NAN,
        l0: f64::NAN,
        dead_fraction: f64::NAN,
        mmcs: f64::NAN,
        recovered_09: f64::NAN,
        f1: f64::NAN,
        causal_pass: f64::NAN,
        causal_on_target: f64::NAN,
        causal_off_target: f64::NAN,
    }
}

/// All scores of `sae` on the test observations.
pub fn score(
    sae: &Sae,
    obs: &Tensor,
    states: &[f32],
    truth: &Tensor,
    readout: &Readout,
    causal: &CausalConfig,
) -> Result<Scores> {
    let mut source = TensorSource::new(obs.clone(), 0)?;
    let eval = evaluate(
        sae,
        &mut source,
        &EvalConfig {
            batch: 4096,
            ..Default::default()
        },
    )?;
    let (best, _) = max_cosines(sae.w_dec.as_tensor(), truth)?;
    let codes = sae.encode(obs)?.to_dense(sae.config.d_sae)?;
    // Activation and causal tests use the best-matching latent among those that fire on the
    // test set: a never-firing near-duplicate direction represents nothing.
    let fired = codes
        .gt(0.0)?
        .to_dtype(DType::F32)?
        .sum(0)?
        .to_vec1::<f32>()?;
    let live: Vec<u32> = (0..fired.len() as u32)
        .filter(|&i| fired[i as usize] > 0.0)
        .collect();
    let matches = if live.is_empty() {
        vec![0; truth.dim(0)?]
    } else {
        let idx = Tensor::from_vec(live.clone(), live.len(), codes.device())?;
        let (_, m) = max_cosines(&sae.w_dec.as_tensor().index_select(&idx, 0)?, truth)?;
        m.iter().map(|&j| live[j] as usize).collect()
    };
    let f1 = matched_f1(&codes, states, &matches)?;
    let c = causal_edits(sae, obs, states, &matches, readout, causal)?;
    Ok(Scores {
        explained_variance: eval.explained_variance,
        l0: eval.l0,
        dead_fraction: eval.dead_fraction,
        mmcs: mean(&best),
        recovered_09: best.iter().filter(|&&c| c >= 0.9).count() as f64 / best.len().max(1) as f64,
        f1: mean(&f1),
        causal_pass: c.pass_rate,
        causal_on_target: c.on_target,
        causal_off_target: c.off_target,
    })
}

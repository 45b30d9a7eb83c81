//! The nine stages as one resumable pipeline over a run directory. Each stage reads the files
//! of the stages before it and writes its own atomically; a stage whose output exists is
//! skipped (unless forced), so an interrupted run continues where it stopped. The config is
//! saved as `config.json` on the first run and a later run with a different config is an error
//! (use a new directory).
//!
//! | stage | writes |
//! |---|---|
//! | `eval` | `eval.jsonl`, `eval.safetensors` |
//! | `direction` | `direction.safetensors`, `direction.json` |
//! | `layers` | `layers.json` |
//! | `neurons` | `neurons.json` |
//! | `effects` | `effects/L{l}-{chunk}.safetensors`, `effects/index.json` |
//! | `pca` | `neurons_pca.json` (PC1 and OMP text decomposition per neuron), `lexicon.json` (kept and skipped entries) |
//! | `ablate` | `ablations.json` |
//! | `report` | `report.md`, `neurons.csv`, `ablations.csv`, `layers.csv` |

use std::path::{Path, PathBuf};

use candle_core::DType;
use metarep_core::rng::{derive_seed, seeded};
use metarep_eval::tasks::text::{ArithmeticSuite, Op, Tier};
use metarep_model::HookedTransformer;
use metarep_testbeds::tokenization::Framing;
use serde::{Deserialize, Serialize};

use crate::ablate::{ablations, Controls};
use crate::analysis::{analyse, NeuronAnalysis};
use crate::data::{evaluate, load_problems, Problem, Representations};
use crate::direction::{directions, Directions};
use crate::effect_chunks::{write_effects, ChunkOptions, EffectIndex};
use crate::error::{Error, Result};
use crate::io::{read_json, write_json};
use crate::lexicon::Lexicon;
use crate::select::{rank_neurons, select_layers, LayerSelection, NeuronSelection};

/// Pipeline settings (TOML or JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// A JSONL problem file (`prompt`, `answer`); none: the arithmetic suite.
    #[serde(default)]
    pub data: Option<PathBuf>,
    /// Arithmetic problems drawn when `data` is none.
    pub problems: usize,
    /// Largest operand digit count of the arithmetic problems.
    pub max_digits: u32,
    /// Seed of the drawn problems.
    pub seed: u64,
    /// A token (by its text) put before each prompt and after each answer, e.g.
    /// `<|endoftext|>`; none: no framing.
    #[serde(default)]
    pub frame_token: Option<String>,
    /// MLP layers kept (stage 3).
    pub top_layers: usize,
    /// Neurons kept (stage 4).
    pub top_neurons: usize,
    /// Prompts per PCA (stage 6).
    pub pca_k: usize,
    /// OMP atoms (stage 7).
    pub omp_atoms: usize,
    /// The lexicon file (stage 7).
    pub lexicon: PathBuf,
    /// Keep only lexicon entries that are one token in the model's vocabulary (so the
    /// decompositions read as words); otherwise multi-token entries are embedded too.
    #[serde(default)]
    pub single_token_lexicon: bool,
    /// Draws of random neurons (as many per layer as selected) mean-ablated as the control of
    /// the selected neurons' ablation (stage 8); 0: no control.
    #[serde(default)]
    pub random_controls: usize,
    /// Prompts per forward pass.
    pub batch: usize,
    /// Stored effect dtype: `f16` or `f32`.
    pub effects_dtype: String,
}

/// The stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// 1: evaluation and representations.
    Eval,
    /// 2: correctness direction.
    Direction,
    /// 3: layer selection.
    Layers,
    /// 4: neuron ranking.
    Neurons,
    /// 5: second-order effects to disk.
    Effects,
    /// 6–7: per-neuron PCA and lexicon decomposition.
    Pca,
    /// 8: ablations.
    Ablate,
    /// 9: report.
    Report,
}

impl Stage {
    /// Every stage in order.
    pub const ALL: [Stage; 8] = [
        Stage::Eval,
        Stage::Direction,
        Stage::Layers,
        Stage::Neurons,
        Stage::Effects,
        Stage::Pca,
        Stage::Ablate,
        Stage::Report,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Eval => "eval",
            Stage::Direction => "direction",
            Stage::Layers => "layers",
            Stage::Neurons => "neurons",
            Stage::Effects => "effects",
            Stage::Pca => "pca",
            Stage::Ablate => "ablate",
            Stage::Report => "report",
        }
    }

    /// The stage named `name`; an error lists the names.
    pub fn parse(name: &str) -> Result<Stage> {
        Stage::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
                Error::Invalid(format!(
                    "unknown stage `{name}`; stages: {}",
                    names.join(", ")
                ))
            })
    }

    /// The file whose presence marks the stage done.
    fn output(self) -> &'static str {
        match self {
            Stage::Eval => "eval.safetensors",
            Stage::Direction => "direction.json",
            Stage::Layers => "layers.json",
            Stage::Neurons => "neurons.json",
            Stage::Effects => "effects/index.json",
            Stage::Pca => "neurons_pca.json",
            Stage::Ablate => "ablations.json",
            Stage::Report => "report.md",
        }
    }
}

/// A model, a config and a run directory.
pub struct Pipeline<'a> {
    /// The model under study (with its tokenizer).
    pub model: &'a HookedTransformer,
    /// Settings.
    pub config: PipelineConfig,
    /// The run directory.
    pub dir: PathBuf,
}

impl<'a> Pipeline<'a> {
    /// Opens `dir` (created if needed) for `config`; an error if it holds a run with another
    /// config.
    pub fn open(model: &'a HookedTransformer, config: PipelineConfig, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let saved = dir.join("config.json");
        if saved.is_file() {
            let old: PipelineConfig = read_json(&saved)?;
            if old != config {
                return Err(Error::Invalid(format!(
                    "{} holds a run with another config; use a new directory",
                    dir.display()
                )));
            }
        } else {
            write_json(&saved, &config)?;
        }
        if !["f16", "f32"].contains(&config.effects_dtype.as_str()) {
            return Err(Error::Invalid(format!(
                "effects_dtype must be f16 or f32, not {}",
                config.effects_dtype
            )));
        }
        Ok(Pipeline {
            model,
            config,
            dir: dir.to_path_buf(),
        })
    }

    /// Whether `stage`'s output exists.
    pub fn done(&self, stage: Stage) -> bool {
        self.dir.join(stage.output()).is_file()
    }

    /// Runs every stage up to and including `last` that is not done yet (`force`: rerun
    /// `last`); `log` gets one line per stage.
    pub fn run_to(&self, last: Stage, force: bool, mut log: impl FnMut(&str)) -> Result<()> {
        for stage in Stage::ALL.into_iter().filter(|s| *s <= last) {
            if self.done(stage) && !(force && stage == last) {
                log(&format!("{}: done earlier", stage.name()));
                continue;
            }
            let clock = std::time::Instant::now();
            self.run(stage)?;
            log(&format!(
                "{}: {:.1} s",
                stage.name(),
                clock.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }

    fn framing(&self) -> Result<Framing> {
        let tok = self
            .model
            .tokenizer()
            .ok_or_else(|| Error::Invalid("the model has no tokenizer.json".into()))?;
        let id = match &self.config.frame_token {
            Some(t) => Some(tok.token_to_id(t).ok_or_else(|| {
                Error::Invalid(format!("frame token `{t}` is not in the vocabulary"))
            })?),
            None => None,
        };
        Ok(Framing {
            bos: id,
            eos: id,
            pad: id.unwrap_or(tok.pad_id()),
        })
    }

    /// The problem set.
    pub fn problems(&self) -> Result<Vec<Problem>> {
        match &self.config.data {
            Some(path) => load_problems(path),
            None => {
                let suite = ArithmeticSuite {
                    tier: Tier::InDistribution {
                        max_digits: self.config.max_digits,
                    },
                    ops: Op::ALL.to_vec(),
                };
                let mut rng = seeded(derive_seed(self.config.seed, "second-order/problems"));
                Ok(suite
                    .sample(&mut rng, self.config.problems)?
                    .into_iter()
                    .map(|p| Problem {
                        prompt: p.text.prompt,
                        answer: p.text.answer,
                    })
                    .collect())
            }
        }
    }

    /// Runs one stage from the files of the earlier ones.
    pub fn run(&self, stage: Stage) -> Result<()> {
        let (m, dir, cfg) = (self.model, &self.dir, &self.config);
        match stage {
            Stage::Eval => evaluate(m, &self.problems()?, &self.framing()?, cfg.batch)?.save(dir),
            Stage::Direction => directions(m, &Representations::load(dir, m.device())?)?.save(dir),
            Stage::Layers => {
                let reps = Representations::load(dir, m.device())?;
                let d = Directions::load(dir, m.device())?;
                let sel = select_layers(m, &reps, &d.correctness, cfg.top_layers)?;
                write_json(&dir.join("layers.json"), &sel)
            }
            Stage::Neurons => {
                let reps = Representations::load(dir, m.device())?;
                let d = Directions::load(dir, m.device())?;
                let layers: LayerSelection = read_json(&dir.join("layers.json"))?;
                let sel = rank_neurons(
                    m,
                    &reps,
                    &d.correctness,
                    &layers.selected,
                    cfg.top_neurons,
                    cfg.batch,
                )?;
                write_json(&dir.join("neurons.json"), &sel)
            }
            Stage::Effects => {
                let reps = Representations::load(dir, m.device())?;
                let d = Directions::load(dir, m.device())?;
                let neurons: NeuronSelection = read_json(&dir.join("neurons.json"))?;
                let dtype = if cfg.effects_dtype == "f16" {
                    DType::F16
                } else {
                    DType::F32
                };
                let opts = ChunkOptions {
                    chunk: cfg.batch,
                    dtype,
                    null_seed: derive_seed(cfg.seed, "second-order/null"),
                };
                write_effects(
                    m,
                    &reps,
                    &neurons.selected,
                    &d.correctness,
                    dir,
                    opts,
                    |_, _| {},
                )?;
                Ok(())
            }
            Stage::Pca => {
                let index: EffectIndex = read_json(&dir.join("effects/index.json"))?;
                let lexicon = if cfg.single_token_lexicon {
                    Lexicon::load_single_token(&cfg.lexicon, m)?
                } else {
                    Lexicon::load(&cfg.lexicon, m)?
                };
                write_json(
                    &dir.join("lexicon.json"),
                    &serde_json::json!({"kept": lexicon.entries, "skipped": lexicon.skipped}),
                )?;
                let analyses = analyse(&index, dir, &lexicon, cfg.pca_k, cfg.omp_atoms)?;
                write_json(&dir.join("neurons_pca.json"), &analyses)
            }
            Stage::Ablate => {
                let reps = Representations::load(dir, m.device())?;
                let d = Directions::load(dir, m.device())?;
                let index: EffectIndex = read_json(&dir.join("effects/index.json"))?;
                let analyses: Vec<NeuronAnalysis> = read_json(&dir.join("neurons_pca.json"))?;
                let controls = Controls {
                    draws: cfg.random_controls,
                    seed: derive_seed(cfg.seed, "second-order/controls"),
                };
                let results =
                    ablations(m, &reps, &d.correctness, &index, &analyses, dir, controls)?;
                write_json(&dir.join("ablations.json"), &results)
            }
            Stage::Report => crate::report::write_report(dir),
        }
    }
}

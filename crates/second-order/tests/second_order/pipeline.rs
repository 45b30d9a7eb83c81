//! The resumable pipeline end to end on the checked-in arith fixture: every stage's files,
//! resuming, the stored effects against a fresh computation, and bad configs and data.

use std::path::{Path, PathBuf};

use crate::common;

use metarep_core::compare::{max_abs, max_abs_diff};
use metarep_core::rng::derive_seed;
use metarep_model::{HookedTransformer, LoadOptions};
use metarep_second_order::ablate::AblationResult;
use metarep_second_order::analysis::NeuronAnalysis;
use metarep_second_order::data::Representations;
use metarep_second_order::effect_chunks::{chunk_path, EffectIndex};
use metarep_second_order::null::shuffle_prompts;
use metarep_second_order::{Pipeline, PipelineConfig, Readout, Stage};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> HookedTransformer {
    HookedTransformer::from_dir(
        &root().join("fixtures/arith/seed-0"),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn config() -> PipelineConfig {
    PipelineConfig {
        data: None,
        problems: 150,
        max_digits: 2,
        seed: 3,
        frame_token: Some("<|endoftext|>".into()),
        top_layers: 6,
        top_neurons: 12,
        pca_k: 20,
        omp_atoms: 8,
        lexicon: root().join("fixtures/lexicon/math.txt"),
        single_token_lexicon: false,
        random_controls: 2,
        batch: 32,
        effects_dtype: "f16".into(),
    }
}

fn read<T: serde::de::DeserializeOwned>(p: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn the_pipeline_writes_every_stage_and_resumes() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let p = Pipeline::open(&model, config(), &run).unwrap();
    let mut lines = Vec::new();
    p.run_to(Stage::Report, false, |l| lines.push(l.to_string()))
        .unwrap();
    assert_eq!(lines.len(), 8);
    for s in Stage::ALL {
        assert!(p.done(s), "{s:?}");
    }
    // Layer 1 has no later attention: only layer 0 is stored, in 5 chunks of ≤ 32 prompts.
    let index: EffectIndex = read(&run.join("effects/index.json"));
    assert_eq!(
        (index.examples, index.chunks(), index.dtype.as_str()),
        (150, 5, "f16")
    );
    assert_eq!(index.layers.len(), 1);
    assert_eq!(index.layers[0].layer, 0);
    assert_eq!(index.layers[0].neurons.len(), 12);
    assert!(chunk_path(&run, 0, 4).is_file() && !chunk_path(&run, 0, 5).exists());

    // The stored effects are the method's effects (to f16 rounding).
    let reps = Representations::load(&run, model.device()).unwrap();
    let tokens = reps.tokens.narrow(0, 32, 32).unwrap();
    let fresh = Readout::new(&model, &tokens, &reps.positions[32..64])
        .unwrap()
        .second_order(0, &index.layers[0].neurons)
        .unwrap();
    let stored = index.read_chunk(&run, 0, 1).unwrap();
    let scale = max_abs(&fresh).unwrap();
    let gap = max_abs_diff(&fresh, &stored).unwrap();
    assert!(gap <= 1e-3 * scale, "{gap} vs scale {scale}");

    // The null's effects are the method's effects on the shuffled prompts.
    let shuffled = shuffle_prompts(
        &tokens,
        &reps.positions[32..64],
        derive_seed(3, "second-order/null"),
        32,
    )
    .unwrap();
    let fresh_null = Readout::new(&model, &shuffled, &reps.positions[32..64])
        .unwrap()
        .second_order(0, &index.layers[0].neurons)
        .unwrap();
    let stored_null = &index.read_null(&run, 0, &[0]).unwrap()[0];
    let first = fresh_null.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let gap = max_abs_diff(&first, &stored_null.narrow(0, 32, 32).unwrap()).unwrap();
    assert!(gap <= 1e-3 * scale, "null: {gap} vs scale {scale}");
    assert!(max_abs_diff(&fresh_null, &fresh).unwrap() > 1e-2 * scale);
    let analyses: Vec<NeuronAnalysis> = read(&run.join("neurons_pca.json"));
    assert!(analyses
        .iter()
        .all(|a| (0.0..=1.0).contains(&a.significant_fraction) && a.null_threshold > 0.0));

    // Significant and insignificant removals split the full removal exactly.
    let abl: Vec<AblationResult> = read(&run.join("ablations.json"));
    let get = |n: &str| abl.iter().find(|r| r.name == n).unwrap().clone();
    let (all, sig, insig) = (
        get("remove all effects"),
        get("remove significant"),
        get("remove insignificant"),
    );
    assert!((sig.delta_score + insig.delta_score - all.delta_score).abs() < 1e-4);
    assert!(all.mean_abs_score_change > 0.0);
    assert_eq!(get("clean").delta_score, 0.0);
    let control = get("mean-ablate random neurons");
    assert_eq!(control.draws, 2);
    assert_eq!(control.per_draw_delta_accuracy.len(), 2);
    let mean = control.per_draw_delta_accuracy.iter().sum::<f64>() / 2.0;
    assert!((mean - control.delta_accuracy).abs() < 1e-9);
    assert!(control.delta_accuracy_sd >= 0.0 && control.accuracy <= 1.0);

    // Resume: only the removed stages run again, with the same result.
    let before = std::fs::read(run.join("ablations.json")).unwrap();
    std::fs::remove_file(run.join("ablations.json")).unwrap();
    std::fs::remove_file(run.join("report.md")).unwrap();
    let mut lines = Vec::new();
    p.run_to(Stage::Report, false, |l| lines.push(l.to_string()))
        .unwrap();
    assert_eq!(
        lines.iter().filter(|l| l.ends_with("done earlier")).count(),
        6
    );
    assert_eq!(std::fs::read(run.join("ablations.json")).unwrap(), before);
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("## Ablations") && report.contains("## Top neurons"));
}

#[test]
fn bad_configs_and_data_are_named() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    Pipeline::open(&model, config(), &run).unwrap();
    let other = PipelineConfig {
        top_neurons: 5,
        ..config()
    };
    let err = Pipeline::open(&model, other, &run)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another config"), "{err}");
    let err = Pipeline::open(
        &model,
        PipelineConfig {
            effects_dtype: "bf16".into(),
            ..config()
        },
        &dir.path().join("b"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("effects_dtype"), "{err}");
    assert!(Stage::parse("pca").is_ok());
    assert!(Stage::parse("everything")
        .unwrap_err()
        .to_string()
        .contains("stages: eval"));

    let data = dir.path().join("problems.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"1 + 2 =\", \"answer\": \" 3\"}\n{\"prompt\": 4}\n",
    )
    .unwrap();
    let p = Pipeline::open(
        &model,
        PipelineConfig {
            data: Some(data.clone()),
            ..config()
        },
        &dir.path().join("c"),
    )
    .unwrap();
    let err = p.run(Stage::Eval).unwrap_err().to_string();
    assert!(err.contains("problems.jsonl:2"), "{err}");
    // A later stage without its inputs names the missing file.
    let err = p.run(Stage::Direction).unwrap_err().to_string();
    assert!(err.contains("eval"), "{err}");
}

#[test]
fn greedy_transcripts_agree_with_teacher_forced_scores() {
    use metarep_second_order::data::{evaluate, frame_all, Problem};
    use metarep_testbeds::arith::framing;
    use metarep_testbeds::tokenization::score_problems;

    let model = model();
    let tok = model.tokenizer().unwrap().clone();
    let fr = framing(&tok).unwrap();
    let problems: Vec<Problem> = (0..60)
        .map(|i| {
            let (a, b) = (i * 7 % 100, i * 13 % 100);
            Problem {
                prompt: format!("{a} + {b} ="),
                answer: format!(" {}", a + b),
            }
        })
        .collect();
    let reps = evaluate(&model, &problems, &fr, 16).unwrap();
    let framed = frame_all(&tok, &problems, &fr).unwrap();
    let scores = score_problems(&model, &framed, fr.pad, 16, &mut metarep_model::NoHooks).unwrap();
    for (t, s) in reps.transcripts.iter().zip(&scores) {
        assert_eq!(t.correct, s.correct, "{t:?}");
        if t.correct {
            assert_eq!(t.completion.trim(), t.answer.trim());
        }
    }
    assert!(
        reps.transcripts.iter().any(|t| t.correct) && reps.transcripts.iter().any(|t| !t.correct)
    );
    assert_eq!(reps.split(true).len(), 12);
}

/// Stage 1 records what the unembedding reads: for an RMSNorm model (whose `hook_normalized` is
/// before the norm's weight) that is the norm's output, the same as `readout_stream`, and its
/// argmax through the unembedding is the first greedy token.
#[test]
fn recorded_streams_are_what_the_unembedding_reads_in_rmsnorm_models() {
    use metarep_second_order::data::{evaluate, Problem};
    use metarep_second_order::readout_stream;
    use metarep_testbeds::arith::framing;

    let tok = model().tokenizer().unwrap().clone();
    let mut cfg = common::llama_cfg();
    cfg.d_vocab = tok.vocab_size();
    let rms = common::rich_model(cfg, 5).with_tokenizer(tok.clone());
    let problems: Vec<Problem> = (0..12)
        .map(|i| Problem {
            prompt: format!("{} + {} =", i * 3 % 10, i % 7),
            answer: format!(" {}", i * 3 % 10 + i % 7),
        })
        .collect();
    let fr = framing(&tok).unwrap();
    let reps = evaluate(&rms, &problems, &fr, 5).unwrap();
    let stream = readout_stream(
        &rms,
        &reps.tokens,
        &reps.positions,
        &mut metarep_model::NoHooks,
    )
    .unwrap();
    let gap = max_abs_diff(&stream, &reps.final_normed).unwrap();
    assert!(gap < 1e-5, "{gap}");
    let first = rms
        .unembed(&reps.final_normed.unsqueeze(1).unwrap())
        .unwrap()
        .squeeze(1)
        .unwrap()
        .argmax(candle_core::D::Minus1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    for (t, f) in reps.transcripts.iter().zip(first) {
        assert!(
            t.completion.starts_with(&tok.decode(&[f], true).unwrap()),
            "{t:?}"
        );
    }
}

//! The arith model's tokenizer and data, and tokenization diagnostics, on
//! small random models and on the checked-in arith fixture.

use std::path::PathBuf;

use candle_core::{Device, D};
use metarep_core::rng::seeded;
use metarep_eval::tasks::text::Op;
use metarep_model::{HookedTransformer, Input, LoadOptions, NoHooks};
use metarep_testbeds::arith::{framing, ArithSpec, EOT};
use metarep_testbeds::tokenization::{
    by_class, eval_set, padded, score_problems, summarize, tokenize_all, StressGrid, TokenClass,
    TokenizedProblem,
};

fn small_spec() -> ArithSpec {
    ArithSpec {
        corpus: 3000,
        vocab: 48,
        ..ArithSpec::default()
    }
}

fn fixture() -> HookedTransformer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/arith/seed-0");
    HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap()
}

#[test]
fn the_tokenizer_is_deterministic_and_splits_numbers_both_ways() {
    let spec = small_spec();
    let (a, b) = (
        spec.train_tokenizer().unwrap(),
        spec.train_tokenizer().unwrap(),
    );
    assert_eq!(a.vocab_size(), 48);
    assert_eq!(
        a.inner().to_string(false).unwrap(),
        b.inner().to_string(false).unwrap()
    );
    let fr = framing(&a).unwrap();
    assert_eq!(Some(fr.pad), a.token_to_id(EOT));
    let problems = spec.suite().sample(&mut seeded(5), 300).unwrap();
    let tokenized = tokenize_all(&a, &problems, &fr).unwrap();
    let single = tokenized
        .iter()
        .filter(|p| p.class() == TokenClass::Single)
        .count();
    assert!(
        single > 0 && single < 300,
        "{single} single-token problems of 300"
    );
    for p in &tokenized {
        assert_eq!(p.framed.ids[0], fr.pad);
        assert_eq!(*p.framed.ids.last().unwrap(), fr.pad);
        assert_eq!(p.framed.scored, p.framed.answer_tokens + 1);
        assert_eq!(
            p.framed.answer_start + p.framed.answer_tokens + 1,
            p.framed.ids.len()
        );
        // The answer tokens decode to the answer; each operand has ≤ one token per digit
        // plus the word-start marker.
        let answer = a
            .decode(
                &p.framed.ids[p.framed.answer_start..p.framed.ids.len() - 1],
                true,
            )
            .unwrap();
        assert_eq!(answer.trim(), p.problem.text.answer.trim());
        for (k, v) in [p.problem.a, p.problem.b].iter().enumerate() {
            let digits = v.to_string().len();
            assert!((1..=digits + 1).contains(&p.operand_tokens[k]), "{p:?}");
        }
    }
}

#[test]
fn batches_mask_only_answers_and_reject_overlong_problems() {
    let spec = small_spec();
    let tok = spec.train_tokenizer().unwrap();
    let batch = spec.batch(&tok, 3, 0).unwrap();
    let mask = batch.loss_mask.unwrap().to_vec2::<f32>().unwrap();
    let targets = batch.targets.to_vec2::<u32>().unwrap();
    let eot = tok.token_to_id(EOT).unwrap();
    for (m, t) in mask.iter().zip(&targets) {
        // The last scored target of each row is the closing EOT; nothing after it counts.
        let last = m.iter().rposition(|&x| x > 0.0).unwrap();
        assert_eq!(t[last], eot);
        assert!(m[..last].iter().rev().take_while(|&&x| x > 0.0).count() >= 1);
    }
    assert_eq!(batch.tokens.dim(0).unwrap(), spec.batch);
    let tight = ArithSpec { n_ctx: 4, ..spec };
    let err = tight.batch(&tok, 0, 0).unwrap_err().to_string();
    assert!(err.contains("n_ctx"), "{err}");
}

#[test]
fn exact_answer_scores_match_greedy_decoding() {
    let model = fixture();
    let tok = model.tokenizer().unwrap().clone();
    let fr = framing(&tok).unwrap();
    let spec = ArithSpec::default();
    let problems = tokenize_all(
        &tok,
        &spec.suite().sample(&mut seeded(11), 40).unwrap(),
        &fr,
    )
    .unwrap();
    let scores = score_problems(&model, &problems, fr.pad, 7, &mut NoHooks).unwrap();
    for (p, s) in problems.iter().zip(&scores) {
        // Greedy decoding from the prompt, one token at a time, and the loss of the true
        // answer fed token by token.
        let last_logits = |ids: &[u32]| {
            model
                .forward(Input::from_ids(&[ids.to_vec()], &Device::Cpu).unwrap())
                .unwrap()
                .get(0)
                .unwrap()
                .get(ids.len() - 1)
                .unwrap()
        };
        let mut greedy = p.framed.ids[..p.framed.answer_start].to_vec();
        let mut forced = greedy.clone();
        let mut loss = 0.0;
        for k in 0..p.framed.scored {
            let next = last_logits(&greedy)
                .argmax(D::Minus1)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            greedy.push(next);
            let logits = last_logits(&forced);
            let want = p.framed.ids[p.framed.answer_start + k];
            let lse = logits.exp().unwrap().sum_all().unwrap().log().unwrap();
            loss += (lse - logits.get(want as usize).unwrap())
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            forced.push(want);
        }
        assert_eq!(
            s.correct,
            greedy[p.framed.answer_start..] == p.framed.ids[p.framed.answer_start..],
            "{p:?}"
        );
        assert!(
            (s.loss - loss / p.framed.scored as f64).abs() < 1e-4,
            "{} vs {}",
            s.loss,
            loss
        );
    }
}

#[test]
fn the_fixture_is_sometimes_wrong_and_worse_on_multi_token_operands() {
    let model = fixture();
    let tok = model.tokenizer().unwrap().clone();
    let fr = framing(&tok).unwrap();
    let problems = tokenize_all(
        &tok,
        &ArithSpec::default()
            .suite()
            .sample(&mut seeded(12), 600)
            .unwrap(),
        &fr,
    )
    .unwrap();
    let scores = score_problems(&model, &problems, fr.pad, 256, &mut NoHooks).unwrap();
    let all = summarize(&scores, 500, &mut seeded(0)).unwrap();
    assert!(
        (0.4..=0.9).contains(&all.accuracy.estimate),
        "accuracy {}",
        all.accuracy.estimate
    );
    let classes = by_class(&problems, &scores, 500, &mut seeded(0)).unwrap();
    assert_eq!(classes[0].0, TokenClass::Single);
    assert_eq!(classes[0].1.count + classes[1].1.count, 600);
    assert!(
        classes[0].1.accuracy.low > classes[1].1.accuracy.high,
        "{classes:?}"
    );
    assert!(by_class(&problems[1..], &scores, 500, &mut seeded(0)).is_err());
}

#[test]
fn stress_grids_scale_operand_length_and_grow_token_counts() {
    let model = fixture();
    let tok = model.tokenizer().unwrap().clone();
    let grid = StressGrid {
        model: &model,
        tokenizer: &tok,
        framing: framing(&tok).unwrap(),
        per_cell: 20,
        shots: 0,
        resamples: 200,
    };
    let cells = grid
        .run(&[Op::Add, Op::Mul], &[1, 3, 6], &mut seeded(3))
        .unwrap();
    assert_eq!(cells.len(), 6);
    for op_cells in cells.chunks(3) {
        assert!(op_cells[0].operand_tokens < op_cells[1].operand_tokens);
        assert!(op_cells[1].operand_tokens < op_cells[2].operand_tokens);
        assert!(op_cells.iter().all(|c| c.summary.count == 20));
    }
    assert_eq!((cells[3].op, cells[5].digits), (Op::Mul, 6));
}

#[test]
fn eval_sets_count_the_scored_predictions() {
    let spec = small_spec();
    let tok = spec.train_tokenizer().unwrap();
    let fr = framing(&tok).unwrap();
    let problems =
        tokenize_all(&tok, &spec.suite().sample(&mut seeded(1), 9).unwrap(), &fr).unwrap();
    let set = eval_set(&problems, fr.pad).unwrap();
    let mask = set.mask.unwrap().to_vec2::<f32>().unwrap();
    for (m, p) in mask.iter().zip(&problems) {
        assert_eq!(m.iter().sum::<f32>() as usize, p.framed.scored);
        assert_eq!(m[p.framed.answer_start - 1], 1.0);
    }
    assert!(padded::<TokenizedProblem>(&[], 0).is_err());
}

#[test]
fn a_few_shot_prefix_goes_before_the_prompt_and_operands_are_counted_after_it() {
    use metarep_testbeds::tokenization::{
        few_shot_prefix, tokenize_all_after, tokenize_problem_after,
    };
    let spec = small_spec();
    let tok = spec.train_tokenizer().unwrap();
    let fr = framing(&tok).unwrap();
    let shots = spec.suite().sample(&mut seeded(3), 3).unwrap();
    let prefix = few_shot_prefix(&shots);
    assert_eq!(prefix.lines().count(), 3);
    assert!(prefix.starts_with(&format!(
        "{}{}\n",
        shots[0].text.prompt, shots[0].text.answer
    )));
    let problems = spec.suite().sample(&mut seeded(4), 12).unwrap();
    let plain = tokenize_all(&tok, &problems, &fr).unwrap();
    let shot = tokenize_all_after(&tok, &prefix, &problems, &fr).unwrap();
    for (p, (a, b)) in problems.iter().zip(plain.iter().zip(&shot)) {
        let prompt = tok
            .encode(&format!("{prefix}{}", p.text.prompt), false)
            .unwrap()
            .ids
            .len();
        assert_eq!(
            b.framed.answer_start,
            prompt + usize::from(fr.bos.is_some())
        );
        assert_eq!(
            a.framed.ids[a.framed.answer_start..],
            b.framed.ids[b.framed.answer_start..]
        );
        // A prefix holding the same problem (same numbers, at the start of the text, where
        // they tokenise differently) must not be where the operands are counted.
        let other = if std::ptr::eq(p, &problems[0]) {
            &problems[1]
        } else {
            &problems[0]
        };
        let same = tokenize_problem_after(&tok, &few_shot_prefix(std::slice::from_ref(p)), p, &fr)
            .unwrap();
        let different =
            tokenize_problem_after(&tok, &few_shot_prefix(std::slice::from_ref(other)), p, &fr)
                .unwrap();
        assert_eq!(
            same.operand_tokens, different.operand_tokens,
            "{:?}",
            p.text
        );
    }
}

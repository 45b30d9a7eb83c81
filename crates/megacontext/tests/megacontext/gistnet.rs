//! GistNet: shapes and parameter count, an untrained net is mean pooling, save/load round
//! trip, bad inputs are errors; training through a frozen base model lowers ΔNLL below the
//! mean-embedding baseline on held-out windows, and the objective's replacements agree with
//! plain token runs; gists in a row (one per sub-block) are exact where they must be, and
//! training on them lowers their ΔNLL below the per-block baselines.

use candle_core::{DType, Device, Tensor};
use metarep_core::compare::max_abs_diff;
use metarep_core::train::RunControl;
use metarep_megacontext::eval::{delta_nll, summarize, DeltaSummary, Method};
use metarep_megacontext::train::{block_embeddings, draw_windows};
use metarep_megacontext::{
    nll_after_block, train_gistnet, GistNet, GistNetConfig, GistTrainConfig, PositionRule,
    Replacement, Skip, WindowShape,
};
use metarep_model::init::random_weights;
use metarep_model::{HookedTransformer, ModelConfig};

/// A small Llama-style base model with large weights, so that its predictions depend
/// strongly on the context.
fn base_model() -> HookedTransformer {
    let json = serde_json::json!({
        "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
        "vocab_size": 48, "max_position_embeddings": 256, "tie_word_embeddings": false
    });
    let cfg: ModelConfig =
        metarep_model::hf_config::parse_hf_config(&json.to_string(), std::path::Path::new("<cfg>"))
            .unwrap();
    let w = random_weights(&cfg, 7, 0.4, DType::F32, &Device::Cpu).unwrap();
    HookedTransformer::new(cfg, w).unwrap()
}

fn docs() -> Vec<Vec<u32>> {
    (0..6u32)
        .map(|d| {
            (0..120u32)
                .map(|i| (i * 7 + d * 13 + (i / 5) * 3) % 48)
                .collect()
        })
        .collect()
}

fn small_net(seed: u64, skip: Skip) -> GistNet {
    let cfg = GistNetConfig {
        d_model: 32,
        block: 8,
        width: 32,
        layers: 1,
        heads: 4,
        mlp: 64,
        skip,
    };
    GistNet::new(cfg, seed, &Device::Cpu).unwrap()
}

const SHAPE: WindowShape = WindowShape {
    prefix: 8,
    block: 8,
    horizon: 8,
};

#[test]
fn an_untrained_gistnet_is_its_skip_baseline_with_the_stated_parameter_count() {
    let x = Tensor::randn(0f32, 1.0, (3, 8, 32), &Device::Cpu).unwrap();
    let mean = small_net(0, Skip::Mean).forward(&x).unwrap();
    assert!(max_abs_diff(&mean, &x.mean(1).unwrap()).unwrap() < 1e-6);
    let net = small_net(0, Skip::Last);
    let g = net.forward(&x).unwrap();
    assert_eq!(g.dims(), [3, 32]);
    let last = x.narrow(1, 7, 1).unwrap().squeeze(1).unwrap();
    assert!(max_abs_diff(&g, &last).unwrap() < 1e-6);
    let counted: usize = net.params().iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(counted, net.config().n_params());
    let big = GistNetConfig::for_model(576, 32);
    assert!(
        (500_000..2_000_000).contains(&big.n_params()),
        "{}",
        big.n_params()
    );
    for bad in [(3, 7, 32), (3, 8, 16)] {
        let t = Tensor::zeros(bad, DType::F32, &Device::Cpu).unwrap();
        let err = net.forward(&t).unwrap_err().to_string();
        assert!(err.contains("[n, 8, 32]"), "{err}");
    }
}

#[test]
fn replacements_agree_with_plain_token_runs() {
    let model = base_model();
    let windows = draw_windows(&docs(), SHAPE, 4, 0, "agree").unwrap();
    // Keeping all B tokens is the full context.
    let full = nll_after_block(
        &model,
        &windows,
        SHAPE,
        &Replacement::Full,
        PositionRule::SpanEnd,
    )
    .unwrap();
    let all = Replacement::Keep(vec![(0..8).collect(); 4]);
    let kept = nll_after_block(&model, &windows, SHAPE, &all, PositionRule::SpanEnd).unwrap();
    assert!(max_abs_diff(&full, &kept).unwrap() < 1e-5);
    // The full context's NLL is the token run's cross-entropy over the last H tokens.
    let ids: Vec<u32> = windows.iter().flatten().copied().collect();
    let t = Tensor::from_vec(ids, (4, SHAPE.len()), &Device::Cpu).unwrap();
    let logits = model.forward(t.clone()).unwrap();
    let lp = log_softmax_rows(&logits);
    for (w, window) in windows.iter().enumerate() {
        let mut sum = 0.0;
        for j in 0..8 {
            let pos = 16 + j - 1;
            let tok = window[16 + j] as usize;
            sum -= lp[w][pos][tok];
        }
        let want = sum / 8.0;
        let got = full.to_vec1::<f32>().unwrap()[w] as f64;
        assert!((got - want).abs() < 1e-4, "window {w}: {got} vs {want}");
    }
    // Offsets that differ between windows run window by window.
    for bad in [vec![vec![8]; 4], vec![vec![3, 3]; 4], vec![vec![1]; 3]] {
        let bad = Replacement::Keep(bad);
        let err = nll_after_block(&model, &windows, SHAPE, &bad, PositionRule::SpanEnd);
        assert!(err.is_err(), "{bad:?}");
    }
    let mixed = Replacement::Keep(vec![vec![7], vec![6], vec![4, 5], vec![0]]);
    let per = nll_after_block(&model, &windows, SHAPE, &mixed, PositionRule::SpanEnd).unwrap();
    let one = Replacement::Keep(vec![vec![6]]);
    let second =
        nll_after_block(&model, &windows[1..2], SHAPE, &one, PositionRule::SpanEnd).unwrap();
    assert!((per.to_vec1::<f32>().unwrap()[1] - second.to_vec1::<f32>().unwrap()[0]).abs() < 1e-6);
}

fn log_softmax_rows(logits: &Tensor) -> Vec<Vec<Vec<f64>>> {
    let v = logits
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec3::<f64>()
        .unwrap();
    v.into_iter()
        .map(|rows| {
            rows.into_iter()
                .map(|r| {
                    let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z = r.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
                    r.into_iter().map(|x| x - z).collect()
                })
                .collect()
        })
        .collect()
}

/// 300 steps of 8 windows of `SHAPE` with `blocks` gisted blocks each.
fn trained_on(blocks: usize) -> GistTrainConfig {
    GistTrainConfig {
        steps: 300,
        batch: 8,
        lr: 3e-3,
        warmup: 10,
        shape: SHAPE,
        blocks,
        log_every: 0,
        ..GistTrainConfig::default()
    }
}

#[test]
fn training_lowers_delta_nll_below_the_one_slot_baselines_on_held_out_windows() {
    let model = base_model();
    let docs = docs();
    let net = small_net(1, Skip::Last);
    let held_out = draw_windows(&docs, SHAPE, 160, 99, "held out").unwrap();
    let eval = |net: &GistNet| {
        delta_nll(
            &model,
            &held_out,
            SHAPE,
            PositionRule::SpanEnd,
            Method::Gist(net),
            16,
        )
        .unwrap()
    };
    let baseline =
        |m: Method| delta_nll(&model, &held_out, SHAPE, PositionRule::SpanEnd, m, 16).unwrap();
    let mean = baseline(Method::MeanEmbedding);
    let last = baseline(Method::LastK(1));
    // Untrained, the gist is the block's last token embedding at the block's last position:
    // the last-token baseline, through the gist path.
    let before = eval(&net);
    assert!(
        max_abs_diff_f64(&before, &last) < 1e-5,
        "untrained gist = last token"
    );
    let cfg = trained_on(1);
    let report = train_gistnet(&model, &net, &docs, &cfg, RunControl::default()).unwrap();
    assert!(report.final_loss.is_finite());
    let after = eval(&net);
    let g = summarize(&Method::Gist(&net), 8, &after, 1.0).unwrap();
    for (method, deltas) in [(Method::MeanEmbedding, &mean), (Method::LastK(1), &last)] {
        assert_interval_below(&g, &summarize(&method, 8, deltas, 1.0).unwrap());
    }
    // Training moved the gists off the last token.
    let emb = block_embeddings(&model, &held_out[..2], SHAPE).unwrap();
    let last_emb = emb.narrow(1, 7, 1).unwrap().squeeze(1).unwrap();
    assert!(max_abs_diff(&net.forward(&emb).unwrap(), &last_emb).unwrap() > 1e-3);
}

#[test]
fn a_block_replaced_by_vectors_in_a_row_puts_each_at_its_sub_block_end() {
    let model = base_model();
    let windows = draw_windows(&docs(), SHAPE, 4, 3, "rows").unwrap();
    let nll = |r: &Replacement| {
        nll_after_block(&model, &windows, SHAPE, r, PositionRule::SpanEnd).unwrap()
    };
    // [4, 8, 32]. Eight sub-blocks of one token, each replaced by its own embedding: the full
    // block.
    let emb = block_embeddings(&model, &windows, SHAPE).unwrap();
    let full = nll(&Replacement::Full);
    let own = nll(&Replacement::Vector(emb.clone()));
    assert!(max_abs_diff(&full, &own).unwrap() < 1e-5);
    // Two sub-blocks replaced by their last tokens' embeddings: keeping tokens 3 and 7.
    let lasts = Tensor::cat(
        &[emb.narrow(1, 3, 1).unwrap(), emb.narrow(1, 7, 1).unwrap()],
        1,
    )
    .unwrap();
    let kept = nll(&Replacement::Keep(vec![vec![3, 7]; 4]));
    assert!(max_abs_diff(&kept, &nll(&Replacement::Vector(lasts))).unwrap() < 1e-5);
    let each = |m: Method| delta_nll(&model, &windows, SHAPE, PositionRule::SpanEnd, m, 4).ok();
    let diff = |a: Vec<f64>, b: Vec<f64>| max_abs_diff_f64(&a, &b);
    assert!(
        diff(
            each(Method::LastEach(4)).unwrap(),
            each(Method::LastK(1)).unwrap()
        ) > 1e-4
    );
    assert!(
        diff(
            each(Method::MeanEach(8)).unwrap(),
            each(Method::MeanEmbedding).unwrap()
        ) < 1e-6
    );
    let net = small_net(2, Skip::Last);
    assert!(
        diff(
            each(Method::Gists(&net)).unwrap(),
            each(Method::Gist(&net)).unwrap()
        ) < 1e-6
    );
    assert_eq!(Method::LastEach(4).slots(8), 2);
    // Three vectors cannot split a block of eight; nor can sub-blocks of three.
    let three = Replacement::Vector(emb.narrow(1, 0, 3).unwrap());
    let err = nll_after_block(&model, &windows, SHAPE, &three, PositionRule::SpanEnd)
        .unwrap_err()
        .to_string();
    assert!(err.contains("m dividing the block of 8"), "{err}");
    assert!(each(Method::LastEach(3)).is_none() && each(Method::MeanEach(0)).is_none());
}

#[test]
fn training_on_gists_in_a_row_lowers_their_delta_nll_below_the_per_block_baselines() {
    let model = base_model();
    let docs = docs();
    let net = small_net(5, Skip::Last);
    // Two blocks of 8 replaced by two gists.
    let shape = WindowShape { block: 16, ..SHAPE };
    let held_out = draw_windows(&docs, shape, 160, 98, "held out, two blocks").unwrap();
    let eval =
        |m: Method| delta_nll(&model, &held_out, shape, PositionRule::SpanEnd, m, 16).unwrap();
    let last = eval(Method::LastEach(8));
    let mean = eval(Method::MeanEach(8));
    // Untrained, the gists are the blocks' last tokens.
    assert!(max_abs_diff_f64(&eval(Method::Gists(&net)), &last) < 1e-5);
    let cfg = trained_on(2);
    assert_eq!(cfg.window_shape(), shape);
    train_gistnet(&model, &net, &docs, &cfg, RunControl::default()).unwrap();
    let g = summarize(&Method::Gists(&net), 16, &eval(Method::Gists(&net)), 1.0).unwrap();
    assert_eq!(g.ratio, 8.0);
    for (method, deltas) in [(Method::MeanEach(8), &mean), (Method::LastEach(8), &last)] {
        assert_interval_below(&g, &summarize(&method, 16, deltas, 1.0).unwrap());
    }
    let zero = GistTrainConfig { blocks: 0, ..cfg };
    assert!(train_gistnet(&model, &net, &docs, &zero, RunControl::default()).is_err());
}

/// Asserts that `g`'s 95% interval lies below `b`'s.
fn assert_interval_below(g: &DeltaSummary, b: &DeltaSummary) {
    assert!(
        g.high < b.low,
        "trained {} ΔNLL {:.3} [{:.3}, {:.3}] is not below {}'s {:.3} [{:.3}, {:.3}]",
        g.method,
        g.mean,
        g.low,
        g.high,
        b.method,
        b.mean,
        b.low,
        b.high
    );
}

fn max_abs_diff_f64(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn a_saved_gistnet_loads_to_the_same_gists() {
    let net = small_net(3, Skip::Last);
    // Move it off its skip baseline so the output projection matters.
    for (name, v) in net.params() {
        if name.starts_with("proj_out") {
            v.set(&Tensor::randn(0f32, 0.1, v.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    net.save(dir.path()).unwrap();
    let back = GistNet::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(back.config(), net.config());
    let x = Tensor::randn(0f32, 1.0, (2, 8, 32), &Device::Cpu).unwrap();
    assert_eq!(
        max_abs_diff(&net.forward(&x).unwrap(), &back.forward(&x).unwrap()).unwrap(),
        0.0
    );
    let missing = tempfile::tempdir().unwrap();
    assert!(GistNet::load(&missing.path().join("nope"), &Device::Cpu).is_err());
}

#[test]
fn kl_to_the_full_context_is_zero_for_the_full_block_and_positive_without_it() {
    use metarep_megacontext::objective::{kl_to_full, logits_after_block};
    let model = base_model();
    let windows = draw_windows(&docs(), SHAPE, 6, 5, "kl").unwrap();
    let logits = |r: &Replacement| {
        logits_after_block(&model, &windows, SHAPE, r, PositionRule::SpanEnd).unwrap()
    };
    let full = logits(&Replacement::Full);
    let same = kl_to_full(&full, &full).unwrap().to_vec1::<f32>().unwrap();
    assert!(same.iter().all(|k| k.abs() < 1e-6), "{same:?}");
    let dropped = kl_to_full(&full, &logits(&Replacement::Drop))
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(dropped.iter().all(|k| *k > 1e-4), "{dropped:?}");
    // The KL term adds the first batch's mean KL (> 0 for an untrained gist) to its loss.
    let (plain, with_kl) = (first_loss(&model, 0.0, 0.0), first_loss(&model, 1.0, 0.0));
    assert!(with_kl > plain + 1e-4, "{with_kl} vs {plain}");
}

/// The loss of the first step of a fresh small net trained on batches of 8 windows with these
/// weights of the KL and contrastive terms.
fn first_loss(model: &HookedTransformer, kl_weight: f64, contrastive_weight: f64) -> f64 {
    let cfg = GistTrainConfig {
        steps: 1,
        batch: 8,
        shape: SHAPE,
        log_every: 0,
        kl_weight,
        contrastive_weight,
        ..GistTrainConfig::default()
    };
    let net = small_net(4, Skip::Last);
    let r = train_gistnet(model, &net, &docs(), &cfg, RunControl::default()).unwrap();
    r.first_loss
}

#[test]
fn the_contrastive_term_is_infonce_over_cosines_and_enters_the_loss() {
    use metarep_megacontext::objective::contrastive;
    // Against a direct f64 computation on random gists and blocks.
    let (n, b, d, tau) = (5, 3, 4, 0.2);
    let g = Tensor::randn(0f32, 1.0, (n, d), &Device::Cpu).unwrap();
    let blocks = Tensor::randn(0f32, 1.0, (n, b, d), &Device::Cpu).unwrap();
    let got = contrastive(&g, &blocks, tau)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let gv = g.to_vec2::<f32>().unwrap();
    let bv = blocks.to_vec3::<f32>().unwrap();
    let mean: Vec<Vec<f64>> = bv
        .iter()
        .map(|blk| {
            (0..d)
                .map(|k| blk.iter().map(|t| t[k] as f64).sum::<f64>() / b as f64)
                .collect()
        })
        .collect();
    let cos = |x: &[f32], y: &[f64]| {
        let dot: f64 = x.iter().zip(y).map(|(a, b)| *a as f64 * b).sum();
        let nx = x.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let ny = y.iter().map(|a| a * a).sum::<f64>().sqrt();
        dot / (nx * ny)
    };
    let want = (0..n)
        .map(|i| {
            let s: Vec<f64> = (0..n).map(|j| cos(&gv[i], &mean[j]) / tau).collect();
            let lse = s.iter().map(|x| x.exp()).sum::<f64>().ln();
            lse - s[i]
        })
        .sum::<f64>()
        / n as f64;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // Gists equal to their own blocks' means score below ln n; collapsed gists (all equal)
    // score at least ln n (the mean over rows of lse(s) − s_i is lse(s) − mean(s) ≥ ln n).
    let means = blocks.mean(1).unwrap();
    let own = contrastive(&means, &blocks, tau)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((own as f64) < (n as f64).ln(), "{own}");
    let same = Tensor::ones((n, d), DType::F32, &Device::Cpu).unwrap();
    let flat = contrastive(&same, &blocks, tau)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(flat as f64 >= (n as f64).ln() - 1e-5, "{flat}");
    assert!(flat > own, "{flat} vs {own}");
    // Bad shapes and temperatures are named errors.
    assert!(contrastive(&g.narrow(0, 0, 1).unwrap(), &blocks, tau).is_err());
    assert!(contrastive(&g, &blocks.narrow(0, 0, 4).unwrap(), tau).is_err());
    let e = contrastive(&g, &blocks, 0.0).unwrap_err().to_string();
    assert!(e.contains("temperature"), "{e}");

    // In training, the weighted term is added to the first batch's loss (> 0: an untrained
    // net's gists are not yet matched to their blocks).
    let model = base_model();
    let (plain, with_c) = (first_loss(&model, 0.0, 0.0), first_loss(&model, 0.0, 1.0));
    assert!(with_c > plain + 0.1, "{with_c} vs {plain}");
}

#[test]
fn the_surprisal_baseline_keeps_the_most_surprising_tokens() {
    use metarep_megacontext::eval::block_surprisal;
    let model = base_model();
    let windows = draw_windows(&docs(), SHAPE, 8, 3, "surprisal").unwrap();
    let s = block_surprisal(&model, &windows, SHAPE).unwrap();
    // The surprisal of a block token is the token run's cross-entropy at that position.
    let t = Tensor::from_vec(windows[0][..16].to_vec(), (1, 16), &Device::Cpu).unwrap();
    let lp = log_softmax_rows(&model.forward(t).unwrap());
    for j in 0..8 {
        let want = -lp[0][8 + j - 1][windows[0][8 + j] as usize];
        assert!(
            (s[0][j] - want).abs() < 1e-4,
            "offset {j}: {} vs {want}",
            s[0][j]
        );
    }
    let Replacement::Keep(kept) = Method::TopSurprisal(1)
        .replacement(&model, &windows, SHAPE)
        .unwrap()
    else {
        panic!("surprisal selection keeps tokens");
    };
    for (row, k) in s.iter().zip(&kept) {
        let best = (0..8).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(k, &vec![best]);
    }
    // Keeping every token is the full block; keeping none is refused.
    let all = delta_nll(
        &model,
        &windows,
        SHAPE,
        PositionRule::SpanEnd,
        Method::TopSurprisal(8),
        4,
    )
    .unwrap();
    assert!(all.iter().all(|d| d.abs() < 1e-5), "{all:?}");
    assert!(Method::TopSurprisal(0)
        .replacement(&model, &windows, SHAPE)
        .is_err());
}

#[test]
fn a_level2_gist_is_the_gist_of_its_sub_blocks_gists() {
    let model = base_model();
    let net = small_net(3, Skip::Mean);
    // Windows of 8 + 64 + 8 tokens: the 64-token block is 8 sub-blocks of 8.
    let shape = WindowShape {
        prefix: 8,
        block: 64,
        horizon: 8,
    };
    let windows = draw_windows(&docs(), shape, 3, 0, "level 2").unwrap();
    let Replacement::Vector(got) = Method::Gist2(&net)
        .replacement(&model, &windows, shape)
        .unwrap()
    else {
        panic!("a level-2 gist is one vector");
    };
    assert_eq!(got.dims(), [3, 32]);
    for (i, w) in windows.iter().enumerate() {
        let subs: Vec<Tensor> = (0..8)
            .map(|j| {
                let ids = Tensor::from_vec(w[8 + 8 * j..16 + 8 * j].to_vec(), (1, 8), &Device::Cpu)
                    .unwrap();
                net.forward(&model.token_embeddings(&ids).unwrap())
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
            })
            .collect();
        let want = net
            .forward(&Tensor::stack(&subs, 0).unwrap().unsqueeze(0).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap();
        let diff = max_abs_diff(&got.get(i).unwrap(), &want).unwrap();
        assert!(diff < 1e-5, "window {i}: {diff}");
    }
    let d = delta_nll(
        &model,
        &windows,
        shape,
        PositionRule::SpanEnd,
        Method::Gist2(&net),
        3,
    )
    .unwrap();
    let s = summarize(&Method::Gist2(&net), 64, &d, 1.0).unwrap();
    assert_eq!((s.method.as_str(), s.ratio), ("gistnet_level2", 64.0));
    // A block that is not B² tokens has no level-2 gist.
    assert!(Method::Gist2(&net)
        .replacement(&model, &windows, SHAPE)
        .is_err());
}

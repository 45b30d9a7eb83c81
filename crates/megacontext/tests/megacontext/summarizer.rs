//! GistNet as the gist tree's summariser: stored level-1 gists are GistNet's gists of the
//! blocks' token embeddings, level-2 gists GistNet's gists of the level-1 gists, and an edit
//! re-summarises only the path above it.

use candle_core::{DType, Device, Tensor};
use metarep_gist_tree::{
    FsyncPolicy, GistDType, NodeRef, Provenance, TreeConfig, Writer, WriterOptions,
};
use metarep_megacontext::{GistNet, GistNetConfig, GistNetSummarizer, Skip};
use metarep_model::{HookedTransformer, ModelConfig};

fn setup() -> (HookedTransformer, GistNet) {
    let model = HookedTransformer::random(
        ModelConfig::gpt2_like(1, 16, 2, 50, 64),
        5,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let cfg = GistNetConfig {
        d_model: 16,
        block: 4,
        width: 16,
        layers: 1,
        heads: 2,
        mlp: 32,
        skip: Skip::Last,
    };
    let net = GistNet::new(cfg, 2, &Device::Cpu).unwrap();
    for (name, v) in net.params() {
        if name.starts_with("proj_out") {
            v.set(&Tensor::randn(0f32, 0.1, v.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    (model, net)
}

/// A tree of arity 4 and gist `width` made by `summarizer`.
fn writer(dir: &std::path::Path, width: u32, summarizer: GistNetSummarizer) -> Writer {
    let cfg = TreeConfig {
        block: 4,
        width,
        dtype: GistDType::F32,
        segment_bytes: 1 << 16,
    };
    let opts = WriterOptions {
        fsync: FsyncPolicy::Off,
        ..WriterOptions::default()
    };
    Writer::create(dir, cfg, opts, Box::new(summarizer)).unwrap()
}

fn gist(net: &GistNet, children: Tensor) -> Vec<f32> {
    net.forward(&children.unsqueeze(0).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn the_tree_stores_gistnet_gists_at_every_level() {
    let (model, net) = setup();
    let dir = tempfile::tempdir().unwrap();
    let summarizer = GistNetSummarizer::new(net.clone(), model.clone(), 7);
    let mut w = writer(dir.path(), 16, summarizer);
    let tokens: Vec<u32> = (0..32).map(|i| (i * 11 % 50) as u32).collect();
    w.append(&tokens, &Provenance::default()).unwrap();
    w.commit().unwrap();
    let s = w.snapshot().unwrap();
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    let mut level1 = Vec::new();
    for j in 0..8u64 {
        let ids = Tensor::from_vec(
            tokens[4 * j as usize..4 * j as usize + 4].to_vec(),
            (1, 4),
            &Device::Cpu,
        )
        .unwrap();
        let emb = model.token_embeddings(&ids).unwrap().squeeze(0).unwrap();
        let want = gist(&net, emb);
        let got = s.gist(NodeRef::new(1, j)).unwrap();
        assert!(close(&got, &want), "level-1 gist {j}");
        level1.push(got);
    }
    let kids: Vec<f32> = level1[..4].concat();
    let want = gist(&net, Tensor::from_vec(kids, (4, 16), &Device::Cpu).unwrap());
    assert!(
        close(&s.gist(NodeRef::new(2, 0)).unwrap(), &want),
        "level-2 gist 0"
    );
    // An edit in block 5 re-summarises only its path: level-1 gist 5 and level-2 gist 1.
    let before: Vec<Vec<f32>> = (0..8)
        .map(|j| s.gist(NodeRef::new(1, j)).unwrap())
        .collect();
    let l2_before = s.gist(NodeRef::new(2, 0)).unwrap();
    w.edit(21, &[3], &Provenance::default()).unwrap();
    w.commit().unwrap();
    let s = w.snapshot().unwrap();
    for j in 0..8u64 {
        let same = s.gist(NodeRef::new(1, j)).unwrap() == before[j as usize];
        assert_eq!(same, j != 5, "level-1 gist {j}");
    }
    assert_eq!(s.gist(NodeRef::new(2, 0)).unwrap(), l2_before);
}

#[test]
fn a_tree_of_another_width_is_refused_with_a_reason() {
    let (model, net) = setup();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TreeConfig {
        block: 4,
        width: 8,
        dtype: GistDType::F32,
        segment_bytes: 1 << 16,
    };
    let summarizer = GistNetSummarizer::new(net, model, 1);
    let mut w = Writer::create(
        dir.path(),
        cfg,
        WriterOptions::default(),
        Box::new(summarizer),
    )
    .unwrap();
    w.append(&[1, 2, 3, 4], &Provenance::default()).unwrap();
    let err = w.commit().unwrap_err().to_string();
    assert!(err.contains("width 16"), "{err}");
}

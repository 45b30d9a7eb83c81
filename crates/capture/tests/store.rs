//! Capture to disk and read back, on the tiny GPT-2 parity fixture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use metarep_capture::{capture, CaptureSpec, Error, StoreMeta, StoreReader, TokenDataset};
use metarep_model::{HookFilter, HookPoint, HookedTransformer, Input, LoadOptions};

const CONTEXT: usize = 8;

fn model() -> HookedTransformer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/gpt2");
    HookedTransformer::from_dir(&dir, &LoadOptions::default()).unwrap()
}

/// 7 contexts of 8 tokens (+ 3 dropped) as a token-id file.
fn dataset(dir: &Path, vocab: u32) -> TokenDataset {
    let path = dir.join("data.ids");
    let lines: Vec<String> = (0..5u32)
        .map(|d| {
            (0..12u32)
                .map(|i| ((d * 31 + i * 7 + 1) % vocab).to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let data = TokenDataset::load(&path, None, CONTEXT).unwrap();
    assert_eq!((data.sequences.len(), data.dropped), (7, 4));
    data
}

fn spec(dtype: &str, max_contexts: Option<usize>) -> CaptureSpec {
    CaptureSpec {
        hooks: vec![HookPoint::ResidPost(0), HookPoint::MlpPost(1)],
        dtype: dtype.into(),
        shard_tokens: 2 * CONTEXT,
        batch_contexts: 3,
        model_name: "gpt2-fixture".into(),
        max_contexts,
    }
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            for (k, v) in files(&e.path()) {
                out.insert(format!("{}/{k}", e.file_name().to_string_lossy()), v);
            }
        } else {
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    out
}

/// Rows as exact bit patterns, sorted: a multiset to compare.
fn row_set(t: &Tensor) -> Vec<Vec<u32>> {
    let mut rows: Vec<Vec<u32>> = t
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f32::to_bits).collect())
        .collect();
    rows.sort();
    rows
}

#[test]
fn stored_rows_are_the_model_activations_and_each_epoch_reads_every_row_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model();
    let data = dataset(tmp.path(), model.config().d_vocab as u32);
    let out = tmp.path().join("acts");
    let report = capture(&model, &data, &out, &spec("f32", None), |_, _| {}).unwrap();
    assert!(report.complete);
    assert_eq!(report.tokens_total, 7 * CONTEXT);
    let store = &report.stores[0];
    assert!(store.ends_with("blocks.0.hook_resid_post"));
    let meta = StoreMeta::read(store).unwrap();
    assert_eq!(
        meta.shards.iter().map(|s| s.tokens).collect::<Vec<_>>(),
        [16, 16, 16, 8]
    );
    assert_eq!(meta.d_in, model.config().d_model);

    // The reference: the same activations computed in one pass.
    let input = Input::from_ids(&data.sequences, &Device::Cpu).unwrap();
    let (_, cache) = model
        .run_with_cache(input, HookFilter::patterns(&["blocks.0.hook_resid_post"]))
        .unwrap();
    let reference = cache
        .get(HookPoint::ResidPost(0))
        .unwrap()
        .reshape(((), meta.d_in))
        .unwrap();

    let shard_rows = 16;
    let mut reader = StoreReader::open(store, 7, 10).unwrap();
    let stored = Tensor::cat(
        &(0..4)
            .map(|i| reader.load_shard(i).unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    // The stored rows are the activations (up to batch-shape rounding).
    let max = metarep_core::compare::max_abs_diff(&stored, &reference).unwrap();
    assert!(max < 1e-5, "{max}");
    let mut orders = Vec::new();
    for epoch in 0..2 {
        reader.start_epoch(epoch).unwrap();
        let mut batches = Vec::new();
        while let Some(b) = reader.next_batch(4).unwrap() {
            assert!(reader.buffered_rows() <= 10 + shard_rows);
            batches.push(b);
        }
        let all = Tensor::cat(&batches, 0).unwrap();
        // Every stored row exactly once.
        assert_eq!(row_set(&all), row_set(&stored));
        orders.push(all.to_vec2::<f32>().unwrap());
    }
    assert_ne!(orders[0], orders[1]);
    // Buffers smaller than a batch, spanning several shards (rows served from several read
    // buffers, compacted), and holding the whole store: still every row once per epoch.
    for (buffer, batch) in [(1, 3), (40, 5), (1000, 7)] {
        let mut r = StoreReader::open(store, 3, buffer).unwrap();
        for epoch in 0..3 {
            r.start_epoch(epoch).unwrap();
            let mut batches = Vec::new();
            while let Some(b) = r.next_batch(batch).unwrap() {
                assert!(b.dim(0).unwrap() <= batch);
                assert!(r.buffered_rows() <= buffer.max(batch) + shard_rows);
                batches.push(b);
            }
            let all = Tensor::cat(&batches, 0).unwrap();
            assert_eq!(row_set(&all), row_set(&stored), "buffer {buffer}");
        }
    }
    // Same seed, same epoch: same order.
    let mut again = StoreReader::open(store, 7, 10).unwrap();
    let first = again
        .next_batch(4)
        .unwrap()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(first, orders[0][..4]);
}

#[test]
fn an_interrupted_capture_resumes_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model();
    let data = dataset(tmp.path(), model.config().d_vocab as u32);
    let whole = tmp.path().join("whole");
    capture(&model, &data, &whole, &spec("f16", None), |_, _| {}).unwrap();

    let parts = tmp.path().join("parts");
    let r = capture(&model, &data, &parts, &spec("f16", Some(3)), |_, _| {}).unwrap();
    assert!(!r.complete);
    // 3 contexts run, but only the first shard (2 contexts) is finished and listed.
    assert_eq!(r.tokens_total, 2 * CONTEXT);
    // What a crash can leave behind: a temporary file and a shard written but not listed.
    let store = parts.join("blocks.0.hook_resid_post");
    std::fs::write(store.join(".shard_000001.safetensors.tmp.1.2"), b"partial").unwrap();
    std::fs::write(store.join("shard_000001.safetensors"), b"garbage").unwrap();
    let r = capture(&model, &data, &parts, &spec("f16", Some(2)), |_, _| {}).unwrap();
    assert_eq!(r.resumed_at_context, 2);
    let r = capture(&model, &data, &parts, &spec("f16", None), |_, _| {}).unwrap();
    assert!(r.complete && r.resumed_at_context == 4);
    assert_eq!(files(&whole), files(&parts));
    // A finished store: nothing to do.
    let r = capture(&model, &data, &parts, &spec("f16", None), |_, _| {}).unwrap();
    assert_eq!((r.tokens_this_run, r.tokens_total), (0, 7 * CONTEXT));
}

#[test]
fn corrupt_shards_mismatched_settings_and_bad_data_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model();
    let data = dataset(tmp.path(), model.config().d_vocab as u32);
    let out = tmp.path().join("acts");
    capture(&model, &data, &out, &spec("bf16", None), |_, _| {}).unwrap();
    let store = out.join("blocks.1.mlp.hook_post");

    // Resuming with another dtype names the setting.
    let e = capture(&model, &data, &out, &spec("f32", None), |_, _| {}).unwrap_err();
    assert!(
        matches!(&e, Error::Mismatch { key, .. } if key == "dtype"),
        "{e}"
    );
    // Resuming with another checkpoint of the same architecture (same config, one weight
    // changed) is refused, naming both weight hashes.
    let mut named: std::collections::HashMap<String, Tensor> =
        model.weights().named_tensors().into_iter().collect();
    let w = named["blocks.0.attn.w_q"].clone();
    named.insert("blocks.0.attn.w_q".into(), (w + 1e-3).unwrap());
    let other = HookedTransformer::new(
        model.config().clone(),
        metarep_model::weights::Weights::from_named(model.config(), &named).unwrap(),
    )
    .unwrap();
    let e = capture(&other, &data, &out, &spec("bf16", None), |_, _| {}).unwrap_err();
    match &e {
        Error::Mismatch {
            key,
            stored,
            requested,
            ..
        } => {
            assert_eq!(key, "model_weights_sha256");
            assert_eq!(
                stored,
                &metarep_capture::store::weights_sha256(&model).unwrap()
            );
            assert_eq!(
                requested,
                &metarep_capture::store::weights_sha256(&other).unwrap()
            );
            assert_ne!(stored, requested);
        }
        other => panic!("{other}"),
    }

    // A flipped byte and a truncation are reported with the shard's name.
    let shard = store.join("shard_000002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let reader = StoreReader::open(&store, 0, 4).unwrap();
    let e = reader.load_shard(2).unwrap_err().to_string();
    assert!(
        e.contains("shard_000002.safetensors") && e.contains("corrupt"),
        "{e}"
    );
    std::fs::write(&shard, &bytes[..100]).unwrap();
    let mut reader = StoreReader::open(&store, 0, 1000).unwrap();
    let e = loop {
        match reader.next_batch(8) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("read a truncated shard as data"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(e.contains("shard_000002.safetensors"), "{e}");
    // An emptied shard and a deleted one are named too.
    std::fs::write(&shard, b"").unwrap();
    let e = reader.load_shard(2).unwrap_err().to_string();
    assert!(
        e.contains("shard_000002.safetensors") && e.contains("empty"),
        "{e}"
    );
    std::fs::remove_file(&shard).unwrap();
    let e = reader.load_shard(2).unwrap_err().to_string();
    assert!(e.contains("shard_000002.safetensors"), "{e}");

    // Datasets.
    let bad = tmp.path().join("bad.ids");
    std::fs::write(&bad, "1 2 3\n4 x 5\n").unwrap();
    let e = TokenDataset::load(&bad, None, 2).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("`x`"), "{e}");
    let e = TokenDataset::load(&tmp.path().join("data.csv"), None, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.csv"), "{e}");
    let short = tmp.path().join("short.jsonl");
    std::fs::write(&short, "{\"tokens\": [1, 2, 3]}\n").unwrap();
    let e = TokenDataset::load(&short, None, 8).unwrap_err().to_string();
    assert!(e.contains("not enough"), "{e}");
    std::fs::write(&short, "{\"text\": \"hello\"}\n").unwrap();
    let e = TokenDataset::load(&short, None, 1).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("tokenizer"), "{e}");
}

/// A fresh description of a store of width 3 holding `dtype` rows, one 2-token context a shard.
fn small_meta(dtype: &str) -> StoreMeta {
    StoreMeta {
        format_version: metarep_capture::store::FORMAT_VERSION,
        model: "m".into(),
        model_config_sha256: String::new(),
        model_weights_sha256: String::new(),
        hook: "blocks.0.hook_resid_post".into(),
        dtype: dtype.into(),
        d_in: 3,
        context: 2,
        contexts_per_shard: 1,
        dataset: "d".into(),
        dataset_sha256: String::new(),
        dataset_tokens: 6,
        shards: Vec::new(),
        complete: false,
    }
}

/// A store that a failed run left without a finished shard holds nothing to resume: a rerun
/// with other settings replaces it; once it holds a shard, other settings are refused.
#[test]
fn a_store_without_shards_is_replaced_by_a_rerun_with_other_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    drop(metarep_capture::StoreWriter::open(&dir, small_meta("f16")).unwrap());
    assert_eq!(StoreMeta::read(&dir).unwrap().dtype, "f16");
    let mut w = metarep_capture::StoreWriter::open(&dir, small_meta("f32")).unwrap();
    assert_eq!(StoreMeta::read(&dir).unwrap().dtype, "f32");
    w.push(Tensor::ones((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    w.finish_shard(false).unwrap();
    w.close().unwrap();
    let e = metarep_capture::StoreWriter::open(&dir, small_meta("f16")).unwrap_err();
    assert!(
        matches!(&e, Error::Mismatch { key, .. } if key == "dtype"),
        "{e}"
    );
}

#[test]
fn a_failed_background_shard_write_surfaces_and_stops_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let rows = Tensor::ones((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut w = metarep_capture::StoreWriter::open(&dir, small_meta("f16")).unwrap();
    w.push(rows.clone()).unwrap();
    w.finish_shard(true).unwrap();
    // A directory where the next shard's file should go: its background write fails.
    let blocker = dir.join("shard_000001.safetensors");
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    w.push(rows.clone()).unwrap();
    w.finish_shard(false).unwrap();
    let e = w.finish_shard(true).unwrap_err().to_string();
    assert!(e.contains("shard_000001"), "{e}");
    let e = w.push(rows).unwrap_err().to_string();
    assert!(e.contains("reopen the store"), "{e}");
    // meta.json lists only the shard that was written.
    assert_eq!(StoreMeta::read(&dir).unwrap().shards.len(), 1);
}

#[test]
fn skipped_positions_are_never_served_and_the_rest_once_per_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model();
    let data = dataset(tmp.path(), model.config().d_vocab as u32);
    let report = capture(
        &model,
        &data,
        &tmp.path().join("acts"),
        &spec("f32", None),
        |_, _| {},
    )
    .unwrap();
    let store = &report.stores[0];
    let all = StoreReader::open(store, 1, 5).unwrap();
    let stored = Tensor::cat(
        &(0..4)
            .map(|i| all.load_shard(i).unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let keep: Vec<u32> = (0..stored.dim(0).unwrap() as u32)
        .filter(|r| *r as usize % CONTEXT >= 2)
        .collect();
    let expected = stored
        .index_select(&Tensor::new(keep.as_slice(), &Device::Cpu).unwrap(), 0)
        .unwrap();
    let mut reader = StoreReader::open(store, 1, 5)
        .unwrap()
        .skip_positions(2)
        .unwrap();
    for epoch in 0..2 {
        reader.start_epoch(epoch).unwrap();
        let mut batches = Vec::new();
        while let Some(b) = reader.next_batch(3).unwrap() {
            batches.push(b);
        }
        let served = Tensor::cat(&batches, 0).unwrap();
        assert_eq!(row_set(&served), row_set(&expected));
    }
    let err = StoreReader::open(store, 1, 5)
        .unwrap()
        .skip_positions(CONTEXT)
        .unwrap_err()
        .to_string();
    assert!(err.contains("skip_positions 8"), "{err}");
}

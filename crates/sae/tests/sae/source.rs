//! Activation sources: determinism, epochs, skipping, windows, files, errors.

use candle_core::{DType, Device, Tensor};
use metarep_sae::{load_activations, ActivationSource, TensorSource};

fn rows(n: usize, d: usize) -> Tensor {
    Tensor::arange(0f32, (n * d) as f32, &Device::Cpu)
        .unwrap()
        .reshape((n, d))
        .unwrap()
}

fn epoch(s: &mut TensorSource, e: u64, batch: usize) -> Vec<Vec<f32>> {
    s.start_epoch(e).unwrap();
    let mut out = Vec::new();
    while let Some(b) = s.next_batch(batch).unwrap() {
        out.extend(b.x.to_vec2::<f32>().unwrap());
    }
    out
}

#[test]
fn epochs_are_permutations_fixed_by_the_seed() {
    let mut a = TensorSource::new(rows(50, 3), 1).unwrap();
    let mut b = TensorSource::new(rows(50, 3), 1).unwrap();
    let mut c = TensorSource::new(rows(50, 3), 2).unwrap();
    let (e0, e1) = (epoch(&mut a, 0, 8), epoch(&mut a, 1, 8));
    assert_eq!(e0.len(), 50);
    assert_eq!(e0, epoch(&mut b, 0, 8));
    assert_ne!(e0, e1);
    assert_ne!(e0, epoch(&mut c, 0, 8));
    let mut sorted = e0.clone();
    sorted.sort_by(|x, y| x[0].partial_cmp(&y[0]).unwrap());
    assert_eq!(sorted, rows(50, 3).to_vec2::<f32>().unwrap());
    // skip(n) = reading n batches.
    a.start_epoch(1).unwrap();
    a.skip(3, 8).unwrap();
    let next = a
        .next_batch(8)
        .unwrap()
        .unwrap()
        .x
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(next, e1[24..32].to_vec());
}

#[test]
fn windows_stay_whole_and_in_order() {
    let mut s = TensorSource::new(rows(24, 2), 3)
        .unwrap()
        .with_window(4)
        .unwrap();
    let e = epoch(&mut s, 0, 8);
    for w in e.chunks(4) {
        let first = w[0][0];
        assert_eq!(first % 8.0, 0.0, "a window starts at a multiple of 4 rows");
        for (t, r) in w.iter().enumerate() {
            assert_eq!(r[0], first + 2.0 * t as f32);
        }
    }
    assert!(
        s.next_batch(6).is_err(),
        "batch not a multiple of the window"
    );
    assert!(TensorSource::new(rows(10, 2), 0)
        .unwrap()
        .with_window(4)
        .is_err());
}

#[test]
fn files_load_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let x = rows(6, 4);
    let npy = dir.path().join("acts.npy");
    x.to_dtype(DType::F64).unwrap().write_npy(&npy).unwrap();
    let got = load_activations(&npy, None).unwrap();
    assert_eq!(
        got.data.to_vec2::<f32>().unwrap(),
        x.to_vec2::<f32>().unwrap()
    );
    assert!(got.seq_len.is_none());

    // Rank 3 [sequences, positions, d] with labels, in safetensors.
    let st = dir.path().join("acts.safetensors");
    let mut map = std::collections::HashMap::new();
    map.insert("activations".to_string(), x.reshape((2, 3, 4)).unwrap());
    map.insert(
        "labels".to_string(),
        Tensor::from_vec(vec![0i64, 1, 2, 0, 1, 2], 6, &Device::Cpu).unwrap(),
    );
    map.insert("other".to_string(), rows(2, 2));
    candle_core::safetensors::save(&map, &st).unwrap();
    let got = load_activations(&st, None).unwrap();
    assert_eq!(got.seq_len, Some(3));
    assert_eq!(got.data.dims(), &[6, 4]);
    let mut src = got.into_source(0, true).unwrap();
    assert_eq!(
        src.next_batch(3).unwrap().unwrap().labels.unwrap().dims(),
        &[3]
    );
    let e = load_activations(&st, Some("nope")).unwrap_err().to_string();
    assert!(
        e.contains("`nope`") && e.contains("acts.safetensors"),
        "{e}"
    );

    std::fs::write(dir.path().join("bad.npy"), b"not numpy").unwrap();
    let e = load_activations(&dir.path().join("bad.npy"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.npy"), "{e}");
    let e = load_activations(&dir.path().join("missing.npy"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.npy"), "{e}");
    std::fs::write(dir.path().join("x.csv"), b"1,2").unwrap();
    let e = load_activations(&dir.path().join("x.csv"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown activation format"), "{e}");

    let nan = Tensor::from_vec(vec![0f32, 1.0, f32::NAN, 2.0], (2, 2), &Device::Cpu).unwrap();
    let e = TensorSource::new(nan, 0).unwrap_err().to_string();
    assert!(e.contains("row 1 column 0"), "{e}");
    let e = TensorSource::new(rows(4, 2), 0)
        .unwrap()
        .with_labels(Tensor::zeros(3, DType::U32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels"), "{e}");
}

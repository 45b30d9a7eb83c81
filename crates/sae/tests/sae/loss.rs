//! Loss terms against direct computations.

use candle_core::{DType, Device, Tensor, Var};
use metarep_sae::loss::{cross_entropy, decorrelation, temporal};
use metarep_sae::Latents;

fn t(v: &[f64], shape: (usize, usize)) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

#[test]
fn decorrelation_is_zero_for_disjoint_latents_and_one_for_parallel_ones() {
    // Columns 0 and 1 never fire together; column 2 never fires (not live).
    let z = t(&[1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0], (3, 3));
    let v = decorrelation(&Latents::Dense(z), 3, 3)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(v.abs() < 1e-9, "{v}");
    // Two identical columns: cosine 1 for both ordered pairs, mean over 2 pairs = 1.
    let z = t(&[1.0, 2.0, 3.0, 6.0], (2, 2));
    let v = decorrelation(&Latents::Dense(z), 2, 2)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((v - 1.0).abs() < 1e-9, "{v}");
    // The sparse form gives the dense value, with gradients.
    let vals = Var::from_tensor(&t(&[1.0, 0.5, 2.0, 1.0], (2, 2))).unwrap();
    let idx = Tensor::from_vec(vec![0u32, 2, 0, 1], (2, 2), &Device::Cpu).unwrap();
    let sparse = Latents::Sparse {
        indices: idx,
        values: vals.as_tensor().clone(),
    };
    let dense = Latents::Dense(sparse.to_dense(3).unwrap());
    let a = decorrelation(&sparse, 2, 3).unwrap();
    let b = decorrelation(&dense, 2, 3)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((a.to_scalar::<f64>().unwrap() - b).abs() < 1e-12);
    assert!(a.backward().unwrap().get(vals.as_tensor()).is_some());
}

#[test]
fn temporal_and_cross_entropy_match_direct_sums() {
    // Windows of 2: pairs (0,1) and (2,3) only.
    let z = t(&[1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0], (4, 2));
    let v = temporal(&Latents::Dense(z.clone()), 2)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((v - (2.0 + 4.0) / 2.0).abs() < 1e-12, "{v}");
    // Sparse codes with the same content.
    let idx = Tensor::from_vec(vec![0u32, 1, 1, 0, 0, 1, 0, 1], (4, 2), &Device::Cpu).unwrap();
    let vals = t(&[1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 0.0], (4, 2));
    let s = temporal(
        &Latents::Sparse {
            indices: idx,
            values: vals,
        },
        2,
    )
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    assert!((s - v).abs() < 1e-12, "{s} vs {v}");
    assert!(temporal(&Latents::Dense(z), 1).is_err());

    let logits = t(&[2.0, 0.0, 0.0, 0.0, 1.0, 3.0], (2, 3));
    let labels = Tensor::from_vec(vec![0u32, 2], 2, &Device::Cpu).unwrap();
    let ce = cross_entropy(&logits, &labels)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let direct = |row: [f64; 3], y: usize| (row.iter().map(|v| v.exp()).sum::<f64>()).ln() - row[y];
    let want = (direct([2.0, 0.0, 0.0], 0) + direct([0.0, 1.0, 3.0], 2)) / 2.0;
    assert!((ce - want).abs() < 1e-12);
    let bad = Tensor::from_vec(vec![0u32, 3], 2, &Device::Cpu).unwrap();
    assert!(cross_entropy(&logits, &bad)
        .unwrap_err()
        .to_string()
        .contains("label 3"));
    let _ = DType::F64;
}

//! Per-neuron principal components and orthogonal matching pursuit.

use candle_core::{Device, Tensor};
use metarep_core::rng::{normal_vec, seeded};
use metarep_second_order::{neuron_pc, omp, NeuronPc};

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn dot(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum()
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    let d = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu).unwrap()
}

#[test]
fn pc_recovers_a_planted_direction_in_noise() {
    let (n, d) = (200, 24);
    let mut rng = seeded(1);
    let u = unit(&normal_vec(&mut rng, d, 0.0, 1.0).unwrap());
    let offset = normal_vec(&mut rng, d, 0.0, 1.0).unwrap();
    let scales = normal_vec(&mut rng, n, 0.0, 2.0).unwrap();
    let rows: Vec<Vec<f64>> = scales
        .iter()
        .map(|&s| {
            let noise = normal_vec(&mut rng, d, 0.0, 0.05).unwrap();
            (0..d).map(|j| offset[j] + s * u[j] + noise[j]).collect()
        })
        .collect();
    let pc = neuron_pc(&tensor(&rows), 50).unwrap();
    let cos = dot(&pc.direction, &u).abs();
    assert!(cos > 0.99, "cosine {cos}");
    let len: f64 = pc.direction.iter().map(|&v| (v as f64).powi(2)).sum();
    assert!((len - 1.0).abs() < 1e-5);
    assert!(
        pc.explained > 0.95 && pc.explained <= 1.0 + 1e-12,
        "{}",
        pc.explained
    );
    assert_eq!(pc.norms.len(), n);
    // The mean is the example mean; the threshold is the 50th largest norm.
    let mean0: f64 = rows.iter().map(|r| r[0]).sum::<f64>() / n as f64;
    assert!((pc.mean[0] as f64 - mean0).abs() < 1e-5);
    let mut sorted = pc.norms.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(pc.threshold, sorted[49]);
    // Serializable.
    let back: NeuronPc = serde_json::from_str(&serde_json::to_string(&pc).unwrap()).unwrap();
    assert_eq!(back, pc);
}

#[test]
fn pc_sign_makes_most_top_examples_project_positively() {
    let u = unit(&[1.0, -2.0, 0.5, 0.0, 3.0, 1.0, -1.0, 0.25]); // d = 8
                                                                // 10 examples at +5u, 5 at −4u, 85 at zero: after centring the top 15 are the first two
                                                                // groups, 10 of them on the +u side.
    let mut rows = Vec::new();
    for i in 0..100 {
        let s = if i < 10 {
            5.0
        } else if i < 15 {
            -4.0
        } else {
            0.0
        };
        rows.push(u.iter().map(|x| s * x).collect::<Vec<f64>>());
    }
    let pc = neuron_pc(&tensor(&rows), 15).unwrap();
    assert!(dot(&pc.direction, &u) > 0.999);
    assert!((pc.threshold - 4.3).abs() < 1e-4, "{}", pc.threshold);
    let neg: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().map(|x| -x).collect())
        .collect();
    let pc = neuron_pc(&tensor(&neg), 15).unwrap();
    assert!(dot(&pc.direction, &u) < -0.999);
}

#[test]
fn pc_clamps_k_and_rejects_bad_input() {
    let rows = vec![
        vec![1.0, 0.0, 0.0],
        vec![0.0, 2.0, 0.0],
        vec![0.0, 0.0, 3.0],
    ];
    let pc = neuron_pc(&tensor(&rows), 1000).unwrap();
    assert_eq!(pc.norms.len(), 3);
    let min = pc.norms.iter().copied().fold(f32::INFINITY, f32::min);
    assert_eq!(pc.threshold, min);

    let empty = Tensor::zeros((0, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(neuron_pc(&empty, 5)
        .unwrap_err()
        .to_string()
        .contains("non-empty"));
    let flat = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(neuron_pc(&flat, 5)
        .unwrap_err()
        .to_string()
        .contains("[examples, d]"));
    assert!(neuron_pc(&tensor(&rows), 0)
        .unwrap_err()
        .to_string()
        .contains("k"));
}

/// `n` random unit atoms of width `d`.
fn atoms(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = seeded(seed);
    (0..n)
        .map(|_| unit(&normal_vec(&mut rng, d, 0.0, 1.0).unwrap()))
        .collect()
}

#[test]
fn omp_recovers_a_sparse_combination() {
    let a = atoms(60, 32, 2);
    let target: Vec<f32> = (0..32)
        .map(|j| (2.0 * a[5][j] - 1.5 * a[17][j] + 0.7 * a[40][j]) as f32)
        .collect();
    let r = omp(&target, &tensor(&a), 3).unwrap();
    let mut chosen = r.atoms.clone();
    chosen.sort();
    assert_eq!(chosen, vec![5, 17, 40]);
    assert!(r.cosine > 0.9999, "cosine {}", r.cosine);
    for (&i, &c) in r.atoms.iter().zip(&r.coefficients) {
        let want = match i {
            5 => 2.0,
            17 => -1.5,
            _ => 0.7,
        };
        assert!((c - want).abs() < 1e-4, "atom {i}: {c} vs {want}");
    }
    // An exact single atom stops after one pick even when more are allowed.
    let one: Vec<f32> = a[9].iter().map(|&v| (3.0 * v) as f32).collect();
    let r = omp(&one, &tensor(&a), 10).unwrap();
    assert_eq!(r.atoms, vec![9]);
    assert!((r.coefficients[0] - 3.0).abs() < 1e-5);
}

#[test]
fn omp_with_more_picks_than_atoms_and_zero_target() {
    let a = atoms(4, 16, 3);
    let mut rng = seeded(4);
    let target: Vec<f32> = normal_vec(&mut rng, 16, 0.0, 1.0)
        .unwrap()
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let r = omp(&target, &tensor(&a), 10).unwrap();
    assert_eq!(r.atoms.len(), 4);
    assert_eq!(r.coefficients.len(), 4);
    assert!(r.cosine > 0.0 && r.cosine < 1.0);

    let r = omp(&[0.0; 16], &tensor(&a), 3).unwrap();
    assert!(r.atoms.is_empty() && r.coefficients.is_empty());
    assert_eq!(r.cosine, 0.0);
}

#[test]
fn omp_rejects_bad_shapes() {
    let a = tensor(&atoms(5, 8, 5));
    assert!(omp(&[1.0; 7], &a, 2)
        .unwrap_err()
        .to_string()
        .contains("d = 8"));
    assert!(omp(&[1.0; 8], &a, 0).unwrap_err().to_string().contains("m"));
    let flat = a.flatten_all().unwrap();
    assert!(omp(&[1.0; 40], &flat, 2)
        .unwrap_err()
        .to_string()
        .contains("[n_atoms, d]"));
    let scaled = (&a * 2.0).unwrap();
    assert!(omp(&[1.0; 8], &scaled, 2)
        .unwrap_err()
        .to_string()
        .contains("atom 0"));
    assert!(omp(&[f32::NAN; 8], &a, 2).is_err());
}

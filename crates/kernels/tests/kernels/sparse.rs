//! The sparse ops against their dense definitions (values and gradients, f32 and f64), edge
//! cases and argument errors.

use candle_core::{DType, Device, Tensor, Var};
use metarep_kernels::{gather_dot, scatter_outer, sparse_decode, Error, INACTIVE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common;
use common::{on_one_thread, randn};

const B: usize = 7;
const K: usize = 5;
const N: usize = 23;
const D: usize = 19;

/// Random indices with repeats within rows (forced in row 0) and some INACTIVE slots.
fn indices(rng: &mut ChaCha8Rng) -> (Tensor, Vec<u32>) {
    let mut v: Vec<u32> = (0..B * K).map(|_| rng.random_range(0..N as u32)).collect();
    v[1] = v[0];
    v[K + 2] = INACTIVE;
    v[3 * K + 4] = INACTIVE;
    (
        Tensor::from_vec(v.clone(), (B, K), &Device::Cpu).unwrap(),
        v,
    )
}

/// One-hot `[B, K, N]` of the indices (INACTIVE → all-zero row).
fn one_hot(idx: &[u32], dtype: DType) -> Tensor {
    let mut s = vec![0f64; B * K * N];
    for (p, &i) in idx.iter().enumerate() {
        if i != INACTIVE {
            s[p * N + i as usize] = 1.0;
        }
    }
    Tensor::from_vec(s, (B, K, N), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .max(1.0);
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    d / scale
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-5
    } else {
        1e-13
    }
}

#[test]
fn sparse_decode_equals_dense_values_and_gradients() {
    for dtype in [DType::F32, DType::F64] {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (idx, idx_v) = indices(&mut rng);
        let vals = Var::from_tensor(&randn(&mut rng, (B, K), dtype)).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, (N, D), dtype)).unwrap();
        let r = randn(&mut rng, (B, D), dtype);

        let out = sparse_decode(&idx, vals.as_tensor(), w.as_tensor()).unwrap();
        let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();

        // Dense: A[b] = Σ_j vals[b,j] onehot(idx[b,j]); out = A W.
        let s = one_hot(&idx_v, dtype);
        let a = vals
            .as_tensor()
            .unsqueeze(1)
            .unwrap()
            .matmul(&s)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let dense = a.matmul(w.as_tensor()).unwrap();
        let dgrads = (&dense * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();

        assert!(max_rel(&out, &dense) < tol(dtype), "{dtype:?} forward");
        for (name, v) in [("values", vals.as_tensor()), ("weight", w.as_tensor())] {
            let e = max_rel(grads.get(v).unwrap(), dgrads.get(v).unwrap());
            assert!(e < tol(dtype), "{dtype:?} grad {name}: {e}");
        }
        // Repeated indices add up: row 0 slots 0 and 1 name the same latent.
        assert!(
            grads
                .get(vals.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap()[0][0]
                != 0.0
        );
        // An INACTIVE slot gets no gradient.
        let gv = grads
            .get(vals.as_tensor())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        assert_eq!(gv[1][2], 0.0);
    }
}

#[test]
fn gather_dot_equals_dense_values_and_gradients() {
    for dtype in [DType::F32, DType::F64] {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (idx, idx_v) = indices(&mut rng);
        let x = Var::from_tensor(&randn(&mut rng, (B, D), dtype)).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, (N, D), dtype)).unwrap();
        let r = randn(&mut rng, (B, K), dtype);

        let out = gather_dot(&idx, x.as_tensor(), w.as_tensor()).unwrap();
        let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();

        // Dense: P = X Wᵀ, out[b,j] = onehot(idx[b,j]) · P[b].
        let p = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let s = one_hot(&idx_v, dtype);
        let dense = s
            .matmul(&p.unsqueeze(2).unwrap())
            .unwrap()
            .squeeze(2)
            .unwrap();
        let dgrads = (&dense * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();

        assert!(max_rel(&out, &dense) < tol(dtype), "{dtype:?} forward");
        for (name, v) in [("input", x.as_tensor()), ("weight", w.as_tensor())] {
            let e = max_rel(grads.get(v).unwrap(), dgrads.get(v).unwrap());
            assert!(e < tol(dtype), "{dtype:?} grad {name}: {e}");
        }
    }
}

#[test]
fn weight_gradient_touches_only_named_rows_and_scatter_outer_is_a_t_x() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (idx, idx_v) = indices(&mut rng);
    let vals = randn(&mut rng, (B, K), DType::F64);
    let x = randn(&mut rng, (B, D), DType::F64);
    let g = scatter_outer(&idx, &vals, &x, N).unwrap();
    let s = one_hot(&idx_v, DType::F64);
    let a = vals
        .unsqueeze(1)
        .unwrap()
        .matmul(&s)
        .unwrap()
        .squeeze(1)
        .unwrap();
    let dense = a.t().unwrap().matmul(&x).unwrap();
    assert!(max_rel(&g, &dense) < 1e-13);
    let rows = g.abs().unwrap().sum(1).unwrap().to_vec1::<f64>().unwrap();
    for (i, r) in rows.iter().enumerate() {
        let named = idx_v.contains(&(i as u32));
        assert_eq!(*r != 0.0, named, "row {i}");
    }
}

#[test]
fn no_active_slots_give_zero_outputs_and_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let w = Var::from_tensor(&randn(&mut rng, (N, D), DType::F32)).unwrap();
    let x = randn(&mut rng, (B, D), DType::F32);
    // k = 0 and all-INACTIVE slots.
    let empty = Tensor::zeros((B, 0), DType::U32, &Device::Cpu).unwrap();
    let vals0 = Tensor::zeros((B, 0), DType::F32, &Device::Cpu).unwrap();
    let out = sparse_decode(&empty, &vals0, w.as_tensor()).unwrap();
    assert_eq!(out.dims(), &[B, D]);
    assert!(out
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .flatten()
        .all(|&v| v == 0.0));
    assert_eq!(
        gather_dot(&empty, &x, w.as_tensor()).unwrap().dims(),
        &[B, 0]
    );

    let inactive = Tensor::from_vec(vec![INACTIVE; B * K], (B, K), &Device::Cpu).unwrap();
    let vals = Var::from_tensor(&randn(&mut rng, (B, K), DType::F32)).unwrap();
    let out = sparse_decode(&inactive, vals.as_tensor(), w.as_tensor()).unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    assert!(out
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .flatten()
        .all(|&v| v == 0.0));
    for v in [vals.as_tensor(), w.as_tensor()] {
        let g = grads.get(v).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(g.to_scalar::<f32>().unwrap(), 0.0);
    }
    let z = gather_dot(&inactive, &x, w.as_tensor()).unwrap();
    assert!(z
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .flatten()
        .all(|&v| v == 0.0));
}

#[test]
fn bad_arguments_are_errors_naming_the_problem() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (idx, _) = indices(&mut rng);
    let vals = randn(&mut rng, (B, K), DType::F32);
    let w = randn(&mut rng, (N, D), DType::F32);
    let x = randn(&mut rng, (B, D), DType::F32);

    let msg = |r: Result<Tensor, Error>| r.unwrap_err().to_string();
    let e = msg(sparse_decode(
        &idx,
        &randn(&mut rng, (B, K + 1), DType::F32),
        &w,
    ));
    assert!(
        e.contains("sparse_decode") && e.contains("values") && e.contains("[7, 5]"),
        "{e}"
    );
    let e = msg(sparse_decode(&idx, &vals, &w.to_dtype(DType::F64).unwrap()));
    assert!(e.contains("weight") && e.contains("F64"), "{e}");
    let e = msg(sparse_decode(&idx.to_dtype(DType::F32).unwrap(), &vals, &w));
    assert!(e.contains("indices must be u32"), "{e}");
    let e = msg(sparse_decode(&idx, &vals, &w.flatten_all().unwrap()));
    assert!(e.contains("weight must have rank 2"), "{e}");
    let e = msg(gather_dot(
        &idx,
        &randn(&mut rng, (B, D + 1), DType::F32),
        &w,
    ));
    assert!(e.contains("gather_dot") && e.contains("input"), "{e}");
    let e = msg(scatter_outer(
        &idx,
        &vals,
        &randn(&mut rng, (B + 1, D), DType::F32),
        N,
    ));
    assert!(e.contains("rows"), "{e}");

    let mut bad = vec![0u32; B * K];
    bad[2 * K + 3] = N as u32;
    let bad = Tensor::from_vec(bad, (B, K), &Device::Cpu).unwrap();
    let e = msg(sparse_decode(&bad, &vals, &w));
    assert!(
        e.contains("index 23") && e.contains("row 2") && e.contains("slot 3"),
        "{e}"
    );
    let e = msg(gather_dot(&bad, &x, &w));
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (idx, _) = indices(&mut rng);
    let vals = randn(&mut rng, (B, K), DType::F32);
    let x = randn(&mut rng, (B, D), DType::F32);
    let run = || {
        scatter_outer(&idx, &vals, &x, N)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let many = run();
    assert_eq!(many, on_one_thread(run));
}

#[test]
fn shapes_spanning_several_tiles_and_latent_groups_match_dense() {
    // 600 rows > one 512-row tile, 300 latents > one 64-latent group.
    let (b, k, n, d) = (600, 9, 300, 33);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let idx_v: Vec<u32> = (0..b * k).map(|_| rng.random_range(0..n as u32)).collect();
    let idx = Tensor::from_vec(idx_v.clone(), (b, k), &Device::Cpu).unwrap();
    let vals = randn(&mut rng, (b, k), DType::F64);
    let x = randn(&mut rng, (b, d), DType::F64);
    let w = randn(&mut rng, (n, d), DType::F64);
    let mut a = vec![0f64; b * n];
    let vv = vals.to_vec2::<f64>().unwrap();
    for (p, &i) in idx_v.iter().enumerate() {
        a[(p / k) * n + i as usize] += vv[p / k][p % k];
    }
    let a = Tensor::from_vec(a, (b, n), &Device::Cpu).unwrap();
    let dec = sparse_decode(&idx, &vals, &w).unwrap();
    assert!(max_rel(&dec, &a.matmul(&w).unwrap()) < 1e-13);
    let so = scatter_outer(&idx, &vals, &x, n).unwrap();
    assert!(max_rel(&so, &a.t().unwrap().matmul(&x).unwrap()) < 1e-13);
    let gd = gather_dot(&idx, &x, &w).unwrap().to_vec2::<f64>().unwrap();
    let p = x.matmul(&w.t().unwrap()).unwrap().to_vec2::<f64>().unwrap();
    for (q, &i) in idx_v.iter().enumerate() {
        assert!((gd[q / k][q % k] - p[q / k][i as usize]).abs() < 1e-12);
    }
    let (dec1, so1) = on_one_thread(|| {
        (
            sparse_decode(&idx, &vals, &w).unwrap(),
            scatter_outer(&idx, &vals, &x, n).unwrap(),
        )
    });
    assert_eq!(
        dec.to_vec2::<f64>().unwrap(),
        dec1.to_vec2::<f64>().unwrap()
    );
    assert_eq!(so.to_vec2::<f64>().unwrap(), so1.to_vec2::<f64>().unwrap());
}

#[test]
fn gather_vector_reads_the_bias_and_scatters_its_gradient() {
    let idx = Tensor::from_vec(vec![2u32, 0, 2, INACTIVE], (2, 2), &Device::Cpu).unwrap();
    let v = Var::from_tensor(&Tensor::new(&[1.0f64, 2.0, 3.0], &Device::Cpu).unwrap()).unwrap();
    let out = metarep_kernels::gather_vector(&idx, v.as_tensor()).unwrap();
    assert_eq!(
        out.to_vec2::<f64>().unwrap(),
        vec![vec![3.0, 1.0], vec![3.0, 0.0]]
    );
    let w = Tensor::new(&[[1.0f64, 10.0], [100.0, 1000.0]], &Device::Cpu).unwrap();
    let g = (out * w).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(
        g.get(v.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
        vec![10.0, 0.0, 101.0]
    );
    let bad = Tensor::from_vec(vec![3u32], (1, 1), &Device::Cpu).unwrap();
    assert!(metarep_kernels::gather_vector(&bad, v.as_tensor())
        .unwrap_err()
        .to_string()
        .contains("index 3"));
}

#[test]
fn to_dense_sums_slots_and_gathers_its_gradient() {
    let idx = Tensor::from_vec(vec![1u32, 1, INACTIVE, 0], (2, 2), &Device::Cpu).unwrap();
    let v = Var::from_tensor(&Tensor::new(&[[1.0f32, 2.0], [5.0, 3.0]], &Device::Cpu).unwrap())
        .unwrap();
    let d = metarep_kernels::to_dense(&idx, v.as_tensor(), 3).unwrap();
    assert_eq!(
        d.to_vec2::<f32>().unwrap(),
        vec![vec![0.0, 3.0, 0.0], vec![3.0, 0.0, 0.0]]
    );
    let w = Tensor::new(&[[1.0f32, 10.0, 100.0], [1000.0, 1e4, 1e5]], &Device::Cpu).unwrap();
    let g = (d * w).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(
        g.get(v.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
        vec![vec![10.0, 10.0], vec![0.0, 1000.0]]
    );
}

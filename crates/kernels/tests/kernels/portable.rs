//! The candle-op twins of the kernels (`metarep_kernels::portable`, what non-CPU devices run)
//! against the CPU kernels, on the CPU: values, gradients, inactive slots, wide rows that the
//! chunked top-k splits, and argument errors.

use candle_core::{DType, Device, Tensor, Var};
use metarep_kernels::{portable, Selection, INACTIVE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common;
use common::{adam_step, max_diff, randn};

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(24)
}

fn same_selection(a: &Selection, b: &Selection, tol: f64) {
    assert_eq!(a.indices.dims(), b.indices.dims());
    assert_eq!(
        a.indices.to_vec2::<u32>().unwrap(),
        b.indices.to_vec2::<u32>().unwrap()
    );
    assert!(max_diff(&a.values, &b.values) <= tol);
}

/// Random `[b, k]` indices below `n` with some INACTIVE slots and a repeat in row 0.
fn indices(rng: &mut ChaCha8Rng, b: usize, k: usize, n: usize) -> Tensor {
    let mut v: Vec<u32> = (0..b * k).map(|_| rng.random_range(0..n as u32)).collect();
    v[1] = v[0];
    v[k + 2] = INACTIVE;
    v[2 * k] = INACTIVE;
    Tensor::from_vec(v, (b, k), &Device::Cpu).unwrap()
}

#[test]
fn topk_agrees_on_narrow_and_chunked_rows_with_masked_columns() {
    let mut r = rng();
    for (n, k) in [(40, 5), (portable::SORT_CHUNK * 2 + 517, 33)] {
        for dtype in [DType::F32, DType::F64] {
            let x = randn(&mut r, (6, n), dtype);
            // An offset that excludes two columns in three (-inf is never selected).
            let off: Vec<f64> = (0..n)
                .map(|c| if c % 3 == 0 { 0.1 } else { f64::NEG_INFINITY })
                .collect();
            let off = Tensor::from_vec(off, n, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let kernel = metarep_kernels::topk_per_row(&x, k, None).unwrap();
            same_selection(&portable::topk_per_row(&x, k, None).unwrap(), &kernel, 0.0);
            let kernel = metarep_kernels::topk_per_row(&x, k, Some(&off)).unwrap();
            same_selection(
                &portable::topk_per_row(&x, k, Some(&off)).unwrap(),
                &kernel,
                0.0,
            );
        }
    }
    let sparse = Tensor::from_vec(
        vec![f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, f32::NEG_INFINITY],
        (1, 4),
        &Device::Cpu,
    )
    .unwrap();
    let sel = portable::topk_per_row(&sparse, 3, None).unwrap();
    assert_eq!(
        sel.indices.to_vec2::<u32>().unwrap(),
        [[1, INACTIVE, INACTIVE]]
    );
    assert_eq!(sel.values.to_vec2::<f32>().unwrap(), [[1.0, 0.0, 0.0]]);
}

#[test]
fn topk_of_product_agrees() {
    let mut r = rng();
    let (x, w) = (
        randn(&mut r, (9, 16), DType::F32),
        randn(&mut r, (5000, 16), DType::F32),
    );
    let bias = randn(&mut r, 5000, DType::F32);
    let requests = [(32, Some(&bias)), (7, None)];
    let kernel = metarep_kernels::topk_of_product(&x, &w, &requests).unwrap();
    let twin = portable::topk_of_product(&x, &w, &requests).unwrap();
    for (a, b) in twin.iter().zip(&kernel) {
        same_selection(a, b, 1e-5);
    }
}

#[test]
fn select_above_and_batch_topk_agree() {
    let mut r = rng();
    let x = randn(&mut r, (8, 300), DType::F32);
    let thr = randn(&mut r, 300, DType::F32).affine(0.5, 0.4).unwrap();
    same_selection(
        &portable::select_above(&x, None, &thr).unwrap(),
        &metarep_kernels::select_above(&x, None, &thr).unwrap(),
        0.0,
    );
    for total in [0, 1, 40, 700, 5000] {
        let (a, ta) = portable::batch_topk(&x, total, None).unwrap();
        let (b, tb) = metarep_kernels::batch_topk(&x, total, None).unwrap();
        same_selection(&a, &b, 0.0);
        assert_eq!(ta, tb, "threshold at total {total}");
    }
}

#[test]
fn a_nan_is_an_error_naming_its_row() {
    let mut x = vec![0.5f32; 2 * 10];
    x[13] = f32::NAN;
    let x = Tensor::from_vec(x, (2, 10), &Device::Cpu).unwrap();
    let err = portable::topk_per_row(&x, 2, None).unwrap_err().to_string();
    assert!(err.contains("row 1"), "{err}");
    assert!(portable::topk_per_row(&x, 11, None).is_err());
}

#[test]
fn sparse_ops_and_their_gradients_agree() {
    let mut r = rng();
    let (b, k, n, d) = (7, 5, 23, 19);
    for dtype in [DType::F32, DType::F64] {
        let idx = indices(&mut r, b, k, n);
        let w = Var::from_tensor(&randn(&mut r, (n, d), dtype)).unwrap();
        let vals = Var::from_tensor(&randn(&mut r, (b, k), dtype)).unwrap();
        let x = Var::from_tensor(&randn(&mut r, (b, d), dtype)).unwrap();
        let bias = Var::from_tensor(&randn(&mut r, n, dtype)).unwrap();
        let probe_d = randn(&mut r, (b, d), dtype);
        let probe_k = randn(&mut r, (b, k), dtype);
        let probe_n = randn(&mut r, (b, n), dtype);
        // One scalar through all four differentiable ops, once per implementation.
        let loss = |dec: Tensor, dot: Tensor, vec: Tensor, dense: Tensor| {
            let a = (dec * &probe_d).unwrap().sum_all().unwrap();
            let c = (dot * &probe_k).unwrap().sum_all().unwrap();
            let e = (vec * &probe_k).unwrap().sum_all().unwrap();
            let f = (dense * &probe_n).unwrap().sum_all().unwrap();
            (((a + c).unwrap() + e).unwrap() + f).unwrap()
        };
        let kernel = loss(
            metarep_kernels::sparse_decode(&idx, &vals, &w).unwrap(),
            metarep_kernels::gather_dot(&idx, &x, &w).unwrap(),
            metarep_kernels::gather_vector(&idx, &bias).unwrap(),
            metarep_kernels::to_dense(&idx, &vals, n).unwrap(),
        );
        let twin = loss(
            portable::sparse_decode(&idx, &vals, &w).unwrap(),
            portable::gather_dot(&idx, &x, &w).unwrap(),
            portable::gather_vector(&idx, &bias).unwrap(),
            portable::to_dense(&idx, &vals, n).unwrap(),
        );
        let tol = if dtype == DType::F32 { 1e-4 } else { 1e-10 };
        assert!(max_diff(&kernel, &twin) <= tol);
        let (gk, gt) = (kernel.backward().unwrap(), twin.backward().unwrap());
        for v in [&w, &vals, &x, &bias] {
            let (a, b) = (gk.get(v).unwrap(), gt.get(v).unwrap());
            assert!(
                max_diff(a, b) <= tol,
                "gradient differs by {}",
                max_diff(a, b)
            );
        }
        let probe = randn(&mut r, (b, k), dtype);
        assert!(
            max_diff(
                &portable::scatter_outer(&idx, &probe, &x, n).unwrap(),
                &metarep_kernels::scatter_outer(&idx, &probe, &x, n).unwrap()
            ) <= tol
        );
    }
}

#[test]
fn an_index_past_the_weight_is_an_error() {
    let w = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
    let idx = Tensor::from_vec(vec![1u32, 4], (1, 2), &Device::Cpu).unwrap();
    let vals = Tensor::ones((1, 2), DType::F32, &Device::Cpu).unwrap();
    let err = portable::sparse_decode(&idx, &vals, &w)
        .unwrap_err()
        .to_string();
    assert!(err.contains("index 4"), "{err}");
}

#[test]
fn dense_ops_agree() {
    let mut r = rng();
    let x = Var::from_tensor(&randn(&mut r, (6, 10), DType::F64)).unwrap();
    let w = Var::from_tensor(&randn(&mut r, (12, 10), DType::F64)).unwrap();
    let bias = Var::from_tensor(&randn(&mut r, 12, DType::F64)).unwrap();
    for relu in [false, true] {
        let a = metarep_kernels::linear_encode(&x, &w, &bias, relu).unwrap();
        let b = portable::linear_encode(&x, &w, &bias, relu).unwrap();
        assert!(max_diff(&a, &b) <= 1e-12);
        let (ga, gb) = (
            a.sum_all().unwrap().backward().unwrap(),
            b.sum_all().unwrap().backward().unwrap(),
        );
        for v in [&w, &bias] {
            assert!(max_diff(ga.get(v).unwrap(), gb.get(v).unwrap()) <= 1e-12);
        }
    }
    let t = x.as_tensor();
    assert!(
        max_diff(
            &portable::column_sums(t).unwrap(),
            &metarep_kernels::column_sums(t).unwrap()
        ) <= 1e-12
    );
    assert_eq!(
        portable::count_positive(t).unwrap(),
        metarep_kernels::count_positive(t).unwrap()
    );
}

#[test]
fn in_place_updates_agree() {
    let mut r = rng();
    let mut w = randn(&mut r, (5, 7), DType::F32);
    let zero_row = Tensor::zeros((1, 7), DType::F32, &Device::Cpu).unwrap();
    w = Tensor::cat(&[&w, &zero_row], 0).unwrap();
    let (a, b) = (w.copy().unwrap(), w.copy().unwrap());
    metarep_kernels::normalize_rows_(&a).unwrap();
    portable::normalize_rows_(&b).unwrap();
    assert!(max_diff(&a, &b) <= 1e-6);
    assert!(max_diff(&b, &w) > 0.01, "normalisation changed nothing");

    let step = adam_step(3);
    let state = |r: &mut ChaCha8Rng| {
        let p = randn(r, (4, 6), DType::F64);
        let m = randn(r, (4, 6), DType::F64);
        let v = randn(r, (4, 6), DType::F64).abs().unwrap();
        (p, m, v)
    };
    let grad = randn(&mut r, (4, 6), DType::F64);
    let (p, m, v) = state(&mut r);
    let (p2, m2, v2) = (p.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
    metarep_kernels::adamw_update(&p, &grad, &m, &v, &step).unwrap();
    portable::adamw_update(&p2, &grad, &m2, &v2, &step).unwrap();
    for (a, b) in [(&p, &p2), (&m, &m2), (&v, &v2)] {
        assert!(max_diff(a, b) <= 1e-12);
    }
}

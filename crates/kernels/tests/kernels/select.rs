//! Selection kernels against sort-based references; the fused AdamW and row normalisation
//! against their formulas.

use candle_core::{DType, Device, Tensor};
use metarep_kernels::{
    adamw_update, batch_topk, normalize_rows_, select_above, topk_per_row, INACTIVE,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common;
use common::adam_step;

/// Rows with many ties (values on a coarse grid).
fn coarse(rng: &mut ChaCha8Rng, b: usize, n: usize) -> Vec<f64> {
    (0..b * n)
        .map(|_| rng.random_range(-4..5) as f64 * 0.5)
        .collect()
}

/// Reference: sort (value desc, column asc), keep the first k that are not -inf.
fn reference_topk(row: &[f64], k: usize) -> Vec<(u32, f64)> {
    let mut e: Vec<(u32, f64)> = row
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    e.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    e.into_iter()
        .filter(|e| e.1 != f64::NEG_INFINITY)
        .take(k)
        .collect()
}

/// `v` as a tensor of `shape` in `dtype`.
fn tensor(v: &[f64], shape: impl Into<candle_core::Shape>, dtype: DType) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn rows_of(sel: &metarep_kernels::Selection) -> Vec<Vec<(u32, f64)>> {
    let idx = sel.indices.to_vec2::<u32>().unwrap();
    let val = sel
        .values
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    idx.iter()
        .zip(&val)
        .map(|(i, v)| {
            i.iter()
                .zip(v)
                .filter(|(i, _)| **i != INACTIVE)
                .map(|(i, v)| (*i, *v))
                .collect()
        })
        .collect()
}

#[test]
fn topk_matches_a_full_sort_with_ties_offsets_and_masks() {
    let (b, n) = (9, 40);
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let x = coarse(&mut rng, b, n);
    let mut off: Vec<f64> = (0..n).map(|i| (i % 3) as f64 * 0.5).collect();
    off[5] = f64::NEG_INFINITY; // a masked column
    for dtype in [DType::F32, DType::F64] {
        let (xt, ot) = (tensor(&x, (b, n), dtype), tensor(&off, n, dtype));
        for k in [0, 1, 7, n - 1, n] {
            let got = rows_of(&topk_per_row(&xt, k, Some(&ot)).unwrap());
            for r in 0..b {
                let row: Vec<f64> = (0..n).map(|i| x[r * n + i] + off[i]).collect();
                assert_eq!(got[r], reference_topk(&row, k), "{dtype:?} k = {k} row {r}");
            }
        }
        // k = n with a masked column leaves exactly one padded slot per row.
        let sel = topk_per_row(&xt, n, Some(&ot)).unwrap();
        assert_eq!(sel.indices.dims(), &[b, n]);
        assert!(sel
            .indices
            .to_vec2::<u32>()
            .unwrap()
            .iter()
            .all(|r| r[n - 1] == INACTIVE));
    }
}

#[test]
fn topk_of_long_rows_matches_a_full_sort_with_ties_and_masked_stretches() {
    // Rows of many 32-entry blocks, so the bound from the blocks' maxima prunes: coarse values
    // (ties across blocks), a row masked but for a few entries (fewer than k remain), a row
    // with whole blocks masked, and a row of one repeated value.
    let (b, n) = (6, 1000);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut x = coarse(&mut rng, b, n);
    for (i, v) in x[n..2 * n].iter_mut().enumerate() {
        if i % 97 != 0 {
            *v = f64::NEG_INFINITY;
        }
    }
    x[2 * n + 64..2 * n + 640].fill(f64::NEG_INFINITY);
    x[3 * n..4 * n].fill(1.5);
    let off: Vec<f64> = (0..n).map(|i| ((i * 7) % 5) as f64 * 0.25).collect();
    for dtype in [DType::F32, DType::F64] {
        let (xt, ot) = (tensor(&x, (b, n), dtype), tensor(&off, n, dtype));
        for k in [1, 7, 31, 32, 33, 64] {
            for with_offset in [false, true] {
                let o = with_offset.then_some(&ot);
                let got = rows_of(&topk_per_row(&xt, k, o).unwrap());
                for r in 0..b {
                    let row: Vec<f64> = (0..n)
                        .map(|i| x[r * n + i] + if with_offset { off[i] } else { 0.0 })
                        .collect();
                    let what = format!("{dtype:?} k = {k} offset {with_offset} row {r}");
                    assert_eq!(got[r], reference_topk(&row, k), "{what}");
                }
            }
        }
    }
}

#[test]
fn select_above_and_batch_topk_match_references() {
    let (b, n) = (6, 30);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x = coarse(&mut rng, b, n);
    let xt = Tensor::from_vec(x.clone(), (b, n), &Device::Cpu).unwrap();
    let thr: Vec<f64> = (0..n).map(|i| (i % 4) as f64 * 0.5 - 0.5).collect();
    let tt = Tensor::from_vec(thr.clone(), n, &Device::Cpu).unwrap();
    let got = rows_of(&select_above(&xt, None, &tt).unwrap());
    for r in 0..b {
        let want: Vec<(u32, f64)> = (0..n)
            .filter(|&i| x[r * n + i] > thr[i])
            .map(|i| (i as u32, x[r * n + i]))
            .collect();
        assert_eq!(got[r], want, "row {r}");
    }

    // Batch top-k: the `total` largest positives in (value desc, row, column) order.
    let mut all: Vec<(usize, u32, f64)> = (0..b * n)
        .filter(|&p| x[p] > 0.0)
        .map(|p| (p / n, (p % n) as u32, x[p]))
        .collect();
    all.sort_by(|a, c| {
        c.2.partial_cmp(&a.2)
            .unwrap()
            .then((a.0, a.1).cmp(&(c.0, c.1)))
    });
    for total in [0, 1, 13, 40, all.len(), all.len() + 5] {
        let (sel, t) = batch_topk(&xt, total, None).unwrap();
        let mut want = vec![Vec::new(); b];
        for &(r, i, v) in all.iter().take(total) {
            want[r].push((i, v));
        }
        want.iter_mut()
            .for_each(|w: &mut Vec<(u32, f64)>| w.sort_by_key(|e| e.0));
        assert_eq!(rows_of(&sel), want, "total = {total}");
        let min = all
            .iter()
            .take(total)
            .map(|e| e.2)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(
            t,
            if total == 0 { 0.0 } else { min },
            "threshold, total = {total}"
        );
    }
}

#[test]
fn selection_errors_name_the_problem() {
    let x = Tensor::from_vec(vec![1f32, f32::NAN, 0.0, 2.0], (2, 2), &Device::Cpu).unwrap();
    let e = topk_per_row(&x, 1, None).unwrap_err().to_string();
    assert!(e.contains("row 0") && e.contains("NaN"), "{e}");
    let y = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let e = topk_per_row(&y, 4, None).unwrap_err().to_string();
    assert!(e.contains("k = 4") && e.contains("3"), "{e}");
    let off = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let e = topk_per_row(&y, 1, Some(&off)).unwrap_err().to_string();
    assert!(e.contains("offset") && e.contains("[3]"), "{e}");
    let e = select_above(&y, None, &off.to_dtype(DType::F64).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("threshold"), "{e}");
}

#[test]
fn fused_adamw_follows_the_formula_and_normalisation_gives_unit_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let n = 50;
    let mut v = |s: f64| -> Vec<f64> { (0..n).map(|_| rng.random::<f64>() * s).collect() };
    let (p0, g, m0, v0) = (v(2.0), v(1.0), v(0.1), v(0.01));
    let t = |x: &Vec<f64>| Tensor::from_vec(x.clone(), n, &Device::Cpu).unwrap();
    let (p, gt, m, vv) = (t(&p0), t(&g), t(&m0), t(&v0));
    let s = adam_step(3);
    adamw_update(&p, &gt, &m, &vv, &s).unwrap();
    let (p1, m1, v1) = (
        p.to_vec1::<f64>().unwrap(),
        m.to_vec1::<f64>().unwrap(),
        vv.to_vec1::<f64>().unwrap(),
    );
    for i in 0..n {
        let me = 0.9 * m0[i] + 0.1 * g[i];
        let ve = 0.999 * v0[i] + 0.001 * g[i] * g[i];
        let upd = (me / (1.0 - 0.9f64.powi(3))) / ((ve / (1.0 - 0.999f64.powi(3))).sqrt() + 1e-8);
        let pe = p0[i] * (1.0 - 0.01 * 0.1) - 0.01 * upd;
        assert!((m1[i] - me).abs() < 1e-15 && (v1[i] - ve).abs() < 1e-15);
        assert!((p1[i] - pe).abs() < 1e-14, "{i}: {} vs {pe}", p1[i]);
    }
    let short = Tensor::from_vec(g[..10].to_vec(), 10, &Device::Cpu).unwrap();
    let e = adamw_update(&p, &short, &m, &vv, &s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("grad") && e.contains("[10]"), "{e}");

    let w = Tensor::from_vec(vec![3f32, 4.0, 0.0, 0.0, 1.0, 1.0], (3, 2), &Device::Cpu).unwrap();
    normalize_rows_(&w).unwrap();
    let r = w.to_vec2::<f32>().unwrap();
    assert_eq!(r[0], vec![0.6, 0.8]);
    assert_eq!(r[1], vec![0.0, 0.0]);
    assert!((r[2][0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
}

#[test]
fn topk_of_product_equals_topk_of_the_full_product() {
    let (b, d, n) = (1100, 6, 40); // three tiles, the last partial
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let x: Vec<f32> = (0..b * d).map(|_| rng.random::<f32>() - 0.5).collect();
    let w: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
    let x = Tensor::from_vec(x, (b, d), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(w, (n, d), &Device::Cpu).unwrap();
    let mut mask = vec![f32::NEG_INFINITY; n];
    mask[3] = 0.0;
    mask[7] = 0.1;
    let mask = Tensor::from_vec(mask, n, &Device::Cpu).unwrap();
    let got = metarep_kernels::topk_of_product(&x, &w, &[(5, None), (2, Some(&mask))]).unwrap();
    let p = x.matmul(&w.t().unwrap()).unwrap();
    let want = [
        topk_per_row(&p, 5, None).unwrap(),
        topk_per_row(&p, 2, Some(&mask)).unwrap(),
    ];
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            g.indices.to_vec2::<u32>().unwrap(),
            w.indices.to_vec2::<u32>().unwrap()
        );
        assert_eq!(
            g.values.to_vec2::<f32>().unwrap(),
            w.values.to_vec2::<f32>().unwrap()
        );
    }
}

#[test]
fn topk_of_product_checks_its_requests_and_takes_an_empty_batch() {
    let x = Tensor::ones((3, 4), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones((5, 4), DType::F32, &Device::Cpu).unwrap();
    let err = |r: &[(usize, Option<&Tensor>)]| {
        metarep_kernels::topk_of_product(&x, &w, r)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&[(6, None)]).contains("k = 6 exceeds the row length 5"));
    let short = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    assert!(err(&[(2, Some(&short))]).contains("offset has shape [4], expected [5]"));
    let empty = x.narrow(0, 0, 0).unwrap();
    let sel = metarep_kernels::topk_of_product(&empty, &w, &[(2, None)]).unwrap();
    assert_eq!(sel[0].indices.dims(), &[0, 2]);
}

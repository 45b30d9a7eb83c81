//! `linear_encode` against candle's own matmul, bias and ReLU (values and gradients).

use candle_core::{DType, Var};
use metarep_kernels::linear_encode;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::common;
use common::{max_diff, on_one_thread, randn};

#[test]
fn values_and_gradients_equal_the_composed_ops() {
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        for relu in [true, false] {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            // 37 rows: more than two row chunks, the last partial.
            let x = Var::from_tensor(&randn(&mut rng, (37, 9), dtype)).unwrap();
            let w = Var::from_tensor(&randn(&mut rng, (23, 9), dtype)).unwrap();
            let b = Var::from_tensor(&randn(&mut rng, (23,), dtype)).unwrap();
            let r = randn(&mut rng, (37, 23), dtype);
            let f = linear_encode(x.as_tensor(), w.as_tensor(), b.as_tensor(), relu).unwrap();
            let g = (&f * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let pre = x
                .as_tensor()
                .matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            let want = if relu { pre.relu().unwrap() } else { pre };
            let gw = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_diff(&f, &want) < tol, "{dtype:?} relu={relu}");
            for v in [&x, &w, &b] {
                let e = max_diff(
                    g.get(v.as_tensor()).unwrap(),
                    gw.get(v.as_tensor()).unwrap(),
                );
                assert!(e < tol * 10.0, "{dtype:?} relu={relu}: {e}");
            }
        }
    }
}

#[test]
fn an_untracked_input_gets_no_gradient_and_bad_shapes_are_errors() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x = randn(&mut rng, (4, 3), DType::F32);
    let w = Var::from_tensor(&randn(&mut rng, (5, 3), DType::F32)).unwrap();
    let b = randn(&mut rng, (5,), DType::F32);
    let f = linear_encode(&x, w.as_tensor(), &b, true).unwrap();
    let g = f.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none() && g.get(w.as_tensor()).is_some());
    let e = linear_encode(&x, w.as_tensor(), &randn(&mut rng, (4,), DType::F32), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias") && e.contains("[5]"), "{e}");
    let e = linear_encode(
        &randn(&mut rng, (4, 2), DType::F32),
        w.as_tensor(),
        &b,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("2 columns"), "{e}");
}

#[test]
fn column_sums_and_positive_counts() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = Var::from_tensor(&randn(&mut rng, (41, 7), DType::F64)).unwrap();
    let s = metarep_kernels::column_sums(x.as_tensor()).unwrap();
    assert!(max_diff(&s, &x.as_tensor().sum(0).unwrap()) < 1e-12);
    let r = randn(&mut rng, (7,), DType::F64);
    let g = (s * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let want = r.unsqueeze(0).unwrap().broadcast_as((41, 7)).unwrap();
    assert!(max_diff(g.get(x.as_tensor()).unwrap(), &want) < 1e-15);
    let counts = metarep_kernels::count_positive(x.as_tensor()).unwrap();
    let want: Vec<u64> = x
        .as_tensor()
        .gt(0.0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .sum(0)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .map(|&c| c as u64)
        .collect();
    assert_eq!(counts, want);
}

#[test]
fn encode_values_and_gradients_do_not_depend_on_the_thread_count() {
    // Large enough that the gemm and the row passes split work across threads.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x = randn(&mut rng, (300, 64), DType::F32);
    let w = Var::from_tensor(&randn(&mut rng, (200, 64), DType::F32)).unwrap();
    let b = Var::from_tensor(&randn(&mut rng, (200,), DType::F32)).unwrap();
    let r = randn(&mut rng, (300, 200), DType::F32);
    let run = || {
        let f = linear_encode(&x, w.as_tensor(), b.as_tensor(), true).unwrap();
        let g = (&f * &r).unwrap().sum_all().unwrap().backward().unwrap();
        [
            f,
            g.get(w.as_tensor()).unwrap().clone(),
            g.get(b.as_tensor()).unwrap().clone(),
        ]
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    };
    assert_eq!(run(), on_one_thread(run));
}

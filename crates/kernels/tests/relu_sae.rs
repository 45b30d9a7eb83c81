//! The fused ReLU SAE step against the same loss built from candle ops and differentiated by
//! candle's autograd: codes, reconstruction, loss terms, fire counts and all four gradients.

use candle_core::{DType, Tensor, Var, D};
use metarep_kernels::{ReluSaeLoss, ReluSaeParams, ReluSaeStep};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{max_diff, randn};

/// Random parameters of an SAE with `n` latents over `d` dimensions.
fn params(rng: &mut ChaCha8Rng, n: usize, d: usize, dtype: DType) -> [Var; 4] {
    [
        randn(rng, (n, d), dtype),
        randn(rng, n, dtype),
        randn(rng, (n, d), dtype),
        randn(rng, d, dtype),
    ]
    .map(|t| Var::from_tensor(&t).unwrap())
}

/// The loss of the module docs from candle ops: (codes, recon, reconstruction, l1, gradients).
fn reference(
    x: &Tensor,
    p: &[Var; 4],
    loss: &ReluSaeLoss,
) -> (Tensor, Tensor, f64, f64, Vec<Tensor>) {
    let [w_enc, b_enc, w_dec, b_dec] = p.each_ref().map(|v| v.as_tensor());
    let b = x.dim(0).unwrap() as f64;
    let input = if loss.pre_encoder_bias {
        x.broadcast_sub(b_dec).unwrap()
    } else {
        x.clone()
    };
    let f = input
        .matmul(&w_enc.t().unwrap())
        .unwrap()
        .broadcast_add(b_enc)
        .unwrap()
        .relu()
        .unwrap();
    let r = f.matmul(w_dec).unwrap().broadcast_add(b_dec).unwrap();
    let rec = (&r - x)
        .unwrap()
        .sqr()
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .mean_all()
        .unwrap();
    let weights = if loss.fold_norms {
        w_dec.sqr().unwrap().sum(1).unwrap().sqrt().unwrap()
    } else {
        w_dec.sum(1).unwrap().ones_like().unwrap()
    };
    let l1 = (f.sum(0).unwrap().mul(&weights).unwrap().sum_all().unwrap() / b).unwrap();
    let total = ((&rec * loss.reconstruction).unwrap() + (&l1 * loss.l1).unwrap()).unwrap();
    let grads = total.backward().unwrap();
    let scalar = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    (
        f.detach(),
        r.detach(),
        scalar(&rec),
        scalar(&l1),
        [w_enc, b_enc, w_dec, b_dec]
            .map(|t| grads.get(t).unwrap().clone())
            .to_vec(),
    )
}

#[test]
fn values_and_gradients_equal_candle_autograd() {
    let mut step = ReluSaeStep::new();
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 2e-4)] {
        for fold_norms in [false, true] {
            for pre_encoder_bias in [false, true] {
                for l1 in [0.0, 0.3] {
                    let loss = ReluSaeLoss {
                        reconstruction: 0.7,
                        l1,
                        fold_norms,
                        pre_encoder_bias,
                    };
                    // 300 rows: two row blocks of the element-wise passes, the last partial.
                    // The same step object runs every case: buffers are resized and overwritten.
                    for rows in [300, 5] {
                        let mut rng = ChaCha8Rng::seed_from_u64(rows as u64);
                        let x = randn(&mut rng, (rows, 7), dtype);
                        let p = params(&mut rng, 19, 7, dtype);
                        let (f, r, rec, l1v, grads) = reference(&x, &p, &loss);
                        let [w_enc, b_enc, w_dec, b_dec] = p.each_ref().map(|v| v.as_tensor());
                        let out = step
                            .run(
                                &x,
                                &ReluSaeParams {
                                    w_enc,
                                    b_enc,
                                    w_dec,
                                    b_dec,
                                },
                                &loss,
                            )
                            .unwrap();
                        let case = format!("{dtype:?} {loss:?} rows {rows}");
                        assert!(max_diff(&out.codes, &f) < tol, "codes, {case}");
                        assert!(max_diff(&out.recon, &r) < tol, "recon, {case}");
                        assert!((out.reconstruction - rec).abs() < tol * 10.0, "rec, {case}");
                        assert!((out.l1 - l1v).abs() < tol * 10.0, "l1, {case}");
                        let fired: Vec<u64> = f
                            .gt(0.0)
                            .unwrap()
                            .to_dtype(DType::U32)
                            .unwrap()
                            .sum(0)
                            .unwrap()
                            .to_vec1::<u32>()
                            .unwrap()
                            .into_iter()
                            .map(u64::from)
                            .collect();
                        assert_eq!(out.fired, fired, "{case}");
                        assert!(
                            fired.iter().any(|&c| c > 0) && fired.iter().any(|&c| c < rows as u64)
                        );
                        for (i, (got, want)) in step.grads().iter().zip(&grads).enumerate() {
                            assert_eq!(got.dims(), want.dims(), "gradient {i}, {case}");
                            assert!(max_diff(got, want) < tol, "gradient {i}, {case}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors_naming_the_problem() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = randn(&mut rng, (4, 6), DType::F32);
    let p = params(&mut rng, 8, 6, DType::F32);
    let [w_enc, b_enc, w_dec, b_dec] = p.each_ref().map(|v| v.as_tensor());
    let loss = ReluSaeLoss {
        reconstruction: 1.0,
        l1: 1.0,
        fold_norms: false,
        pre_encoder_bias: true,
    };
    let good = ReluSaeParams {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
    };
    let mut step = ReluSaeStep::new();
    let err = |x: &Tensor, p: &ReluSaeParams| {
        ReluSaeStep::new().run(x, p, &loss).unwrap_err().to_string()
    };
    let short = randn(&mut rng, (8, 5), DType::F32);
    assert!(err(
        &x,
        &ReluSaeParams {
            w_dec: &short,
            ..good
        }
    )
    .contains("w_dec"));
    let bias = randn(&mut rng, 7, DType::F32);
    assert!(err(
        &x,
        &ReluSaeParams {
            b_enc: &bias,
            ..good
        }
    )
    .contains("b_enc"));
    assert!(err(&x.narrow(0, 0, 0).unwrap(), &good).contains("no rows"));
    assert!(err(&x.to_dtype(DType::F64).unwrap(), &good).contains("dtype"));
    assert!(err(&x.t().unwrap(), &good).contains("contiguous"));
    assert!(err(&x.to_dtype(DType::U32).unwrap(), &good).contains("f32 or f64"));
    // A failed call leaves a working step behind.
    assert!(step.run(&x, &good, &loss).is_ok());
}

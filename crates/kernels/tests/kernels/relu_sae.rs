//! The fused ReLU SAE step against the same loss built from candle ops and differentiated by
//! candle's autograd: codes, reconstruction, loss terms, fire counts and all four gradients.

use candle_core::{DType, Tensor, Var, D};
use metarep_kernels::{ReluSaeLoss, ReluSaeStep, SaeParams};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::common;
use common::{assert_grads_close, fire_counts, max_diff, randn, sae_params as params, sae_view};

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
                        let out = step.run(&x, &sae_view(&p), &loss).unwrap();
                        let case = format!("{dtype:?} {loss:?} rows {rows}");
                        assert!(max_diff(&out.codes, &f) < tol, "codes, {case}");
                        assert!(max_diff(&out.recon, &r) < tol, "recon, {case}");
                        assert!((out.reconstruction - rec).abs() < tol * 10.0, "rec, {case}");
                        assert!((out.l1 - l1v).abs() < tol * 10.0, "l1, {case}");
                        let fired = fire_counts(&f);
                        assert_eq!(out.fired, fired, "{case}");
                        assert!(
                            fired.iter().any(|&c| c > 0) && fired.iter().any(|&c| c < rows as u64)
                        );
                        assert_grads_close(step.grads(), &grads, tol, &case);
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
    let loss = ReluSaeLoss {
        reconstruction: 1.0,
        l1: 1.0,
        fold_norms: false,
        pre_encoder_bias: true,
    };
    let good = sae_view(&p);
    let mut step = ReluSaeStep::new();
    let err =
        |x: &Tensor, p: &SaeParams| ReluSaeStep::new().run(x, p, &loss).unwrap_err().to_string();
    let short = randn(&mut rng, (8, 5), DType::F32);
    assert!(err(
        &x,
        &SaeParams {
            w_dec: &short,
            ..good
        }
    )
    .contains("w_dec"));
    let bias = randn(&mut rng, 7, DType::F32);
    assert!(err(
        &x,
        &SaeParams {
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

//! Bad input is an error that names the problem, never a panic.

use crate::common;

use candle_core::{Device, Tensor};
use common::{model, problem};
use metarep_lat_cg::construct::cg::{CgLat, CgSpec};
use metarep_lat_cg::lat::LinearAttentionHead;
use metarep_lat_cg::mask::TokenLayout;
use metarep_lat_cg::problem::KrrProblem;
use metarep_lat_cg::reference::{pcg, Preconditioner};
use nalgebra::{DMatrix, DVector};

fn spec(lambda: f64) -> CgSpec {
    CgSpec {
        layout: TokenLayout::new(4, 1).unwrap(),
        features: 8,
        lambda,
        preconditioner: Preconditioner::None,
        steps: 2,
    }
}

#[test]
fn negative_or_nan_lambda_is_rejected() {
    let err = CgLat::build(spec(-0.1), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("λ"), "{err}");
    assert!(CgLat::build(spec(f64::NAN), &Device::Cpu).is_err());
    let e = KrrProblem::new(
        DMatrix::zeros(3, 2),
        DVector::zeros(3),
        -1.0,
        DMatrix::zeros(1, 2),
    )
    .unwrap_err();
    assert!(e.to_string().contains("λ"));
}

#[test]
fn empty_support_sets_are_rejected() {
    assert!(TokenLayout::new(0, 1)
        .unwrap_err()
        .to_string()
        .contains("support"));
    assert!(TokenLayout::new(3, 0)
        .unwrap_err()
        .to_string()
        .contains("query"));
    let e = KrrProblem::new(
        DMatrix::zeros(0, 2),
        DVector::zeros(0),
        0.1,
        DMatrix::zeros(1, 2),
    )
    .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = pcg(
        &DMatrix::zeros(0, 0),
        &DVector::zeros(0),
        3,
        Preconditioner::None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("empty"));
}

#[test]
fn mismatched_shapes_are_rejected() {
    let e = KrrProblem::new(
        DMatrix::zeros(3, 2),
        DVector::zeros(4),
        0.1,
        DMatrix::zeros(1, 2),
    )
    .unwrap_err();
    assert!(e.to_string().contains("labels y"), "{e}");
    let e = KrrProblem::new(
        DMatrix::zeros(3, 2),
        DVector::zeros(3),
        0.1,
        DMatrix::zeros(1, 5),
    )
    .unwrap_err();
    assert!(e.to_string().contains("query features"), "{e}");
    let e = pcg(
        &DMatrix::identity(3, 3),
        &DVector::zeros(4),
        1,
        Preconditioner::None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("shape"), "{e}");
    // A problem of the wrong size for the constructed LAT.
    let prob = problem(1, 6, 1, 10.0);
    let m = model(&prob, 2, Preconditioner::None);
    let other = problem(2, 7, 1, 10.0);
    let e = m.embed(&[other], &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("n = 6"), "{e}");
    // A problem with a different λ than the weights.
    let mut wrong_lambda = prob.clone();
    wrong_lambda.lambda *= 2.0;
    assert!(m
        .embed(&[wrong_lambda], &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("λ"));
    // A token matrix of the wrong width.
    let x = Tensor::zeros(
        (1, m.lat.tokens, m.lat.channels + 1),
        candle_core::DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    assert!(m
        .lat
        .forward(&x)
        .unwrap_err()
        .to_string()
        .contains("LAT input"));
    // A head whose W_K disagrees with W_Q.
    let dev = Device::Cpu;
    let z = |r, c| Tensor::zeros((r, c), candle_core::DType::F64, &dev).unwrap();
    let e =
        LinearAttentionHead::new(z(5, 2), z(5, 3), z(5, 1), z(1, 5), z(4, 4), 5, 4).unwrap_err();
    assert!(e.to_string().contains("W_K"), "{e}");
}

#[test]
fn non_finite_data_and_zero_steps_are_rejected() {
    let mut phi = DMatrix::zeros(3, 2);
    phi[(0, 0)] = f64::NAN;
    assert!(KrrProblem::new(phi, DVector::zeros(3), 0.1, DMatrix::zeros(1, 2)).is_err());
    let mut s = spec(0.1);
    s.steps = 0;
    assert!(CgLat::build(s, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("steps"));
}

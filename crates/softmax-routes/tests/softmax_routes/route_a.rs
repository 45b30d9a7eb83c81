//! Route A: the softmax CG transformer on the exponential kernel, against reference CG in f64.

use crate::common;

use candle_core::{DType, Device};
use common::{exp_task, reference};
use metarep_lat_cg::mask::TokenLayout;
use metarep_softmax_routes::construct::{
    HeadSharing, MatVec, Preconditioning, SoftmaxCg, SoftmaxCgSpec,
};
use metarep_softmax_routes::kernel::{ExpKernel, Prompt};
use metarep_softmax_routes::route_a::{evaluate, kernel_error, smoother_alignment, RouteAModel};
use nalgebra::{DMatrix, DVector};

fn model(steps: usize, sharing: HeadSharing, normalised: bool) -> RouteAModel {
    RouteAModel {
        steps,
        sharing,
        normalised,
        width: None,
        preconditioner: Preconditioning::None,
    }
}

/// Steps `1..=steps` of the model equal reference (P)CG to 1e-6: `α`, `r`, `z`, and the
/// aggregator's `γ_t`, `β_{t−1}`.
fn assert_steps_match(
    m: &SoftmaxCg,
    states: &[candle_core::Tensor],
    cg: &metarep_eval::baselines::cg::CgTrace,
    steps: usize,
    what: &str,
) {
    let rel = |a: &DVector<f64>, b: &DVector<f64>, scale: f64| (a - b).norm() / scale;
    for t in 1..=steps {
        let s = m.read_state(&states[m.state_index(t).unwrap()], 0).unwrap();
        let want = &cg.states[t];
        let devs = [
            rel(&s.alpha, &want.alpha, want.alpha.norm()),
            rel(&s.r, &want.r, cg.states[0].r.norm()),
            rel(&s.z, &want.z, cg.states[0].z.norm()),
            (s.aggregator.0 - cg.gammas[t - 1]).abs() / cg.gammas[t - 1].abs(),
            if t >= 2 {
                (s.aggregator.1 - cg.betas[t - 2]).abs() / cg.betas[t - 2].abs()
            } else {
                0.0
            },
        ];
        assert!(
            devs.iter().all(|&d| d <= 1e-6),
            "{what} t={t}: α, r, z, γ, β {devs:?}"
        );
    }
}

const VARIANTS: [(HeadSharing, bool); 4] = [
    (HeadSharing::Shared, true),
    (HeadSharing::Dedicated, true),
    (HeadSharing::Shared, false),
    (HeadSharing::Dedicated, false),
];

#[test]
fn every_cg_step_equals_reference_cg_in_f64() {
    for seed in 0..2 {
        let mut task = exp_task(seed, 24, 4, 3);
        task = task
            .with_lambda(task.lambda_for_kappa(100.0).unwrap())
            .unwrap();
        let steps = 12;
        let a = task.system_matrix().unwrap();
        let (cg, repro) = reference(&a, task.lambda, &task.prompt.y, steps);
        assert!(repro >= 4, "only {repro} reproducible steps");
        for (sharing, normalised) in VARIANTS {
            let m = model(steps, sharing, normalised)
                .build(&task, &Device::Cpu)
                .unwrap();
            let states = m
                .run(std::slice::from_ref(&task.prompt), DType::F64)
                .unwrap();
            assert_steps_match(
                &m,
                &states,
                &cg,
                repro.min(steps),
                &format!("{sharing:?}/{normalised}"),
            );
            // The readout is k(x_q, X) α_t.
            let f = m
                .predictions(states.last().unwrap())
                .unwrap()
                .row(0)
                .transpose();
            let alpha = m
                .read_state(&states[m.state_index(steps).unwrap()], 0)
                .unwrap()
                .alpha;
            let want = task.query_gram().unwrap() * alpha;
            assert!((f - &want).norm() <= 1e-10 * want.norm());
        }
    }
}

#[test]
fn realised_kernel_is_exp_kernel_and_f32_error_is_within_the_rounding_bound() {
    let task = exp_task(3, 20, 4, 3);
    for (sharing, normalised) in VARIANTS {
        let m = model(1, sharing, normalised)
            .build(&task, &Device::Cpu)
            .unwrap();
        let e64 = kernel_error(&m, &task, DType::F64).unwrap();
        assert!(e64.op_error <= 1e-12 * e64.kernel_norm, "{e64:?}");
        let e32 = kernel_error(&m, &task, DType::F32).unwrap();
        assert!(e32.op_error > 0.0 && e32.op_error <= e32.bound, "{e32:?}");
        assert!(e32.bound <= 1e-3 * e32.kernel_norm, "{e32:?}");
    }
}

#[test]
fn converges_to_the_oracle_and_f32_stays_within_one_percent() {
    let task = exp_task(5, 32, 8, 2);
    let shared = model(48, HeadSharing::Shared, true);
    let e64 = evaluate(&task, &shared, DType::F64, &Device::Cpu).unwrap();
    assert!(e64.rel_dev_vs_oracle <= 1e-6, "{}", e64.rel_dev_vs_oracle);
    let e32 = evaluate(&task, &shared, DType::F32, &Device::Cpu).unwrap();
    let dev = (&e32.predictions - &e64.predictions).norm() / e64.predictions.norm();
    assert!(dev <= 1e-2, "f32 vs f64 {dev}");
    assert!(e32.rmse_ratio <= 1.05, "{}", e32.rmse_ratio);
}

#[test]
fn attention_rows_are_the_kernel_over_one_plus_row_sum() {
    let task = exp_task(7, 16, 3, 2);
    let m = model(2, HeadSharing::Shared, true)
        .build(&task, &Device::Cpu)
        .unwrap();
    let states = m
        .run(std::slice::from_ref(&task.prompt), DType::F64)
        .unwrap();
    let p = m
        .readout_pattern(&states)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let kq = task.query_gram().unwrap();
    let layout = m.spec.layout;
    for q in 0..3 {
        let row = &p[layout.first_query() + q];
        let z = 1.0 + kq.row(q).sum();
        for j in 0..16 {
            assert!((row[j] - kq[(q, j)] / z).abs() <= 1e-14);
        }
        // The sink (aggregator) carries 1/(1 + Σ_j k(x_q, x_j)).
        assert!((row[layout.aggregator()] - 1.0 / z).abs() <= 1e-14);
    }
    let al = smoother_alignment(&m, &task, DType::F64).unwrap();
    assert!(al.nadaraya_watson > 1.0 - 1e-12);
    assert!(al.krr < al.nadaraya_watson);
}

#[test]
fn queries_never_influence_supports_and_batches_are_independent() {
    let task = exp_task(9, 12, 3, 2);
    let m = model(4, HeadSharing::Shared, true)
        .build(&task, &Device::Cpu)
        .unwrap();
    let mut other = task.prompt.clone();
    other.x_query[(1, 0)] += 0.7;
    let a = m
        .run(std::slice::from_ref(&task.prompt), DType::F64)
        .unwrap();
    let b = m
        .run(&[other.clone(), task.prompt.clone()], DType::F64)
        .unwrap();
    let n = task.prompt.n();
    for (sa, sb) in a.iter().zip(&b) {
        let x = sa
            .get(0)
            .unwrap()
            .narrow(0, 0, n + 1)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let y = sb
            .get(0)
            .unwrap()
            .narrow(0, 0, n + 1)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        assert_eq!(x, y, "support or aggregator rows changed");
        // Problem 1 of the batch is the original prompt: identical to running it alone.
        assert_eq!(
            sa.get(0).unwrap().to_vec2::<f64>().unwrap(),
            sb.get(1).unwrap().to_vec2::<f64>().unwrap()
        );
    }
    let fa = m.predictions(a.last().unwrap()).unwrap();
    let fb = m.predictions(b.last().unwrap()).unwrap();
    assert_eq!(fa[(0, 0)], fb[(0, 0)]);
    assert_eq!(fa[(0, 2)], fb[(0, 2)]);
    assert_ne!(fa[(0, 1)], fb[(0, 1)]);
}

#[test]
fn scratch_is_clear_between_steps() {
    let task = exp_task(11, 10, 2, 2);
    for (sharing, normalised) in VARIANTS {
        let m = model(3, sharing, normalised)
            .build(&task, &Device::Cpu)
            .unwrap();
        let states = m
            .run(std::slice::from_ref(&task.prompt), DType::F64)
            .unwrap();
        assert_eq!(
            m.channels.total,
            2 + 28,
            "docs/route_a_theorem.md: d + 28 channels"
        );
        let scratch = m.channels.scratch.all();
        for t in 0..=3 {
            let x = states[m.state_index(t).unwrap()]
                .get(0)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            for row in &x {
                for &c in &scratch {
                    assert_eq!(
                        row[c], 0.0,
                        "{sharing:?}: scratch channel {c} after step {t}"
                    );
                }
            }
        }
    }
}

#[test]
fn bad_construction_inputs_are_errors_naming_the_problem() {
    let task = exp_task(0, 6, 2, 2);
    let spec = |lambda: f64, steps: usize, matvec: MatVec, d: usize| SoftmaxCgSpec {
        layout: TokenLayout::new(6, 2).unwrap(),
        input_dim: d,
        lambda,
        steps,
        matvec,
    };
    let a = MatVec::ExpKernel {
        kernel: task.kernel.clone(),
        sharing: HeadSharing::Shared,
        normalised: true,
        preconditioner: Preconditioning::None,
    };
    let err = |s: SoftmaxCgSpec| SoftmaxCg::build(s, &Device::Cpu).unwrap_err().to_string();
    assert!(err(spec(-1.0, 2, a.clone(), 2)).contains("λ"));
    assert!(err(spec(0.1, 0, a.clone(), 2)).contains("steps"));
    assert!(err(spec(0.1, 2, a.clone(), 3)).contains("U"));
    assert!(err(spec(0.1, 2, MatVec::SmallLogit { eps: 0.0 }, 2)).contains("ε_s"));
    let m = SoftmaxCg::build(spec(0.1, 2, a, 2), &Device::Cpu).unwrap();
    let wrong = Prompt::new(
        DMatrix::zeros(5, 2),
        DVector::zeros(5),
        DMatrix::zeros(2, 2),
    )
    .unwrap();
    assert!(m
        .embed(&[wrong], &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("prompt 0"));
    assert!(m.embed(&[], &Device::Cpu).is_err());
    assert!(m.state_index(3).is_err());
    // Logits far past f32's exp range: a clear error, not silent NaN predictions.
    let mut hot = task.clone();
    hot.kernel = ExpKernel::new(task.kernel.u.clone() * 40.0, 1.0).unwrap();
    let e = evaluate(
        &hot,
        &model(2, HeadSharing::Shared, true),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(
        matches!(e, metarep_softmax_routes::Error::NonFinite { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("max logit"), "{e}");
}

#[test]
fn running_far_past_convergence_stays_finite() {
    // n = 4 supports: CG is done after ≤ 4 steps; 20 more must not divide 0 by 0.
    let task = exp_task(13, 4, 2, 2);
    for dtype in [DType::F64, DType::F32] {
        let e = evaluate(
            &task,
            &model(24, HeadSharing::Shared, true),
            dtype,
            &Device::Cpu,
        )
        .unwrap();
        assert!(
            e.rel_dev_vs_oracle <= if dtype == DType::F64 { 1e-8 } else { 1e-3 },
            "{dtype:?}: {}",
            e.rel_dev_vs_oracle
        );
    }
}

#[test]
fn row_sum_preconditioned_model_equals_reference_pcg_in_f64() {
    use metarep_eval::baselines::cg::{agreeing_steps, pcg_factored, Preconditioner};
    use metarep_softmax_routes::kernel::square_root;
    use metarep_softmax_routes::route_a::{reference_cg, row_sum_inverse, unscale};
    // A peaked kernel (τ = 0.3), where the row-sum preconditioner matters.
    let mut task = exp_task(21, 24, 4, 3);
    task.kernel = ExpKernel::new(task.kernel.u.clone(), 0.3).unwrap();
    let steps = 12;
    let cg = reference_cg(&task, steps, Preconditioning::RowSum).unwrap();
    // Yardstick: the same PCG with the mat-vec in factored form, D^{-1/2}[K^{1/2}, √λ I].
    let s = row_sum_inverse(&task).unwrap().map(f64::sqrt);
    let n = task.prompt.n();
    let root = square_root(&task.gram().unwrap());
    let factor = nalgebra::DMatrix::from_fn(n, 2 * n, |i, j| {
        s[i] * if j < n {
            root[(i, j)]
        } else if j - n == i {
            task.lambda.sqrt()
        } else {
            0.0
        }
    });
    let other = pcg_factored(
        &factor,
        0.0,
        &task.prompt.y.component_mul(&s),
        steps,
        Preconditioner::None,
    )
    .unwrap();
    let other = unscale(other, &s);
    let repro = agreeing_steps(&cg, &other, 1e-9);
    assert!(repro >= 4, "only {repro} reproducible steps");
    for sharing in [HeadSharing::Shared, HeadSharing::Dedicated] {
        let m = RouteAModel {
            preconditioner: Preconditioning::RowSum,
            ..model(steps, sharing, true)
        }
        .build(&task, &Device::Cpu)
        .unwrap();
        let states = m
            .run(std::slice::from_ref(&task.prompt), DType::F64)
            .unwrap();
        assert_steps_match(
            &m,
            &states,
            &cg,
            repro.min(steps),
            &format!("row-sum {sharing:?}"),
        );
    }
    // The preconditioner pays off on this kernel: fewer steps to a 1e-6 residual.
    let a = task.system_matrix().unwrap();
    let y = &task.prompt.y;
    let to_tol = |trace: &metarep_eval::baselines::cg::CgTrace| {
        trace
            .states
            .iter()
            .position(|s| (y - &a * &s.alpha).norm() <= 1e-6 * y.norm())
    };
    let plain = to_tol(&reference_cg(&task, 200, Preconditioning::None).unwrap());
    let pre = to_tol(&reference_cg(&task, 200, Preconditioning::RowSum).unwrap()).unwrap();
    assert!(
        plain.is_none_or(|p| pre < p),
        "row-sum {pre} vs plain {plain:?}"
    );
}

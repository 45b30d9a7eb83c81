//! Route B: small-logit softmax head minus a uniform head, rescaled, as the dot-product mat-vec.

use crate::common;

use candle_core::DType;
use candle_core::Device;
use common::reference;
use metarep_core::rng::seeded;
use metarep_eval::baselines::cg::{pcg, Preconditioner};
use metarep_softmax_routes::kernel::Prompt;
use metarep_softmax_routes::route_a::spectral_norm;
use metarep_softmax_routes::route_b::{
    analyse_cumulative, build, centred_problem, constant_spread, cumulative, fit_line,
    operator_error, small_logit_operator, CentredSpec,
};

fn spec(n: usize, p: usize) -> CentredSpec {
    CentredSpec {
        n_support: n,
        n_query: 8,
        features: p,
        lambda: 0.1,
        noise: 0.1,
    }
}

#[test]
fn per_matvec_operator_error_is_below_1e_2_on_toy_problems() {
    for (n, p) in [(16, 4), (32, 16), (64, 64), (128, 8), (128, 64)] {
        let prob = centred_problem(&mut seeded(n as u64 + p as u64), &spec(n, p)).unwrap();
        for dtype in [DType::F64, DType::F32] {
            let e = operator_error(&prob, 1e-2, dtype, &Device::Cpu).unwrap();
            assert!(e.measured <= 1e-2, "n={n} p={p} {dtype:?}: {e:?}");
            if dtype == DType::F64 {
                assert!(e.measured <= e.bound, "bound violated: {e:?}");
            }
        }
    }
}

#[test]
fn realised_operator_is_the_small_logit_formula_and_error_is_linear_in_eps() {
    let prob = centred_problem(&mut seeded(1), &spec(24, 6)).unwrap();
    let prompt = Prompt::from(&prob);
    let mut errors = Vec::new();
    for eps in [1e-1, 1e-2, 1e-3] {
        let m = build(&prob, eps, 1, &Device::Cpu).unwrap();
        let realised = m.realised_operator(&prompt, DType::F64).unwrap();
        let formula = small_logit_operator(&prob.phi, eps);
        assert!(spectral_norm(&(&realised - &formula)) <= 1e-9 * spectral_norm(&formula));
        errors.push(
            operator_error(&prob, eps, DType::F64, &Device::Cpu)
                .unwrap()
                .measured,
        );
    }
    // First order in ε_s: a tenfold smaller scale gives a tenfold smaller error (within 10%).
    for w in errors.windows(2) {
        let ratio = w[0] / w[1];
        assert!((9.0..=11.0).contains(&ratio), "{errors:?}");
    }
}

#[test]
fn uncentred_inputs_break_the_approximation() {
    let mut prob = centred_problem(&mut seeded(2), &spec(32, 8)).unwrap();
    for mut row in prob.phi.row_iter_mut() {
        row.add_scalar_mut(0.5);
    }
    let e = operator_error(&prob, 1e-2, DType::F64, &Device::Cpu).unwrap();
    assert!(e.measured > 0.1, "{e:?}");
}

#[test]
fn model_runs_cg_with_its_realised_operator() {
    let prob = centred_problem(&mut seeded(3), &spec(20, 8)).unwrap();
    let eps = 1e-2;
    let steps = 10;
    let m = build(&prob, eps, steps, &Device::Cpu).unwrap();
    let prompt = Prompt::from(&prob);
    let n = prob.n();
    let a_hat = m.realised_operator(&prompt, DType::F64).unwrap()
        + nalgebra::DMatrix::identity(n, n) * prob.lambda;
    let cg_hat = pcg(&a_hat, &prob.y, steps, Preconditioner::None).unwrap();
    // Reproducible range of exact CG on the true system (a yardstick for the perturbed one).
    let (_, repro) = reference(&prob.system_matrix(), prob.lambda, &prob.y, steps);
    assert!(repro >= 4);
    let states = m.run(std::slice::from_ref(&prompt), DType::F64).unwrap();
    for t in 1..=repro.min(steps) {
        let s = m.read_state(&states[m.state_index(t).unwrap()], 0).unwrap();
        let want = &cg_hat.states[t].alpha;
        assert!((&s.alpha - want).norm() <= 1e-6 * want.norm(), "t={t}");
    }
}

#[test]
fn residual_gap_is_e_alpha_and_deviation_scales_with_eps() {
    let prob = centred_problem(&mut seeded(4), &spec(32, 16)).unwrap();
    let mut devs = Vec::new();
    for eps in [1e-2, 1e-3] {
        let rows = cumulative(&prob, eps, 12, DType::F64, &Device::Cpu).unwrap();
        for r in &rows {
            assert!(
                (r.gap - r.gap_identity).abs() <= 1e-6 * r.gap_identity.max(1e-12),
                "{r:?}"
            );
            assert!(r.gap <= r.gap_bound * (1.0 + 1e-9) + 1e-14, "{r:?}");
        }
        devs.push(rows.last().unwrap().dev_vs_cg);
    }
    let ratio = devs[0] / devs[1];
    assert!((5.0..=20.0).contains(&ratio), "{devs:?}");
}

#[test]
fn the_cumulative_analysis_finds_an_eps_t_constant_that_does_not_depend_on_eps() {
    let prob = centred_problem(&mut seeded(4), &spec(32, 16)).unwrap();
    let runs: Vec<_> = [1e-2, 1e-3]
        .iter()
        .map(|&eps| analyse_cumulative(&prob, eps, 12, 1e-6, &Device::Cpu).unwrap())
        .collect();
    for r in &runs {
        assert!(r.gap_holds);
        assert_eq!(r.per_eps.len(), 12);
        let c = r.per_eps.iter().map(|&(t, d)| d / t).fold(0.0, f64::max);
        assert_eq!(c, r.sup_constant);
        assert!(r.sup_constant > 0.0 && r.growth.is_some(), "{r:?}");
    }
    // ε and ε/10 give the same constant up to a small factor; selecting nothing gives 0.
    let spread = constant_spread(&runs, |_| true);
    assert!((1.0..2.0).contains(&spread), "{spread}");
    assert_eq!(constant_spread(&runs, |_| false), 0.0);
}

#[test]
fn line_fit_recovers_a_line_and_rejects_degenerate_input() {
    let pts: Vec<(f64, f64)> = (0..5).map(|t| (t as f64, 2.0 * t as f64 + 1.0)).collect();
    let f = fit_line(&pts).unwrap();
    assert!(
        (f.slope - 2.0).abs() < 1e-12 && (f.intercept - 1.0).abs() < 1e-12 && f.r2 > 1.0 - 1e-12
    );
    assert!(fit_line(&[(1.0, 2.0), (1.0, 3.0)]).is_err());
    assert!(fit_line(&[]).is_err());
}

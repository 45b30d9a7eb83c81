//! Whole t-step stacks against reference (P)CG: iterates, readout, rate bound, f32 vs f64.

use crate::common;

use candle_core::{DType, Device};
use common::{badly_scaled, model, problem};
use metarep_lat_cg::reference::{
    a_norm, agreeing_steps, cg_bound, exact_solution, pcg, pcg_f32, pcg_factored,
    preconditioned_condition_number, rel_diff, Preconditioner,
};

/// Cases `(seed, n, κ)`. Each is compared over the steps `k ≤ 20` on which two textbook f64 CG
/// implementations agree to 1e-9 (at least 4 steps, asserted), so that "equal to the reference
/// to 1e-6" is a well-posed statement. Past that point finite-precision CG loses orthogonality
/// (or has converged to rounding level) and any two correct implementations drift apart; fig1
/// reports by how much.
const CASES: [(u64, usize, f64); 8] = [
    (11, 5, 10.0),
    (12, 16, 10.0),
    (13, 64, 10.0),
    (14, 16, 100.0),
    (15, 64, 100.0),
    (16, 33, 100.0),
    (17, 16, 1e3),
    (18, 64, 1e3),
];

#[test]
fn t_layers_equal_t_cg_steps_across_seeds_and_sizes() {
    for (seed, n, kappa) in CASES {
        for pre in [Preconditioner::None, Preconditioner::Jacobi] {
            let prob = problem(seed, n, 4, kappa);
            let t_max = n.min(20);
            let reference = pcg(&prob.system_matrix(), &prob.y, t_max, pre).unwrap();
            let yardstick = pcg_factored(&prob.phi, prob.lambda, &prob.y, t_max, pre).unwrap();
            let t = agreeing_steps(&reference, &yardstick, 1e-9);
            assert!(
                t >= 4.min(t_max),
                "seed {seed} {pre:?}: reference CG reproducible over only {t} steps"
            );
            let m = model(&prob, t, pre);
            let dev = Device::Cpu;
            let states = m
                .lat
                .forward_with_states(&m.embed(std::slice::from_ref(&prob), &dev).unwrap())
                .unwrap();
            for k in 0..=t {
                let s = m.read_state(&states[m.state_index(k).unwrap()], 0).unwrap();
                let dev_alpha = if k == 0 {
                    s.alpha.norm()
                } else {
                    rel_diff(&s.alpha, &reference.states[k].alpha)
                };
                assert!(
                    dev_alpha <= 1e-6,
                    "seed {seed} n {n} {pre:?} step {k}: α deviation {dev_alpha:.3e}"
                );
                let dev_r = (&s.r - &reference.states[k].r).norm() / prob.y.norm();
                assert!(
                    dev_r <= 1e-6,
                    "seed {seed} step {k}: r deviation {dev_r:.3e} (relative to ‖y‖)"
                );
                if k > 0 {
                    let dev_p = rel_diff(&s.p_prev, &reference.states[k - 1].p);
                    assert!(
                        dev_p <= 1e-6,
                        "seed {seed} step {k} {pre:?}: p deviation {dev_p:.3e}"
                    );
                }
            }
            let pred = m.predictions(states.last().unwrap()).unwrap();
            let want = prob.predict(&reference.states[t].alpha);
            let got = pred.row(0).transpose();
            assert!(rel_diff(&got, &want) <= 1e-6, "readout seed {seed}");
        }
    }
}

#[test]
fn batched_problems_run_independently() {
    let probs: Vec<_> = (0..3).map(|s| problem(20 + s, 12, 2, 100.0)).collect();
    // All problems of one batch share λ (it is in the weights).
    let lambda = probs[0].lambda;
    let probs: Vec<_> = probs
        .into_iter()
        .map(|mut p| {
            p.lambda = lambda;
            p
        })
        .collect();
    let m = model(&probs[0], 6, Preconditioner::None);
    let out = m
        .lat
        .forward(&m.embed(&probs, &Device::Cpu).unwrap())
        .unwrap();
    let pred = m.predictions(&out).unwrap();
    for (b, prob) in probs.iter().enumerate() {
        let reference = pcg(&prob.system_matrix(), &prob.y, 6, Preconditioner::None).unwrap();
        let want = prob.predict(&reference.states[6].alpha);
        assert!(
            rel_diff(&pred.row(b).transpose(), &want) <= 1e-6,
            "problem {b}"
        );
    }
}

#[test]
fn error_curve_matches_reference_and_sits_under_the_rate_bound() {
    for (seed, kappa) in [(30u64, 10.0), (31, 100.0), (32, 1e3)] {
        for (pre, scaled) in [
            (Preconditioner::None, false),
            (Preconditioner::Jacobi, true),
        ] {
            let mut prob = problem(seed, 48, 1, kappa);
            if scaled {
                prob = badly_scaled(prob, 0.5);
            }
            let a = prob.system_matrix();
            let star = exact_solution(&a, &prob.y).unwrap();
            let kappa_eff = preconditioned_condition_number(&a, pre).unwrap();
            let t = 25;
            let m = model(&prob, t, pre);
            let reference = pcg(&a, &prob.y, t, pre).unwrap();
            let states = m
                .lat
                .forward_with_states(&m.embed(std::slice::from_ref(&prob), &Device::Cpu).unwrap())
                .unwrap();
            let norm0 = a_norm(&a, &star);
            let yardstick = pcg_factored(&prob.phi, prob.lambda, &prob.y, t, pre).unwrap();
            let reproducible = agreeing_steps(&reference, &yardstick, 1e-9);
            assert!(
                reproducible >= 4,
                "κ {kappa}: reference reproducible for only {reproducible} steps"
            );
            for k in 0..=t {
                let lat = m.read_state(&states[m.state_index(k).unwrap()], 0).unwrap();
                let e_lat = a_norm(&a, &(&lat.alpha - &star)) / norm0;
                let e_ref = a_norm(&a, &(&reference.states[k].alpha - &star)) / norm0;
                if k <= reproducible && e_ref > 1e-7 {
                    assert!(
                        (e_lat - e_ref).abs() <= 1e-6 * e_ref.max(1e-12),
                        "step {k}: {e_lat} vs {e_ref}"
                    );
                }
                let bound = cg_bound(kappa_eff, k);
                assert!(
                    e_lat <= bound * (1.0 + 1e-9),
                    "step {k}: error {e_lat:.3e} above bound {bound:.3e} (κ {kappa_eff:.1})"
                );
            }
        }
    }
}

/// f32 against f64 for t ≤ 20 and κ ≤ 1e3.
///
/// - κ = 10: iterates and readout stay within 1% at every step.
/// - every κ: the final readout (t = 20) stays within 1%.
/// - κ ≤ 100: the worst readout deviation over the run is at most 2× the worst deviation of
///   textbook CG computed in f32, plus 1e-4 (≈ 840 ε_f32). Step by step the two f32 runs are
///   independent samples of rounding, so only the run's worst case is compared; this still
///   catches a construction that adds instability of its own (an earlier one that updated `Ap`
///   recursively and expanded `r'·z'` was 2000× worse past convergence). Mid-run at κ ≥ 100 that yardstick itself exceeds 1% (f32 CG's
///   trajectory is that sensitive on kernel problems), so 1% at every step is not attainable
///   by any f32 CG there; fig1 reports the numbers.
#[test]
fn f32_stays_within_one_percent_of_f64() {
    for (seed, kappa) in [(40u64, 10.0), (41, 100.0), (42, 1e3)] {
        for pre in [Preconditioner::None, Preconditioner::Jacobi] {
            let prob = problem(seed, 32, 4, kappa);
            let a = prob.system_matrix();
            let t = 20;
            let m64 = model(&prob, t, pre);
            let m32 = m64.lat.to(DType::F32, &Device::Cpu).unwrap();
            let x = m64
                .embed(std::slice::from_ref(&prob), &Device::Cpu)
                .unwrap();
            let s64 = m64.lat.forward_with_states(&x).unwrap();
            let s32 = m32
                .forward_with_states(&x.to_dtype(DType::F32).unwrap())
                .unwrap();
            let textbook32 = pcg_f32(&a, &prob.y, t, pre).unwrap();
            let (mut worst_lat, mut worst_textbook) = (0.0f64, 0.0f64);
            for k in 1..=t {
                let idx = m64.state_index(k).unwrap();
                let a64 = m64.read_state(&s64[idx], 0).unwrap().alpha;
                let a32 = m64.read_state(&s32[idx], 0).unwrap().alpha;
                let f64_pred = prob.predict(&a64);
                let lat_dev = rel_diff(&prob.predict(&a32), &f64_pred);
                let textbook_dev = rel_diff(
                    &prob.predict(&textbook32.states[k].alpha.map(f64::from)),
                    &f64_pred,
                );
                let ctx = format!("κ {kappa} {pre:?} step {k}: f32 LAT {lat_dev:.3e}, textbook f32 CG {textbook_dev:.3e}");
                if kappa <= 10.0 {
                    assert!(rel_diff(&a32, &a64) <= 1e-2 && lat_dev <= 1e-2, "{ctx}");
                }
                worst_lat = worst_lat.max(lat_dev);
                worst_textbook = worst_textbook.max(textbook_dev);
            }
            // At κ = 1e3 mid-run deviations are chaotic: two f32 runs of the same algorithm differ
            // by 4× between seeds, so no comparison of them is meaningful (fig1 reports them).
            assert!(
                kappa > 100.0 || worst_lat <= 2.0 * worst_textbook + 1e-4,
                "κ {kappa} {pre:?}: worst f32 LAT deviation {worst_lat:.3e} vs textbook f32 CG {worst_textbook:.3e}"
            );
            let p64 = m64.predictions(s64.last().unwrap()).unwrap();
            let p32 = m64.predictions(s32.last().unwrap()).unwrap();
            let dev = (&p32 - &p64).norm() / p64.norm();
            assert!(
                dev <= 1e-2,
                "κ {kappa} {pre:?}: final readout deviates {dev:.3e}"
            );
        }
    }
}

#[test]
fn jacobi_recovers_where_plain_cg_stalls() {
    let mut base = problem(50, 48, 1, 10.0);
    base.lambda = 0.0;
    let prob = badly_scaled(base, 2.0);
    let a = prob.system_matrix();
    let star = exact_solution(&a, &prob.y).unwrap();
    let t = 20;
    let err = |pre| {
        let m = model(&prob, t, pre);
        let out = m
            .lat
            .forward_with_states(&m.embed(std::slice::from_ref(&prob), &Device::Cpu).unwrap())
            .unwrap();
        let alpha = m
            .read_state(&out[m.state_index(t).unwrap()], 0)
            .unwrap()
            .alpha;
        a_norm(&a, &(alpha - &star)) / a_norm(&a, &star)
    };
    let (plain, jacobi) = (err(Preconditioner::None), err(Preconditioner::Jacobi));
    assert!(jacobi < 1e-6, "Jacobi error {jacobi:.3e} after {t} steps");
    assert!(
        plain > 1e-2,
        "plain CG error {plain:.3e} after {t} steps: the problem is meant to stall it"
    );
}

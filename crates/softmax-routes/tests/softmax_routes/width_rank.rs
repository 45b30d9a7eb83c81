//! Width–rank: the width-m LAT runs KRR on a rank-m sketch; its query error is under the bound.

use candle_core::Device;
use metarep_core::rng::seeded;
use metarep_softmax_routes::width_rank::{
    effective_dimension, kernel_spectrum, measure, power_law_task, Sketch, WidthRankSpec,
};

fn spec() -> WidthRankSpec {
    WidthRankSpec {
        n_support: 32,
        n_query: 8,
        features: 12,
        lambda: 0.5,
        noise: 0.1,
    }
}

#[test]
fn error_is_under_the_bound_and_the_model_solves_the_sketched_krr() {
    let mut reproducible = 0;
    for decay in [0.5, 2.0] {
        let task = power_law_task(&mut seeded(1), &spec(), decay).unwrap();
        for sketch in [Sketch::Population, Sketch::Optimal] {
            let mut last = f64::INFINITY;
            for m in [1, 3, 6, 12] {
                let p = measure(&task, 0.5, sketch, m, &Device::Cpu).unwrap();
                if p.reproducible {
                    reproducible += 1;
                    assert!(p.model_vs_cg <= 1e-6, "{sketch:?} m={m}: {p:?}");
                }
                assert!(p.solver_dev <= 1e-6, "{sketch:?} m={m}: {p:?}");
                assert!(
                    p.sketch_error <= p.bound_a_posteriori + 1e-12 * p.f_rms,
                    "{p:?}"
                );
                assert!(
                    p.bound_a_posteriori <= p.bound * (1.0 + 1e-12) + 1e-15,
                    "{p:?}"
                );
                if m < 12 {
                    assert!(p.bound <= p.bound_tail * (1.0 + 1e-12), "{p:?}");
                }
                if sketch == Sketch::Optimal {
                    assert!((p.residual_norm - p.sigma_next).abs() <= 1e-8 * p.tail.max(1.0));
                    assert!((p.residual_trace - p.tail).abs() <= 1e-8 * p.tail.max(1.0));
                    assert!(p.bound <= last * (1.0 + 1e-9), "bound not monotone in m");
                    last = p.bound;
                }
            }
            let full = measure(&task, 0.5, sketch, 12, &Device::Cpu).unwrap();
            assert!(
                full.sketch_error <= 1e-12 * full.f_rms
                    && full.error <= 1e-6 * full.f_rms
                    && full.tail <= 1e-8,
                "{full:?}"
            );
        }
    }
    assert!(
        reproducible >= 8,
        "only {reproducible} of 16 points reproducible in f64"
    );
}

#[test]
fn width_two_effective_dimensions_puts_the_next_eigenvalue_below_lambda() {
    let task = power_law_task(&mut seeded(2), &spec(), 1.0).unwrap();
    let s = kernel_spectrum(&task.x_support);
    for lambda in [0.1, 1.0, 5.0] {
        let d = effective_dimension(&s, lambda);
        let above = s.iter().filter(|&&v| v >= lambda).count();
        assert!(
            above as f64 <= 2.0 * d,
            "λ={lambda}: {above} ≥ λ, d_λ = {d}"
        );
        let m = (2.0 * d).ceil() as usize;
        if m < s.len() {
            assert!(s[m] < lambda);
            let tail: f64 = s[m..].iter().sum();
            assert!(tail <= 2.0 * lambda * d);
        }
    }
}

#[test]
fn bad_widths_and_ridges_are_errors() {
    let task = power_law_task(&mut seeded(3), &spec(), 1.0).unwrap();
    assert!(measure(&task, 0.5, Sketch::Population, 0, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("width"));
    assert!(measure(&task, 0.5, Sketch::Optimal, 13, &Device::Cpu).is_err());
    assert!(measure(&task, 0.0, Sketch::Optimal, 2, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("λ"));
    assert!(power_law_task(&mut seeded(0), &spec(), f64::NAN).is_err());
}

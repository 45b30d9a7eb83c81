//! Lemmas A, B, C of the LAT→CG construction, each against the f64 reference.
#![allow(clippy::needless_range_loop)] // token-indexed loops read like the lemmas

use crate::common;

use candle_core::{DType, Device};
use common::{layer_io, model, problem, states};
use metarep_lat_cg::reference::{inverse_diagonal, rel_diff, Preconditioner};
use nalgebra::DVector;

const TOL: f64 = 1e-6;

fn col(x: &[Vec<f64>], rows: std::ops::Range<usize>, chan: usize) -> DVector<f64> {
    DVector::from_iterator(rows.len(), rows.map(|i| x[i][chan]))
}

#[test]
fn lemma_a_matvec_head_computes_regularised_kernel_product() {
    for (seed, n) in [(1u64, 4usize), (2, 17), (3, 64)] {
        for pre in [Preconditioner::None, Preconditioner::Jacobi] {
            let prob = problem(seed, n, 2, 100.0);
            let m = model(&prob, 2, pre);
            let states = states(&m, &prob);
            let (input, attn) = layer_io(&m, &states, 1);
            let a = prob.system_matrix();
            let s = &m.channels.scratch;
            // Layer 2 too, where the direction channel is non-zero.
            let (input1, attn1) = layer_io(&m, &states, 2);
            let z = col(&input, 0..n, m.channels.z);
            assert!(
                rel_diff(&col(&attn, 0..n, s.az), &(&a * &z)) <= TOL,
                "Az seed {seed} n {n}"
            );
            let (z1, p1) = (
                col(&input1, 0..n, m.channels.z),
                col(&input1, 0..n, m.channels.p),
            );
            assert!(p1.norm() > 0.0);
            assert!(
                rel_diff(&col(&attn1, 0..n, s.az), &(&a * &z1)) <= TOL,
                "Az₁ seed {seed} n {n}"
            );
            assert!(
                rel_diff(&col(&attn1, 0..n, s.ap), &(&a * &p1)) <= TOL,
                "Ap₀ seed {seed} n {n}"
            );
            // The query and the aggregator receive nothing from the mat-vec heads.
            for tok in n..n + 3 {
                assert_eq!(attn[tok][s.az], 0.0);
            }
        }
    }
}

#[test]
fn lemma_b_reductions_reach_every_support_and_the_aggregator() {
    for (seed, n) in [(4u64, 8usize), (5, 33), (6, 64)] {
        let prob = problem(seed, n, 3, 50.0);
        let m = model(&prob, 2, Preconditioner::Jacobi);
        // Layer 2's input has every state channel populated.
        let (input, attn) = layer_io(&m, &states(&m, &prob), 2);
        let c = &m.channels;
        let (r, z, p) = (
            col(&input, 0..n, c.r),
            col(&input, 0..n, c.z),
            col(&input, 0..n, c.p),
        );
        let s = &c.scratch;
        let mut expected = vec![
            (s.rz, r.dot(&z)),
            (s.zz, z.dot(&z)),
            (s.zp, z.dot(&p)),
            (s.pp, p.dot(&p)),
        ];
        let (uz, up) = (prob.phi.transpose() * &z, prob.phi.transpose() * &p);
        for (j, (cz, cp)) in s.uz.clone().zip(s.up.clone()).enumerate() {
            expected.push((cz, uz[j]));
            expected.push((cp, up[j]));
        }
        let scale_u = uz.norm().max(up.norm());
        for tok in 0..=n {
            for &(chan, want) in &expected {
                let got = attn[tok][chan];
                let scale = if s.uz.contains(&chan) || s.up.contains(&chan) {
                    scale_u
                } else {
                    want.abs()
                };
                assert!(
                    (got - want).abs() <= TOL * scale,
                    "token {tok} chan {chan}: {got} vs {want}"
                );
            }
        }
        for tok in n + 1..n + 4 {
            for &(chan, _) in &expected {
                assert_eq!(attn[tok][chan], 0.0, "query token {tok} must not aggregate");
            }
        }
    }
}

#[test]
fn lemma_c_one_layer_is_one_step_from_any_state() {
    // For every k, CG layer k maps whatever state it is given (the LAT's own state k−1) to one
    // (P)CG step from that same state, with the guarded divisions the construction documents:
    // β = r·z / (r·z_prev + g), γ = r·z / (p·Ap + g), g = DIVISION_GUARD (a relative change
    // < g/(r·z) ≤ 1e-16 until the residual is near 1e-7 of y; past that it damps the steps). This
    // holds at every layer — past the point where f64 CG trajectories stop being reproducible
    // (tests/stack.rs) and past convergence, where r·z falls to ~1e-32 — because every channel is
    // written, not updated by `x + (new − x)`.
    use metarep_lat_cg::construct::cg::DIVISION_GUARD as G;
    for (seed, n, kappa) in [(7u64, 24usize, 300.0), (8, 64, 1e3), (9, 40, 100.0)] {
        for pre in [Preconditioner::None, Preconditioner::Jacobi] {
            let prob = problem(seed, n, 2, kappa);
            let t = 40;
            let m = model(&prob, t, pre);
            let a = prob.system_matrix();
            let dinv = inverse_diagonal(&a, pre).unwrap();
            let dev = Device::Cpu;
            let states = m
                .lat
                .forward_with_states(&m.embed(std::slice::from_ref(&prob), &dev).unwrap())
                .unwrap();
            let mut below_floor = 0;
            for k in 1..=t {
                let before = m
                    .read_state(&states[m.state_index(k - 1).unwrap()], 0)
                    .unwrap();
                if before.r.norm() < 1e-6 * prob.y.norm() {
                    below_floor += 1;
                }
                // The direction of step k, from the carried previous direction and r·z.
                let rz = before.r.dot(&before.z);
                let beta = rz / (before.rz_prev + G);
                let p = &before.z + beta * &before.p_prev;
                let ap = &a * &p;
                let gamma = rz / (p.dot(&ap) + G);
                let alpha = &before.alpha + gamma * &p;
                let r = &before.r - gamma * &ap;
                let z = r.component_mul(&dinv);
                let after = m.read_state(&states[m.state_index(k).unwrap()], 0).unwrap();
                let ctx = format!("seed {seed} n {n} κ {kappa} {pre:?} step {k}");
                assert!(rel_diff(&after.alpha, &alpha) <= TOL, "α {ctx}");
                assert!(
                    rel_diff(&after.r, &r) <= TOL,
                    "r {ctx}: {:.3e}",
                    rel_diff(&after.r, &r)
                );
                assert!(rel_diff(&after.z, &z) <= TOL, "z {ctx}");
                assert!(rel_diff(&after.p_prev, &p) <= TOL, "p {ctx}");
                let (g, b, rz_reg) = after.aggregator;
                assert!((g - gamma).abs() <= TOL * gamma.abs(), "γ {ctx}");
                // At k = 1 the β register multiplies the zero direction p₋₁ and is not meaningful.
                if k > 1 {
                    assert!(
                        (b - beta).abs() <= TOL * beta.abs(),
                        "β {ctx}: {b} vs {beta}"
                    );
                }
                assert!((rz_reg - rz).abs() <= TOL * rz.abs(), "r·z {ctx}");
            }
            assert!(
                below_floor >= 10,
                "seed {seed} {pre:?}: only {below_floor} steps start below the 1e-6 floor"
            );
        }
    }
}

#[test]
fn setup_layer_forms_the_preconditioner_and_first_residual() {
    let prob = common::badly_scaled(problem(8, 16, 1, 100.0), 1.0);
    let m = model(&prob, 1, Preconditioner::Jacobi);
    let dev = Device::Cpu;
    let states = m
        .lat
        .forward_with_states(&m.embed(std::slice::from_ref(&prob), &dev).unwrap())
        .unwrap();
    let x0 = states[m.state_index(0).unwrap()]
        .get(0)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let a = prob.system_matrix();
    let d = inverse_diagonal(&a, Preconditioner::Jacobi).unwrap();
    let n = prob.n();
    assert!(rel_diff(&col(&x0, 0..n, m.channels.dinv), &d) <= TOL);
    assert!(rel_diff(&col(&x0, 0..n, m.channels.z), &prob.y.component_mul(&d)) <= TOL);
    assert_eq!(col(&x0, 0..n, m.channels.p).norm(), 0.0);
    // Scratch channels are clean between layers, on every token.
    for row in &x0 {
        for chan in m.channels.scratch.range() {
            assert_eq!(row[chan], 0.0);
        }
    }
    assert_eq!(states[0].dtype(), DType::F64);
}

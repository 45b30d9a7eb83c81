//! Masks: the compute phase never lets a support or the aggregator read a query.

use crate::common;

use candle_core::{Device, Tensor};
use common::{model, problem};
use metarep_lat_cg::mask::{queries_unread, PhaseMask, Role, TokenLayout};
use metarep_lat_cg::reference::Preconditioner;

#[test]
fn no_mask_lets_supports_or_the_aggregator_read_queries() {
    let all = [
        PhaseMask::SupportToSupport,
        PhaseMask::SupportSelf,
        PhaseMask::Reduction,
        PhaseMask::Readout,
        PhaseMask::SupportToSupportAndSink,
        PhaseMask::ReadoutWithSink,
    ];
    assert!(queries_unread(&all));
    assert!(PhaseMask::SupportToSupportAndSink.allows(Role::Support, Role::Aggregator, false));
    assert!(!PhaseMask::SupportToSupportAndSink.allows(Role::Aggregator, Role::Support, false));
    assert!(PhaseMask::ReadoutWithSink.allows(Role::Query, Role::Aggregator, false));
    assert!(PhaseMask::Readout.allows(Role::Query, Role::Support, false));
    assert!(!PhaseMask::Readout.allows(Role::Query, Role::Query, true));
    assert!(!PhaseMask::Reduction.allows(Role::Query, Role::Support, false));
    let layout = TokenLayout::new(3, 2).unwrap();
    let m = PhaseMask::Reduction
        .tensor(&layout, &Device::Cpu)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    // Rows: 3 supports, aggregator, 2 queries; columns likewise.
    assert_eq!(m[3], vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    assert_eq!(m[4], vec![0.0; 6]);
}

#[test]
fn changing_a_query_changes_no_support_state_and_no_other_prediction() {
    for pre in [Preconditioner::None, Preconditioner::Jacobi] {
        let prob = problem(60, 10, 3, 100.0);
        let m = model(&prob, 5, pre);
        let mut other = prob.clone();
        for j in 0..other.p() {
            other.phi_query[(1, j)] = 3.0 * (j as f64).sin();
        }
        let dev = Device::Cpu;
        let s1 = m
            .lat
            .forward_with_states(&m.embed(std::slice::from_ref(&prob), &dev).unwrap())
            .unwrap();
        let s2 = m
            .lat
            .forward_with_states(&m.embed(&[other], &dev).unwrap())
            .unwrap();
        let n = prob.n();
        for (a, b) in s1.iter().zip(&s2) {
            // Supports and aggregator: bit-identical at every layer.
            let diff = (a.narrow(1, 0, n + 1).unwrap() - b.narrow(1, 0, n + 1).unwrap()).unwrap();
            let max = diff
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(max, 0.0);
        }
        let (p1, p2) = (
            m.predictions(s1.last().unwrap()).unwrap(),
            m.predictions(s2.last().unwrap()).unwrap(),
        );
        assert_eq!(p1[(0, 0)], p2[(0, 0)]);
        assert_eq!(p1[(0, 2)], p2[(0, 2)]);
        assert_ne!(p1[(0, 1)], p2[(0, 1)]);
    }
}

#[test]
fn every_layer_uses_only_phase_masks() {
    let prob = problem(61, 6, 2, 10.0);
    let m = model(&prob, 3, Preconditioner::Jacobi);
    let layout = m.spec.layout;
    let dev = Device::Cpu;
    let allowed: Vec<Tensor> = [
        PhaseMask::SupportToSupport,
        PhaseMask::SupportSelf,
        PhaseMask::Reduction,
        PhaseMask::Readout,
    ]
    .iter()
    .map(|p| p.tensor(&layout, &dev).unwrap())
    .collect();
    let q = layout.first_query();
    for layer in &m.lat.layers {
        for h in &layer.heads {
            let mask = h.mask.to_vec2::<f64>().unwrap();
            assert!(allowed.iter().any(|a| a.to_vec2::<f64>().unwrap() == mask));
            for (row, reads) in mask.iter().enumerate().take(q) {
                assert!(
                    reads[q..].iter().all(|&v| v == 0.0),
                    "token {row} reads a query"
                );
            }
        }
    }
}

//! Probes of solver state: the constructed CG LAT carries CG state linearly (≥ 0.99), shuffled
//! and unrelated-location (query row) controls fail, and a trained LAT's input layer exposes `y` (the GD and CG residual at t = 0).

use candle_core::Device;
use metarep_core::rng::seeded;
use metarep_lat_cg::construct::cg::{CgLat, CgSpec};
use metarep_lat_cg::problem::{rbf_problem, KrrProblem, RbfProblemSpec};
use metarep_lat_cg::reference::Preconditioner;
use metarep_lat_cg::solver_probe::{probe_layers, ProbeSet, Target};
use metarep_lat_cg::train::{IclAttention, IclLatConfig, TrainableLat};

fn problems(seed: u64, count: usize) -> Vec<KrrProblem> {
    let spec = RbfProblemSpec {
        n_support: 12,
        n_query: 2,
        dim: 3,
        features: 16,
        lengthscale: 1.0,
        noise: 0.1,
    };
    let mut rng = seeded(seed);
    (0..count)
        .map(|_| rbf_problem(&mut rng, &spec, 0.05).unwrap())
        .collect()
}

#[test]
fn the_constructed_cg_lat_carries_cg_state_and_controls_fail() {
    let train = problems(1, 200);
    let test = problems(2, 50);
    let model = CgLat::build(
        CgSpec::for_problem(&train[0], 4, Preconditioner::None).unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let rows = probe_layers(
        &ProbeSet::constructed(&model, &train).unwrap(),
        &ProbeSet::constructed(&model, &test).unwrap(),
        5,
    )
    .unwrap();
    let cg_targets = [Target::CgResidual, Target::CgIterate, Target::CgDirection];
    let mut checked = 0;
    for r in &rows {
        let s = r.score;
        eprintln!(
            "layer {} {:<20} cos {:.5} R² {:.5} (control cos {:+.3} R² {:+.4}; query rows cos {:+.3} R² {:+.4})",
            r.layer,
            r.target.name(),
            s.cosine,
            s.r2,
            s.control_cosine,
            s.control_r2,
            s.unrelated_cosine,
            s.unrelated_r2
        );
        if cg_targets.contains(&r.target) {
            assert!(s.cosine >= 0.99 && s.r2 >= 0.98, "{r:?}");
            checked += 1;
        }
        assert!(s.control_r2 < 0.1, "control did not fail: {r:?}");
        assert!(
            s.unrelated_r2 < 0.1,
            "unrelated-location control did not fail: {r:?}"
        );
    }
    // r at t = 0..4, α and p at t = 1..4.
    assert_eq!(checked, 5 + 4 + 4);
}

#[test]
fn a_trained_lat_input_exposes_y_and_nonlinear_targets_score_lower() {
    let config = IclLatConfig {
        dim: 3,
        n_support: 8,
        layers: 2,
        heads: 1,
        attention: IclAttention::Linear,
    };
    let model = TrainableLat::new(config, 0.1, 0, candle_core::DType::F32, &Device::Cpu).unwrap();
    let setting = metarep_lat_cg::icl::VonOswaldSetting {
        dim: 3,
        n_support: 8,
        ..Default::default()
    };
    let rows = probe_layers(
        &ProbeSet::trained(&model, &setting.tasks(1, 200).unwrap(), 0.5).unwrap(),
        &ProbeSet::trained(&model, &setting.tasks(2, 100).unwrap(), 0.5).unwrap(),
        9,
    )
    .unwrap();
    let at = |layer: usize, target: Target| {
        rows.iter()
            .find(|r| r.layer == layer && r.target == target)
            .unwrap()
            .score
            .r2
    };
    // Layer 0 holds y in a channel: r_0 = y for both solvers.
    assert!(at(0, Target::GdResidual) > 0.999_99);
    assert!(at(0, Target::CgResidual) > 0.999_99);
    // The ridge solution (XXᵀ + nλI)⁻¹y is not a linear function of one token's (x_i, y_i).
    assert!(
        at(0, Target::RidgeDual) < 0.9,
        "{}",
        at(0, Target::RidgeDual)
    );
    assert!(rows
        .iter()
        .all(|r| r.score.control_r2 < 0.1 && r.score.unrelated_r2 < 0.1));
}

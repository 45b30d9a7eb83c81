//! The knob sweeps' CI subset (`configs/routes_knobs.quick.toml`) and a small ablation run.

use candle_core::Device;
use metarep_core::config::load_config;
use metarep_softmax_routes::kernel::ExpTaskSpec;
use metarep_softmax_routes::sweeps::{
    head_sharing_table, means, run_knobs, temperature_table, write_knob, AblationConfig, Knob,
    KnobConfig,
};

const QUICK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../configs/routes_knobs.quick.toml"
);

fn mean(result: &metarep_eval::harness::SweepResult, method: &str, x: f64) -> f64 {
    let rows = result.summary(0.95).unwrap();
    rows.iter()
        .find(|r| r.method == method && r.x == x)
        .unwrap_or_else(|| panic!("no {method} at {x}"))
        .mean
}

#[test]
fn ci_subset_of_the_knob_sweeps_runs_and_shows_the_expected_trends() {
    let cfg: KnobConfig = load_config(std::path::Path::new(QUICK), &[]).unwrap();
    let results = run_knobs(&cfg, &Device::Cpu).unwrap();
    let knobs: Vec<Knob> = results.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        knobs,
        [
            Knob::Lambda,
            Knob::Kappa,
            Knob::Steps,
            Knob::Width,
            Knob::Tau,
            Knob::Normalisation
        ]
    );
    for (knob, r) in &results {
        assert!(
            r.measurements.iter().all(|m| m.value.is_finite()),
            "{knob:?}"
        );
        assert_eq!(r.seeds, cfg.seeds);
    }
    let get = |k: Knob| &results.iter().find(|(kk, _)| *kk == k).unwrap().1;
    // More CG steps: closer to the oracle; the full-width head beats a rank-1 one.
    let steps = get(Knob::Steps);
    assert!(mean(steps, "rel dev vs oracle", 24.0) < mean(steps, "rel dev vs oracle", 4.0));
    let width = get(Knob::Width);
    assert!(mean(width, "rel dev vs oracle", 3.0) < mean(width, "rel dev vs oracle", 1.0));
    // Worse conditioning at fixed depth: further from the oracle.
    let kappa = get(Knob::Kappa);
    assert!(mean(kappa, "rel dev vs oracle", 10.0) < mean(kappa, "rel dev vs oracle", 1000.0));
    // Softmax and exponential heads compute the same kernel: the same predictions up to
    // rounding (within 1%). Checked in f64 (measured: 5e-4 apart at τ = 0.5): at τ = 0.5
    // (κ(A) ≈ 7e4) f32 CG amplifies rounding so much that the f32 ratios move by ~2% with the
    // matmul kernel alone (AVX2 vs AVX-512), which would make the check depend on the CPU.
    let mut f64_cfg: KnobConfig =
        load_config(std::path::Path::new(QUICK), &["dtype=\"f64\"".to_string()]).unwrap();
    f64_cfg.sweep.retain(|s| s.knob == Knob::Normalisation);
    let f64_results = run_knobs(&f64_cfg, &Device::Cpu).unwrap();
    let norm = &f64_results[0].1;
    for tau in [0.5, 2.0] {
        let (s, e) = (
            mean(norm, "softmax: rmse ratio", tau),
            mean(norm, "exponential: rmse ratio", tau),
        );
        assert!((s - e).abs() <= 1e-2 * s, "τ = {tau}: {s} vs {e}");
    }
    let dir = std::env::temp_dir().join(format!("metarep-knobs-{}", std::process::id()));
    write_knob(&dir, Knob::Steps, steps).unwrap();
    for f in [
        "steps_quality.csv",
        "steps_quality.svg",
        "steps_deviation.md",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ablation_tables_have_a_row_per_variant() {
    let cfg = AblationConfig {
        seeds: vec![0, 1],
        task: ExpTaskSpec {
            n_support: 16,
            n_query: 8,
            dim: 2,
            width: 2,
            u_norm: 1.0,
            tau: 1.0,
            lambda: 0.1,
            noise: 0.1,
            frequency: 1.0,
        },
        steps: 16,
        taus: vec![0.5, 2.0],
    };
    let (result, sharing) = head_sharing_table(&cfg, &Device::Cpu).unwrap();
    assert_eq!(sharing.rows.len(), 2);
    // The raw measurements come back too: means by variant (0 shared, 1 dedicated).
    let ratios = means(&result, "rmse ratio (f32)").unwrap();
    assert_eq!(ratios.iter().map(|r| r.0).collect::<Vec<_>>(), [0.0, 1.0]);
    assert!(means(&result, "no such method").is_err());
    // Shared: one kernel head + one sum head, then one sum head; dedicated: one more.
    let heads: Vec<String> = sharing.rows.iter().map(|r| format!("{:?}", r[1])).collect();
    assert_eq!(heads, ["Int(3)", "Int(4)"]);
    let (_, temperature) = temperature_table(&cfg, &Device::Cpu).unwrap();
    assert_eq!(temperature.rows.len(), 2);
    assert!(temperature.to_markdown().contains("eps_f32"));
}

//! Range checks of figure configs, run once the `--set` overrides are applied and before
//! anything runs or is written: an obviously invalid value (negative noise, a zero size, a
//! condition number ≤ 1) is an error naming its dotted key and the value.

use std::fmt::Display;
use std::path::Path;

use metarep_core::config::load_config;
use metarep_lat_cg::problem::RbfProblemSpec;
use serde::de::DeserializeOwned;

use crate::error::BoxError;

/// A figure config whose values can be range-checked.
pub trait CheckedConfig: DeserializeOwned {
    /// The first invalid value, as an error naming its dotted key and the value.
    fn check(&self) -> Result<(), BoxError>;
}

/// Loads `config` with `overrides` ([`load_config`]) and checks it ([`CheckedConfig::check`]).
pub fn load_checked<T: CheckedConfig>(config: &Path, overrides: &[String]) -> Result<T, BoxError> {
    let cfg: T = load_config(config, overrides)?;
    cfg.check()?;
    Ok(cfg)
}

/// An error naming `key = value` unless `ok`; `expected` says what a valid value is.
pub fn require(ok: bool, key: &str, value: impl Display, expected: &str) -> Result<(), BoxError> {
    if ok {
        return Ok(());
    }
    Err(format!("invalid config value {key} = {value}: expected {expected}").into())
}

/// `key` is at least 1 (a size or a count).
pub fn at_least_one(key: &str, value: usize) -> Result<(), BoxError> {
    require(value >= 1, key, value, "≥ 1")
}

/// `key` is finite and positive.
pub fn positive(key: &str, value: f64) -> Result<(), BoxError> {
    require(
        value.is_finite() && value > 0.0,
        key,
        value,
        "a finite number > 0",
    )
}

/// `key` is finite and not negative.
pub fn non_negative(key: &str, value: f64) -> Result<(), BoxError> {
    require(
        value.is_finite() && value >= 0.0,
        key,
        value,
        "a finite number ≥ 0",
    )
}

/// Every element of the list `key` passes `check` (as `key[i]`), and there is at least one.
pub fn each<T: Copy>(
    key: &str,
    values: &[T],
    check: impl Fn(&str, T) -> Result<(), BoxError>,
) -> Result<(), BoxError> {
    require(!values.is_empty(), key, "[]", "at least one value")?;
    for (i, &v) in values.iter().enumerate() {
        check(&format!("{key}[{i}]"), v)?;
    }
    Ok(())
}

/// A random RBF kernel ridge problem in table `table`: sizes ≥ 1, a positive length scale and
/// noise ≥ 0.
pub fn rbf_problem(table: &str, p: &RbfProblemSpec) -> Result<(), BoxError> {
    for (key, v) in [
        ("n_support", p.n_support),
        ("n_query", p.n_query),
        ("dim", p.dim),
        ("features", p.features),
    ] {
        at_least_one(&format!("{table}.{key}"), v)?;
    }
    positive(&format!("{table}.lengthscale"), p.lengthscale)?;
    non_negative(&format!("{table}.noise"), p.noise)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `configs/<id>.toml` and, where there is one, `configs/<id>.quick.toml` pass the checks.
    fn shipped_pass<T: CheckedConfig>(id: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for file in [format!("{id}.toml"), format!("{id}.quick.toml")] {
            let path = dir.join(&file);
            if file.ends_with(".quick.toml") && !path.exists() {
                continue;
            }
            if let Err(e) = load_checked::<T>(&path, &[]) {
                panic!("{file}: {e}");
            }
        }
    }

    #[test]
    fn the_shipped_configs_pass_their_checks() {
        shipped_pass::<crate::fig1::Fig1Config>("fig1");
        shipped_pass::<crate::fig2::Fig2Config>("fig2");
        shipped_pass::<crate::fig4::Fig4Config>("fig4");
        shipped_pass::<crate::fig7::Fig7Config>("fig7");
        shipped_pass::<crate::fig12::Fig12Config>("fig12");
    }

    #[test]
    fn fig12_reads_stay_within_the_byte_lms_trained_length() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let load = |file: &str, set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            load_checked::<crate::fig12::Fig12Config>(&dir.join(file), &set)
        };
        // 96 slots + an expansion's 31 + 32 tokens of horizon = 159 > 128.
        let e = load("fig12.quick.toml", &["stream.budget=96"]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("(a LensNet state's expansion) = 159"), "{e}");
        assert!(e.contains("bytes.seq = 128"), "{e}");
        // Two gisted blocks after a 64-byte prefix: 64 + 64 + 32 = 160.
        let e = load("fig12.quick.toml", &["train.blocks=2"]).unwrap_err();
        assert!(e.to_string().contains("train.blocks · B"), "{e}");
        load(
            "fig12.quick.toml",
            &["train.blocks=2", "train.shape.prefix=32"],
        )
        .unwrap();
        // SmolLM2 is not held to the byte LM's length.
        load("fig12.toml", &["stream.budget=4000"]).unwrap();
    }

    #[test]
    fn a_bad_value_in_a_list_or_a_problem_table_is_named() {
        let e = each("kappas", &[2.0, -1.0], positive).unwrap_err();
        assert!(e.to_string().contains("kappas[1] = -1"), "{e}");
        let e = each::<f64>("eps", &[], positive).unwrap_err();
        assert!(e.to_string().contains("eps = []"), "{e}");
        let spec = RbfProblemSpec {
            n_support: 4,
            n_query: 2,
            dim: 3,
            features: 8,
            lengthscale: 0.0,
            noise: 0.1,
        };
        let e = rbf_problem("constructed.problem", &spec).unwrap_err();
        assert!(
            e.to_string()
                .contains("constructed.problem.lengthscale = 0"),
            "{e}"
        );
    }
}

//! TOML configs with `key.path=value` overrides, strict unknown-key detection, and a
//! canonical JSON form with a stable SHA-256 hash.
//!
//! Unknown keys are found generically with `serde_ignored`: any key the target type skips is
//! reported as [`Error::UnknownConfigKey`] with its full dotted path. (Keys swallowed by a
//! `#[serde(flatten)]` map are, by design of serde, not "ignored" and so are not reported.)

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use toml::{Table, Value};

use crate::error::{Error, Result};

/// Reads the TOML file at `path`, applies `overrides` (`key.path=value`) and deserializes `T`.
pub fn load_config<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_config_from(&text, overrides, &path.display().to_string())
}

/// Parses TOML text, applies `overrides` (`key.path=value`) and deserializes `T`.
pub fn parse_config<T: DeserializeOwned>(toml_text: &str, overrides: &[String]) -> Result<T> {
    parse_config_from(toml_text, overrides, "<string>")
}

/// [`parse_config`] of text read from `origin` (a file path, or what the text is), which
/// errors about the text name. An error about a value an override set names the override
/// instead ([`Error::BadOverride`]).
pub fn parse_config_from<T: DeserializeOwned>(
    text: &str,
    overrides: &[String],
    origin: &str,
) -> Result<T> {
    let mut table: Table = text.parse().map_err(|source| Error::Toml {
        origin: origin.to_string(),
        source,
    })?;
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    let mut ignored: Vec<String> = Vec::new();
    let result: std::result::Result<T, toml::de::Error> =
        serde_ignored::deserialize(Value::Table(table), |path| ignored.push(dotted(&path)));
    if let Some(key) = ignored.into_iter().next() {
        return Err(Error::UnknownConfigKey { key });
    }
    result.map_err(|source| match blamed_override(&source, overrides) {
        Some(text) => bad_override(text, source.message()),
        None => Error::Toml {
            origin: origin.to_string(),
            source,
        },
    })
}

/// The override a deserialization error is about, if any: the last one whose key path holds
/// the error's location (the value it set was refused), or lies below it where the error names
/// the override's next key (`unknown field`) or no key at all (its table replaced a value), or
/// above it (its value holds the refused one).
fn blamed_override<'a>(err: &toml::de::Error, overrides: &'a [String]) -> Option<&'a str> {
    let shown = err.to_string();
    let at: Vec<&str> = shown
        .lines()
        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`'))
        .map_or_else(Vec::new, |path| path.split('.').collect());
    let message = err.message();
    overrides.iter().rev().map(String::as_str).find(|o| {
        let Ok((key, _)) = split_override(o) else {
            return false;
        };
        match key.strip_prefix(at.as_slice()) {
            Some([]) => true,
            Some([next, ..]) => !message.contains('`') || message.contains(&format!("`{next}`")),
            None => at.starts_with(&key),
        }
    })
}

/// Renders a `serde_ignored` path as `a.b.c` (sequence indices as `a[0]`).
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", dotted(parent)),
        P::Map { parent, key } => {
            let p = dotted(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            dotted(parent)
        }
    }
}

/// Parses an override value: a TOML value if it parses (`3`, `0.5`, `true`, `[1,2]`, `"x"`),
/// otherwise the raw text as a string.
fn parse_override_value(raw: &str) -> Value {
    let raw = raw.trim();
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) if t.len() == 1 => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        _ => Value::String(raw.to_string()),
    }
}

/// An [`Error::BadOverride`] for the override `text`.
fn bad_override(text: &str, reason: &str) -> Error {
    Error::BadOverride {
        text: text.to_string(),
        reason: reason.to_string(),
    }
}

/// Splits an override `key.path=value` into its key path and its raw value.
fn split_override(text: &str) -> Result<(Vec<&str>, &str)> {
    let (key, raw) = text
        .split_once('=')
        .ok_or_else(|| bad_override(text, "expected `key.path=value`"))?;
    let parts: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad_override(text, "key path has an empty segment"));
    }
    Ok((parts, raw))
}

/// Applies one `key.path=value` override to `table`, creating intermediate tables as needed.
pub fn apply_override(table: &mut Table, text: &str) -> Result<()> {
    let (parts, raw) = split_override(text)?;
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| bad_override(text, "empty key path"))?;
    let mut cur = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(bad_override(
                    text,
                    &format!("`{}` is a value, not a table", parts[..=i].join(".")),
                ))
            }
        };
    }
    cur.insert(last.to_string(), parse_override_value(raw));
    Ok(())
}

/// Serializes `value` to compact JSON with object keys sorted recursively.
pub fn canonical_json(value: &impl Serialize) -> Result<String> {
    let v = serde_json::to_value(value).map_err(|e| Error::json("canonical JSON", e))?;
    serde_json::to_string(&sort_keys(v)).map_err(|e| Error::json("canonical JSON", e))
}

/// Converts `value` to a `serde_json::Value` with object keys sorted recursively.
pub fn canonical_value(value: &impl Serialize) -> Result<serde_json::Value> {
    let v = serde_json::to_value(value).map_err(|e| Error::json("canonical JSON", e))?;
    Ok(sort_keys(v))
}

fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::Object(map) => {
            let mut entries: Vec<(String, J)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            J::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        J::Array(items) => J::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Lowercase hex SHA-256 of [`canonical_json`] of `value`.
pub fn config_hash(value: &impl Serialize) -> Result<String> {
    Ok(sha256_hex(canonical_json(value)?.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Train {
        lr: f64,
        steps: u32,
        #[serde(default)]
        layers: Vec<u32>,
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Model {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Inner {
        width: u32,
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Cfg {
        seed: u64,
        train: Train,
        model: Model,
        #[serde(default)]
        verbose: bool,
    }

    const TEXT: &str = r#"
seed = 1
[train]
lr = 0.1
steps = 10
[model]
name = "tiny"
"#;

    fn ov(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn loads_nested_tables_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, TEXT).unwrap();
        let c: Cfg = load_config(&p, &[]).unwrap();
        assert_eq!(c.seed, 1);
        assert_eq!(c.train.steps, 10);
        assert_eq!(c.model.name, "tiny");
        assert!(c.model.inner.is_none());
    }

    #[test]
    fn overrides_of_nested_keys() {
        let c: Cfg = parse_config(
            TEXT,
            &ov(&[
                "train.lr=0.5",
                "train.steps = 3",
                "train.layers=[1,2]",
                "model.name=big",
                "model.inner.width=64",
                "verbose=true",
                "seed=9",
            ]),
        )
        .unwrap();
        assert_eq!(c.train.lr, 0.5);
        assert_eq!(c.train.steps, 3);
        assert_eq!(c.train.layers, vec![1, 2]);
        assert_eq!(c.model.name, "big");
        assert_eq!(c.model.inner, Some(Inner { width: 64 }));
        assert!(c.verbose);
        assert_eq!(c.seed, 9);
        let c: Cfg = parse_config(TEXT, &ov(&["model.name=\"quoted\""])).unwrap();
        assert_eq!(c.model.name, "quoted");
    }

    #[test]
    fn unknown_key_in_file_names_dotted_key() {
        let text = format!("{TEXT}\n[train.extra]\nlr_typo = 3\n");
        let err = parse_config::<Cfg>(&text, &[]).unwrap_err();
        assert!(err.to_string().contains("train.extra"), "{err}");
        let text = TEXT.replace("steps = 10", "steps = 10\nlr_typo = 1");
        let err = parse_config::<Cfg>(&text, &[]).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownConfigKey { key } if key == "train.lr_typo"),
            "{err}"
        );
        assert!(err.to_string().contains("train.lr_typo"));
    }

    #[test]
    fn unknown_key_in_override_names_dotted_key() {
        let err = parse_config::<Cfg>(TEXT, &ov(&["train.lr_typo=0.3"])).unwrap_err();
        assert!(err.to_string().contains("train.lr_typo"), "{err}");
        let err = parse_config::<Cfg>(TEXT, &ov(&["model.inner.depth=2", "model.inner.width=1"]))
            .unwrap_err();
        assert!(err.to_string().contains("model.inner.depth"), "{err}");
        let err = parse_config::<Cfg>(TEXT, &ov(&["optim.beta=0.9"])).unwrap_err();
        assert!(err.to_string().contains("optim"), "{err}");
    }

    #[test]
    fn malformed_overrides_error() {
        for bad in ["noequals", "=3", "train..lr=1", "train.lr.x=1"] {
            let err = parse_config::<Cfg>(TEXT, &ov(&[bad])).unwrap_err();
            assert!(matches!(err, Error::BadOverride { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn a_bad_override_value_blames_the_override_not_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, TEXT).unwrap();
        for (set, blamed) in [
            ("train.steps=many", "--set train.steps=many"),
            ("seed=abc", "--set seed=abc"),
            ("train={ lr = 1 }", "--set train={ lr = 1 }"),
            ("seed.x=1", "--set seed.x=1"),
        ] {
            let err = load_config::<Cfg>(&p, &ov(&["verbose=true", set])).unwrap_err();
            assert!(matches!(err, Error::BadOverride { .. }), "{set}: {err}");
            let text = err.to_string();
            assert!(text.contains(blamed), "{text}");
            assert!(!text.contains("c.toml"), "{text}");
        }
        // A file's own mistake still names the file, overrides or not.
        std::fs::write(&p, TEXT.replace("steps = 10", "steps = \"ten\"")).unwrap();
        let err = load_config::<Cfg>(&p, &ov(&["train.lr=0.5"])).unwrap_err();
        assert!(matches!(err, Error::Toml { .. }), "{err}");
        assert!(err.to_string().contains("c.toml"), "{err}");
    }

    #[test]
    fn bad_toml_and_missing_file_error() {
        assert!(matches!(
            parse_config::<Cfg>("seed = = 1", &[]).unwrap_err(),
            Error::Toml { .. }
        ));
        let err = load_config::<Cfg>(Path::new("/nonexistent/x.toml"), &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.toml"));
    }

    #[test]
    fn hash_is_stable_across_key_order() {
        let mut a = serde_json::Map::new();
        a.insert(
            "b".into(),
            serde_json::json!({"y": 1, "x": [ {"q": 1, "p": 2} ]}),
        );
        a.insert("a".into(), serde_json::json!(2.5));
        let mut b = BTreeMap::new();
        b.insert("a", serde_json::json!(2.5));
        b.insert("b", serde_json::json!({"x": [ {"p": 2, "q": 1} ], "y": 1}));
        assert_eq!(
            canonical_json(&a).unwrap(),
            r#"{"a":2.5,"b":{"x":[{"p":2,"q":1}],"y":1}}"#
        );
        assert_eq!(config_hash(&a).unwrap(), config_hash(&b).unwrap());
        let h = config_hash(&a).unwrap();
        assert_eq!(h.len(), 64);
        assert!(h
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

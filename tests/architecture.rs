//! The workspace's crate graph equals `docs/architecture.md`: every normal dependency edge
//! between workspace crates is listed there and every listed edge exists, and restricted
//! external crates are used directly only by the crates the document allows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// `name -> a, b` lines of the fenced block that follows `heading` in the document.
fn listed(doc: &str, heading: &str) -> Graph {
    let after = &doc[doc
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}`"))..];
    let start = after.find("```text\n").expect("a ```text block") + 8;
    let block = &after[start..start + after[start..].find("```").expect("closed block")];
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, deps) = l
                .split_once("->")
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let deps = deps
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect();
            (name.trim().to_string(), deps)
        })
        .collect()
}

/// `cargo metadata` of the workspace (no dependencies' packages).
fn cargo_metadata() -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every workspace package with its normal and its dev dependencies (names).
fn metadata() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    cargo_metadata()["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = |kind: Option<&str>| -> BTreeSet<String> {
                p["dependencies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|d| d["kind"].as_str() == kind)
                    .map(|d| d["name"].as_str().unwrap().to_string())
                    .collect()
            };
            let name = p["name"].as_str().unwrap().to_string();
            (name, (deps(None), deps(Some("dev"))))
        })
        .collect()
}

/// docs/architecture.md.
fn architecture_doc() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
        .unwrap()
}

#[test]
fn the_crate_graph_is_the_documented_one() {
    let doc = architecture_doc();
    let edges = listed(&doc, "## Edges");
    let packages = metadata();
    let ours: BTreeSet<&String> = packages.keys().collect();
    let documented: BTreeSet<&String> = edges.keys().collect();
    assert_eq!(
        ours, documented,
        "crates in the workspace vs in the document"
    );
    let mut wrong = Vec::new();
    for (name, (normal, dev)) in &packages {
        let actual: BTreeSet<String> = normal
            .iter()
            .filter(|d| ours.contains(d))
            .cloned()
            .collect();
        if actual != edges[name] {
            wrong.push(format!(
                "{name}: workspace has {actual:?}, document {:?}",
                edges[name]
            ));
        }
        // Dev-dependencies stay within the layers the crate may use (its edges, or any crate
        // for the binaries and the facade, which may use anything).
        let may: BTreeSet<String> = edges[name].iter().cloned().chain([name.clone()]).collect();
        let unrestricted = ["metarep", "metarep-cli", "xtask"].contains(&name.as_str());
        for d in dev.iter().filter(|d| ours.contains(d)) {
            let below = edges[name].iter().any(|e| {
                let mut seen = BTreeSet::new();
                reaches(&edges, e, d, &mut seen)
            });
            if !unrestricted && !may.contains(d) && !below {
                wrong.push(format!("{name}: dev-dependency {d} is outside its layers"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/architecture.md is out of date:\n{}",
        wrong.join("\n")
    );

    let restricted = listed(&doc, "## Restricted external crates");
    for (krate, allowed) in &restricted {
        let users: BTreeSet<String> = packages
            .iter()
            .filter(|(_, (normal, _))| normal.contains(krate))
            .map(|(n, _)| n.clone())
            .collect();
        assert!(
            users.is_subset(allowed),
            "{krate} is used directly by {users:?}; only {allowed:?} may"
        );
    }
}

/// Whether `from` reaches `to` through the documented edges.
fn reaches(edges: &Graph, from: &str, to: &str, seen: &mut BTreeSet<String>) -> bool {
    if from == to {
        return true;
    }
    if !seen.insert(from.to_string()) {
        return false;
    }
    edges
        .get(from)
        .is_some_and(|next| next.iter().any(|n| reaches(edges, n, to, seen)))
}

/// Each package's integration tests are one binary, but for the packages the document lists
/// with theirs (tests that must have a process to themselves).
#[test]
fn each_crate_links_one_integration_test_binary() {
    let exceptions = listed(&architecture_doc(), "## Integration-test binaries");
    let mut wrong = Vec::new();
    for p in cargo_metadata()["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let tests: BTreeSet<String> = p["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "test"))
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        match exceptions.get(name) {
            Some(listed) if *listed != tests => wrong.push(format!(
                "{name}: has {tests:?}, the document lists {listed:?}"
            )),
            None if tests.len() > 1 => wrong.push(format!(
                "{name}: {tests:?} are {} test binaries; make them modules of one",
                tests.len()
            )),
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

//! `cargo xtask gallery`: one self-contained, offline HTML page over a results directory
//! (`results/index.html` by default) listing every reproduced id — each subdirectory holding
//! `metrics.json` and `manifest.json` — with its figures, its metrics (pass/fail highlighted),
//! the command that made it, its manifest and links to its CSV/markdown tables. Ids come in
//! registry order, then any others alphabetically. Every link is relative to the page, so the
//! folder can be moved, and everything read from the results is HTML-escaped.

use std::path::{Component, Path};

use metarep_core::html::escape;
use serde_json::{Map, Value};

use crate::error::BoxError;
use crate::registry;

/// One reproduced id: a subdirectory of the results holding `metrics.json` and `manifest.json`.
struct Entry {
    /// The subdirectory's name.
    id: String,
    /// Names of the plain files directly in it, sorted.
    files: Vec<String>,
    /// `metrics.json`.
    metrics: Map<String, Value>,
    /// `manifest.json`.
    manifest: Map<String, Value>,
}

/// Writes the gallery of `results` to `out`; returns `true` (the gallery checks nothing).
pub fn run(results: &Path, out: &Path) -> Result<bool, BoxError> {
    let entries = read_entries(results)?;
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    let base = relative_url(results, out_dir)?;
    std::fs::write(out, page(&entries, &base))
        .map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("wrote {} ({} ids)", out.display(), entries.len());
    Ok(true)
}

/// The reproduced ids under `results`, in registry order and then alphabetically.
fn read_entries(results: &Path) -> Result<Vec<Entry>, BoxError> {
    let listing =
        std::fs::read_dir(results).map_err(|e| format!("reading {}: {e}", results.display()))?;
    let mut entries = Vec::new();
    for item in listing {
        let dir = item?.path();
        if dir.join("metrics.json").is_file() && dir.join("manifest.json").is_file() {
            entries.push(read_entry(&dir)?);
        }
    }
    if entries.is_empty() {
        return Err(format!(
            "no reproduced ids in {} (subdirectories with metrics.json and manifest.json); \
             run `cargo xtask reproduce` first",
            results.display()
        )
        .into());
    }
    let ids = registry::ids();
    entries.sort_by_key(|e| {
        let rank = ids.iter().position(|id| *id == e.id).unwrap_or(ids.len());
        (rank, e.id.clone())
    });
    Ok(entries)
}

/// Reads one id's directory.
fn read_entry(dir: &Path) -> Result<Entry, BoxError> {
    let mut files = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
        let item = item?;
        if item.file_type()?.is_file() {
            files.push(item.file_name().to_string_lossy().into_owned());
        }
    }
    files.sort();
    Ok(Entry {
        id: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        files,
        metrics: read_object(&dir.join("metrics.json"))?,
        manifest: read_object(&dir.join("manifest.json"))?,
    })
}

/// Reads a JSON file holding an object.
fn read_object(path: &Path) -> Result<Map<String, Value>, BoxError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{}: expected a JSON object", path.display()).into()),
        Err(e) => Err(format!("{}: {e}", path.display()).into()),
    }
}

/// The URL prefix (empty or ending in `/`) leading from directory `from` to directory `to`.
fn relative_url(to: &Path, from: &Path) -> Result<String, BoxError> {
    let canonical = |p: &Path| {
        p.canonicalize()
            .map_err(|e| format!("resolving {}: {e}", p.display()))
    };
    let (to, from) = (canonical(to)?, canonical(from)?);
    let to: Vec<Component> = to.components().collect();
    let from: Vec<Component> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let ups = from[common..].iter().map(|_| "..".to_string());
    let downs = to[common..]
        .iter()
        .map(|c| percent_encode(&c.as_os_str().to_string_lossy()));
    Ok(ups.chain(downs).map(|s| s + "/").collect())
}

/// Percent-encodes one URL path segment (everything but ASCII letters, digits and `-._~`).
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The escaped, relative `href`/`src` value of `file` in `id`'s directory.
fn link(base: &str, id: &str, file: &str) -> String {
    escape(&format!(
        "{base}{}/{}",
        percent_encode(id),
        percent_encode(file)
    ))
}

/// A JSON value as text: strings bare, everything else as compact JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The page's stylesheet (inline: the page loads nothing from the network).
const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}\
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}\
td.num{font-family:monospace;word-break:break-all;max-width:60em}tr.pass td{background:#d9f2d9}tr.fail td{background:#f7d4d4}\
.badge{font-size:.7em;padding:.1em .5em;border-radius:.3em;vertical-align:middle}\
.badge.pass{background:#2e7d32;color:#fff}.badge.fail{background:#c62828;color:#fff}\
.figures{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figure img{max-width:640px;border:1px solid #eee}\
pre{background:#f5f5f5;padding:.5em;overflow-x:auto}details{margin:.5em 0}";

/// Sets `data-broken-images` on `<body>` once the page has loaded: how many images failed.
const BROKEN_IMAGES_SCRIPT: &str = "window.addEventListener('load',function(){var n=0;\
document.querySelectorAll('img').forEach(function(i){if(!i.complete||i.naturalWidth===0)n++;});\
document.body.setAttribute('data-broken-images',String(n));});";

/// The whole page.
fn page(entries: &[Entry], base: &str) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>metarep results</title><style>{STYLE}</style>\
         <script>{BROKEN_IMAGES_SCRIPT}</script></head>\n<body>\n\
         <h1>metarep results</h1>\n{}",
        contents(entries)
    );
    for entry in entries {
        html.push_str(&section(entry, base));
    }
    html.push_str("</body></html>\n");
    html
}

/// The `pass` badge of an id: green, red, or nothing without a boolean `pass`.
fn badge(metrics: &Map<String, Value>) -> &'static str {
    match metrics.get("pass").and_then(Value::as_bool) {
        Some(true) => " <span class=\"badge pass\">pass</span>",
        Some(false) => " <span class=\"badge fail\">fail</span>",
        None => "",
    }
}

/// The anchor of an id's section.
fn anchor(id: &str) -> String {
    format!("id-{}", percent_encode(id))
}

/// The list of ids at the top of the page.
fn contents(entries: &[Entry]) -> String {
    let items: String = entries
        .iter()
        .map(|e| {
            format!(
                "<li><a href=\"#{}\">{}</a>{}</li>",
                escape(&anchor(&e.id)),
                escape(&e.id),
                badge(&e.metrics)
            )
        })
        .collect();
    format!("<ul class=\"contents\">{items}</ul>\n")
}

/// One id's section.
fn section(entry: &Entry, base: &str) -> String {
    let title = registry::REGISTRY
        .iter()
        .find(|e| e.id == entry.id)
        .map(|e| format!("<p>{}</p>", escape(e.title)))
        .unwrap_or_default();
    format!(
        "<section id=\"{}\"><h2>{}{}</h2>{title}\n<h3>Command</h3>{}\n<h3>Figures</h3>{}\n\
         <h3>Metrics</h3>{}\n<h3>Tables</h3>{}\n<h3>Manifest</h3>{}</section>\n",
        escape(&anchor(&entry.id)),
        escape(&entry.id),
        badge(&entry.metrics),
        command_html(entry),
        figures(entry, base),
        metrics_table(&entry.metrics),
        tables(entry, base),
        manifest_html(&entry.manifest),
    )
}

/// `<stem>.svg` figures, each linking to its SVG and showing `<stem>.png` where one exists.
fn figures(entry: &Entry, base: &str) -> String {
    let figures: String = entry
        .files
        .iter()
        .filter_map(|f| f.strip_suffix(".svg"))
        .map(|stem| {
            let svg = format!("{stem}.svg");
            let png = format!("{stem}.png");
            let shown = if entry.files.contains(&png) {
                &png
            } else {
                &svg
            };
            format!(
                "<figure><a href=\"{}\"><img src=\"{}\" alt=\"{}\"></a>\
                 <figcaption><a href=\"{}\">{}</a></figcaption></figure>",
                link(base, &entry.id, &svg),
                link(base, &entry.id, shown),
                escape(stem),
                link(base, &entry.id, &svg),
                escape(&svg),
            )
        })
        .collect();
    if figures.is_empty() {
        return "<p>none</p>".into();
    }
    format!("<div class=\"figures\">{figures}</div>")
}

/// Whether a metric is a pass/fail check: `pass`, `*_pass`, `*_met` or `check*`.
fn is_check(key: &str) -> bool {
    key == "pass" || key.ends_with("_pass") || key.ends_with("_met") || key.starts_with("check")
}

/// The metrics as a table; boolean checks ([`is_check`]) rows are green or red.
fn metrics_table(metrics: &Map<String, Value>) -> String {
    let rows: String = metrics
        .iter()
        .map(|(key, value)| {
            let class = match value.as_bool() {
                Some(true) if is_check(key) => " class=\"pass\"",
                Some(false) if is_check(key) => " class=\"fail\"",
                _ => "",
            };
            format!(
                "<tr{class}><td>{}</td><td class=\"num\">{}</td></tr>",
                escape(key),
                escape(&value_text(value))
            )
        })
        .collect();
    format!("<table><tr><th>metric</th><th>value</th></tr>{rows}</table>")
}

/// Links to the CSV and markdown tables, one line per stem.
fn tables(entry: &Entry, base: &str) -> String {
    let mut stems: Vec<&str> = entry
        .files
        .iter()
        .filter_map(|f| f.strip_suffix(".csv").or_else(|| f.strip_suffix(".md")))
        .collect();
    stems.sort();
    stems.dedup();
    let items: String = stems
        .iter()
        .map(|stem| {
            let links: Vec<String> = ["csv", "md"]
                .iter()
                .map(|ext| format!("{stem}.{ext}"))
                .filter(|f| entry.files.contains(f))
                .map(|f| {
                    format!(
                        "<a href=\"{}\">{}</a>",
                        link(base, &entry.id, &f),
                        escape(&f)
                    )
                })
                .collect();
            format!("<li>{}</li>", links.join(" · "))
        })
        .collect();
    if items.is_empty() {
        return "<p>none</p>".into();
    }
    format!("<ul>{items}</ul>")
}

/// Manifest fields shown first, in this order; the rest follow alphabetically.
const MANIFEST_FIRST: &[&str] = &[
    "git_commit",
    "config_sha256",
    "start_time",
    "end_time",
    "seeds",
    "host",
];

/// The manifest's fields as a table (`extra.*` fields last) and its config, folded.
fn manifest_html(manifest: &Map<String, Value>) -> String {
    let rest = manifest
        .keys()
        .filter(|k| !MANIFEST_FIRST.contains(&k.as_str()) && *k != "config" && *k != "extra");
    let mut rows: Vec<(String, &Value)> = MANIFEST_FIRST
        .iter()
        .copied()
        .chain(rest.map(String::as_str))
        .filter_map(|k| manifest.get(k).map(|v| (k.to_string(), v)))
        .collect();
    if let Some(Value::Object(extra)) = manifest.get("extra") {
        let shown_above = |k: &&String| *k != "command";
        rows.extend(
            extra
                .iter()
                .filter(|(k, _)| shown_above(k))
                .map(|(k, v)| (format!("extra.{k}"), v)),
        );
    }
    let rows: String = rows
        .iter()
        .map(|(k, v)| {
            format!(
                "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
                escape(k),
                escape(&value_text(v))
            )
        })
        .collect();
    let config = manifest
        .get("config")
        .and_then(|c| serde_json::to_string_pretty(c).ok())
        .map(|c| {
            format!(
                "<details><summary>config as run</summary><pre>{}</pre></details>",
                escape(&c)
            )
        })
        .unwrap_or_default();
    format!("<table>{rows}</table>{config}")
}

/// The command that made `entry`, as `reproduce` recorded it in the manifest.
fn command_html(entry: &Entry) -> String {
    match entry.manifest.get("extra").and_then(|e| e.get("command")) {
        Some(Value::String(command)) => format!("<pre>{}</pre>", escape(command)),
        _ => "<p><small>command not recorded (no <code>extra.command</code> in the \
              manifest)</small></p>"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::browser::{dom, screenshot};

    /// A small valid SVG.
    const SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"300\" height=\"120\">\
        <rect width=\"300\" height=\"120\" fill=\"#3366cc\"/></svg>";

    /// Writes `files` (name, text) into `results/<id>/`.
    fn write_id(results: &Path, id: &str, files: &[(&str, &str)]) {
        let dir = results.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    /// A results dir with `fig1` (passing, a figure and a table) and `custom` (failing, an
    /// unregistered id whose metrics hold `&<>`), plus `bench/` (not a reproduced id).
    fn fake_results(results: &Path) {
        let manifest = r#"{"config": {"steps": 30, "problem": {"dim": 3}},
            "config_sha256": "abc123", "seeds": [0], "git_commit": "cb87925",
            "host": "vm", "start_time": "2026-12-02T14:27:15Z",
            "end_time": "2026-12-02T14:27:17Z", "extra": {"model_sha256": "f00d",
            "command": "cargo xtask reproduce fig1 --quick --set 'steps=30'"}}"#;
        write_id(
            results,
            "fig1",
            &[
                (
                    "metrics.json",
                    r#"{"pass": true, "bound_met": true, "rmse": 0.5}"#,
                ),
                ("manifest.json", manifest),
                ("fig1.svg", SVG),
                ("convergence.csv", "t,err\n0,1\n"),
                ("convergence.md", "| t | err |\n"),
            ],
        );
        write_id(
            results,
            "custom",
            &[
                (
                    "metrics.json",
                    r#"{"pass": false, "a&b<c>_pass": false, "note": "<script>x</script>"}"#,
                ),
                ("manifest.json", manifest),
                ("custom.svg", SVG),
            ],
        );
        write_id(results, "bench", &[("lat_cg.json", "{}")]);
    }

    /// The gallery of a fake results dir written into it, as text.
    fn fake_gallery() -> (tempfile::TempDir, String) {
        let tmp = tempfile::tempdir().unwrap();
        fake_results(tmp.path());
        let out = tmp.path().join("index.html");
        assert!(run(tmp.path(), &out).unwrap());
        let html = std::fs::read_to_string(out).unwrap();
        (tmp, html)
    }

    #[test]
    fn lists_reproduced_ids_registry_first_with_relative_links() {
        let (_tmp, html) = fake_gallery();
        let (fig1, custom) = (
            html.find("id=\"id-fig1\"").unwrap(),
            html.find("id=\"id-custom\"").unwrap(),
        );
        assert!(fig1 < custom, "registered ids come before others");
        assert!(!html.contains("id-bench"), "bench/ has no metrics.json");
        assert!(html.contains("<img src=\"fig1/fig1.svg\""));
        assert!(
            html.contains("href=\"fig1/convergence.csv\"")
                && html.contains("href=\"fig1/convergence.md\"")
        );
        assert!(!html.contains("file:") && !html.contains("http:") && !html.contains("https:"));
        assert!(
            html.contains("<pre>cargo xtask reproduce fig1 --quick --set &#39;steps=30&#39;</pre>")
        );
        assert!(html.contains("cb87925") && html.contains("abc123") && html.contains("14:27:17Z"));
        assert!(html.contains("extra.model_sha256"));
    }

    #[test]
    fn escapes_what_it_reads() {
        let (_tmp, html) = fake_gallery();
        assert!(html.contains("a&amp;b&lt;c&gt;_pass"));
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(!html.contains("a&b") && !html.contains("<script>x"));
    }

    #[test]
    fn checks_are_green_or_red() {
        let (_tmp, html) = fake_gallery();
        assert!(html.contains("<tr class=\"pass\"><td>bound_met</td>"));
        assert!(html.contains("<tr class=\"fail\"><td>a&amp;b&lt;c&gt;_pass</td>"));
        assert!(html.contains("<tr><td>rmse</td>"), "a number is no check");
        assert!(
            html.contains("<span class=\"badge pass\">")
                && html.contains("<span class=\"badge fail\">")
        );
        assert!(is_check("check_bound") && is_check("x_pass") && !is_check("passes"));
    }

    #[test]
    fn a_png_is_shown_in_place_of_its_svg_which_it_links() {
        let tmp = tempfile::tempdir().unwrap();
        fake_results(tmp.path());
        std::fs::write(tmp.path().join("fig1/fig1.png"), "png").unwrap();
        let out = tmp.path().join("index.html");
        run(tmp.path(), &out).unwrap();
        let html = std::fs::read_to_string(out).unwrap();
        assert!(html.contains("<a href=\"fig1/fig1.svg\"><img src=\"fig1/fig1.png\""));
    }

    #[test]
    fn links_climb_from_a_page_outside_the_results() {
        let tmp = tempfile::tempdir().unwrap();
        let results = tmp.path().join("my results");
        fake_results(&results);
        let out = tmp.path().join("site/deep/index.html");
        run(&results, &out).unwrap();
        let html = std::fs::read_to_string(out).unwrap();
        assert!(
            html.contains("src=\"../../my%20results/fig1/fig1.svg\""),
            "{html}"
        );
    }

    #[test]
    fn a_directory_without_results_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let err = run(tmp.path(), &tmp.path().join("index.html"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&tmp.path().display().to_string()) && err.contains("reproduce"),
            "{err}"
        );
    }

    /// The DOM of `page` after its scripts ran, and its `data-broken-images` count.
    fn dump_dom(page: &Path, profile: &Path) -> (String, usize) {
        let dom = dom(page, profile);
        let broken = dom
            .split_once("data-broken-images=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(n, _)| n.parse().unwrap())
            .unwrap_or_else(|| {
                panic!("no data-broken-images on <body>: the load script did not run\n{dom}")
            });
        (dom, broken)
    }

    #[test]
    #[ignore = "needs Debian chromium: apt-get install -y chromium"]
    fn chromium_renders_the_gallery_with_every_figure_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let (results, profile) = (tmp.path().join("results"), tmp.path().join("profile"));
        fake_results(&results);
        let page = tmp.path().join("site/index.html");
        run(&results, &page).unwrap();

        let shot: PathBuf = tmp.path().join("shot.png");
        screenshot(&page, &shot, &profile);

        // The screenshot becomes fig1's PNG: the page shows it in place of the SVG.
        std::fs::copy(&shot, results.join("fig1/fig1.png")).unwrap();
        run(&results, &page).unwrap();
        let (dom, broken) = dump_dom(&page, &profile);
        assert_eq!(broken, 0, "broken images in\n{dom}");
        assert!(dom.contains("id=\"id-fig1\"") && dom.contains("id=\"id-custom\""));
        assert!(dom.contains("src=\"../results/fig1/fig1.png\""));

        // The count is real: a figure that cannot be decoded is counted.
        std::fs::write(results.join("custom/custom.svg"), "not an svg").unwrap();
        assert_eq!(dump_dom(&page, &profile).1, 1);
    }
}

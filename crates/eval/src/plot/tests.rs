//! Representative figures pass the style check; heat map input checks.
//! Set `PLOT_SAMPLES_DIR` to keep the sample SVG and PNG files for a look.

use super::style::check_svg;
use super::*;

/// Where sample figures go: `PLOT_SAMPLES_DIR` if set, else a temporary directory.
fn out_dir() -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    match std::env::var_os("PLOT_SAMPLES_DIR") {
        Some(d) => (None, d.into()),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

/// Renders `fig`, asserts the style check passes, writes `<name>.svg` and `.png`; returns the SVG.
fn sample(fig: &impl Figure, name: &str) -> String {
    let svg = fig.to_svg().unwrap();
    assert_eq!(check_svg(&svg), Vec::<String>::new(), "{name}");
    let (_keep, dir) = out_dir();
    let path = dir.join(format!("{name}.svg"));
    write_svg_and_png(&svg, &path).unwrap();
    assert!(std::fs::metadata(path.with_extension("png")).unwrap().len() > 1000);
    svg
}

/// Whether `svg` holds a `<text>` reading exactly `t` (plotters puts it on a line of its own).
fn has_text(svg: &str, t: &str) -> bool {
    svg.contains(&format!(">\n{t}\n</text>"))
}

/// The canvas width and height written in the `<svg>` tag.
fn canvas(svg: &str) -> (f64, f64) {
    let num = |key: &str| {
        let rest = &svg[svg.find(&format!("{key}=\"")).unwrap() + key.len() + 2..];
        rest[..rest.find('"').unwrap()].parse::<f64>().unwrap()
    };
    (num("width"), num("height"))
}

fn wave(n: usize, phase: f64) -> Vec<Vec<f64>> {
    (0..n)
        .map(|r| {
            (0..4)
                .map(|c| ((r * 4 + c) as f64 * 0.7 + phase).sin().abs())
                .collect()
        })
        .collect()
}

#[test]
fn a_head_map_with_names_passes() {
    let map = Heatmap {
        title: "fig8: induction score per head (induction-2l, [BOS, s, s], |s| = 12)".into(),
        row_label: "layer".into(),
        col_label: "head".into(),
        values: wave(12, 0.0),
    };
    let svg = sample(&map.clone(), "head_map_indices");
    assert!(
        has_text(&svg, "11") && !has_text(&svg, "12"),
        "indices 0..11 name rows"
    );
    let named = map
        .plot()
        .col_names((0..4).map(|h| format!("H{h}")))
        .units("score (0–1)");
    let svg = sample(&named, "head_map_named");
    assert!(has_text(&svg, "H3") && svg.contains("score (0–1)"));
}

#[test]
fn a_long_position_map_is_transposed_and_passes() {
    let values: Vec<Vec<f64>> = (0..2)
        .map(|r| {
            (0..50)
                .map(|p| ((p + 7 * r) as f64 * 0.37).sin() * 2.5)
                .collect()
        })
        .collect();
    let tokens: Vec<String> = (0..50).map(|p| format!("tok{p}")).collect();
    let map = Heatmap {
        title: "Δ loss when patching each position (clean → corrupt)".into(),
        row_label: "component".into(),
        col_label: "position".into(),
        values,
    }
    .plot()
    .row_names(["attn L0", "mlp L1"])
    .col_names(&tokens)
    .units("Δ loss (nats)");
    let svg = sample(&map, "position_map");
    let (w, h) = canvas(&svg);
    assert!(h > w, "drawn tall: {w}×{h}");
    assert!(has_text(&svg, "tok49") && has_text(&svg, "mlp L1"));
}

#[test]
fn an_integer_line_plot_with_bands_passes_with_integer_ticks() {
    let xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut plot = LinePlot::new("accuracy by operand length (seed 0; trained on 1–2 digits)")
        .x_label("operand digits")
        .y_label("accuracy");
    for (k, name) in ["exact answer", "first token", "last token"]
        .iter()
        .enumerate()
    {
        let ys: Vec<f64> = xs
            .iter()
            .map(|x| 1.0 / (1.0 + (x - 2.0 - k as f64).exp()))
            .collect();
        plot = plot
            .series(Series {
                name: (*name).into(),
                points: xs.iter().copied().zip(ys.iter().copied()).collect(),
                style: SeriesStyle::Solid,
                color: None,
            })
            .band(
                xs.iter()
                    .zip(&ys)
                    .map(|(&x, &y)| (x, y - 0.08, y + 0.08))
                    .collect(),
            );
    }
    let svg = sample(&plot, "integer_bands");
    assert!(!has_text(&svg, "1.5") && has_text(&svg, "2") && has_text(&svg, "6"));
    assert_eq!(svg.matches("<polygon").count(), 3, "one band per series");
}

#[test]
fn a_log_plot_over_25_decades_passes() {
    let pts = |rate: f64| {
        (0..=50)
            .map(|t| (t as f64, rate.powi(t).max(1e-25)))
            .collect()
    };
    let plot = LinePlot::new("A-norm error vs depth")
        .x_label("depth t")
        .y_label("error")
        .log_y(true)
        .series(Series {
            name: "CG".into(),
            points: pts(0.3),
            style: SeriesStyle::Solid,
            color: None,
        })
        .series(Series {
            name: "bound".into(),
            points: pts(0.5),
            style: SeriesStyle::Dashed,
            color: None,
        })
        .series(Series {
            name: "LAT".into(),
            points: pts(0.3),
            style: SeriesStyle::Markers,
            color: Some(3),
        });
    let svg = sample(&plot, "log_y");
    assert!(has_text(&svg, "1e-25") && has_text(&svg, "1e0"));
}

#[test]
fn notes_sit_under_the_chart_and_long_ones_wrap() {
    let series = Series {
        name: "GD".into(),
        points: (1..=8).map(|t| (t as f64, 1.0 / t as f64)).collect(),
        style: SeriesStyle::Solid,
        color: None,
    };
    let bare = LinePlot::new("loss vs depth")
        .x_label("depth")
        .series(series);
    let long = "least-squares oracle (not drawn): 0.5·MSE between 1.2e-25 and 3.4e-25 at every \
                depth, numerically zero on noiseless tasks with more examples than dimensions";
    let noted = bare.clone().note("short note").note(long);
    let svg = sample(&noted, "line_notes");
    assert!(has_text(&svg, "short note"));
    let lines = svg.matches("<text").count() - bare.to_svg().unwrap().matches("<text").count();
    assert!(
        lines >= 3,
        "the long note wraps onto two lines or more: {lines} text lines"
    );
    let y_of = |t: &str| {
        let tag = &svg[..svg.find(&format!(">\n{t}")).unwrap()];
        let tag = &tag[tag.rfind("<text").unwrap()..];
        let rest = &tag[tag.find(" y=\"").unwrap() + 4..];
        rest[..rest.find('"').unwrap()].parse::<f64>().unwrap()
    };
    assert!(
        y_of("short note") > y_of("depth"),
        "notes sit below the x axis"
    );
}

#[test]
fn a_band_before_any_series_is_an_error() {
    let e = LinePlot::new("t")
        .band(vec![(0.0, 0.0, 1.0)])
        .series(Series {
            name: "s".into(),
            points: vec![(0.0, 0.5)],
            style: SeriesStyle::Solid,
            color: None,
        })
        .to_svg()
        .unwrap_err();
    assert!(e.to_string().contains("band before any series"), "{e}");
}

#[test]
fn heatmap_writes_every_value_and_rejects_ragged_input() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("h.svg");
    let h = Heatmap {
        title: "scores".into(),
        row_label: "layer".into(),
        col_label: "head".into(),
        values: vec![vec![0.1, 0.9], vec![0.25, 0.5]],
    };
    h.write_svg(&path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    for v in ["0.10", "0.90", "0.25", "0.50"] {
        assert!(svg.contains(v), "{v}");
    }
    let ragged = Heatmap {
        values: vec![vec![0.1, 0.9], vec![0.2]],
        ..h.clone()
    };
    assert!(ragged.write_svg(&path).is_err());
    let nan = Heatmap {
        values: vec![vec![f64::NAN]],
        ..h
    };
    assert!(nan.write_svg(&path).is_err());
}

#[test]
fn heatmap_names_must_match_the_matrix() {
    let map = Heatmap {
        title: "m".into(),
        row_label: "r".into(),
        col_label: "c".into(),
        values: vec![vec![1.0, 2.0]],
    };
    let e = map.plot().col_names(["a"]).to_svg().unwrap_err();
    assert!(
        e.to_string().contains("1 column names for 2 columns"),
        "{e}"
    );
}

#[test]
fn a_short_map_with_a_long_row_description_passes() {
    let map = Heatmap {
        title: "fig8: arith residual stream patched clean → corrupted ([EOT, a, +, b, =])".into(),
        row_label: "layer (hook_resid_pre)".into(),
        col_label: "position".into(),
        values: vec![
            vec![0.0, 0.53, 0.0, 0.47, 0.0],
            vec![0.0, 0.16, 0.0, 0.18, 0.68],
        ],
    };
    sample(&map, "short_map_long_label");
}

#[test]
fn a_short_map_with_a_long_units_label_passes() {
    let map = Heatmap::layer_by_head(
        "fig8: induction score per head (induction-2l, [BOS, s, s], |s| = 25)",
        "share of the logit difference restored",
        &wave(2, 0.3),
    );
    let svg = sample(&map, "short_map_long_units");
    assert!(has_text(&svg, "L1") && has_text(&svg, "H3"));
}

#[test]
fn x_values_spanning_decades_get_a_log_axis_unless_told_otherwise() {
    let series = |xs: &[f64]| Series {
        name: "dev".into(),
        points: xs.iter().map(|&x| (x, 1.0 / x)).collect(),
        style: SeriesStyle::Solid,
        color: None,
    };
    let kappa = LinePlot::new("deviation vs κ").series(series(&[10.0, 100.0, 1000.0]));
    let svg = sample(&kappa, "auto_log_x");
    assert!(has_text(&svg, "1e1") && has_text(&svg, "1e3"), "log ticks");
    let linear = sample(&kappa.log_x(false), "forced_linear_x");
    assert!(!has_text(&linear, "1e1"));
    let from_zero = LinePlot::new("error vs depth").series(series(&[0.0, 10.0, 1000.0]));
    assert!(
        !has_text(&sample(&from_zero, "from_zero"), "1e1"),
        "0 keeps it linear"
    );
}

#[test]
fn integer_maps_print_integers_and_no_value_prints_as_minus_zero() {
    let steps = Heatmap {
        title: "first broken step".into(),
        row_label: "part".into(),
        col_label: "invariant".into(),
        values: vec![vec![1.0, 0.0], vec![-1.0, 2.0]],
    };
    let svg = sample(&steps, "integer_map");
    assert!(has_text(&svg, "2") && has_text(&svg, "-1") && !svg.contains("2.00"));
    let tiny = Heatmap {
        values: vec![vec![-1e-9, 0.5], vec![0.25, -0.5]],
        ..steps
    };
    let svg = sample(&tiny, "tiny_negative");
    assert!(has_text(&svg, "0.00") && !has_text(&svg, "-0.00") && has_text(&svg, "-0.50"));
}

//! Line charts written as SVG (plotters' SVG backend; text is emitted as SVG `<text>`).

use std::path::Path;

use plotters::prelude::*;

use crate::{Error, Result};

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesStyle {
    /// A solid line.
    Solid,
    /// A dashed line (bounds, references).
    Dashed,
    /// Markers only (measured points).
    Markers,
}

/// Where the legend box goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegendPosition {
    /// Top right corner (default).
    #[default]
    UpperRight,
    /// Top left corner.
    UpperLeft,
    /// Bottom left corner.
    LowerLeft,
    /// Bottom right corner.
    LowerRight,
}

/// One named series of `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label (empty: no legend entry).
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Line, dashes or markers.
    pub style: SeriesStyle,
    /// Palette index; `None` picks the series' position.
    pub color: Option<usize>,
}

/// A line chart: a title, axis labels, optional log axes, several series.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePlot {
    title: String,
    x_label: String,
    y_label: String,
    log_x: bool,
    log_y: bool,
    size: (u32, u32),
    legend: LegendPosition,
    series: Vec<Series>,
}

/// Ten distinguishable colours (the "tab10" palette).
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}

impl LinePlot {
    /// An empty 800×560 chart with this title.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            log_x: false,
            log_y: false,
            size: (800, 560),
            legend: LegendPosition::default(),
            series: Vec::new(),
        }
    }

    /// Sets the x-axis label.
    pub fn x_label(mut self, label: impl Into<String>) -> Self {
        self.x_label = label.into();
        self
    }

    /// Sets the y-axis label.
    pub fn y_label(mut self, label: impl Into<String>) -> Self {
        self.y_label = label.into();
        self
    }

    /// Log10 x axis (points with x ≤ 0 are skipped).
    pub fn log_x(mut self, on: bool) -> Self {
        self.log_x = on;
        self
    }

    /// Log10 y axis (points with y ≤ 0 are skipped).
    pub fn log_y(mut self, on: bool) -> Self {
        self.log_y = on;
        self
    }

    /// Sets the image size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// Places the legend box.
    pub fn legend(mut self, position: LegendPosition) -> Self {
        self.legend = position;
        self
    }

    /// Adds a series.
    pub fn series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Maps a point to drawing coordinates (log10 on log axes); `None` if it cannot be drawn.
    fn map(&self, (x, y): (f64, f64)) -> Option<(f64, f64)> {
        let tx = if self.log_x {
            (x > 0.0).then(|| x.log10())
        } else {
            Some(x)
        };
        let ty = if self.log_y {
            (y > 0.0).then(|| y.log10())
        } else {
            Some(y)
        };
        match (tx, ty) {
            (Some(a), Some(b)) if a.is_finite() && b.is_finite() => Some((a, b)),
            _ => None,
        }
    }

    /// Writes the chart as SVG; returns the number of points skipped (non-finite, or ≤ 0 on a
    /// log axis). An empty chart or a series with no drawable point is an error.
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<usize> {
        let path = path.as_ref();
        if self.series.is_empty() {
            return Err(Error::Invalid(format!(
                "plot '{}' has no series",
                self.title
            )));
        }
        let mut skipped = 0;
        let mut mapped = Vec::with_capacity(self.series.len());
        for s in &self.series {
            let pts: Vec<(f64, f64)> = s.points.iter().filter_map(|&p| self.map(p)).collect();
            skipped += s.points.len() - pts.len();
            if pts.is_empty() {
                return Err(Error::Invalid(format!(
                    "series '{}' of plot '{}' has no drawable point",
                    s.name, self.title
                )));
            }
            mapped.push(pts);
        }
        let range = |f: fn(&(f64, f64)) -> f64| {
            let (lo, hi) = mapped
                .iter()
                .flatten()
                .map(f)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
            let pad = if hi > lo { 0.04 * (hi - lo) } else { 0.5 };
            (lo - pad)..(hi + pad)
        };
        let (xr, yr) = (range(|p| p.0), range(|p| p.1));

        let root = SVGBackend::new(path, self.size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(xr, yr)
            .map_err(plot_err)?;
        let fmt = |log: bool| move |v: &f64| tick_label(*v, log);
        let (fx, fy) = (fmt(self.log_x), fmt(self.log_y));
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .draw()
            .map_err(plot_err)?;
        for (i, (s, pts)) in self.series.iter().zip(mapped).enumerate() {
            let (r, g, b) = PALETTE[s.color.unwrap_or(i) % PALETTE.len()];
            let color = RGBColor(r, g, b);
            let legend = match s.style {
                SeriesStyle::Solid => chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(plot_err)?,
                SeriesStyle::Dashed => chart
                    .draw_series(DashedLineSeries::new(pts, 6, 4, color.stroke_width(1)))
                    .map_err(plot_err)?,
                SeriesStyle::Markers => chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(plot_err)?,
            };
            // The legend swatch shows the style: a line, a dashed line or a marker.
            let (first, second, radius) = match s.style {
                SeriesStyle::Solid => ((0, 9), (9, 18), 0),
                SeriesStyle::Dashed => ((0, 7), (11, 18), 0),
                SeriesStyle::Markers => ((9, 9), (9, 9), 3),
            };
            // A series with an empty name gets no legend entry.
            if !s.name.is_empty() {
                legend.label(s.name.as_str()).legend(move |(x, y)| {
                    let line = color.stroke_width(2);
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(first.0, 0), (first.1, 0)], line)
                        + PathElement::new(vec![(second.0, 0), (second.1, 0)], line)
                        + Circle::new((9, 0), radius, color.filled())
                });
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(match self.legend {
                LegendPosition::UpperRight => SeriesLabelPosition::UpperRight,
                LegendPosition::UpperLeft => SeriesLabelPosition::UpperLeft,
                LegendPosition::LowerLeft => SeriesLabelPosition::LowerLeft,
                LegendPosition::LowerRight => SeriesLabelPosition::LowerRight,
            })
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        Ok(skipped)
    }
}

/// Tick text: integers without decimals, log axes as powers of ten (`1e-3`).
fn tick_label(v: f64, log: bool) -> String {
    let short = |x: f64| {
        if (x - x.round()).abs() < 1e-9 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    if log {
        format!("1e{}", short(v))
    } else if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        short(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn writes_svg_with_title_labels_and_legend() {
        let d = dir();
        let path = d.path().join("p.svg");
        let pts: Vec<(f64, f64)> = (0..20).map(|t| (t as f64, 0.7f64.powi(t))).collect();
        let skipped = LinePlot::new("Convergence")
            .x_label("steps t")
            .y_label("error")
            .log_y(true)
            .series(Series {
                name: "reference CG".into(),
                points: pts.clone(),
                style: SeriesStyle::Solid,
                color: None,
            })
            .series(Series {
                name: "bound".into(),
                points: pts.clone(),
                style: SeriesStyle::Dashed,
                color: None,
            })
            .series(Series {
                name: "LAT".into(),
                points: pts,
                style: SeriesStyle::Markers,
                color: Some(3),
            })
            .write_svg(&path)
            .unwrap();
        assert_eq!(skipped, 0);
        let svg = std::fs::read_to_string(&path).unwrap();
        for needle in ["<svg", "Convergence", "reference CG", "steps t", "error"] {
            assert!(svg.contains(needle), "SVG lacks {needle}");
        }
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(5.0, false), "5");
        assert_eq!(tick_label(2.5, false), "2.50");
        assert_eq!(tick_label(-2.0, true), "1e-2");
        assert_eq!(tick_label(0.001, false), "1.0e-3");
    }

    #[test]
    fn log_axis_skips_non_positive_points_and_counts_them() {
        let d = dir();
        let pts = vec![(0.0, 1.0), (1.0, 0.0), (2.0, -1.0), (3.0, 0.1)];
        let skipped = LinePlot::new("t")
            .log_y(true)
            .series(Series {
                name: "s".into(),
                points: pts,
                style: SeriesStyle::Solid,
                color: None,
            })
            .write_svg(d.path().join("p.svg"))
            .unwrap();
        assert_eq!(skipped, 2);
    }

    #[test]
    fn empty_plots_and_undrawable_series_are_errors() {
        let d = dir();
        assert!(LinePlot::new("empty")
            .write_svg(d.path().join("a.svg"))
            .unwrap_err()
            .to_string()
            .contains("no series"));
        let nan = Series {
            name: "nan".into(),
            points: vec![(0.0, f64::NAN)],
            style: SeriesStyle::Solid,
            color: None,
        };
        let e = LinePlot::new("x")
            .series(nan)
            .write_svg(d.path().join("b.svg"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'nan'"), "{e}");
    }

    #[test]
    fn heatmap_writes_every_value_and_rejects_ragged_input() {
        let d = dir();
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
}

/// A heat map of a matrix: one cell per entry, shaded white (the minimum) to dark blue (the
/// maximum), with the value written in the cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Title.
    pub title: String,
    /// Row axis description (rows are drawn top to bottom).
    pub row_label: String,
    /// Column axis description.
    pub col_label: String,
    /// `values[row][col]`.
    pub values: Vec<Vec<f64>>,
}

impl Heatmap {
    /// Writes the map as SVG. Empty or ragged matrices and non-finite values are errors.
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<()> {
        let rows = self.values.len();
        let cols = self.values.first().map_or(0, Vec::len);
        if rows == 0 || cols == 0 || self.values.iter().any(|r| r.len() != cols) {
            return Err(Error::Invalid(format!(
                "heat map '{}' needs a non-empty rectangular matrix",
                self.title
            )));
        }
        if self.values.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "heat map '{}' has a non-finite value",
                self.title
            )));
        }
        let (lo, hi) = self
            .values
            .iter()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = if hi > lo { hi - lo } else { 1.0 };
        let size = ((90 + 70 * cols) as u32, (110 + 50 * rows) as u32);
        let root = SVGBackend::new(path.as_ref(), size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0..cols, 0..rows)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(self.col_label.as_str())
            .y_desc(self.row_label.as_str())
            .x_labels(cols)
            .y_labels(rows)
            .x_label_formatter(&|c| format!("{c}"))
            .y_label_formatter(&|r| format!("{}", rows.saturating_sub(1).saturating_sub(*r)))
            .draw()
            .map_err(plot_err)?;
        for (r, row) in self.values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let t = (v - lo) / span;
                let shade = |full: f64| (255.0 - t * (255.0 - full)).round() as u8;
                let fill = RGBColor(shade(31.0), shade(119.0), shade(180.0));
                let y = rows - 1 - r;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(c, y), (c + 1, y + 1)],
                        fill.filled(),
                    )))
                    .map_err(plot_err)?;
                let ink = if t > 0.55 { WHITE } else { BLACK };
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{v:.2}"),
                        (c, y + 1),
                        ("sans-serif", 13).into_font().color(&ink),
                    )))
                    .map_err(plot_err)?;
            }
        }
        root.present().map_err(plot_err)?;
        Ok(())
    }
}

//! Figures written as SVG (plotters' SVG backend; text stays SVG `<text>`) with a PNG rendered
//! next to each (resvg): [`LinePlot`] line charts with shaded bands and [`Heatmap`] matrices.
//! [`style::check_svg`] finds drawing faults (text off the canvas, overlapping labels).

mod heatmap;
mod line;
mod png;
pub mod style;
mod text;

use std::path::Path;

pub use heatmap::{indexed, Heatmap, HeatmapPlot};
pub use line::{LegendPosition, LinePlot, Series, SeriesStyle};

use crate::{Error, Result};

/// Something that renders to an SVG document.
pub trait Figure {
    /// The figure as an SVG document.
    fn to_svg(&self) -> Result<String>;
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

/// Ticks at multiples of the smallest step of the form {1, 2, 5} × 10^k (≥ 1 if `integer`)
/// that gives at most `max` ticks in `lo..=hi`, and that step.
pub(crate) fn nice_ticks(lo: f64, hi: f64, integer: bool, max: usize) -> (Vec<f64>, f64) {
    let count = |s: f64| (hi / s).floor() - (lo / s).ceil() + 1.0;
    let start = 10f64.powf(((hi - lo) / max as f64).log10().floor());
    let step = (0..)
        .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * start * 10f64.powi(k)))
        .find(|&s| count(s) <= max as f64 && (!integer || s >= 1.0))
        .unwrap_or(start);
    let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    ((first..=last).map(|k| k as f64 * step).collect(), step)
}

/// Writes `svg` to `path` and its rendering to the same path with the extension `png`.
pub fn write_svg_and_png(svg: &str, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    crate::write_text(path, svg)?;
    png::write_png(svg, &path.with_extension("png"))
}

/// Writes `figure` like [`write_svg_and_png`], then fails with the file name and the problems
/// [`style::check_svg`] finds (the files stay, to look at).
pub fn write_checked(figure: &impl Figure, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let svg = figure.to_svg()?;
    write_svg_and_png(&svg, path)?;
    match style::check_svg(&svg) {
        problems if problems.is_empty() => Ok(()),
        problems => Err(crate::Error::Invalid(format!(
            "figure {} is badly drawn: {}",
            path.display(),
            problems.join("; ")
        ))),
    }
}

#[cfg(test)]
mod tests;

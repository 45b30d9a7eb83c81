//! Heat maps: one shaded cell per matrix entry, names at cell centres, a colour bar.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::text::{style, width, Title};
use super::{nice_ticks, plot_err, Figure};
use crate::{Error, Result};

/// Tick label size, axis label size and the largest cell value size (SVG pixels).
const TICK_PX: f64 = 11.0;
const LABEL_PX: f64 = 13.0;
const VALUE_PX: f64 = 11.0;
/// The grid never grows past this many pixels in either direction.
const MAX_GRID: f64 = 720.0;
/// Largest cell width and height, and the widest a cell may be relative to its height (and
/// the reverse).
const MAX_CELL: (f64, f64) = (64.0, 36.0);
const MAX_ASPECT: f64 = 2.5;
/// Colour bar width, its gap to the grid and the number of shaded slices in it.
const BAR_W: f64 = 14.0;
const BAR_GAP: f64 = 16.0;
const BAR_SLICES: usize = 64;
/// The colour bar is at least this tall (the grid may be shorter).
const MIN_BAR_H: f64 = 120.0;

/// Sequential colours, low to high (light to dark blue).
const BLUES: [(u8, u8, u8); 5] = [
    (247, 251, 255),
    (198, 219, 239),
    (107, 174, 214),
    (33, 113, 181),
    (8, 48, 107),
];
/// Diverging colours, most negative (blue) through zero (white) to most positive (red).
const BLUE_RED: [(u8, u8, u8); 7] = [
    (33, 102, 172),
    (103, 169, 207),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (239, 138, 98),
    (178, 24, 43),
];

/// Names `prefix0`, `prefix1`, … for `n` rows or columns (`indexed("L", 2)` → `L0`, `L1`),
/// as for layers and heads.
pub fn indexed(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// A heat map of a matrix. `write_svg` draws it with index names; [`Heatmap::plot`] gives a
/// [`HeatmapPlot`] that takes row and column names and the colour bar's units.
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
    /// This map with the drawing options of [`HeatmapPlot`] at their defaults.
    pub fn plot(self) -> HeatmapPlot {
        HeatmapPlot {
            map: self,
            row_names: None,
            col_names: None,
            units: String::new(),
            transpose: None,
        }
    }

    /// A layer × head map of `values[layer][head]`: rows named `L0`, `L1`, …, columns `H0`, …,
    /// and the colour bar labelled `units`.
    pub fn layer_by_head(
        title: impl Into<String>,
        units: &str,
        values: &[Vec<f64>],
    ) -> HeatmapPlot {
        let heads = values.first().map_or(0, Vec::len);
        Heatmap {
            title: title.into(),
            row_label: "layer".into(),
            col_label: "head".into(),
            values: values.to_vec(),
        }
        .plot()
        .row_names(indexed("L", values.len()))
        .col_names(indexed("H", heads))
        .units(units)
    }

    /// A layer × position map of `values[layer][position]` at the hook `hook` of each layer
    /// (e.g. `hook_resid_pre`): rows named `L0`, …, columns named `positions` (e.g. the prompt's
    /// tokens), the colour bar labelled `units`.
    pub fn layer_by_position<S: ToString>(
        title: impl Into<String>,
        hook: &str,
        units: &str,
        positions: impl IntoIterator<Item = S>,
        values: &[Vec<f64>],
    ) -> HeatmapPlot {
        Heatmap {
            title: title.into(),
            row_label: format!("layer ({hook})"),
            col_label: "position".into(),
            values: values.to_vec(),
        }
        .plot()
        .row_names(indexed("L", values.len()))
        .col_names(positions)
        .units(units)
    }

    /// Writes the map as SVG and PNG (see [`HeatmapPlot::write_svg`]).
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<()> {
        self.clone().plot().write_svg(path)
    }
}

impl Figure for Heatmap {
    fn to_svg(&self) -> Result<String> {
        self.clone().plot().to_svg()
    }
}

/// A [`Heatmap`] with names for its rows and columns (default: indices), a units label for
/// the colour bar, and its orientation. Signed data get a blue–white–red scale centred on 0,
/// non-negative data a white-to-blue scale from 0. A map much wider than tall (such as 2 rows
/// × 50 positions) is drawn transposed unless [`HeatmapPlot::transpose`] says otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapPlot {
    map: Heatmap,
    row_names: Option<Vec<String>>,
    col_names: Option<Vec<String>>,
    units: String,
    transpose: Option<bool>,
}

impl HeatmapPlot {
    /// Names the rows (one per row, e.g. `L5H1` or a token).
    pub fn row_names<S: ToString>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.row_names = Some(names.into_iter().map(|s| s.to_string()).collect());
        self
    }

    /// Names the columns (one per column).
    pub fn col_names<S: ToString>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.col_names = Some(names.into_iter().map(|s| s.to_string()).collect());
        self
    }

    /// Labels the colour bar (what the values measure, with units).
    pub fn units(mut self, units: impl Into<String>) -> Self {
        self.units = units.into();
        self
    }

    /// Draws rows as columns and columns as rows (`false`: never; default: when the map is
    /// more than twice as wide as tall and has more than 12 columns).
    pub fn transpose(mut self, on: bool) -> Self {
        self.transpose = Some(on);
        self
    }

    /// Writes the map as SVG and the same drawing as PNG next to it. Empty or ragged matrices,
    /// non-finite values and name lists of the wrong length are errors.
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<()> {
        super::write_svg_and_png(&self.to_svg()?, path)
    }

    /// Checks the matrix and the names; returns `(rows, cols)`.
    fn validate(&self) -> Result<(usize, usize)> {
        let m = &self.map;
        let rows = m.values.len();
        let cols = m.values.first().map_or(0, Vec::len);
        let bad = |what: String| Err(Error::Invalid(format!("heat map '{}' {what}", m.title)));
        if rows == 0 || cols == 0 || m.values.iter().any(|r| r.len() != cols) {
            return bad("needs a non-empty rectangular matrix".into());
        }
        if m.values.iter().flatten().any(|v| !v.is_finite()) {
            return bad("has a non-finite value".into());
        }
        for (what, names, n) in [
            ("row", &self.row_names, rows),
            ("column", &self.col_names, cols),
        ] {
            if let Some(names) = names.as_ref().filter(|v| v.len() != n) {
                return bad(format!("has {} {what} names for {n} {what}s", names.len()));
            }
        }
        Ok((rows, cols))
    }

    /// The matrix as drawn: transposed if asked or if much wider than tall.
    fn grid(&self, rows: usize, cols: usize) -> Grid {
        let names = |given: &Option<Vec<String>>, n: usize| {
            given
                .clone()
                .unwrap_or_else(|| (0..n).map(|i| i.to_string()).collect())
        };
        let grid = Grid {
            row_label: self.map.row_label.clone(),
            col_label: self.map.col_label.clone(),
            values: self.map.values.clone(),
            row_names: names(&self.row_names, rows),
            col_names: names(&self.col_names, cols),
        };
        let wide = cols > 2 * rows && cols > 12;
        if self.transpose.unwrap_or(wide) {
            grid.transposed()
        } else {
            grid
        }
    }
}

impl Figure for HeatmapPlot {
    fn to_svg(&self) -> Result<String> {
        let (rows, cols) = self.validate()?;
        let grid = self.grid(rows, cols);
        let scale = Scale::of(&grid.values);
        let layout = Layout::new(&grid, &scale, &self.map.title, &self.units);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, layout.size).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            layout.title.draw(&root)?;
            layout.draw_cells(&root, &grid, &scale)?;
            layout.draw_axes(&root, &grid)?;
            layout.draw_bar(&root, &scale, &self.units)?;
            root.present().map_err(plot_err)?;
        }
        Ok(svg)
    }
}

/// The matrix in drawing orientation with its names.
struct Grid {
    row_label: String,
    col_label: String,
    values: Vec<Vec<f64>>,
    row_names: Vec<String>,
    col_names: Vec<String>,
}

impl Grid {
    fn transposed(self) -> Grid {
        let cols = self.values[0].len();
        Grid {
            row_label: self.col_label,
            col_label: self.row_label,
            values: (0..cols)
                .map(|c| self.values.iter().map(|r| r[c]).collect())
                .collect(),
            row_names: self.col_names,
            col_names: self.row_names,
        }
    }

    fn dims(&self) -> (usize, usize) {
        (self.values.len(), self.values[0].len())
    }
}

/// The value → colour map: diverging about 0 for signed data, sequential from 0 otherwise.
struct Scale {
    lo: f64,
    hi: f64,
    diverging: bool,
}

impl Scale {
    fn of(values: &[Vec<f64>]) -> Self {
        let (lo, hi) = values
            .iter()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let top = |m: f64| if m > 0.0 { m } else { 1.0 };
        if lo < 0.0 {
            let m = top(lo.abs().max(hi.abs()));
            Scale {
                lo: -m,
                hi: m,
                diverging: true,
            }
        } else {
            Scale {
                lo: 0.0,
                hi: top(hi),
                diverging: false,
            }
        }
    }

    fn colour(&self, v: f64) -> RGBColor {
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        let stops: &[(u8, u8, u8)] = if self.diverging { &BLUE_RED } else { &BLUES };
        let pos = t * (stops.len() - 1) as f64;
        let i = (pos.floor() as usize).min(stops.len() - 2);
        let f = pos - i as f64;
        let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
        let (a, b) = (stops[i], stops[i + 1]);
        RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }

    /// Values labelled on the colour bar (at most 5 round values, 0 among them when diverging)
    /// with their text.
    fn ticks(&self) -> Vec<(f64, String)> {
        let (ticks, step) = nice_ticks(self.lo, self.hi, false, 5);
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        ticks
            .into_iter()
            .map(|v| (v, format!("{:.*}", decimals, v + 0.0)))
            .collect()
    }
}

/// Black or white, whichever reads on `fill`.
fn ink(fill: RGBColor) -> RGBColor {
    let l = 0.299 * fill.0 as f64 + 0.587 * fill.1 as f64 + 0.114 * fill.2 as f64;
    if l < 128.0 {
        WHITE
    } else {
        BLACK
    }
}

/// Cell values with decimals by magnitude: none when every value is an integer, else 2 below 10,
/// 1 below 100, none above.
fn value_texts(values: &[Vec<f64>]) -> Vec<Vec<String>> {
    let max = values.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    let integers = values.iter().flatten().all(|v| v.fract() == 0.0);
    let decimals = if integers || max >= 100.0 {
        0
    } else if max < 10.0 {
        2
    } else {
        1
    };
    // A value that rounds to zero is written without its sign ("0.00", not "-0.00").
    let text = |v: f64| {
        let t = format!("{v:.decimals$}");
        match t.strip_prefix('-') {
            Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
            _ => t,
        }
    };
    values
        .iter()
        .map(|r| r.iter().map(|&v| text(v)).collect())
        .collect()
}

/// Where everything goes, in SVG pixels.
struct Layout {
    size: (u32, u32),
    title: Title,
    /// Top-left corner of the grid and one cell's width and height.
    origin: (f64, f64),
    cell: (f64, f64),
    /// Width and height of the grid.
    grid: (f64, f64),
    /// Height from the grid's top that fits the grid and the colour bar.
    body: f64,
    /// Font size for cell values; `None` when they do not fit.
    value_px: Option<f64>,
    /// Every how many rows / columns a name is written (1: all).
    row_step: usize,
    col_step: usize,
}

impl Layout {
    fn new(grid: &Grid, scale: &Scale, title: &str, units: &str) -> Self {
        let (rows, cols) = grid.dims();
        let widest = |names: &[String]| names.iter().map(|n| width(n, TICK_PX)).fold(0.0, f64::max);
        let (cw, ch) = cell_size(rows, cols, widest(&grid.col_names) + 6.0);
        // Rows grow tall enough for the rotated row description to fit beside them.
        let cell = (
            cw,
            ch.max((width(&grid.row_label, LABEL_PX) + 8.0) / rows as f64),
        );
        let row_names_w = widest(&grid.row_names);
        let bar_ticks: Vec<String> = scale.ticks().into_iter().map(|t| t.1).collect();
        let left = 8.0 + LABEL_PX + 8.0 + row_names_w + 6.0;
        let grid_w = cell.0 * cols as f64;
        let grid_h = cell.1 * rows as f64;
        let bar_label = if units.is_empty() {
            0.0
        } else {
            LABEL_PX + 8.0
        };
        let right = BAR_GAP + BAR_W + 4.0 + widest(&bar_ticks) + 6.0 + bar_label + 8.0;
        let w = (left + grid_w + right).max(width(&grid.col_label, LABEL_PX) + left + 16.0);
        let title = Title::fit(title, w - 16.0);
        let top = title.height() as f64 + 4.0;
        let bottom = 4.0 + TICK_PX + 8.0 + LABEL_PX + 8.0;
        // The colour bar is as tall as the grid, at least MIN_BAR_H, and tall enough for its
        // rotated units label.
        let body = grid_h.max(MIN_BAR_H).max(width(units, LABEL_PX) + 8.0);
        let h = top + body + bottom;
        Layout {
            size: (w.ceil() as u32, h.ceil() as u32),
            title,
            origin: (left, top),
            cell,
            grid: (grid_w, grid_h),
            body,
            value_px: value_px(&value_texts(&grid.values), cell),
            row_step: (TICK_PX + 2.0).div_euclid(cell.1) as usize + 1,
            col_step: ((widest(&grid.col_names) + 6.0) / cell.0).ceil().max(1.0) as usize,
        }
    }

    /// Pixel x of the left edge of column `c` and y of the top edge of row `r`.
    fn at(&self, c: usize, r: usize) -> (i32, i32) {
        (
            (self.origin.0 + c as f64 * self.cell.0).round() as i32,
            (self.origin.1 + r as f64 * self.cell.1).round() as i32,
        )
    }

    fn draw_cells<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        grid: &Grid,
        scale: &Scale,
    ) -> Result<()> {
        let texts = value_texts(&grid.values);
        for (r, row) in grid.values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let fill = scale.colour(v);
                let (x0, y0) = self.at(c, r);
                let (x1, y1) = self.at(c + 1, r + 1);
                root.draw(&Rectangle::new([(x0, y0), (x1, y1)], fill.filled()))
                    .map_err(plot_err)?;
                if let Some(px) = self.value_px {
                    let centre = ((x0 + x1) / 2, (y0 + y1) / 2);
                    let colour = ink(fill);
                    let s = style(px, HPos::Center, VPos::Center).color(&colour);
                    root.draw(&Text::new(texts[r][c].clone(), centre, s))
                        .map_err(plot_err)?;
                }
            }
        }
        let (rows, cols) = grid.dims();
        let frame = [self.at(0, 0), self.at(cols, rows)];
        root.draw(&Rectangle::new(frame, BLACK.mix(0.4)))
            .map_err(plot_err)
    }

    /// Row and column names at cell centres and the two axis descriptions.
    fn draw_axes<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        grid: &Grid,
    ) -> Result<()> {
        let (rows, cols) = grid.dims();
        let gx = self.at(0, 0).0;
        let (gx1, gy1) = self.at(cols, rows);
        for r in (0..rows).step_by(self.row_step) {
            let y = (self.origin.1 + (r as f64 + 0.5) * self.cell.1).round() as i32;
            let s = style(TICK_PX, HPos::Right, VPos::Center);
            root.draw(&Text::new(grid.row_names[r].clone(), (gx - 6, y), s))
                .map_err(plot_err)?;
        }
        for c in (0..cols).step_by(self.col_step) {
            let x = (self.origin.0 + (c as f64 + 0.5) * self.cell.0).round() as i32;
            let s = style(TICK_PX, HPos::Center, VPos::Top);
            root.draw(&Text::new(grid.col_names[c].clone(), (x, gy1 + 4), s))
                .map_err(plot_err)?;
        }
        let below = gy1 + 4 + TICK_PX as i32 + 8;
        let s = style(LABEL_PX, HPos::Center, VPos::Top);
        root.draw(&Text::new(
            grid.col_label.clone(),
            ((gx + gx1) / 2, below),
            s,
        ))
        .map_err(plot_err)?;
        let s = style(LABEL_PX, HPos::Center, VPos::Center).transform(FontTransform::Rotate270);
        let x = (8.0 + LABEL_PX / 2.0) as i32;
        root.draw(&Text::new(
            grid.row_label.clone(),
            (x, (self.origin.1 + self.body / 2.0) as i32),
            s,
        ))
        .map_err(plot_err)
    }

    /// The colour bar right of the grid: shaded slices, three value ticks, the units label.
    fn draw_bar<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        scale: &Scale,
        units: &str,
    ) -> Result<()> {
        let x0 = (self.origin.0 + self.grid.0 + BAR_GAP).round() as i32;
        let top = self.origin.1.round() as i32;
        let bottom = (self.origin.1 + self.body).round() as i32;
        let y_of = |t: f64| bottom as f64 - t * (bottom - top) as f64;
        for i in 0..BAR_SLICES {
            let (t0, t1) = (
                i as f64 / BAR_SLICES as f64,
                (i + 1) as f64 / BAR_SLICES as f64,
            );
            let v = scale.lo + (t0 + t1) / 2.0 * (scale.hi - scale.lo);
            let rect = [
                (x0, y_of(t1).floor() as i32),
                (x0 + BAR_W as i32, y_of(t0).ceil() as i32),
            ];
            root.draw(&Rectangle::new(rect, scale.colour(v).filled()))
                .map_err(plot_err)?;
        }
        root.draw(&Rectangle::new(
            [(x0, top), (x0 + BAR_W as i32, bottom)],
            BLACK.mix(0.4),
        ))
        .map_err(plot_err)?;
        let mut tick_w: f64 = 0.0;
        for (v, label) in scale.ticks() {
            tick_w = tick_w.max(width(&label, TICK_PX));
            let y = y_of((v - scale.lo) / (scale.hi - scale.lo)).round() as i32;
            let s = style(TICK_PX, HPos::Left, VPos::Center);
            root.draw(&Text::new(label, (x0 + BAR_W as i32 + 4, y), s))
                .map_err(plot_err)?;
        }
        if units.is_empty() {
            return Ok(());
        }
        let x = x0 as f64 + BAR_W + 4.0 + tick_w + 6.0 + LABEL_PX / 2.0;
        let s = style(LABEL_PX, HPos::Center, VPos::Center).transform(FontTransform::Rotate90);
        root.draw(&Text::new(
            units.to_string(),
            (x as i32, (top + bottom) / 2),
            s,
        ))
        .map_err(plot_err)
    }
}

/// Cell width and height: the grid fits `MAX_GRID`, cells no larger than `MAX_CELL`, and
/// neither side more than `MAX_ASPECT` times the other, except that cells widen to `name_w`
/// (the widest column name) while the grid still fits.
fn cell_size(rows: usize, cols: usize, name_w: f64) -> (f64, f64) {
    let fit = MAX_GRID / cols as f64;
    let w = fit.min(MAX_CELL.0);
    let h = (MAX_GRID / rows as f64).min(MAX_CELL.1);
    let w = w.min(h * MAX_ASPECT).max(name_w.min(fit));
    (w, h.min(w * MAX_ASPECT))
}

/// The largest size up to `VALUE_PX` at which every value fits its cell (at least 7 px).
fn value_px(texts: &[Vec<String>], (cw, ch): (f64, f64)) -> Option<f64> {
    let longest = texts.iter().flatten().map(|t| t.chars().count()).max()?;
    let by_width = (cw - 4.0) / (longest as f64 * super::text::CHAR_EM);
    let px = VALUE_PX.min(ch - 3.0).min(by_width);
    (px >= 7.0).then_some(px)
}

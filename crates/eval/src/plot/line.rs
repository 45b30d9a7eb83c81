//! Line charts: series as lines, dashes or markers, shaded interval bands, log axes, integer
//! ticks on integer axes, and a legend placed where it hides no data.

use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::text::{style, width, wrap, Title};
use super::{nice_ticks, plot_err, Figure, PALETTE};
use crate::format::fmt_sig;
use crate::{Error, Result};

/// Tick label, axis description and legend text sizes (SVG pixels).
const TICK_PX: f64 = 12.0;
const DESC_PX: f64 = 13.0;
const LEGEND_PX: f64 = 12.0;
/// Note text size (SVG pixels) and the height of one note line.
const NOTE_PX: f64 = 12.0;
const NOTE_ROW_H: f64 = 16.0;
/// Chart margin and the height of the x tick-and-description area.
const MARGIN: u32 = 12;
const X_AREA: u32 = 44;
/// Series with at most this many points get markers on their line.
const FEW_POINTS: usize = 15;
/// Legend row height and the swatch's width.
const ROW_H: f64 = 18.0;
const SWATCH_W: f64 = 22.0;

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

/// Where the legend goes. A corner is only used when the legend there covers no data; else
/// the next free corner is, and when none is free the legend goes right of the plot.
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
    /// Right of the plot area, outside it.
    Outside,
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

/// A series' points in drawing coordinates.
type Points = Vec<(f64, f64)>;

/// `(x, lower, upper)` triples: an interval band, or a line with `lower == upper`.
type Band = Vec<(f64, f64, f64)>;

/// A line chart: a title, axis labels, optional log axes, several series with optional bands.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePlot {
    title: String,
    x_label: String,
    y_label: String,
    log_x: Option<bool>,
    log_y: bool,
    integer_x: Option<bool>,
    integer_y: Option<bool>,
    size: (u32, u32),
    legend: LegendPosition,
    series: Vec<Series>,
    /// Bands with the index of the series they belong to (`None`: added before any series).
    bands: Vec<(Option<usize>, Band)>,
    /// Lines of text under the chart.
    notes: Vec<String>,
}

impl LinePlot {
    /// An empty 800×560 chart with this title.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            log_x: None,
            log_y: false,
            integer_x: None,
            integer_y: None,
            size: (800, 560),
            legend: LegendPosition::default(),
            series: Vec::new(),
            bands: Vec::new(),
            notes: Vec::new(),
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

    /// Log10 x axis (points with x ≤ 0 are skipped). Default: log when every x is positive and
    /// they span two decades or more (κ = 10 … 1000, λ = 1e-4 … 1).
    pub fn log_x(mut self, on: bool) -> Self {
        self.log_x = Some(on);
        self
    }

    /// Log10 y axis (points with y ≤ 0 are skipped).
    pub fn log_y(mut self, on: bool) -> Self {
        self.log_y = on;
        self
    }

    /// Ticks at integers only on the x axis (default: when every x is an integer).
    pub fn integer_x(mut self, on: bool) -> Self {
        self.integer_x = Some(on);
        self
    }

    /// Ticks at integers only on the y axis (default: when every y is an integer).
    pub fn integer_y(mut self, on: bool) -> Self {
        self.integer_y = Some(on);
        self
    }

    /// Sets the image size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// Sets the preferred legend position (see [`LegendPosition`]).
    pub fn legend(mut self, position: LegendPosition) -> Self {
        self.legend = position;
        self
    }

    /// Adds a series.
    pub fn series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Shades `(x, lower, upper)` (e.g. a 95% interval per point) around the series added
    /// last, in its colour. Points that cannot be drawn (non-finite, or ≤ 0 on a log axis) are
    /// left out; a band added before any series is an error when the chart is written.
    pub fn band(mut self, points: Vec<(f64, f64, f64)>) -> Self {
        self.bands.push((self.series.len().checked_sub(1), points));
        self
    }

    /// Adds a line of text under the chart, e.g. a value left out of the drawing and why (long
    /// notes wrap).
    pub fn note(mut self, text: impl Into<String>) -> Self {
        self.notes.push(text.into());
        self
    }

    /// Writes the chart as SVG and the same drawing as PNG next to it; returns the number of
    /// series points skipped (non-finite, or ≤ 0 on a log axis), which a note under the chart
    /// also states. An empty chart, a series with no drawable point and a band without a series
    /// are errors.
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<usize> {
        let (svg, skipped) = self.render()?;
        super::write_svg_and_png(&svg, path)?;
        Ok(skipped)
    }

    /// Maps a point to drawing coordinates (log10 on log axes); `None` if it cannot be drawn.
    fn map(&self, (x, y): (f64, f64)) -> Option<(f64, f64)> {
        let axis = |v: f64, log: bool| match log {
            true => (v > 0.0).then(|| v.log10()),
            false => Some(v),
        };
        let (a, b) = (axis(x, self.is_log_x())?, axis(y, self.log_y)?);
        (a.is_finite() && b.is_finite()).then_some((a, b))
    }

    /// Whether the x axis is logarithmic: as set, else when every finite x is positive and the
    /// largest is at least 100 times the smallest.
    fn is_log_x(&self) -> bool {
        self.log_x.unwrap_or_else(|| {
            let xs = || {
                self.series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.0))
            };
            let (lo, hi) = xs()
                .filter(|x| x.is_finite())
                .fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
            xs().all(|x| !x.is_finite() || x > 0.0) && lo > 0.0 && hi >= 100.0 * lo
        })
    }

    /// Every series as drawing-coordinate points, and how many points were skipped.
    fn mapped_series(&self) -> Result<(Vec<Points>, usize)> {
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
        Ok((mapped, skipped))
    }

    /// Every band in drawing coordinates with its series index.
    fn mapped_bands(&self) -> Result<Vec<(usize, Band)>> {
        self.bands
            .iter()
            .map(|(i, band)| {
                let i = i.ok_or_else(|| {
                    Error::Invalid(format!(
                        "plot '{}' has a band before any series",
                        self.title
                    ))
                })?;
                let pts = band
                    .iter()
                    .filter_map(|&(x, lo, hi)| {
                        let (mx, mlo) = self.map((x, lo))?;
                        Some((mx, mlo, self.map((x, hi))?.1))
                    })
                    .collect();
                Ok((i, pts))
            })
            .collect()
    }

    /// Whether an axis gets integer ticks: log axes always (ticks at powers of ten), else as
    /// set, else when every value is an integer.
    fn integer_axis(&self, log: bool, set: Option<bool>, value: fn(&(f64, f64)) -> f64) -> bool {
        let mut all = self.series.iter().flat_map(|s| s.points.iter().map(value));
        log || set.unwrap_or_else(|| all.all(|v| v == v.round()))
    }

    /// The SVG text and the number of skipped points.
    fn render(&self) -> Result<(String, usize)> {
        let (series, skipped) = self.mapped_series()?;
        let bands = self.mapped_bands()?;
        let lines: Vec<Band> = series
            .iter()
            .map(|pts| pts.iter().map(|&(x, y)| (x, y, y)).collect())
            .collect();
        let all = || lines.iter().chain(bands.iter().map(|(_, b)| b)).flatten();
        let log_x = self.is_log_x();
        let int_x = self.integer_axis(log_x, self.integer_x, |p| p.0);
        let int_y = self.integer_axis(self.log_y, self.integer_y, |p| p.1);
        let x = Axis::new(padded(all().map(|p| p.0)), int_x, log_x);
        let y = Axis::new(padded(all().flat_map(|p| [p.1, p.2])), int_y, self.log_y);
        let entries = self.legend_entries(&bands);
        let mut notes = self.notes.clone();
        if skipped > 0 {
            let why = match log_x || self.log_y {
                true => "not finite, or ≤ 0 on a log axis",
                false => "not finite",
            };
            notes.push(format!("{skipped} point(s) not drawn ({why})"));
        }
        let frame = Frame::new(self, &y, &entries, &notes);
        let data = lines.iter().chain(bands.iter().map(|(_, b)| b));
        let corner = frame.free_corner(self.legend, (&x, &y), data);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            frame.title.draw(&root)?;
            frame.draw_notes(&root)?;
            let body = root.margin(frame.title.height(), frame.notes_height(), 0, 0);
            let (main, side) = body.split_horizontally(frame.main_width(corner.is_none()));
            self.draw_chart(&main, &frame, (&x, &y), &series, &bands)?;
            match corner {
                Some(c) => frame.draw_legend(&main, frame.legend_origin(c), &entries)?,
                None => frame.draw_legend(&side, (4.0, MARGIN as f64), &entries)?,
            }
            root.present().map_err(plot_err)?;
        }
        Ok((svg, skipped))
    }

    /// The legend rows: one per named series, with its colour, style and whether it has a band.
    fn legend_entries(&self, bands: &[(usize, Band)]) -> Vec<Entry> {
        self.series
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.name.is_empty())
            .map(|(i, s)| Entry {
                name: s.name.clone(),
                colour: self.colour(i),
                style: s.style,
                band: bands.iter().any(|(b, _)| *b == i),
            })
            .collect()
    }

    fn colour(&self, i: usize) -> RGBColor {
        let (r, g, b) = PALETTE[self.series[i].color.unwrap_or(i) % PALETTE.len()];
        RGBColor(r, g, b)
    }

    /// Axes, light grid, bands (under everything) and series.
    fn draw_chart<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        frame: &Frame,
        (x, y): (&Axis, &Axis),
        series: &[Points],
        bands: &[(usize, Band)],
    ) -> Result<()> {
        let mut chart = ChartBuilder::on(area)
            .margin(MARGIN)
            .x_label_area_size(X_AREA)
            .y_label_area_size(frame.y_area)
            .build_cartesian_2d(x.clone(), y.clone())
            .map_err(plot_err)?;
        let (fx, fy) = (|v: &f64| x.label(*v), |v: &f64| y.label(*v));
        chart
            .configure_mesh()
            .bold_line_style(BLACK.mix(0.1))
            .light_line_style(TRANSPARENT)
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .label_style(style(TICK_PX, HPos::Center, VPos::Center))
            .axis_desc_style(style(DESC_PX, HPos::Center, VPos::Center))
            .draw()
            .map_err(plot_err)?;
        for (i, band) in bands {
            let outline = band
                .iter()
                .map(|p| (p.0, p.2))
                .chain(band.iter().rev().map(|p| (p.0, p.1)));
            let fill = self.colour(*i).mix(0.2).filled();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    outline.collect::<Vec<_>>(),
                    fill,
                )))
                .map_err(plot_err)?;
        }
        for (i, (s, pts)) in self.series.iter().zip(series).enumerate() {
            draw_series(&mut chart, pts, s.style, self.colour(i))?;
        }
        Ok(())
    }
}

impl Figure for LinePlot {
    fn to_svg(&self) -> Result<String> {
        Ok(self.render()?.0)
    }
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<Axis, Axis>>;

/// One series: its line (solid or dashed) with markers when it has few points, or markers.
fn draw_series<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    pts: &[(f64, f64)],
    style: SeriesStyle,
    colour: RGBColor,
) -> Result<()> {
    let pts = pts.to_vec();
    match style {
        SeriesStyle::Solid => chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
            .map(drop),
        SeriesStyle::Dashed => chart
            .draw_series(DashedLineSeries::new(
                pts.clone(),
                6,
                4,
                colour.stroke_width(1),
            ))
            .map(drop),
        SeriesStyle::Markers => Ok(()),
    }
    .map_err(plot_err)?;
    if style == SeriesStyle::Markers || pts.len() <= FEW_POINTS {
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// The smallest and largest value, padded by 4% of the span (0.5 when all are equal).
fn padded(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let pad = if hi > lo { 0.04 * (hi - lo) } else { 0.5 };
    (lo - pad)..(hi + pad)
}

/// One axis in drawing coordinates: its range, tick positions and how ticks are written.
#[derive(Clone)]
struct Axis {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
    step: f64,
    log: bool,
}

impl Axis {
    /// At most 8 ticks at multiples of 1, 2 or 5 × 10^k (at least 1 on integer axes); a log axis
    /// spanning under two decades gets 1–2–5 ticks within each decade instead.
    fn new(range: std::ops::Range<f64>, integer: bool, log: bool) -> Self {
        let (ticks, step) = nice_ticks(range.start, range.end, integer, 8);
        if log && ticks.len() < 3 {
            let ticks = one_two_five(range.start, range.end);
            return Axis {
                range,
                ticks,
                step: 0.0,
                log,
            };
        }
        Axis {
            range,
            ticks,
            step,
            log,
        }
    }

    /// Tick text: on log axes `1e-3` at powers of ten, or plain values (`0.5`, `1`, `2`) where
    /// the axis spans under two decades and has 1–2–5 ticks; else the decimals the step needs,
    /// or scientific notation for very large or small ticks.
    fn label(&self, v: f64) -> String {
        if self.log {
            let plain = self.step == 0.0 && (-3.0..4.0).contains(&v);
            return if (v - v.round()).abs() < 1e-9 && !plain {
                format!("1e{}", v.round())
            } else {
                fmt_sig(10f64.powf(v), 1)
            };
        }
        let biggest = self.ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
        if biggest >= 1e4 || (biggest > 0.0 && biggest < 1e-2) {
            return fmt_sig(v, 2);
        }
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        format!(
            "{:.*}",
            decimals,
            if v.abs() < self.step * 1e-9 { 0.0 } else { v }
        )
    }

    /// The widest tick label in pixels.
    fn label_width(&self) -> f64 {
        self.ticks
            .iter()
            .map(|&t| width(&self.label(t), TICK_PX))
            .fold(0.0, f64::max)
    }
}

/// Linear like plotters' f64 axis, with ticks (and grid lines) exactly at `ticks`.
impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.range.clone()).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        match hint.weight().allow_light_points() {
            true => Vec::new(),
            false => self.ticks.clone(),
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

/// log10 of 1, 2 and 5 × 10^k within `lo..=hi` (log10 units).
fn one_two_five(lo: f64, hi: f64) -> Vec<f64> {
    (lo.floor() as i64..=hi.ceil() as i64)
        .flat_map(|e| [1.0f64, 2.0, 5.0].map(|m| e as f64 + m.log10()))
        .filter(|v| (lo..=hi).contains(v))
        .collect()
}

/// One legend row.
struct Entry {
    name: String,
    colour: RGBColor,
    style: SeriesStyle,
    /// Whether the series has a shaded band.
    band: bool,
}

/// Pixel geometry shared by the chart and the legend.
struct Frame {
    title: Title,
    size: (u32, u32),
    /// Width of the y tick-and-description area.
    y_area: u32,
    /// Legend box width and height (0 × 0 without entries).
    legend: (f64, f64),
    /// The notes under the chart, wrapped to its width.
    notes: Vec<String>,
}

impl Frame {
    fn new(plot: &LinePlot, y: &Axis, entries: &[Entry], notes: &[String]) -> Self {
        let names = entries
            .iter()
            .map(|e| width(&e.name, LEGEND_PX))
            .fold(0.0, f64::max);
        let legend = match entries.len() {
            0 => (0.0, 0.0),
            n => (8.0 + SWATCH_W + 6.0 + names + 8.0, 10.0 + n as f64 * ROW_H),
        };
        Frame {
            title: Title::fit(&plot.title, plot.size.0 as f64 - 24.0),
            size: plot.size,
            y_area: (y.label_width() + DESC_PX + 22.0).ceil() as u32,
            legend,
            notes: notes
                .iter()
                .flat_map(|n| wrap(n, plot.size.0 as f64 - 2.0 * MARGIN as f64, NOTE_PX))
                .collect(),
        }
    }

    /// Height of the note lines under the chart (0 without notes).
    fn notes_height(&self) -> u32 {
        match self.notes.len() {
            0 => 0,
            n => (n as f64 * NOTE_ROW_H + 6.0).ceil() as u32,
        }
    }

    /// The notes, left-aligned in the strip under the chart.
    fn draw_notes<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let top = self.size.1 as f64 - self.notes_height() as f64;
        for (i, line) in self.notes.iter().enumerate() {
            let y = top + (i as f64 + 0.5) * NOTE_ROW_H;
            root.draw(&Text::new(
                line.clone(),
                (MARGIN as i32, y as i32),
                style(NOTE_PX, HPos::Left, VPos::Center),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    }

    /// Width of the chart area: all of it, or what the legend right of it leaves.
    fn main_width(&self, outside: bool) -> u32 {
        match outside {
            true => self.size.0 - self.legend.0.ceil() as u32 - 8,
            false => self.size.0,
        }
    }

    /// The plotting area `(x0, y0, x1, y1)` in pixels of the full-width chart area.
    fn plot_rect(&self) -> (f64, f64, f64, f64) {
        let h = (self.size.1 - self.title.height() - self.notes_height()) as f64;
        (
            (MARGIN + self.y_area) as f64,
            MARGIN as f64,
            (self.size.0 - MARGIN) as f64,
            h - (MARGIN + X_AREA) as f64,
        )
    }

    /// Top-left pixel of the legend box in corner `c`, 8 px inside the plotting area.
    fn legend_origin(&self, c: LegendPosition) -> (f64, f64) {
        let (x0, y0, x1, y1) = self.plot_rect();
        let (w, h) = self.legend;
        let left = matches!(c, LegendPosition::UpperLeft | LegendPosition::LowerLeft);
        let top = matches!(c, LegendPosition::UpperLeft | LegendPosition::UpperRight);
        (
            if left { x0 + 8.0 } else { x1 - 8.0 - w },
            if top { y0 + 8.0 } else { y1 - 8.0 - h },
        )
    }

    /// The first corner, `preferred` first, where the legend covers none of `data`; `None`
    /// (legend outside) if there is none or `preferred` is `Outside`.
    fn free_corner<'a>(
        &self,
        preferred: LegendPosition,
        (x, y): (&Axis, &Axis),
        data: impl Iterator<Item = &'a Band> + Clone,
    ) -> Option<LegendPosition> {
        use LegendPosition::*;
        if preferred == Outside {
            return None;
        }
        let (x0, y0, x1, y1) = self.plot_rect();
        let to_data = |(px, py): (f64, f64)| {
            let fx = (px - x0) / (x1 - x0);
            let fy = (py - y0) / (y1 - y0);
            (
                x.range.start + fx * (x.range.end - x.range.start),
                y.range.end - fy * (y.range.end - y.range.start),
            )
        };
        [preferred, UpperRight, UpperLeft, LowerRight, LowerLeft]
            .into_iter()
            .find(|&c| {
                let (lx, ly) = self.legend_origin(c);
                let (a, b) = (
                    to_data((lx - 4.0, ly - 4.0)),
                    to_data((lx + self.legend.0 + 4.0, ly + self.legend.1 + 4.0)),
                );
                let rect = (a.0, b.1, b.0, a.1);
                !data.clone().any(|band| covers(band, rect))
            })
    }

    /// The legend box with its top-left corner at `origin` in `area`'s pixels.
    fn draw_legend<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        (x, y): (f64, f64),
        entries: &[Entry],
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let corners = [
            (x as i32, y as i32),
            ((x + self.legend.0) as i32, (y + self.legend.1) as i32),
        ];
        area.draw(&Rectangle::new(corners, WHITE.mix(0.9).filled()))
            .map_err(plot_err)?;
        area.draw(&Rectangle::new(corners, BLACK.mix(0.3)))
            .map_err(plot_err)?;
        for (i, e) in entries.iter().enumerate() {
            let cy = (y + 5.0 + (i as f64 + 0.5) * ROW_H) as i32;
            let sx = (x + 8.0) as i32;
            draw_swatch(area, e, (sx, cy))?;
            let text = (sx + SWATCH_W as i32 + 6, cy);
            area.draw(&Text::new(
                e.name.clone(),
                text,
                style(LEGEND_PX, HPos::Left, VPos::Center),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// A legend swatch with its left end at `(x, y)`: the band's shading, then a line, dashes or
/// a marker.
fn draw_swatch<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    e: &Entry,
    (x, y): (i32, i32),
) -> Result<()> {
    let w = SWATCH_W as i32;
    if e.band {
        let shade = e.colour.mix(0.2).filled();
        area.draw(&Rectangle::new([(x, y - 5), (x + w, y + 5)], shade))
            .map_err(plot_err)?;
    }
    let line = |a: i32, b: i32, s: u32| {
        PathElement::new(vec![(x + a, y), (x + b, y)], e.colour.stroke_width(s))
    };
    match e.style {
        SeriesStyle::Solid => area.draw(&line(0, w, 2)),
        SeriesStyle::Dashed => area
            .draw(&line(0, 8, 1))
            .and_then(|_| area.draw(&line(14, w, 1))),
        SeriesStyle::Markers => area.draw(&Circle::new((x + w / 2, y), 3, e.colour.filled())),
    }
    .map_err(plot_err)
}

/// Whether the band (or line) passes through `(x0, y0, x1, y1)` in data coordinates, checked
/// at 20 points along each segment.
fn covers(band: &Band, (x0, y0, x1, y1): (f64, f64, f64, f64)) -> bool {
    let inside = |&(x, lo, hi): &(f64, f64, f64)| x >= x0 && x <= x1 && hi >= y0 && lo <= y1;
    band.iter().any(inside)
        || band.windows(2).any(|w| {
            (1..20).any(|k| {
                let t = k as f64 / 20.0;
                let lerp = |a: f64, b: f64| a + t * (b - a);
                inside(&(
                    lerp(w[0].0, w[1].0),
                    lerp(w[0].1, w[1].1),
                    lerp(w[0].2, w[1].2),
                ))
            })
        })
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
    fn ticks_are_round_and_integer_axes_get_integers() {
        assert_eq!(
            nice_ticks(0.8, 6.2, true, 8).0,
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(nice_ticks(0.96, 2.04, true, 8).0, vec![1.0, 2.0]);
        assert_eq!(nice_ticks(0.96, 2.04, false, 8).1, 0.2);
        assert_eq!(
            nice_ticks(-25.5, 0.5, true, 8).0,
            vec![-25.0, -20.0, -15.0, -10.0, -5.0, 0.0]
        );
        let axis = Axis::new(-0.1..2.6, false, false);
        assert_eq!(
            axis.ticks
                .iter()
                .map(|&t| axis.label(t))
                .collect::<Vec<_>>(),
            ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5"]
        );
        let log = Axis::new(-3.2..0.1, true, true);
        assert_eq!(log.label(-2.0), "1e-2");
        let narrow = Axis::new(-0.4..0.8, true, true);
        assert_eq!(
            narrow
                .ticks
                .iter()
                .map(|&t| narrow.label(t))
                .collect::<Vec<_>>(),
            ["0.5", "1", "2", "5"]
        );
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
        let svg = std::fs::read_to_string(d.path().join("p.svg")).unwrap();
        assert!(svg.contains("2 point(s) not drawn (not finite, or ≤ 0 on a log axis)"));
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
}

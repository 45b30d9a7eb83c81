//! Text measured the way layout and the style check agree on, and titles that fit.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plot_err;
use crate::Result;

/// Estimated advance of one character in ems (DejaVu Sans averages about 0.6).
pub(crate) const CHAR_EM: f64 = 0.6;

/// Title font sizes tried, largest first (SVG pixels).
const TITLE_SIZES: [f64; 7] = [16.0, 15.0, 14.0, 13.0, 12.0, 11.0, 10.0];

/// Estimated width in pixels of `text` set at `px`.
pub(crate) fn width(text: &str, px: f64) -> f64 {
    text.chars().count() as f64 * CHAR_EM * px
}

/// A black sans-serif style of `px` SVG pixels anchored at `h`, `v` (plotters writes
/// `font-size` as its size / 1.24).
pub(crate) fn style(px: f64, h: HPos, v: VPos) -> TextStyle<'static> {
    ("sans-serif", px * 1.24)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(h, v))
}

/// A title broken into lines at one font size.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Title {
    /// The lines, top to bottom.
    pub lines: Vec<String>,
    /// Font size in SVG pixels.
    pub px: f64,
}

impl Title {
    /// The largest size at which `title` fits `width` in at most two lines (at the smallest
    /// size, as many lines as it takes).
    pub fn fit(title: &str, width: f64) -> Self {
        TITLE_SIZES
            .iter()
            .map(|&px| Title {
                lines: wrap(title, width, px),
                px,
            })
            .find(|t| t.lines.len() <= 2 && t.fits(width))
            .unwrap_or_else(|| {
                let px = TITLE_SIZES[TITLE_SIZES.len() - 1];
                Title {
                    lines: wrap(title, width, px),
                    px,
                }
            })
    }

    fn fits(&self, w: f64) -> bool {
        self.lines.iter().all(|l| width(l, self.px) <= w)
    }

    /// Height of the lines plus a gap below.
    pub fn height(&self) -> u32 {
        (self.lines.len() as f64 * self.px * 1.25 + 10.0).ceil() as u32
    }

    /// Draws the lines centred at the top of `area`.
    pub fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<()> {
        let centre = area.dim_in_pixel().0 as i32 / 2;
        for (i, line) in self.lines.iter().enumerate() {
            let y = (6.0 + i as f64 * self.px * 1.25) as i32;
            area.draw(&Text::new(
                line.clone(),
                (centre, y),
                style(self.px, HPos::Center, VPos::Top),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// Greedy word wrap of `text` into lines at most `max` pixels wide at `px`, breaking at plain
/// spaces only (a no-break space, `\u{a0}`, keeps `d = 10` together; a word wider than `max`
/// gets a line of its own).
pub(crate) fn wrap(text: &str, max: f64, px: f64) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split([' ', '\n', '\t']).filter(|w| !w.is_empty()) {
        match lines.last_mut() {
            Some(line) if width(&format!("{line} {word}"), px) <= max => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_titles_stay_on_one_line_and_long_ones_wrap_or_shrink() {
        assert_eq!(Title::fit("scores", 400.0).lines, vec!["scores"]);
        let long = "fig8: induction score per head (induction-2l, [BOS, s, s], |s| = 12)";
        let t = Title::fit(long, 300.0);
        assert!(t.lines.len() == 2 && t.fits(300.0), "{t:?}");
        assert_eq!(t.lines.join(" "), long);
        assert!(Title::fit(long, 120.0).px < 16.0);
    }

    #[test]
    fn no_break_spaces_hold_words_together() {
        let t = Title::fit("aaaa bbbb\u{a0}=\u{a0}10", 110.0);
        assert_eq!(t.lines, ["aaaa", "bbbb\u{a0}=\u{a0}10"], "{t:?}");
    }
}

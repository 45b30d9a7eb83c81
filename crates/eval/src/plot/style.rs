//! A style check for SVG figures: everything drawn lies on the canvas (the title included) and
//! no two texts overlap. Text boxes are estimated from the font size and the character count
//! (the same estimate the layout uses), so the check is approximate but deterministic.

use super::text::CHAR_EM;

/// How far (pixels) a shape may stray past the canvas edge, and by how much two text boxes may
/// overlap in each direction, before it counts.
const SLACK: f64 = 1.0;

/// At most this many problems are listed; the rest are counted.
const MAX_REPORTED: usize = 12;

/// The problems found in `svg` (empty: none): shapes or text outside the canvas, overlapping
/// texts, or a document without a width and height.
pub fn check_svg(svg: &str) -> Vec<String> {
    let elements = parse(svg);
    let Some((w, h)) = elements
        .iter()
        .find(|e| e.name == "svg")
        .and_then(|e| Some((e.num("width")?, e.num("height")?)))
    else {
        return vec!["the SVG has no width and height".into()];
    };
    let canvas = Rect {
        x0: 0.0,
        y0: 0.0,
        x1: w,
        y1: h,
    };
    let texts: Vec<(String, Rect)> = elements
        .iter()
        .filter_map(|e| Some((e.text.clone(), e.text_box()?)))
        .collect();
    let mut problems: Vec<String> = elements
        .iter()
        .flat_map(|e| off_canvas(e, &canvas))
        .collect();
    problems.extend(
        texts
            .iter()
            .filter(|(_, b)| !canvas.contains(b))
            .map(|(t, b)| format!("text '{t}' ({b}) extends past the {w}×{h} canvas")),
    );
    for (i, (a, ra)) in texts.iter().enumerate() {
        for (b, rb) in &texts[i + 1..] {
            if ra.overlaps(rb) {
                problems.push(format!("text '{a}' ({ra}) overlaps text '{b}' ({rb})"));
            }
        }
    }
    truncate(problems)
}

fn truncate(mut problems: Vec<String>) -> Vec<String> {
    if problems.len() > MAX_REPORTED {
        let more = problems.len() - MAX_REPORTED;
        problems.truncate(MAX_REPORTED);
        problems.push(format!("... and {more} more"));
    }
    problems
}

/// A message for each point of a shape that lies off the canvas.
fn off_canvas(e: &Element, canvas: &Rect) -> Option<String> {
    let outside = e
        .points()
        .into_iter()
        .find(|&(x, y)| !canvas.contains(&Rect::point(x, y)))?;
    Some(format!(
        "<{}> point ({:.1}, {:.1}) lies off the {}×{} canvas",
        e.name, outside.0, outside.1, canvas.x1, canvas.y1
    ))
}

/// An axis-aligned box.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Rect {
    fn point(x: f64, y: f64) -> Self {
        Rect {
            x0: x,
            y0: y,
            x1: x,
            y1: y,
        }
    }

    fn contains(&self, r: &Rect) -> bool {
        r.x0 >= self.x0 - SLACK
            && r.y0 >= self.y0 - SLACK
            && r.x1 <= self.x1 + SLACK
            && r.y1 <= self.y1 + SLACK
    }

    fn overlaps(&self, r: &Rect) -> bool {
        self.x0.max(r.x0) + SLACK < self.x1.min(r.x1)
            && self.y0.max(r.y0) + SLACK < self.y1.min(r.y1)
    }

    /// The bounding box of this box rotated by `degrees` about `(cx, cy)`.
    fn rotated(&self, degrees: f64, (cx, cy): (f64, f64)) -> Rect {
        let (s, c) = degrees.to_radians().sin_cos();
        let corners = [
            (self.x0, self.y0),
            (self.x1, self.y0),
            (self.x0, self.y1),
            (self.x1, self.y1),
        ]
        .map(|(x, y)| {
            (
                cx + c * (x - cx) - s * (y - cy),
                cy + s * (x - cx) + c * (y - cy),
            )
        });
        let fold = |f: fn(f64, f64) -> f64, init: f64, pick: fn(&(f64, f64)) -> f64| {
            corners.iter().map(pick).fold(init, f)
        };
        Rect {
            x0: fold(f64::min, f64::INFINITY, |p| p.0),
            y0: fold(f64::min, f64::INFINITY, |p| p.1),
            x1: fold(f64::max, f64::NEG_INFINITY, |p| p.0),
            y1: fold(f64::max, f64::NEG_INFINITY, |p| p.1),
        }
    }
}

impl std::fmt::Display for Rect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "x {:.0}..{:.0}, y {:.0}..{:.0}",
            self.x0, self.x1, self.y0, self.y1
        )
    }
}

/// One SVG element: its name, attributes and (for `<text>`) its character content.
#[derive(Debug, Default)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
}

impl Element {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.attr(key)?.trim_end_matches("px").parse().ok()
    }

    /// The points a shape touches (corners, ends, vertices, the circle's extremes).
    fn points(&self) -> Vec<(f64, f64)> {
        let n = |k| self.num(k).unwrap_or(0.0);
        match self.name.as_str() {
            "rect" => vec![
                (n("x"), n("y")),
                (n("x") + n("width"), n("y") + n("height")),
            ],
            "line" => vec![(n("x1"), n("y1")), (n("x2"), n("y2"))],
            "circle" => vec![
                (n("cx") - n("r"), n("cy") - n("r")),
                (n("cx") + n("r"), n("cy") + n("r")),
            ],
            "polyline" | "polygon" => self
                .attr("points")
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|p| {
                    let (x, y) = p.split_once(',')?;
                    Some((x.parse().ok()?, y.parse().ok()?))
                })
                .collect(),
            _ => vec![],
        }
    }

    /// The estimated box of a `<text>`: `CHAR_EM` ems per character, one em high, placed by
    /// `text-anchor`, by plotters' `dy` (top, middle or bottom) and by a `rotate(a, x, y)`.
    fn text_box(&self) -> Option<Rect> {
        if self.name != "text" {
            return None;
        }
        let (x, y, px) = (self.num("x")?, self.num("y")?, self.num("font-size")?);
        let w = self.text.chars().count() as f64 * CHAR_EM * px;
        let x0 = match self.attr("text-anchor") {
            Some("middle") => x - w / 2.0,
            Some("end") => x - w,
            _ => x,
        };
        let y0 = match self.attr("dy") {
            Some("0.76em") => y,
            Some("0.5ex") => y - px / 2.0,
            Some("-0.5ex") => y - px,
            _ => y - 0.76 * px,
        };
        let r = Rect {
            x0,
            y0,
            x1: x0 + w,
            y1: y0 + px,
        };
        Some(match self.rotation() {
            Some((a, c)) => r.rotated(a, c),
            None => r,
        })
    }

    /// `transform="rotate(a, x, y)"` as `(a, (x, y))`.
    fn rotation(&self) -> Option<(f64, (f64, f64))> {
        let inner = self
            .attr("transform")?
            .trim()
            .strip_prefix("rotate(")?
            .strip_suffix(')')?;
        let v: Vec<f64> = inner
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        match v[..] {
            [a, x, y] => Some((a, (x, y))),
            [a] => Some((a, (0.0, 0.0))),
            _ => None,
        }
    }
}

/// The elements of an SVG document in order (a minimal reader for the flat SVG plotters writes:
/// no CDATA, `<text>` holding only characters).
fn parse(svg: &str) -> Vec<Element> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let Some(end) = rest.find('>') else { break };
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with(['/', '?', '!']) {
            continue;
        }
        let mut e = element(tag.trim_end_matches('/'));
        if e.name == "text" && !tag.ends_with('/') {
            let close = rest.find("</text>").unwrap_or(rest.len());
            e.text = unescape(&rest[..close]);
        }
        out.push(e);
    }
    out
}

/// An element from the inside of its start tag (`name key="value" ...`).
fn element(tag: &str) -> Element {
    let (name, mut rest) = tag.split_once(char::is_whitespace).unwrap_or((tag, ""));
    let mut attrs = Vec::new();
    while let Some((key, after)) = rest.split_once('=') {
        let after = after.trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            break;
        };
        let Some((value, tail)) = after[1..].split_once(quote) else {
            break;
        };
        attrs.push((key.trim().to_string(), value.to_string()));
        rest = tail;
    }
    Element {
        name: name.to_string(),
        attrs,
        text: String::new(),
    }
}

/// Text content with each character reference (`&amp;`, `&#955;`) counted as one character.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '&' {
            chars.by_ref().take_while(|&c| c != ';').for_each(drop);
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svg(body: &str) -> String {
        format!(
            r#"<svg width="200" height="100" viewBox="0 0 200 100" xmlns="http://www.w3.org/2000/svg">{body}</svg>"#
        )
    }

    fn text(x: f64, y: f64, s: &str) -> String {
        format!(
            r#"<text x="{x}" y="{y}" dy="0.76em" text-anchor="start" font-size="10">{s}</text>"#
        )
    }

    #[test]
    fn a_clean_figure_has_no_problems() {
        let body = format!(
            r#"<rect x="0" y="0" width="200" height="100"/><polyline points="10,10 190,90"/>{}{}"#,
            text(10.0, 10.0, "left"),
            text(120.0, 10.0, "right &amp; more")
        );
        assert_eq!(check_svg(&svg(&body)), Vec::<String>::new());
    }

    #[test]
    fn shapes_off_the_canvas_are_flagged() {
        for body in [
            r#"<rect x="150" y="10" width="60" height="10"/>"#,
            r#"<line x1="10" y1="10" x2="10" y2="130"/>"#,
            r#"<polygon points="10,10 -20,50 30,50"/>"#,
            r#"<circle cx="198" cy="50" r="5"/>"#,
        ] {
            let p = check_svg(&svg(body));
            assert!(
                p.len() == 1 && p[0].contains("off the 200×100 canvas"),
                "{body}: {p:?}"
            );
        }
    }

    #[test]
    fn a_title_wider_than_the_canvas_is_flagged() {
        let title = r#"<text x="100" y="5" dy="0.76em" text-anchor="middle" font-size="16">A title far too long for this canvas</text>"#;
        let p = check_svg(&svg(title));
        assert!(p.len() == 1 && p[0].contains("extends past"), "{p:?}");
    }

    #[test]
    fn overlapping_tick_labels_are_flagged() {
        let body = format!("{}{}", text(10.0, 50.0, "1.50"), text(25.0, 52.0, "2.50"));
        let p = check_svg(&svg(&body));
        assert!(
            p.len() == 1 && p[0].contains("'1.50'") && p[0].contains("overlaps"),
            "{p:?}"
        );
    }

    #[test]
    fn rotated_text_is_measured_upright() {
        // 20 characters at 10 px: 120 px long, which fits the 100 px height only when not
        // rotated; rotated about its anchor it runs off the top.
        let t = r#"<text x="20" y="50" dy="0.5ex" text-anchor="middle" font-size="10" transform="rotate(270, 20, 50)">twenty characters...</text>"#;
        let p = check_svg(&svg(t));
        assert!(p.len() == 1 && p[0].contains("y -10..110"), "{p:?}");
    }

    #[test]
    fn a_document_without_size_is_a_problem() {
        assert_eq!(check_svg("<svg></svg>").len(), 1);
    }
}

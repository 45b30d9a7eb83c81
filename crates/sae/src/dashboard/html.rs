//! The dashboard page: one self-contained HTML file (inline CSS and SVG, no scripts, no
//! network), one card per latent.

use std::fmt::Write;

use metarep_core::html::escape;

use super::collect::Histogram;

/// One context window as shown: decoded tokens and the latent's activation at each.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleView {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// The latent's activation at each token.
    pub activations: Vec<f32>,
}

/// One latent's card.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentCard {
    /// The latent's index.
    pub latent: usize,
    /// Why it is shown (e.g. "top 3 by activation mass", "random").
    pub label: String,
    /// Fraction of positions where it fired.
    pub density: f64,
    /// Its non-zero activations.
    pub histogram: Histogram,
    /// Tokens its decoder direction promotes, with their logit changes.
    pub promoted: Vec<(String, f32)>,
    /// Tokens it suppresses.
    pub suppressed: Vec<(String, f32)>,
    /// Its top contexts, strongest first.
    pub examples: Vec<ExampleView>,
}

/// A whole page.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardPage {
    /// Page title (e.g. the SAE and hook).
    pub title: String,
    /// Lines under the title (data, settings).
    pub notes: Vec<String>,
    /// One card per latent.
    pub cards: Vec<LatentCard>,
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}\
h1{font-size:1.3em}.notes{color:#555;font-size:.9em}\
.latent{border:1px solid #ccc;border-radius:6px;padding:.8em;margin:1em 0}\
.latent h2{font-size:1.05em;margin:0 0 .5em}.row{display:flex;gap:2em;flex-wrap:wrap}\
table.logits{border-collapse:collapse;font-size:.85em}table.logits td{padding:0 .5em}\
.example{font-family:ui-monospace,monospace;font-size:.85em;margin:.2em 0;white-space:pre-wrap}\
.tok{border-radius:2px}.peak{outline:1px solid #a33}.muted{color:#777}";

/// The page as HTML.
pub fn render_page(page: &DashboardPage) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body><h1>{}</h1>",
        escape(&page.title),
        escape(&page.title)
    );
    for note in &page.notes {
        let _ = write!(h, "<p class=\"notes\">{}</p>", escape(note));
    }
    for card in &page.cards {
        render_card(&mut h, card);
    }
    h.push_str("</body></html>\n");
    h
}

fn render_card(h: &mut String, card: &LatentCard) {
    let top = card.examples.first().map_or(0.0, |e| {
        e.activations.iter().copied().fold(0.0f32, f32::max)
    });
    let _ = write!(
        h,
        "<section class=\"latent\" id=\"latent-{0}\"><h2>latent {0} <span class=\"muted\">— {1}; \
         fires on {2:.3}% of positions; max {3:.3}</span></h2><div class=\"row\">",
        card.latent,
        escape(&card.label),
        100.0 * card.density,
        top
    );
    render_histogram(h, &card.histogram);
    for (class, title, tokens) in [
        ("promoted", "promoted tokens", &card.promoted),
        ("suppressed", "suppressed tokens", &card.suppressed),
    ] {
        let _ = write!(
            h,
            "<table class=\"logits {class}\"><tr><th colspan=\"2\">{title}</th></tr>"
        );
        for (text, effect) in tokens {
            let _ = write!(
                h,
                "<tr><td class=\"tok-text\">{}</td><td>{effect:+.3}</td></tr>",
                escape(&visible(text))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</div>");
    for example in &card.examples {
        h.push_str("<div class=\"example\">");
        let peak = example
            .activations
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        for (i, (text, &a)) in example.tokens.iter().zip(&example.activations).enumerate() {
            let alpha = if top > 0.0 {
                (a / top).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let class = if Some(i) == peak { "tok peak" } else { "tok" };
            let _ = write!(
                h,
                "<span class=\"{class}\" style=\"background:rgba(255,120,0,{alpha:.3})\" \
                 title=\"{a:.4}\">{}</span>",
                escape(&visible(text))
            );
        }
        h.push_str("</div>");
    }
    h.push_str("</section>");
}

/// An inline SVG bar chart of `hist` (300 × 90 px), with the bin range under it.
fn render_histogram(h: &mut String, hist: &Histogram) {
    let (w, ht) = (300.0, 70.0);
    let most = hist.counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bar = w / hist.counts.len() as f64;
    let _ = write!(
        h,
        "<svg class=\"histogram\" width=\"{w}\" height=\"90\" viewBox=\"0 0 {w} 90\" \
         role=\"img\"><title>activation histogram</title>"
    );
    for (i, &c) in hist.counts.iter().enumerate() {
        let height = ht * c as f64 / most;
        let _ = write!(
            h,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{height:.2}\" fill=\"#d65\">\
             <title>{c}</title></rect>",
            i as f64 * bar,
            ht - height,
            (bar - 1.0).max(0.5)
        );
    }
    let (lo, hi) = (hist.edges[0], *hist.edges.last().unwrap_or(&0.0));
    let _ = write!(
        h,
        "<text x=\"0\" y=\"86\" font-size=\"11\">{lo:.2}</text>\
         <text x=\"{w}\" y=\"86\" font-size=\"11\" text-anchor=\"end\">{hi:.2}</text></svg>"
    );
}

/// Whitespace made visible: newlines as `↵`, tabs as `⇥`.
fn visible(text: &str) -> String {
    text.replace('\n', "↵").replace('\t', "⇥")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_text_and_hold_one_card_per_latent() {
        let card = |latent| LatentCard {
            latent,
            label: "random".into(),
            density: 0.01,
            histogram: Histogram::of(&[0.5, 1.0], 3),
            promoted: vec![("<b>".into(), 1.5)],
            suppressed: vec![("\n".into(), -0.5)],
            examples: vec![ExampleView {
                tokens: vec!["a&b".into(), "\"q\"".into()],
                activations: vec![0.0, 2.0],
            }],
        };
        let html = render_page(&DashboardPage {
            title: "SAE <x>".into(),
            notes: vec!["n".into()],
            cards: vec![card(4), card(9)],
        });
        assert_eq!(html.matches("<section class=\"latent\"").count(), 2);
        assert!(html.contains("id=\"latent-9\""));
        assert!(html.contains("SAE &lt;x&gt;") && !html.contains("<x>"));
        assert!(
            html.contains("&lt;b&gt;")
                && html.contains("a&amp;b")
                && html.contains("&quot;q&quot;")
        );
        assert!(html.contains("↵"));
        assert_eq!(html.matches("<rect").count(), 6);
        // The peak token is fully shaded, the other not at all.
        assert!(html.contains("class=\"tok peak\" style=\"background:rgba(255,120,0,1.000)\""));
        assert!(html.contains("style=\"background:rgba(255,120,0,0.000)\""));
    }
}

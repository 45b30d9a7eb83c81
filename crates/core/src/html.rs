//! Text for HTML pages (the results gallery, SAE dashboards).

/// `text` escaped for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_and_quotes_are_escaped_and_the_rest_kept() {
        assert_eq!(
            super::escape("a<b> & \"c\" 'd' é↵"),
            "a&lt;b&gt; &amp; &quot;c&quot; &#39;d&#39; é↵"
        );
    }
}

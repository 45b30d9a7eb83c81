//! Progress bars for long work: one place decides whether they are drawn.
//!
//! A bar is drawn on stderr only when stderr is a terminal and the environment variable
//! `METAREP_NO_PROGRESS` is unset (tests, CI and scripted runs set it or redirect stderr).

use std::io::IsTerminal;

use indicatif::ProgressStyle;

/// The bar type [`bar`] returns.
pub use indicatif::ProgressBar;

/// Environment variable that turns every progress bar off when set (to anything).
pub const NO_PROGRESS_ENV: &str = "METAREP_NO_PROGRESS";

/// Whether progress bars are drawn: stderr is a terminal and `METAREP_NO_PROGRESS` is unset.
pub fn enabled() -> bool {
    std::env::var_os(NO_PROGRESS_ENV).is_none() && std::io::stderr().is_terminal()
}

/// A bar of `len` steps labelled `what`, showing position, rate and ETA; hidden unless
/// [`enabled`].
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template =
        format!("{what} {{bar:32}} {{human_pos}}/{{human_len}} {{per_sec}} eta {{eta}} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_hides_every_bar() {
        std::env::set_var(NO_PROGRESS_ENV, "1");
        assert!(!enabled());
        assert!(bar(10, "steps").is_hidden());
    }
}

//! Progress bars for long work: one place decides whether and how they are drawn.
//!
//! - stderr is a terminal: a bar drawn in place (position, rate, ETA);
//! - stderr is a file or a pipe (a run under `nohup`, a batch job's log, CI): a plain line
//!   with the same numbers every [`LOG_EVERY_SECS`] seconds at most (60 unless the variable
//!   says otherwise; the first once that long has passed, so work shorter than that writes
//!   nothing), so an hours-long run's log shows where it is;
//! - `METAREP_NO_PROGRESS` set (to anything): nothing.

use std::fmt;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanDuration, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};

/// The bar type [`bar`] returns.
pub use indicatif::ProgressBar;

/// Environment variable that turns every progress bar off when set (to anything).
pub const NO_PROGRESS_ENV: &str = "METAREP_NO_PROGRESS";

/// Environment variable giving the seconds between two progress lines when stderr is not a
/// terminal (default 60).
pub const LOG_EVERY_SECS: &str = "METAREP_PROGRESS_EVERY";

/// Whether progress bars are drawn in place: stderr is a terminal and `METAREP_NO_PROGRESS` is
/// unset.
pub fn enabled() -> bool {
    std::env::var_os(NO_PROGRESS_ENV).is_none() && std::io::stderr().is_terminal()
}

/// A bar of `len` steps labelled `what`, showing position, rate and ETA: drawn in place when
/// [`enabled`], written as plain lines every [`LOG_EVERY_SECS`] seconds when stderr is not a
/// terminal, hidden when `METAREP_NO_PROGRESS` is set.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if std::env::var_os(NO_PROGRESS_ENV).is_some() {
        return ProgressBar::hidden();
    }
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(len);
        let template = format!(
            "{what} {{bar:32}} {{human_pos}}/{{human_len}} {{per_sec}} eta {{eta}} {{msg}}"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        return bar;
    }
    log_bar(len, what, LineSink::Stderr, log_interval())
}

/// The seconds between progress lines: `METAREP_PROGRESS_EVERY` when it is a number, else 60.
fn log_interval() -> Duration {
    let secs = std::env::var(LOG_EVERY_SECS)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(60.0);
    Duration::from_secs_f64(secs)
}

/// A bar that writes a drawn state as one plain line to `sink` once `every` has passed since
/// the bar was made or since its last line.
fn log_bar(len: u64, what: &str, sink: LineSink, every: Duration) -> ProgressBar {
    let term = LineTerm {
        sink,
        every,
        state: Mutex::new(LineState {
            text: String::new(),
            last: Instant::now(),
        }),
    };
    // One redraw a second at most: the line filter then keeps one per `every`.
    let bar = ProgressBar::with_draw_target(
        Some(len),
        ProgressDrawTarget::term_like_with_hz(Box::new(term), 1),
    );
    let template = format!(
        "{what}: {{human_pos}}/{{human_len}} ({{percent}}%), {{pace}}, {{elapsed}} in {{msg}}"
    );
    let pace = Arc::new(Mutex::new(Pace::new(every.max(Duration::from_secs(1)))));
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(
            style.with_key("pace", move |s: &ProgressState, w: &mut dyn fmt::Write| {
                let mut pace = pace.lock().unwrap_or_else(|poison| poison.into_inner());
                let per_sec = pace.update(Instant::now(), s.pos());
                let left = s.len().unwrap_or(0).saturating_sub(s.pos());
                let _ = w.write_str(&pace_text(per_sec, left));
            }),
        );
    }
    bar
}

/// A log line's rate over its last window of work. (indicatif's own estimate decays towards
/// zero when no update comes for a while, e.g. while the process is stopped, and its ETA then
/// reads as centuries.)
#[derive(Debug)]
struct Pace {
    /// The shortest span a rate is taken over.
    window: Duration,
    /// Where the current window began (time, position).
    start: Option<(Instant, u64)>,
    /// Steps per second over the last finished window.
    per_sec: Option<f64>,
}

impl Pace {
    fn new(window: Duration) -> Self {
        Self {
            window,
            start: None,
            per_sec: None,
        }
    }

    /// Records position `pos` at `now`; the rate of the last window of at least `window`.
    fn update(&mut self, now: Instant, pos: u64) -> Option<f64> {
        match self.start {
            None => self.start = Some((now, pos)),
            Some((t, p)) => {
                let dt = now.saturating_duration_since(t);
                if dt >= self.window {
                    self.per_sec = Some(pos.saturating_sub(p) as f64 / dt.as_secs_f64());
                    self.start = Some((now, pos));
                }
            }
        }
        self.per_sec
    }
}

/// `rate, eta …` for a log line with `left` steps to go.
fn pace_text(per_sec: Option<f64>, left: u64) -> String {
    match per_sec {
        None => "rate pending, eta pending".to_string(),
        Some(r) if r > 0.0 => {
            let eta = Duration::try_from_secs_f64(left as f64 / r)
                .map_or("unknown".to_string(), |d| HumanDuration(d).to_string());
            format!("{}, eta {eta}", rate(r))
        }
        Some(_) => "stalled, eta unknown".to_string(),
    }
}

/// A rate for a log line: `12.3/s`, or the seconds each step takes when under one a second.
fn rate(per_sec: f64) -> String {
    if per_sec >= 1.0 || per_sec <= 0.0 || !per_sec.is_finite() {
        format!("{per_sec:.1}/s")
    } else {
        format!("{:.1} s each", 1.0 / per_sec)
    }
}

/// Where progress lines go.
#[derive(Debug, Clone)]
enum LineSink {
    /// The process's stderr (through `eprintln!`, so a test's harness captures it).
    Stderr,
    /// Kept in memory (tests).
    #[cfg(test)]
    Memory(Arc<Mutex<Vec<String>>>),
}

/// The text of a drawing in progress and when the last line was written (at first: when the
/// bar was made).
#[derive(Debug)]
struct LineState {
    text: String,
    last: Instant,
}

/// A [`TermLike`] that turns each drawing of a bar into one line, ignoring cursor movements.
#[derive(Debug)]
struct LineTerm {
    sink: LineSink,
    every: Duration,
    state: Mutex<LineState>,
}

impl LineTerm {
    fn with_state<R>(&self, f: impl FnOnce(&mut LineState) -> R) -> R {
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        f(&mut guard)
    }
}

impl TermLike for LineTerm {
    fn width(&self) -> u16 {
        // Wide enough that the template is never cut.
        200
    }

    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.with_state(|st| st.text.push_str(s));
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// Ends a drawing: its text becomes a line when `every` has passed since the last one.
    fn flush(&self) -> std::io::Result<()> {
        let line = self.with_state(|st| {
            let text = std::mem::take(&mut st.text);
            let line = text.replace('\r', "").trim().to_string();
            let due = st.last.elapsed() >= self.every;
            (due && !line.is_empty()).then(|| {
                st.last = Instant::now();
                line
            })
        });
        if let Some(line) = line {
            match &self.sink {
                LineSink::Stderr => eprintln!("{line}"),
                #[cfg(test)]
                LineSink::Memory(lines) => lines
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .push(line),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_bar(len: u64, every: Duration) -> (ProgressBar, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let bar = log_bar(len, "steps", LineSink::Memory(lines.clone()), every);
        (bar, lines)
    }

    #[test]
    fn the_variable_hides_every_bar() {
        std::env::set_var(NO_PROGRESS_ENV, "1");
        assert!(!enabled());
        assert!(bar(10, "steps").is_hidden());
    }

    #[test]
    fn a_log_bar_writes_plain_lines_with_position_and_eta() {
        let (bar, lines) = memory_bar(10, Duration::ZERO);
        bar.set_position(3);
        bar.finish();
        let lines = lines.lock().unwrap().clone();
        assert!(!lines.is_empty());
        let last = lines.last().unwrap();
        assert!(last.starts_with("steps: 10/10 (100%)"), "{last}");
        assert!(last.contains("eta"), "{last}");
        assert!(lines.iter().all(|l| !l.contains('\r') && !l.contains('\n')));
    }

    #[test]
    fn rates_under_one_a_second_read_as_seconds_each() {
        assert_eq!(rate(169.79), "169.8/s");
        assert_eq!(rate(0.25), "4.0 s each");
        assert_eq!(rate(0.0), "0.0/s");
    }

    #[test]
    fn the_rate_is_the_last_window_s_and_survives_a_stall() {
        let t0 = Instant::now();
        let mut pace = Pace::new(Duration::from_secs(60));
        // A resumed run starts at step 400: the jump is not counted.
        assert_eq!(pace.update(t0, 400), None);
        assert_eq!(pace.update(t0 + Duration::from_secs(30), 405), None);
        let r = pace.update(t0 + Duration::from_secs(60), 410).unwrap();
        assert!((r - 10.0 / 60.0).abs() < 1e-12, "{r}");
        assert_eq!(pace_text(Some(r), 60), "6.0 s each, eta 6 minutes");
        // 37 minutes stopped, then one step: slow, but a rate and an ETA that mean something.
        let r = pace
            .update(t0 + Duration::from_secs(60 + 37 * 60), 411)
            .unwrap();
        assert!((r - 1.0 / 2220.0).abs() < 1e-12, "{r}");
        assert_eq!(pace_text(Some(r), 1), "2220.0 s each, eta 37 minutes");
        assert_eq!(pace_text(Some(0.0), 5), "stalled, eta unknown");
    }

    #[test]
    fn work_shorter_than_the_interval_writes_no_line() {
        let (bar, lines) = memory_bar(100, Duration::from_secs(3600));
        for i in 0..100 {
            bar.set_position(i);
        }
        bar.finish();
        assert_eq!(*lines.lock().unwrap(), Vec::<String>::new());
    }
}

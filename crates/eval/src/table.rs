//! Tables written as CSV (RFC 4180) and markdown.

use std::path::Path;

use crate::format::fmt_sig;
use crate::{write_text, Error, Result};

/// One table cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text.
    Text(String),
    /// A real number.
    Num(f64),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::Text(s.to_string())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::Text(s)
    }
}

impl From<f64> for Cell {
    fn from(x: f64) -> Self {
        Cell::Num(x)
    }
}

impl From<i64> for Cell {
    fn from(x: i64) -> Self {
        Cell::Int(x)
    }
}

impl From<bool> for Cell {
    fn from(x: bool) -> Self {
        Cell::Bool(x)
    }
}

impl Cell {
    /// Full-precision text (for CSV: numbers round-trip).
    fn exact(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Num(x) => format!("{x:e}"),
            Cell::Int(x) => x.to_string(),
            Cell::Bool(x) => x.to_string(),
        }
    }

    /// Short text with `digits` significant digits (for markdown).
    fn short(&self, digits: usize) -> String {
        match self {
            Cell::Num(x) => fmt_sig(*x, digits),
            other => other.exact(),
        }
    }
}

/// A table with named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// Rows, each as long as `headers`.
    pub rows: Vec<Vec<Cell>>,
    /// Significant digits of numbers in markdown (default 4).
    pub digits: usize,
}

impl Table {
    /// An empty table with these column names.
    pub fn new<S: Into<String>>(headers: Vec<S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            digits: 4,
        }
    }

    /// Appends a row; its length must equal the number of columns.
    pub fn push_row(&mut self, row: Vec<Cell>) -> Result<()> {
        if row.len() != self.headers.len() {
            return Err(Error::Invalid(format!(
                "table row has {} cells, expected {} (columns: {})",
                row.len(),
                self.headers.len(),
                self.headers.join(", ")
            )));
        }
        self.rows.push(row);
        Ok(())
    }

    /// The table as CSV (RFC 4180 quoting, `\n` line ends).
    pub fn to_csv(&self) -> String {
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = line(self.headers.clone());
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row.iter().map(Cell::exact).collect()));
            out.push('\n');
        }
        out
    }

    /// The table as a markdown (GFM) table.
    pub fn to_markdown(&self) -> String {
        let esc = |s: String| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n",
            self.headers
                .iter()
                .map(|h| esc(h.clone()))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        out.push_str(&format!("|{}\n", "---|".repeat(self.headers.len())));
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|c| esc(c.short(self.digits))).collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out
    }

    /// Writes [`Table::to_csv`] to `path`.
    pub fn write_csv(&self, path: impl AsRef<Path>) -> Result<()> {
        write_text(path.as_ref(), &self.to_csv())
    }

    /// Writes [`Table::to_markdown`] to `path`.
    pub fn write_markdown(&self, path: impl AsRef<Path>) -> Result<()> {
        write_text(path.as_ref(), &self.to_markdown())
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_and_quotes() {
        let mut t = Table::new(vec!["name", "value"]);
        t.push_row(vec![Cell::from("a,b \"c\""), Cell::from(1.5)])
            .unwrap();
        assert_eq!(t.to_csv(), "name,value\n\"a,b \"\"c\"\"\",1.5e0\n");
    }

    #[test]
    fn markdown_has_separator_and_short_numbers() {
        let mut t = Table::new(vec!["t", "err", "ok"]);
        t.push_row(vec![
            Cell::from(3i64),
            Cell::from(1.234567e-8),
            Cell::from(true),
        ])
        .unwrap();
        let md = t.to_markdown();
        assert!(md.starts_with("| t | err | ok |\n|---|---|---|\n"));
        assert!(md.contains("| 3 | 1.235e-8 | true |"));
    }

    #[test]
    fn wrong_row_length_is_an_error_naming_both_lengths() {
        let mut t = Table::new(vec!["a", "b"]);
        let e = t.push_row(vec![Cell::from(1i64)]).unwrap_err().to_string();
        assert!(e.contains("1 cells") && e.contains("expected 2"), "{e}");
    }
}

//! What commands print: an aligned table for people, or JSON for scripts.
//!
//! `--output table` (the default) aligns columns, shows times as RFC 3339 to the second in UTC
//! and empty values as `-`. `--output json` prints what the admin API returns for the same
//! thing — a list as a JSON array of the API's items, one object as that object — so a script
//! reads the same fields in local and remote mode; `--output ndjson` prints one compact object
//! per line, for long lists and line-oriented tools. A closed pipe (`| head`) ends the output
//! quietly.

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::io::Write;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The admin API's JSON: an array for lists.
    Json,
    /// One JSON object per line.
    Ndjson,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// How to print the result.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Rows of text cells under a header; numeric columns can be right-aligned.
pub struct Table {
    header: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            right: vec![false; header.len()],
            rows: Vec::new(),
        }
    }

    /// Right-align these columns (numbers).
    pub fn right(mut self, columns: &[usize]) -> Table {
        for &c in columns {
            if let Some(r) = self.right.get_mut(c) {
                *r = true;
            }
        }
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(width(cell));
                }
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                let pad = " ".repeat(w.saturating_sub(width(cell)));
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right.get(i).copied().unwrap_or(false) {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i < last {
                        line.push_str(&pad);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Print `text` to stdout; a closed pipe is not an error.
pub fn print(text: &str) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// A list: the table, or the items as JSON / NDJSON.
pub fn list<T: Serialize>(
    output: Output,
    items: &[T],
    table: impl FnOnce() -> Table,
) -> anyhow::Result<()> {
    match output {
        Output::Table => print(&table().render()),
        Output::Json => print(&(serde_json::to_string_pretty(items)? + "\n")),
        Output::Ndjson => {
            let mut text = String::new();
            for item in items {
                text.push_str(&serde_json::to_string(item)?);
                text.push('\n');
            }
            print(&text)
        }
    }
}

/// One object: a sentence (or a small table) for people, the object as JSON for scripts.
pub fn one<T: Serialize>(
    output: Output,
    item: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Table => print(&(text() + "\n")),
        Output::Json => print(&(serde_json::to_string_pretty(item)? + "\n")),
        Output::Ndjson => print(&(serde_json::to_string(item)? + "\n")),
    }
}

/// An RFC 3339 time from the API, to the second, in UTC (`2026-12-03T08:01:11Z`); unparsable
/// text is shown as it came.
pub fn time(t: &str) -> String {
    match OffsetDateTime::parse(t, &Rfc3339) {
        Ok(t) => {
            let t = t
                .to_offset(time::UtcOffset::UTC)
                .replace_nanosecond(0)
                .unwrap_or(t);
            t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
        }
        Err(_) => t.to_string(),
    }
}

/// An optional time: `-` when absent.
pub fn opt_time(t: Option<&str>) -> String {
    t.map(time).unwrap_or_else(|| "-".into())
}

/// A cell for an optional value: `-` when absent or empty.
pub fn or_dash(s: Option<impl ToString>) -> String {
    s.map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// A list cell: comma-separated, `-` when empty.
pub fn joined(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["NAME", "N"]).right(&[1]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["longer".into(), "200".into()]);
        assert_eq!(t.render(), "NAME      N\na         1\nlonger  200\n");
    }

    #[test]
    fn times_to_the_second_in_utc() {
        assert_eq!(
            time("2026-12-03T08:01:11.69912322Z"),
            "2026-12-03T08:01:11Z"
        );
        assert_eq!(time("2026-12-03T10:01:11+02:00"), "2026-12-03T08:01:11Z");
        assert_eq!(time("garbage"), "garbage");
    }
}

//! `interceptions list`: export interception records as JSON, NDJSON or CSV
//! (`--output`, like every command; `--format` is its alias here). It reads the database only:
//! the admin API's `GET /api/v1/interceptions` pages newest first, where this export streams
//! oldest first.
//!
//! Rows are streamed from the database to stdout as they arrive (oldest first), so memory
//! stays flat however many records match; the JSON shapes are the admin API's record, with the
//! prompt and the tool calls. CSV has a header line; its `tool_calls` column holds the calls as
//! JSON text.

use super::DbArgs;
use crate::admin::views::InterceptionView;
use crate::store::interceptions::InterceptionFilter;
use crate::store::Interception;
use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use std::io::Write;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, Subcommand)]
pub enum InterceptionsCommand {
    /// Export records (streamed; oldest first).
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        model: Option<String>,
        /// `model` or `passthrough`.
        #[arg(long, value_parser = ["model", "passthrough"])]
        route: Option<String>,
        /// Only records with a tool call of this name.
        #[arg(long)]
        tool: Option<String>,
        /// From this time (RFC 3339) or this long ago (`24h`, `7d`).
        #[arg(long, value_parser = parse_time)]
        since: Option<OffsetDateTime>,
        /// Before this time (RFC 3339) or this long ago.
        #[arg(long, value_parser = parse_time)]
        until: Option<OffsetDateTime>,
        /// At most this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// How to print the records (`--format` is an alias).
        #[arg(short = 'o', long = "output", visible_alias = "format", value_enum, default_value_t = Format::Ndjson)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// A header line, then one line per record.
    Csv,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.to_possible_value();
        f.write_str(name.as_ref().map_or("", |v| v.get_name()))
    }
}

/// An RFC 3339 time, or a duration meaning that long before now.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration such as 7d"))?;
    let ago = time::Duration::try_from(ago).map_err(|e| e.to_string())?;
    Ok(OffsetDateTime::now_utc() - ago)
}

pub async fn run(cmd: InterceptionsCommand) -> anyhow::Result<i32> {
    let InterceptionsCommand::List {
        db,
        user,
        provider,
        model,
        route,
        tool,
        since,
        until,
        limit,
        format,
    } = cmd;
    let filter = InterceptionFilter {
        provider,
        user,
        model,
        route,
        tool,
        since,
        until,
        before: None,
        limit: limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX)),
    };
    let store = db.connect().await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut writer = Writer::new(format);
    let exported = store
        .export_interceptions(&filter, |r| writer.row(&mut out, r))
        .await;
    store.close().await;
    let written = exported.context("reading interception records")?;
    written.context("writing to stdout")?;
    writer.end(&mut out).context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(0)
}

/// Writes rows in one format; knows whether anything was written yet.
struct Writer {
    format: Format,
    rows: u64,
}

const CSV_HEADER: &[&str] = &[
    "id",
    "request_id",
    "started_at",
    "user",
    "provider",
    "model",
    "route",
    "transport",
    "method",
    "path",
    "status",
    "outcome",
    "error",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "usage_source",
    "duration_ms",
    "ttfb_ms",
    "prompt",
    "prompt_truncated",
    "tool_calls",
];

impl Writer {
    fn new(format: Format) -> Self {
        Writer { format, rows: 0 }
    }

    fn row(&mut self, out: &mut impl Write, r: Interception) -> std::io::Result<()> {
        let first = self.rows == 0;
        self.rows += 1;
        match self.format {
            Format::Ndjson => {
                serde_json::to_writer(&mut *out, &InterceptionView::from(r))?;
                out.write_all(b"\n")
            }
            Format::Json => {
                out.write_all(if first { b"[\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *out, &InterceptionView::from(r))?;
                Ok(())
            }
            Format::Csv => {
                if first {
                    csv_line(out, CSV_HEADER.iter().map(|h| h.to_string()))?;
                }
                csv_line(out, csv_fields(r))
            }
        }
    }

    fn end(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        match (self.format, self.rows) {
            (Format::Json, 0) => out.write_all(b"[]\n"),
            (Format::Json, _) => out.write_all(b"\n]\n"),
            (Format::Csv, 0) => csv_line(out, CSV_HEADER.iter().map(|h| h.to_string())),
            _ => Ok(()),
        }
    }
}

fn csv_fields(r: Interception) -> impl Iterator<Item = String> {
    let opt = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let tool_calls = if r.tool_calls.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&r.tool_calls).unwrap_or_default()
    };
    [
        r.id.to_string(),
        r.request_id,
        r.started_at.format(&Rfc3339).unwrap_or_default(),
        r.user,
        r.provider,
        r.model.unwrap_or_default(),
        r.route,
        r.transport,
        r.method,
        r.path,
        r.status.to_string(),
        r.outcome,
        r.error.unwrap_or_default(),
        opt(r.input_tokens),
        opt(r.output_tokens),
        opt(r.cache_read_tokens),
        opt(r.cache_write_tokens),
        r.usage_source,
        r.duration_ms.to_string(),
        opt(r.ttfb_ms),
        r.prompt
            .as_ref()
            .map(|p| p.text.clone())
            .unwrap_or_default(),
        r.prompt
            .as_ref()
            .map(|p| p.truncated.to_string())
            .unwrap_or_default(),
        tool_calls,
    ]
    .into_iter()
}

/// One RFC 4180 line: a field with a comma, a quote or a line break is quoted, quotes doubled.
fn csv_line(out: &mut impl Write, fields: impl Iterator<Item = String>) -> std::io::Result<()> {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        if field.contains([',', '"', '\n', '\r']) {
            out.write_all(b"\"")?;
            out.write_all(field.replace('"', "\"\"").as_bytes())?;
            out.write_all(b"\"")?;
        } else {
            out.write_all(field.as_bytes())?;
        }
    }
    out.write_all(b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let mut out = Vec::new();
        csv_line(
            &mut out,
            ["plain", "a,b", "say \"hi\"", "two\nlines"]
                .into_iter()
                .map(String::from),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n"
        );
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let t = parse_time("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(t.unix_timestamp(), 1_796_119_200);
        let ago = parse_time("1h").unwrap();
        let delta = OffsetDateTime::now_utc() - ago;
        assert!(delta >= time::Duration::minutes(59) && delta <= time::Duration::minutes(61));
        assert!(parse_time("yesterday").is_err());
    }
}

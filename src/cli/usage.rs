//! `usage [--group-by provider|model|user] [--since T] [--until T] [--include-passthrough]`:
//! token totals per group, as `GET /api/v1/usage` computes them (model calls only unless
//! asked), with a TOTAL line in the table. `T` is an RFC 3339 time or a duration ago (`7d`), as
//! for `interceptions list`.

use super::conn::ConnArgs;
use super::interceptions::parse_time;
use super::items::UsageItem;
use super::output::{self, OutputArgs, Table};
use crate::store::interceptions::GroupBy;
use clap::{Args, ValueEnum};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Group {
    Provider,
    Model,
    User,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// One line per provider, model or user.
    #[arg(long, value_enum, default_value_t = Group::Provider)]
    group_by: Group,
    /// From this time (RFC 3339) or this long ago (`24h`, `7d`).
    #[arg(long, value_parser = parse_time)]
    since: Option<OffsetDateTime>,
    /// Before this time (RFC 3339) or this long ago.
    #[arg(long, value_parser = parse_time)]
    until: Option<OffsetDateTime>,
    /// Count requests that are not model calls too (passthrough).
    #[arg(long)]
    include_passthrough: bool,
}

pub async fn run(args: UsageArgs) -> anyhow::Result<i32> {
    let group_by = match args.group_by {
        Group::Provider => GroupBy::Provider,
        Group::Model => GroupBy::Model,
        Group::User => GroupBy::User,
    };
    let conn = args.conn.open().await?;
    let totals = conn
        .usage(group_by, args.since, args.until, args.include_passthrough)
        .await;
    conn.close().await;
    let totals = totals?;
    output::list(args.out.output, &totals, || table(group_by, &totals))?;
    Ok(0)
}

fn table(group_by: GroupBy, totals: &[UsageItem]) -> Table {
    let mut t = Table::new(&[
        match group_by {
            GroupBy::Provider => "PROVIDER",
            GroupBy::Model => "MODEL",
            GroupBy::User => "USER",
        },
        "REQUESTS",
        "INPUT",
        "OUTPUT",
        "CACHE_READ",
        "CACHE_WRITE",
    ])
    .right(&[1, 2, 3, 4, 5]);
    let mut sum = UsageItem::default();
    for u in totals {
        t.row(cells(u.key.as_deref().unwrap_or("(none)"), u));
        sum.requests += u.requests;
        sum.input_tokens += u.input_tokens;
        sum.output_tokens += u.output_tokens;
        sum.cache_read_tokens += u.cache_read_tokens;
        sum.cache_write_tokens += u.cache_write_tokens;
    }
    t.row(cells("TOTAL", &sum));
    t
}

fn cells(key: &str, u: &UsageItem) -> Vec<String> {
    vec![
        key.to_string(),
        u.requests.to_string(),
        u.input_tokens.to_string(),
        u.output_tokens.to_string(),
        u.cache_read_tokens.to_string(),
        u.cache_write_tokens.to_string(),
    ]
}

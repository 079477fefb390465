//! Interception records: batch inserts (one transaction per batch, all or nothing: a record is
//! never written without its prompt and tool calls) and reads.

use super::{Interception, Prompt, Store, StoreError, ToolCall};
use std::collections::HashMap;
use uuid::Uuid;

const COLUMNS: &str = "id, request_id, token_id, user_label, provider, model, method, path, status, input_tokens, \
     output_tokens, cache_read_tokens, cache_write_tokens, usage_source, outcome, started_at, duration_ms, ttfb_ms, error, \
     route, transport";

/// Rows per INSERT statement, under SQLite's oldest variable limit (999): 21 parameters a record,
/// 3 a prompt, 7 a tool call.
const ROWS_PER_INSERT: usize = 45;
const PROMPTS_PER_INSERT: usize = 300;
const TOOL_CALLS_PER_INSERT: usize = 140;

impl Store {
    /// Insert a batch in one transaction, many rows per statement (one round trip to the
    /// database per chunk, not per row). Records are not configuration: nothing is published.
    pub async fn insert_interceptions(&self, batch: &[Interception]) -> Result<(), StoreError> {
        with_pool!(@backend self.records, |pool, kind| {
            let mut tx = pool.begin().await?;
            for chunk in batch.chunks(ROWS_PER_INSERT) {
                let mut insert =
                    sqlx::QueryBuilder::new(format!("INSERT INTO interceptions ({COLUMNS}) "));
                insert.push_values(chunk, |mut row, r| {
                    row.push_bind(r.id)
                        .push_bind(&r.request_id)
                        .push_bind(r.token_id)
                        .push_bind(&r.user)
                        .push_bind(&r.provider)
                        .push_bind(&r.model)
                        .push_bind(&r.method)
                        .push_bind(&r.path)
                        .push_bind(r.status)
                        .push_bind(r.input_tokens)
                        .push_bind(r.output_tokens)
                        .push_bind(r.cache_read_tokens)
                        .push_bind(r.cache_write_tokens)
                        .push_bind(&r.usage_source)
                        .push_bind(&r.outcome)
                        .push_bind(r.started_at)
                        .push_bind(r.duration_ms)
                        .push_bind(r.ttfb_ms)
                        .push_bind(&r.error)
                        .push_bind(&r.route)
                        .push_bind(&r.transport);
                });
                insert.build().execute(&mut *tx).await?;
            }
            let prompts: Vec<(Uuid, &Prompt)> = batch
                .iter()
                .filter_map(|r| r.prompt.as_ref().map(|p| (r.id, p)))
                .collect();
            for chunk in prompts.chunks(PROMPTS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO interception_prompts (interception_id, text, truncated) ",
                );
                insert.push_values(chunk, |mut row, (id, p)| {
                    row.push_bind(*id).push_bind(&p.text).push_bind(p.truncated);
                });
                insert.build().execute(&mut *tx).await?;
            }
            let calls: Vec<(Uuid, i32, &ToolCall)> = batch
                .iter()
                .flat_map(|r| {
                    r.tool_calls
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (r.id, i as i32, c))
                })
                .collect();
            for chunk in calls.chunks(TOOL_CALLS_PER_INSERT) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO interception_tool_calls \
                     (interception_id, seq, call_id, name, type, arguments, truncated) ",
                );
                insert.push_values(chunk, |mut row, (id, seq, c)| {
                    row.push_bind(*id)
                        .push_bind(*seq)
                        .push_bind(&c.call_id)
                        .push_bind(&c.name)
                        .push_bind(&c.kind)
                        .push_bind(&c.arguments)
                        .push_bind(c.truncated);
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The newest `limit` records, newest first, with their prompts and tool calls.
    pub async fn recent_interceptions(&self, limit: i64) -> Result<Vec<Interception>, StoreError> {
        let mut rows: Vec<Interception> = with_pool!(self, |pool, kind| {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM interceptions ORDER BY started_at DESC, id LIMIT $1"
            ))
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        self.attach_details(&mut rows).await?;
        Ok(rows)
    }

    /// One record by id, with its prompt and tool calls.
    pub async fn get_interception(&self, id: Uuid) -> Result<Option<Interception>, StoreError> {
        let row: Option<Interception> = with_pool!(self, |pool, kind| {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM interceptions WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        let mut rows: Vec<Interception> = row.into_iter().collect();
        self.attach_details(&mut rows).await?;
        Ok(rows.pop())
    }

    /// Fill in the prompts and tool calls of `rows` (two queries per chunk of ids).
    async fn attach_details(&self, rows: &mut [Interception]) -> Result<(), StoreError> {
        const IDS_PER_QUERY: usize = 500;
        let mut prompts: HashMap<Uuid, Prompt> = HashMap::new();
        let mut calls: HashMap<Uuid, Vec<ToolCall>> = HashMap::new();
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let found: Vec<PromptRow> = with_pool!(self, |pool, kind| {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT interception_id, text, truncated FROM interception_prompts \
                     WHERE interception_id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")");
                q.build_query_as().fetch_all(pool).await?
            });
            prompts.extend(found.into_iter().map(|p| {
                let text = Prompt {
                    text: p.text,
                    truncated: p.truncated,
                };
                (p.interception_id, text)
            }));
            let found: Vec<ToolCallRow> = with_pool!(self, |pool, kind| {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT interception_id, seq, call_id, name, type, arguments, truncated \
                     FROM interception_tool_calls WHERE interception_id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(") ORDER BY interception_id, seq");
                q.build_query_as().fetch_all(pool).await?
            });
            for c in found {
                calls.entry(c.interception_id).or_default().push(ToolCall {
                    call_id: c.call_id,
                    name: c.name,
                    kind: c.kind,
                    arguments: c.arguments,
                    truncated: c.truncated,
                });
            }
        }
        for r in rows.iter_mut() {
            r.prompt = prompts.remove(&r.id);
            r.tool_calls = calls.remove(&r.id).unwrap_or_default();
        }
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct PromptRow {
    interception_id: Uuid,
    text: String,
    truncated: bool,
}

#[derive(sqlx::FromRow)]
struct ToolCallRow {
    interception_id: Uuid,
    #[allow(dead_code)]
    seq: i32,
    call_id: Option<String>,
    name: String,
    #[sqlx(rename = "type")]
    kind: String,
    arguments: String,
    truncated: bool,
}

/// Filters for listing records; `before` is the cursor (exclusive), newest first.
#[derive(Debug, Clone, Default)]
pub struct InterceptionFilter {
    pub provider: Option<String>,
    pub user: Option<String>,
    pub model: Option<String>,
    /// `model` or `passthrough`.
    pub route: Option<String>,
    /// Records with at least one tool call of this name.
    pub tool: Option<String>,
    pub since: Option<time::OffsetDateTime>,
    pub until: Option<time::OffsetDateTime>,
    pub before: Option<(time::OffsetDateTime, uuid::Uuid)>,
    pub limit: i64,
}

/// Token totals for one group.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct UsageTotal {
    pub key: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
}

/// What `/usage` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Provider,
    Model,
    User,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            GroupBy::User => "user_label",
        }
    }
}

/// The usage columns every aggregate returns: requests and token sums (0 for none, BIGINT on
/// both backends).
const TOTALS: &str = "COUNT(*) AS requests, \
     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
     CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT) AS cache_read_tokens, \
     CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT) AS cache_write_tokens";

impl Store {
    /// Records matching `f`, newest first, keyset-paginated on (started_at, id) so a page costs
    /// the same at row 10 million as at row 10.
    pub async fn list_interceptions(
        &self,
        f: &InterceptionFilter,
    ) -> Result<Vec<Interception>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM interceptions WHERE ($1 IS NULL OR provider = $1) AND ($2 IS NULL OR user_label = $2) \
             AND ($3 IS NULL OR model = $3) AND ($4 IS NULL OR started_at >= $4) AND ($5 IS NULL OR started_at < $5) \
             AND ($6 IS NULL OR started_at < $6 OR (started_at = $6 AND id < $7)) \
             AND ($9 IS NULL OR route = $9) \
             AND ($10 IS NULL OR EXISTS (SELECT 1 FROM interception_tool_calls t \
                  WHERE t.interception_id = interceptions.id AND t.name = $10)) \
             ORDER BY started_at DESC, id DESC LIMIT $8"
        );
        let (before_ts, before_id) = match f.before {
            Some((ts, id)) => (Some(ts), Some(id)),
            None => (None, None),
        };
        let mut rows: Vec<Interception> = with_pool!(self, |pool, kind| {
            sqlx::query_as(&sql)
                .bind(&f.provider)
                .bind(&f.user)
                .bind(&f.model)
                .bind(f.since)
                .bind(f.until)
                .bind(before_ts)
                .bind(before_id)
                .bind(f.limit)
                .bind(&f.route)
                .bind(&f.tool)
                .fetch_all(pool)
                .await?
        });
        self.attach_details(&mut rows).await?;
        Ok(rows)
    }

    /// Token totals grouped by provider, model or user over `[since, until)`: model calls
    /// only, unless `include_passthrough`.
    pub async fn usage_totals(
        &self,
        group_by: GroupBy,
        since: Option<time::OffsetDateTime>,
        until: Option<time::OffsetDateTime>,
        include_passthrough: bool,
    ) -> Result<Vec<UsageTotal>, StoreError> {
        let col = group_by.column();
        let sql = format!(
            "SELECT {col} AS key, {TOTALS} FROM interceptions \
             WHERE ($1 IS NULL OR started_at >= $1) AND ($2 IS NULL OR started_at < $2) \
             AND ($3 OR route = 'model') \
             GROUP BY {col} ORDER BY {col}"
        );
        let rows = with_pool!(self, |pool, kind| {
            sqlx::query_as(&sql)
                .bind(since)
                .bind(until)
                .bind(include_passthrough)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }
}

/// The width of one usage bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    /// The SQL expression naming the UTC bucket a record's `started_at` falls in, as RFC 3339
    /// text (`2026-12-03T14:00:00Z`), so both backends return the same strings and order them
    /// the same way.
    fn sql(self, kind: super::Kind) -> &'static str {
        match (kind, self) {
            (super::Kind::Sqlite, Bucket::Hour) => "strftime('%Y-%m-%dT%H:00:00Z', started_at)",
            (super::Kind::Sqlite, Bucket::Day) => "strftime('%Y-%m-%dT00:00:00Z', started_at)",
            (super::Kind::Postgres, Bucket::Hour) => {
                "to_char(date_trunc('hour', started_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24\":00:00Z\"')"
            }
            (super::Kind::Postgres, Bucket::Day) => {
                "to_char(date_trunc('day', started_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T00:00:00Z\"')"
            }
        }
    }
}

/// Token totals for one group in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct UsageBucket {
    /// The bucket's start, RFC 3339 UTC.
    pub bucket: String,
    pub key: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
}

impl Store {
    /// Token totals per UTC hour or day and per provider, model or user over `[since, until)`,
    /// oldest bucket first: model calls only, unless `include_passthrough`. Buckets with no
    /// records are absent (the caller knows the range and fills them). Aggregated in the
    /// database, so the answer's size is buckets × groups whatever the record count.
    pub async fn usage_buckets(
        &self,
        bucket: Bucket,
        group_by: GroupBy,
        since: time::OffsetDateTime,
        until: time::OffsetDateTime,
        include_passthrough: bool,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        let col = group_by.column();
        let rows = with_pool!(self, |pool, kind| {
            let sql = format!(
                "SELECT {b} AS bucket, {col} AS key, {TOTALS} FROM interceptions \
                 WHERE started_at >= $1 AND started_at < $2 AND ($3 OR route = 'model') \
                 GROUP BY 1, 2 ORDER BY 1, 2",
                b = bucket.sql(kind)
            );
            sqlx::query_as(&sql)
                .bind(since)
                .bind(until)
                .bind(include_passthrough)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }
}

/// What one retention run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// Records deleted (with their prompts and tool calls).
    Deleted(u64),
    /// Another replica holds the retention lock (PostgreSQL): it does the work.
    Skipped,
}

/// The PostgreSQL advisory lock key that lets one replica at a time run retention.
const RETENTION_LOCK: i64 = 0x6169_6272_6964_6765; // "aibridge"

impl Store {
    /// Delete records that started before `cutoff`, `batch` at a time (each delete its own short
    /// transaction, so writers are never held behind one long lock), pausing `pause` between
    /// batches. On PostgreSQL only the replica holding the retention advisory lock runs.
    pub async fn purge_interceptions(
        &self,
        cutoff: time::OffsetDateTime,
        batch: i64,
        pause: std::time::Duration,
    ) -> Result<Purge, StoreError> {
        const DELETE: &str = "DELETE FROM interceptions WHERE id IN \
             (SELECT id FROM interceptions WHERE started_at < $1 ORDER BY started_at, id LIMIT $2)";
        let mut deleted = 0u64;
        match &self.backend {
            super::Backend::Sqlite(pool) => loop {
                let n = sqlx::query(DELETE)
                    .bind(cutoff)
                    .bind(batch)
                    .execute(pool)
                    .await?
                    .rows_affected();
                deleted += n;
                if n < batch as u64 {
                    return Ok(Purge::Deleted(deleted));
                }
                tokio::time::sleep(pause).await;
            },
            super::Backend::Postgres(pool) => {
                // A session lock on one connection: released by unlock, or by the server if the
                // connection dies mid-run.
                let mut conn = pool.acquire().await?;
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(RETENTION_LOCK)
                    .fetch_one(&mut *conn)
                    .await?;
                if !locked {
                    return Ok(Purge::Skipped);
                }
                let result = async {
                    loop {
                        let n = sqlx::query(DELETE)
                            .bind(cutoff)
                            .bind(batch)
                            .execute(&mut *conn)
                            .await?
                            .rows_affected();
                        deleted += n;
                        if n < batch as u64 {
                            return Ok::<_, StoreError>(());
                        }
                        tokio::time::sleep(pause).await;
                    }
                }
                .await;
                let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(RETENTION_LOCK)
                    .execute(&mut *conn)
                    .await;
                if unlocked.is_err() {
                    // The lock lives as long as the session: do not give it back to the pool.
                    conn.detach();
                }
                result.map(|()| Purge::Deleted(deleted))
            }
        }
    }
}

/// A record as exported: its columns, its prompt and its tool calls (as JSON text) in one row.
#[derive(sqlx::FromRow)]
struct ExportRow {
    #[sqlx(flatten)]
    record: Interception,
    prompt_text: Option<String>,
    prompt_truncated: Option<bool>,
    tool_calls_json: Option<String>,
}

impl ExportRow {
    fn into_record(self) -> Interception {
        let mut r = self.record;
        r.prompt = self.prompt_text.map(|text| Prompt {
            text,
            truncated: self.prompt_truncated.unwrap_or(false),
        });
        r.tool_calls = self
            .tool_calls_json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        r
    }
}

impl Store {
    /// Every record matching `f` (its cursor ignored), oldest first, handed to `each` as rows
    /// arrive from the database: memory stays flat however many there are. Stops at the first
    /// error `each` returns.
    pub async fn export_interceptions<E>(
        &self,
        f: &InterceptionFilter,
        mut each: impl FnMut(Interception) -> Result<(), E>,
    ) -> Result<Result<u64, E>, StoreError> {
        use futures_util::TryStreamExt;
        let tool_calls = |kind: super::Kind| {
            match kind {
            super::Kind::Postgres => {
                "(SELECT json_agg(json_build_object('call_id', t.call_id, 'name', t.name, 'type', t.type, \
                 'arguments', t.arguments, 'truncated', t.truncated) ORDER BY t.seq)::text \
                 FROM interception_tool_calls t WHERE t.interception_id = interceptions.id)"
            }
            super::Kind::Sqlite => {
                "(SELECT json_group_array(json_object('call_id', t.call_id, 'name', t.name, 'type', t.type, \
                 'arguments', t.arguments, 'truncated', json(CASE WHEN t.truncated THEN 'true' ELSE 'false' END))) \
                 FROM (SELECT * FROM interception_tool_calls WHERE interception_id = interceptions.id ORDER BY seq) t)"
            }
        }
        };
        let mut count = 0u64;
        with_pool!(self, |pool, kind| {
            let sql = format!(
                "SELECT {COLUMNS}, p.text AS prompt_text, p.truncated AS prompt_truncated, {} AS tool_calls_json \
                 FROM interceptions LEFT JOIN interception_prompts p ON p.interception_id = interceptions.id \
                 WHERE ($1 IS NULL OR provider = $1) AND ($2 IS NULL OR user_label = $2) \
                 AND ($3 IS NULL OR model = $3) AND ($4 IS NULL OR started_at >= $4) AND ($5 IS NULL OR started_at < $5) \
                 AND ($6 IS NULL OR route = $6) \
                 AND ($7 IS NULL OR EXISTS (SELECT 1 FROM interception_tool_calls t \
                      WHERE t.interception_id = interceptions.id AND t.name = $7)) \
                 ORDER BY started_at, id LIMIT $8",
                tool_calls(kind)
            );
            let mut rows = sqlx::query_as::<_, ExportRow>(&sql)
                .bind(&f.provider)
                .bind(&f.user)
                .bind(&f.model)
                .bind(f.since)
                .bind(f.until)
                .bind(&f.route)
                .bind(&f.tool)
                .bind(f.limit)
                .fetch(pool);
            while let Some(row) = rows.try_next().await? {
                if let Err(e) = each(row.into_record()) {
                    return Ok(Err(e));
                }
                count += 1;
            }
        });
        Ok(Ok(count))
    }
}

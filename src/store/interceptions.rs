//! Interception records: batch inserts (one transaction per batch, all or nothing) and reads.

use super::{Interception, Store, StoreError};

const COLUMNS: &str = "id, request_id, token_id, user_label, provider, model, method, path, status, input_tokens, \
     output_tokens, cache_read_tokens, cache_write_tokens, usage_source, outcome, started_at, duration_ms, ttfb_ms, error";

/// Rows per INSERT statement: 19 parameters each stays under SQLite's oldest variable limit (999).
const ROWS_PER_INSERT: usize = 50;

impl Store {
    /// Insert a batch in one transaction, many rows per statement (one round trip to the
    /// database per chunk, not per row). Records are not configuration: nothing is published.
    pub async fn insert_interceptions(&self, batch: &[Interception]) -> Result<(), StoreError> {
        with_pool!(self, |pool, kind| {
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
                        .push_bind(&r.error);
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The newest `limit` records, newest first.
    pub async fn recent_interceptions(&self, limit: i64) -> Result<Vec<Interception>, StoreError> {
        let rows = with_pool!(self, |pool, kind| {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM interceptions ORDER BY started_at DESC, id LIMIT $1"
            ))
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }
}

/// Filters for listing records; `before` is the cursor (exclusive), newest first.
#[derive(Debug, Clone, Default)]
pub struct InterceptionFilter {
    pub provider: Option<String>,
    pub user: Option<String>,
    pub model: Option<String>,
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
             ORDER BY started_at DESC, id DESC LIMIT $8"
        );
        let (before_ts, before_id) = match f.before {
            Some((ts, id)) => (Some(ts), Some(id)),
            None => (None, None),
        };
        let rows = with_pool!(self, |pool, kind| {
            sqlx::query_as(&sql)
                .bind(&f.provider)
                .bind(&f.user)
                .bind(&f.model)
                .bind(f.since)
                .bind(f.until)
                .bind(before_ts)
                .bind(before_id)
                .bind(f.limit)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Token totals grouped by provider, model or user over `[since, until)`.
    pub async fn usage_totals(
        &self,
        group_by: GroupBy,
        since: Option<time::OffsetDateTime>,
        until: Option<time::OffsetDateTime>,
    ) -> Result<Vec<UsageTotal>, StoreError> {
        let col = group_by.column();
        let sql = format!(
            "SELECT {col} AS key, COUNT(*) AS requests, \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
             CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT) AS cache_read_tokens, \
             CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT) AS cache_write_tokens \
             FROM interceptions WHERE ($1 IS NULL OR started_at >= $1) AND ($2 IS NULL OR started_at < $2) \
             GROUP BY {col} ORDER BY {col}"
        );
        let rows = with_pool!(self, |pool, kind| {
            sqlx::query_as(&sql)
                .bind(since)
                .bind(until)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }
}

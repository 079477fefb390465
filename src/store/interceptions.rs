//! Interception records: batch inserts (one transaction per batch, all or nothing) and reads.

use super::{Interception, Store, StoreError};

const COLUMNS: &str = "id, request_id, token_id, user_label, provider, model, method, path, status, input_tokens, \
     output_tokens, cache_read_tokens, cache_write_tokens, usage_source, outcome, started_at, duration_ms, ttfb_ms, error";

impl Store {
    /// Insert a batch in one transaction. Records are not configuration: nothing is published.
    pub async fn insert_interceptions(&self, batch: &[Interception]) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO interceptions ({COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        );
        with_pool!(self, |pool, kind| {
            let mut tx = pool.begin().await?;
            for r in batch {
                sqlx::query(&sql)
                    .bind(r.id)
                    .bind(&r.request_id)
                    .bind(r.token_id)
                    .bind(&r.user)
                    .bind(&r.provider)
                    .bind(&r.model)
                    .bind(&r.method)
                    .bind(&r.path)
                    .bind(r.status)
                    .bind(r.input_tokens)
                    .bind(r.output_tokens)
                    .bind(r.cache_read_tokens)
                    .bind(r.cache_write_tokens)
                    .bind(&r.usage_source)
                    .bind(&r.outcome)
                    .bind(r.started_at)
                    .bind(r.duration_ms)
                    .bind(r.ttfb_ms)
                    .bind(&r.error)
                    .execute(&mut *tx)
                    .await?;
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

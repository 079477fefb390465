//! Agent tokens: stored as SHA-256, the clear token shown once.
//!
//! Every token write also logs the ids it touched in `aibridge_change_log`, under the change's
//! counter, so replicas apply it as a delta ([`Store::changes_since`]) instead of re-reading
//! every token. A batch ([`Store::create_tokens`]) is one transaction, one counter and one
//! notification, however many tokens it holds.

use super::{now, Channel, Kind, Store, StoreError};
use super::{AgentToken, Changes, NewToken, TokenChange};
use crate::secret::Secret;
use time::OffsetDateTime;
use uuid::Uuid;

pub(super) const SELECT_ACTIVE: &str =
    "SELECT id, user_label, token_hash, created_at, last_used_at, revoked_at, expires_at FROM agent_tokens \
     WHERE revoked_at IS NULL";

/// The most tokens one batch may create (one transaction; the API's body limit is the other
/// bound).
pub const MAX_BATCH: usize = 100_000;

/// Rows per multi-row INSERT: 5 binds each stays far below both backends' bind limits.
const INSERT_CHUNK: usize = 1_000;

/// How many counters of change log are kept. A replica further behind than this finds a gap
/// and reloads in full, which is what it would do anyway after that much change.
pub const LOG_KEPT: i64 = 10_000;

/// Pruning runs on one write in this many (usually finding nothing to delete).
const PRUNE_EVERY: i64 = 64;

/// Delete change-log rows older than [`LOG_KEPT`] counters, on one write in [`PRUNE_EVERY`],
/// inside the write's transaction `$tx` at counter `$counter`. The oldest counter is read first
/// (an index probe whatever the planner knows): PostgreSQL plans the range delete as a scan of
/// the whole log while the table has no statistics yet — after a bulk load, ~10 ms per 100 000
/// rows on every 64th write — so it runs only when there is something to delete.
macro_rules! prune_log {
    ($tx:ident, $counter:expr) => {
        if $counter % PRUNE_EVERY == 0 {
            let drop_upto = $counter - LOG_KEPT;
            let oldest: Option<i64> =
                sqlx::query_scalar("SELECT min(counter) FROM aibridge_change_log")
                    .fetch_one(&mut *$tx)
                    .await?;
            if oldest.is_some_and(|oldest| oldest <= drop_upto) {
                sqlx::query("DELETE FROM aibridge_change_log WHERE counter <= $1")
                    .bind(drop_upto)
                    .execute(&mut *$tx)
                    .await?;
            }
        }
    };
}

/// More logged rows than this after a replica's counter are cheaper to read as a full reload.
pub const MAX_DELTA_ROWS: i64 = 20_000;

/// The counter and the log rows after `$1` (at most `$2`) with their tokens, SQLite.
const CHANGES_SQLITE: &str =
    "SELECT c.counter AS head, l.counter, l.kind, l.ref_id, t.user_label, t.token_hash, \
     t.created_at, t.last_used_at, t.revoked_at, t.expires_at \
     FROM aibridge_changes c \
     LEFT JOIN aibridge_change_log l ON l.counter > $1 AND l.counter <= c.counter \
     LEFT JOIN agent_tokens t ON t.id = l.ref_id \
     WHERE c.id = 1 ORDER BY l.counter LIMIT $2";

/// The same read on PostgreSQL: an index range on the log, index probes into the tokens.
const CHANGES_POSTGRES: &str = "SELECT c.counter AS head, x.* FROM aibridge_changes c \
     LEFT JOIN LATERAL ( \
       SELECT l.counter, l.kind, l.ref_id, t.user_label, t.token_hash, t.created_at, \
              t.last_used_at, t.revoked_at, t.expires_at \
       FROM aibridge_change_log l LEFT JOIN agent_tokens t ON t.id = l.ref_id \
       WHERE l.counter > $1 AND l.counter <= c.counter ORDER BY l.counter LIMIT $2 \
     ) x ON true \
     WHERE c.id = 1";

/// One logged change row joined with its token as committed (columns null when it is gone).
#[derive(sqlx::FromRow)]
struct LogRow {
    /// The change counter at the time of the read.
    head: i64,
    counter: Option<i64>,
    kind: Option<String>,
    ref_id: Option<Uuid>,
    user_label: Option<String>,
    token_hash: Option<Vec<u8>>,
    created_at: Option<OffsetDateTime>,
    last_used_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
}

impl LogRow {
    fn into_change(self, id: Uuid) -> TokenChange {
        let row = match (self.user_label, self.token_hash, self.created_at) {
            (Some(user), Some(token_hash), Some(created_at)) => Some(AgentToken {
                id,
                user,
                token_hash,
                created_at,
                last_used_at: self.last_used_at,
                revoked_at: self.revoked_at,
                expires_at: self.expires_at,
            }),
            _ => None,
        };
        TokenChange { id, row }
    }
}

/// Check a user label: what every token write accepts.
fn valid_user(user: &str) -> Result<&str, StoreError> {
    let user = user.trim();
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        return Err(StoreError::InvalidInput(
            "user must be 1 to 128 printable characters",
        ));
    }
    Ok(user)
}

impl Store {
    /// Create a token for `user` that never expires. The clear token is returned once and
    /// never stored.
    pub async fn create_token(
        &self,
        user: &str,
    ) -> Result<(AgentToken, Secret<String>), StoreError> {
        self.create_token_with(user, None).await
    }

    /// Create a token for `user`, refused after `expires_at` (which must be in the future).
    pub async fn create_token_with(
        &self,
        user: &str,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<(AgentToken, Secret<String>), StoreError> {
        let mut created = self
            .create_tokens(&[NewToken {
                user: user.to_string(),
                expires_at,
            }])
            .await?;
        created
            .pop()
            .ok_or(StoreError::InvalidInput("no token was created"))
    }

    /// Create many tokens in one transaction under one change counter (one notification, one
    /// delta for every replica). Every entry is checked before anything is written; the clear
    /// tokens come back in the order asked, once.
    pub async fn create_tokens(
        &self,
        batch: &[NewToken],
    ) -> Result<Vec<(AgentToken, Secret<String>)>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if batch.len() > MAX_BATCH {
            return Err(StoreError::InvalidInput(
                "a batch creates at most 100000 tokens",
            ));
        }
        let at = now();
        let mut created = Vec::with_capacity(batch.len());
        for new in batch {
            let user = valid_user(&new.user)?;
            if new.expires_at.is_some_and(|e| e <= at) {
                return Err(StoreError::InvalidInput("expires_at must be in the future"));
            }
            let token = crate::secret::token::generate()
                .map_err(|_| StoreError::InvalidInput("the system has no entropy source"))?;
            let row = AgentToken {
                id: Uuid::new_v4(),
                user: user.to_string(),
                token_hash: crate::secret::token::digest(token.expose()).to_vec(),
                created_at: at,
                last_used_at: None,
                revoked_at: None,
                expires_at: new.expires_at,
            };
            created.push((row, token));
        }
        let counter = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Tokens);
            for chunk in created.chunks(INSERT_CHUNK) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO agent_tokens (id, user_label, token_hash, created_at, expires_at) ",
                );
                insert.push_values(chunk, |mut b, (row, _)| {
                    b.push_bind(row.id)
                        .push_bind(&row.user)
                        .push_bind(&row.token_hash)
                        .push_bind(row.created_at)
                        .push_bind(row.expires_at);
                });
                insert.build().execute(&mut *tx).await?;
                let mut log = sqlx::QueryBuilder::new(
                    "INSERT INTO aibridge_change_log (counter, kind, ref_id) ",
                );
                log.push_values(chunk, |mut b, (row, _)| {
                    b.push_bind(counter).push_bind("token").push_bind(row.id);
                });
                log.build().execute(&mut *tx).await?;
            }
            prune_log!(tx, counter);
            tx.commit().await?;
            counter
        });
        self.committed(counter);
        Ok(created)
    }

    /// All tokens, revoked ones included, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<AgentToken>, StoreError> {
        let rows = with_pool!(self, |pool, kind| {
            sqlx::query_as(
                "SELECT id, user_label, token_hash, created_at, last_used_at, revoked_at, expires_at \
                 FROM agent_tokens ORDER BY created_at, id",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Revoke a token. Returns whether an active token was revoked; revoking twice changes
    /// nothing (and publishes nothing).
    pub async fn revoke_token(&self, id: Uuid) -> Result<bool, StoreError> {
        let (revoked, counter) = with_pool!(self, |pool, kind| {
            let (mut tx, counter) = begin_write!(pool, kind, Channel::Tokens);
            let n = sqlx::query(
                "UPDATE agent_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO aibridge_change_log (counter, kind, ref_id) VALUES ($1, 'token', $2)",
            )
            .bind(counter)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            prune_log!(tx, counter);
            tx.commit().await?;
            (true, counter)
        });
        self.committed(counter);
        Ok(revoked)
    }

    /// What was committed after change `after`, read from the change log in one consistent
    /// read: the token rows to apply when every change since is a logged token change, else
    /// [`Changes::Gap`] (the caller reloads in full). Costs one small query when nothing
    /// changed, and time in the number of changed tokens otherwise — never in the number stored.
    pub async fn changes_since(&self, after: i64) -> Result<Changes, StoreError> {
        // One statement is one consistent read on both backends (no transaction needed): the
        // counter and the log rows up to it, each joined with its token as committed.
        let rows: Vec<LogRow> = with_pool!(self, |pool, kind| {
            let sql = match kind {
                // SQLite's planner walks the log's primary key and probes tokens by id.
                Kind::Sqlite => CHANGES_SQLITE,
                // PostgreSQL may pick a hash join over both whole tables (O(N) per change)
                // unless the log range is a lateral subquery on the one counter row.
                Kind::Postgres => CHANGES_POSTGRES,
            };
            sqlx::query_as(sql)
                .bind(after)
                .bind(MAX_DELTA_ROWS + 1)
                .fetch_all(pool)
                .await?
        });
        let Some(head) = rows.first().map(|r| r.head) else {
            return Err(StoreError::NotFound("change counter"));
        };
        Ok(logged_changes(rows, after, head))
    }
}

/// Turn log rows for `(after, counter]` into a delta, or a gap when they do not cover every
/// counter in that range with token changes (or are too many to be worth a delta).
fn logged_changes(rows: Vec<LogRow>, after: i64, counter: i64) -> Changes {
    if counter == after {
        return Changes::None;
    }
    if counter < after {
        // The counter went back (a restored database): nothing logged can be trusted.
        return Changes::Gap;
    }
    // With no log row the one row read carries only the counter.
    let rows: Vec<(i64, Uuid, LogRow)> = rows
        .into_iter()
        .filter_map(|r| match (r.counter, r.ref_id, r.kind.as_deref()) {
            (Some(c), Some(id), Some(_)) => Some((c, id, r)),
            _ => None,
        })
        .collect();
    if rows.len() as i64 > MAX_DELTA_ROWS
        || rows
            .iter()
            .any(|(_, _, r)| r.kind.as_deref() != Some("token"))
    {
        return Changes::Gap;
    }
    // Rows come ordered by counter: count the distinct ones.
    let mut distinct = 0i64;
    let mut last = None;
    for (c, _, _) in &rows {
        if last != Some(*c) {
            distinct += 1;
            last = Some(*c);
        }
    }
    if distinct != counter - after {
        return Changes::Gap;
    }
    Changes::Tokens {
        counter,
        tokens: rows
            .into_iter()
            .map(|(_, id, r)| r.into_change(id))
            .collect(),
    }
}

//! Persistence: the only module that writes SQL.
//!
//! One [`Store`] over two backends, SQLite (embedded default) and PostgreSQL. Each query is
//! written once and compiled for both pools by [`with_pool!`]; the migration sets are separate
//! because the column types are (`migrations/sqlite`, `migrations/postgres`).
//!
//! Every mutation publishes a change in its own transaction: it bumps the `aibridge_changes`
//! counter and, on PostgreSQL, `NOTIFY`s `ai_providers_changed` (delivered only on commit). On
//! SQLite the in-process subscribers are woken after commit and other processes see the counter
//! move. A write either commits whole, with its change published, or leaves nothing behind.

pub mod model;

pub use model::{AgentToken, NewProvider, Provider, ProviderKey, ProviderPatch, RoutingData};

use crate::provider::{self, ProviderError};
use crate::secret::Secret;
use model::{KeyRow, ProviderRow};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://aibridge.db";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Why a store operation failed. `Database` carries sqlx's error for logs; the other variants
/// are the caller's fault and safe to show.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (expected sqlite://PATH or postgres://...)")]
    UnsupportedUrl,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] ProviderError),
    #[error("{0}")]
    InvalidInput(&'static str),
}

/// Which change channel a mutation publishes on.
#[derive(Debug, Clone, Copy)]
enum Channel {
    Providers,
    Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    local: broadcast::Sender<()>,
}

/// Run `$body` with `$pool` bound to whichever pool the store has, and `$kind` to its [`Kind`].
/// The body is type-checked once per backend, so one query text serves both.
macro_rules! with_pool {
    ($store:expr, |$pool:ident, $kind:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $kind = Kind::Sqlite;
                $body
            }
            Backend::Postgres($pool) => {
                #[allow(unused_variables)]
                let $kind = Kind::Postgres;
                $body
            }
        }
    };
}

/// The statement that publishes a change inside the current transaction.
fn publish_sql(kind: Kind, channel: Channel) -> &'static str {
    match (kind, channel) {
        (Kind::Sqlite, _) => "UPDATE aibridge_changes SET counter = counter + 1 WHERE id = 1",
        (Kind::Postgres, Channel::Providers) => {
            "WITH c AS (UPDATE aibridge_changes SET counter = counter + 1 WHERE id = 1 RETURNING counter) \
             SELECT pg_notify('ai_providers_changed', c.counter::text) FROM c"
        }
        (Kind::Postgres, Channel::Tokens) => {
            "WITH c AS (UPDATE aibridge_changes SET counter = counter + 1 WHERE id = 1 RETURNING counter) \
             SELECT pg_notify('agent_tokens_changed', c.counter::text) FROM c"
        }
    }
}

const PROVIDER_COLUMNS: &str =
    "id, name, kind, base_url, intercept_hosts, enabled, enforce_models, created_at, updated_at";

impl Store {
    /// Connect (creating a SQLite file if missing, in WAL mode) and run pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let backend = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Backend::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Backend::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let (local, _) = broadcast::channel(16);
        Ok(Store { backend, local })
    }

    /// The backend's name, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Wakes on every mutation committed through this handle (or a clone of it).
    pub fn subscribe_local(&self) -> broadcast::Receiver<()> {
        self.local.subscribe()
    }

    /// The change counter: it moves on every committed mutation, from any process.
    pub async fn change_counter(&self) -> Result<i64, StoreError> {
        let counter: i64 = with_pool!(self, |pool, kind| {
            sqlx::query_scalar("SELECT counter FROM aibridge_changes WHERE id = 1")
                .fetch_one(pool)
                .await?
        });
        Ok(counter)
    }

    pub async fn close(&self) {
        with_pool!(self, |pool, kind| pool.close().await)
    }

    fn published(&self) {
        // No receiver is fine: nobody in this process is listening.
        let _ = self.local.send(());
    }

    // === providers ===

    /// Every provider with its keys, oldest first.
    pub async fn list_providers(&self) -> Result<Vec<Provider>, StoreError> {
        with_pool!(self, |pool, kind| {
            let mut conn = pool.acquire().await?;
            let rows: Vec<ProviderRow> = sqlx::query_as(&format!(
                "SELECT {PROVIDER_COLUMNS} FROM ai_providers ORDER BY created_at, name"
            ))
            .fetch_all(&mut *conn)
            .await?;
            let keys: Vec<KeyRow> =
                sqlx::query_as("SELECT id, provider_id, api_key, created_at FROM ai_provider_keys ORDER BY created_at, id")
                    .fetch_all(&mut *conn)
                    .await?;
            Ok(attach_keys(rows, keys))
        })
    }

    /// One provider by id or name.
    pub async fn get_provider(&self, id_or_name: &str) -> Result<Option<Provider>, StoreError> {
        let all = self.list_providers().await?;
        Ok(all.into_iter().find(|p| matches_ref(p, id_or_name)))
    }

    /// Validate and insert a provider with its keys.
    pub async fn create_provider(&self, new: NewProvider) -> Result<Provider, StoreError> {
        provider::validate_name(&new.name)?;
        provider::BaseUrl::parse(&new.base_url)?;
        let hosts = provider::normalize_intercept_hosts(&new.intercept_hosts)?;
        validate_keys(&new.api_keys)?;
        let id = Uuid::new_v4();
        let now = now();
        with_pool!(self, |pool, kind| {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!(
                "INSERT INTO ai_providers ({PROVIDER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
            ))
            .bind(id)
            .bind(&new.name)
            .bind(new.kind.as_str())
            .bind(&new.base_url)
            .bind(sqlx::types::Json(&hosts))
            .bind(new.enabled)
            .bind(new.enforce_models)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict(e, "a provider with that name already exists"))?;
            for key in &new.api_keys {
                sqlx::query("INSERT INTO ai_provider_keys (id, provider_id, api_key, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(Uuid::new_v4())
                    .bind(id)
                    .bind(key.expose())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(publish_sql(kind, Channel::Providers))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        self.published();
        self.get_provider(&id.to_string())
            .await?
            .ok_or(StoreError::NotFound("provider"))
    }

    /// Apply a patch. A base URL whose host:port changes drops the provider's keys unless the
    /// same patch supplies keys: whoever can edit a provider must not be able to send its
    /// existing key to a host of their choosing.
    pub async fn update_provider(
        &self,
        id_or_name: &str,
        patch: ProviderPatch,
    ) -> Result<Provider, StoreError> {
        let current = self
            .get_provider(id_or_name)
            .await?
            .ok_or(StoreError::NotFound("provider"))?;
        let name = patch.name.unwrap_or_else(|| current.name.clone());
        provider::validate_name(&name)?;
        let kind_str = match patch.kind {
            Some(k) => k.as_str().to_string(),
            None => current.kind.clone(),
        };
        let base_url = patch.base_url.unwrap_or_else(|| current.base_url.clone());
        let new_base = provider::BaseUrl::parse(&base_url)?;
        let hosts = match &patch.intercept_hosts {
            Some(h) => provider::normalize_intercept_hosts(h)?,
            None => current.intercept_hosts.clone(),
        };
        let host_moved = provider::BaseUrl::parse(&current.base_url)
            .map(|old| old.target() != new_base.target())
            .unwrap_or(true);
        let replace_keys = match patch.api_keys {
            Some(keys) => {
                validate_keys(&keys)?;
                Some(keys)
            }
            None if host_moved && !current.keys.is_empty() => {
                tracing::warn!(provider = %name, "base_url host changed without new keys: keys detached");
                Some(Vec::new())
            }
            None => None,
        };
        let enabled = patch.enabled.unwrap_or(current.enabled);
        let enforce_models = patch.enforce_models.unwrap_or(current.enforce_models);
        let now = now();
        with_pool!(self, |pool, kind| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE ai_providers SET name = $2, kind = $3, base_url = $4, intercept_hosts = $5, \
                 enabled = $6, enforce_models = $7, updated_at = $8 WHERE id = $1",
            )
            .bind(current.id)
            .bind(&name)
            .bind(&kind_str)
            .bind(&base_url)
            .bind(sqlx::types::Json(&hosts))
            .bind(enabled)
            .bind(enforce_models)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict(e, "a provider with that name already exists"))?;
            if let Some(keys) = &replace_keys {
                sqlx::query("DELETE FROM ai_provider_keys WHERE provider_id = $1")
                    .bind(current.id)
                    .execute(&mut *tx)
                    .await?;
                for key in keys {
                    sqlx::query(
                        "INSERT INTO ai_provider_keys (id, provider_id, api_key, created_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(current.id)
                    .bind(key.expose())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            sqlx::query(publish_sql(kind, Channel::Providers))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        self.published();
        self.get_provider(&current.id.to_string())
            .await?
            .ok_or(StoreError::NotFound("provider"))
    }

    /// Delete a provider (its keys go with it). Returns whether it existed.
    pub async fn delete_provider(&self, id_or_name: &str) -> Result<bool, StoreError> {
        let Some(current) = self.get_provider(id_or_name).await? else {
            return Ok(false);
        };
        let deleted = with_pool!(self, |pool, kind| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query("DELETE FROM ai_providers WHERE id = $1")
                .bind(current.id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(publish_sql(kind, Channel::Providers))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n > 0
        });
        self.published();
        Ok(deleted)
    }

    /// Add one key to a provider.
    pub async fn add_key(
        &self,
        id_or_name: &str,
        api_key: Secret<String>,
    ) -> Result<ProviderKey, StoreError> {
        validate_keys(std::slice::from_ref(&api_key))?;
        let current = self
            .get_provider(id_or_name)
            .await?
            .ok_or(StoreError::NotFound("provider"))?;
        let key = ProviderKey {
            id: Uuid::new_v4(),
            api_key,
            created_at: now(),
        };
        with_pool!(self, |pool, kind| {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO ai_provider_keys (id, provider_id, api_key, created_at) VALUES ($1, $2, $3, $4)")
                .bind(key.id)
                .bind(current.id)
                .bind(key.api_key.expose())
                .bind(key.created_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(publish_sql(kind, Channel::Providers))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        self.published();
        Ok(key)
    }

    // === tokens ===

    /// Create a token for `user`. The clear token is returned once and never stored.
    pub async fn create_token(
        &self,
        user: &str,
    ) -> Result<(AgentToken, Secret<String>), StoreError> {
        let user = user.trim();
        if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
            return Err(StoreError::InvalidInput(
                "user must be 1 to 128 printable characters",
            ));
        }
        let token = Secret::new(generate_token()?);
        let row = AgentToken {
            id: Uuid::new_v4(),
            user: user.to_string(),
            token_hash: hash_token(token.expose()).to_vec(),
            created_at: now(),
            last_used_at: None,
            revoked_at: None,
        };
        with_pool!(self, |pool, kind| {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO agent_tokens (id, user_label, token_hash, created_at) VALUES ($1, $2, $3, $4)")
                .bind(row.id)
                .bind(&row.user)
                .bind(&row.token_hash)
                .bind(row.created_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(publish_sql(kind, Channel::Tokens))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        self.published();
        Ok((row, token))
    }

    /// All tokens, revoked ones included, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<AgentToken>, StoreError> {
        let rows = with_pool!(self, |pool, kind| {
            sqlx::query_as(
                "SELECT id, user_label, token_hash, created_at, last_used_at, revoked_at FROM agent_tokens \
                 ORDER BY created_at, id",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Revoke a token. Returns whether an active token was revoked.
    pub async fn revoke_token(&self, id: Uuid) -> Result<bool, StoreError> {
        let revoked = with_pool!(self, |pool, kind| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE agent_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                sqlx::query(publish_sql(kind, Channel::Tokens))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            n > 0
        });
        if revoked {
            self.published();
        }
        Ok(revoked)
    }

    // === routing ===

    /// Providers, keys, active tokens and the change counter, read in one transaction so the
    /// router never mixes two states.
    pub async fn load_routing(&self) -> Result<RoutingData, StoreError> {
        with_pool!(self, |pool, kind| {
            let mut tx = pool.begin().await?;
            if kind == Kind::Postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .execute(&mut *tx)
                    .await?;
            }
            let counter: i64 =
                sqlx::query_scalar("SELECT counter FROM aibridge_changes WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
            let rows: Vec<ProviderRow> = sqlx::query_as(&format!(
                "SELECT {PROVIDER_COLUMNS} FROM ai_providers ORDER BY created_at, name"
            ))
            .fetch_all(&mut *tx)
            .await?;
            let keys: Vec<KeyRow> =
                sqlx::query_as("SELECT id, provider_id, api_key, created_at FROM ai_provider_keys ORDER BY created_at, id")
                    .fetch_all(&mut *tx)
                    .await?;
            let tokens: Vec<AgentToken> = sqlx::query_as(
                "SELECT id, user_label, token_hash, created_at, last_used_at, revoked_at FROM agent_tokens \
                 WHERE revoked_at IS NULL",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(RoutingData {
                providers: attach_keys(rows, keys),
                tokens,
                counter,
            })
        })
    }
}

fn attach_keys(rows: Vec<ProviderRow>, keys: Vec<KeyRow>) -> Vec<Provider> {
    let mut keys: Vec<Option<KeyRow>> = keys.into_iter().map(Some).collect();
    rows.into_iter()
        .map(|row| {
            let mine = keys
                .iter_mut()
                .filter(|k| k.as_ref().is_some_and(|k| k.provider_id == row.id))
                .filter_map(Option::take)
                .map(ProviderKey::from)
                .collect();
            row.with_keys(mine)
        })
        .collect()
}

fn matches_ref(p: &Provider, id_or_name: &str) -> bool {
    p.name == id_or_name || Uuid::parse_str(id_or_name).is_ok_and(|id| id == p.id)
}

fn validate_keys(keys: &[Secret<String>]) -> Result<(), StoreError> {
    let ok = keys.iter().all(|k| {
        let k = k.expose();
        !k.is_empty() && k.len() <= 4096 && k.bytes().all(|b| b.is_ascii_graphic())
    });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(
            "api keys must be 1 to 4096 visible ASCII characters",
        ))
    }
}

fn conflict(e: sqlx::Error, what: &str) -> StoreError {
    match e.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Conflict(what.to_string()),
        _ => StoreError::Database(e),
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A new agent token: `abp_` and 256 random bits, base64url.
fn generate_token() -> Result<String, StoreError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|_| StoreError::InvalidInput("the system has no entropy source"))?;
    Ok(format!(
        "abp_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

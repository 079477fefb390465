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
//!
//! Provider keys are sealed on write and opened on read with the store's [`Keyring`]
//! (`--secrets-key-file`, see [`crypto`]); without one they are written in clear. A key that
//! cannot be opened is carried as an error on that key, never as a failed read.
//!
//! A provider's base URL is written only if the store's upstream [`EgressPolicy`] allows its
//! host (public-only by default; `--allow-private-upstreams` widens it): every writer — admin
//! API, CLI, `apply` — goes through here, so none can skip the check.

pub mod crypto;
pub mod model;

pub use crypto::{CryptoError, KeyId, Keyring, SecretsKey, SecretsKeyError};
pub use model::{
    AgentToken, Changes, Interception, Model, ModelPatch, NewModel, NewProvider, NewToken, Prompt,
    Provider, ProviderKey, ProviderPatch, RoutingData, TokenChange, ToolCall, UNREADABLE_MASK,
};
pub use secrets::{KeyStorage, Rotation};
pub use tokens::LOG_KEPT;

use crate::net::egress::EgressPolicy;
use crate::provider::ProviderError;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://aibridge.db";

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Why a store operation failed. `Database` and `Migrate` carry sqlx's error for logs; the
/// other variants are the caller's doing and safe to show.
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
    #[error("cannot encrypt a provider key: {0}")]
    Crypto(#[from] CryptoError),
    #[error("key {key_id} of provider {provider} cannot be decrypted: {reason}")]
    UnreadableKey {
        provider: String,
        key_id: Uuid,
        reason: CryptoError,
    },
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
    /// Where interception records are written: on SQLite a pool of its own with one connection,
    /// so the writer's page cache stays warm (SQLite drops a connection's cache whenever another
    /// connection has written since its last transaction, and a shared pool hands out its
    /// connections in turn: every batch re-read the pages it appends to); on PostgreSQL the
    /// same pool.
    records: Backend,
    local: broadcast::Sender<()>,
    /// The highest change counter committed through this handle.
    last_committed: Arc<AtomicI64>,
    /// Seals keys on write, opens them on read.
    keyring: Arc<Keyring>,
    /// Which base-URL hosts may be written (public-only unless widened).
    upstream_policy: Arc<EgressPolicy>,
}

/// Run `$body` with `$pool` bound to whichever pool the store has, and `$kind` to its [`Kind`].
/// The body is type-checked once per backend, so one query text serves both.
macro_rules! with_pool {
    (@backend $backend:expr, |$pool:ident, $kind:ident| $body:expr) => {
        match &$backend {
            $crate::store::Backend::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $kind = $crate::store::Kind::Sqlite;
                $body
            }
            $crate::store::Backend::Postgres($pool) => {
                #[allow(unused_variables)]
                let $kind = $crate::store::Kind::Postgres;
                $body
            }
        }
    };
    ($store:expr, |$pool:ident, $kind:ident| $body:expr) => {
        with_pool!(@backend $store.backend, |$pool, $kind| $body)
    };
}

/// Begin a write transaction whose first statement publishes the change: it bumps the change
/// counter (taking the write lock, so concurrent writers queue instead of deadlocking on a lock
/// upgrade, and each sees the previous one's commit) and, on PostgreSQL, queues the NOTIFY that
/// commit delivers. Evaluates to `(transaction, counter)`.
macro_rules! begin_write {
    ($pool:expr, $kind:expr, $channel:expr) => {{
        let mut tx = $pool.begin().await?;
        let counter: i64 = sqlx::query_scalar($crate::store::publish_sql($kind, $channel))
            .fetch_one(&mut *tx)
            .await?;
        (tx, counter)
    }};
}

/// Every provider with its keys (opened with `$store`'s keyring), oldest first, on `$conn` (a
/// connection or transaction).
macro_rules! select_providers {
    ($store:expr, $conn:expr) => {{
        let rows: Vec<$crate::store::model::ProviderRow> = sqlx::query_as(
            "SELECT id, name, kind, base_url, intercept_hosts, enabled, enforce_models, passthrough, record_prompts, created_at, updated_at \
             FROM ai_providers ORDER BY created_at, name",
        )
        .fetch_all(&mut *$conn)
        .await?;
        let keys: Vec<$crate::store::model::KeyRow> =
            sqlx::query_as("SELECT id, provider_id, api_key, created_at FROM ai_provider_keys ORDER BY created_at, id")
                .fetch_all(&mut *$conn)
                .await?;
        $crate::store::providers::attach_keys(rows, keys, &$store.keyring)
    }};
}

pub mod interceptions;
mod models;
mod providers;
mod secrets;
mod tokens;

/// The statement that publishes a change; returns the new counter.
fn publish_sql(kind: Kind, channel: Channel) -> &'static str {
    match (kind, channel) {
        (Kind::Sqlite, _) => "UPDATE aibridge_changes SET counter = counter + 1 WHERE id = 1 RETURNING counter",
        (Kind::Postgres, Channel::Providers) => {
            "WITH c AS (UPDATE aibridge_changes SET counter = counter + 1 WHERE id = 1 RETURNING counter) \
             SELECT c.counter, pg_notify('ai_providers_changed', c.counter::text) FROM c"
        }
        (Kind::Postgres, Channel::Tokens) => {
            "WITH c AS (UPDATE aibridge_changes SET counter = counter + 1 WHERE id = 1 RETURNING counter) \
             SELECT c.counter, pg_notify('agent_tokens_changed', c.counter::text) FROM c"
        }
    }
}

/// The channels a PostgreSQL subscriber listens on.
pub const CHANNELS: [&str; 2] = ["ai_providers_changed", "agent_tokens_changed"];

impl Store {
    /// Open and migrate (the CLI's way in: it needs the database now).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let store = Store::open(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Open without requiring PostgreSQL to be up: its pool connects lazily, so `serve` can start
    /// (tunnels, admin API) while the database is down and catch up when it returns. SQLite is
    /// local and opened at once (created if missing, WAL mode).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let (backend, records) = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL's recommended durability: commits survive a crash of the process; a power
                // loss may lose the last ones, never corrupt the file. Spares an fsync per commit.
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                // A multi-row insert inside a transaction keeps a statement journal; in memory
                // it costs no temporary file (created and unlinked per batch on disk).
                .pragma("temp_store", "memory")
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.clone())
                .await?;
            // Opened on the first record (the CLI never writes any).
            let records = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options);
            (Backend::Sqlite(pool), Backend::Sqlite(records))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(3))
                .connect_lazy(url)?;
            (Backend::Postgres(pool.clone()), Backend::Postgres(pool))
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let (local, _) = broadcast::channel(16);
        Ok(Store {
            backend,
            records,
            local,
            last_committed: Arc::new(AtomicI64::new(-1)),
            keyring: Arc::default(),
            upstream_policy: Arc::default(),
        })
    }

    /// Seal keys written through this handle with `keyring`'s primary key (in clear without
    /// one) and open keys read with any of its keys.
    pub fn with_keyring(mut self, keyring: Keyring) -> Store {
        self.keyring = Arc::new(keyring);
        self
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Accept base URLs whose host `policy` allows (the same policy the upstream dialer uses);
    /// the default allows public hosts only.
    pub fn with_upstream_policy(mut self, policy: EgressPolicy) -> Store {
        self.upstream_policy = Arc::new(policy);
        self
    }

    pub fn upstream_policy(&self) -> &EgressPolicy {
        &self.upstream_policy
    }

    /// Apply pending migrations (PostgreSQL serializes concurrent migrators with a lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Backend::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// The backend's name, for logs.
    /// How many of the embedded migrations this database has not applied yet, read without
    /// writing anything (`serve --check` must not change what it checks).
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        let (migrator, exists_sql) = match self.backend {
            Backend::Sqlite(_) => (
                &SQLITE_MIGRATIONS,
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            ),
            Backend::Postgres(_) => (
                &POSTGRES_MIGRATIONS,
                "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()",
            ),
        };
        let exists: i64 = with_pool!(self, |pool, kind| sqlx::query_scalar(exists_sql)
            .fetch_one(pool)
            .await?);
        let applied: Vec<i64> = if exists > 0 {
            with_pool!(self, |pool, kind| sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success"
            )
            .fetch_all(pool)
            .await?)
        } else {
            Vec::new()
        };
        Ok(migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
            .count())
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The PostgreSQL pool, for the LISTEN connection.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres(pool) => Some(pool),
            Backend::Sqlite(_) => None,
        }
    }

    /// Wakes on every mutation committed through this handle (or a clone of it).
    pub fn subscribe_local(&self) -> broadcast::Receiver<()> {
        self.local.subscribe()
    }

    /// The highest change counter committed through this handle; a router whose snapshot
    /// reflects at least this counter has seen this handle's writes.
    pub fn last_committed(&self) -> i64 {
        self.last_committed.load(Ordering::Acquire)
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

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        let ok: Result<i64, sqlx::Error> =
            with_pool!(self, |pool, kind| sqlx::query_scalar("SELECT 1")
                .fetch_one(pool)
                .await);
        ok.is_ok()
    }

    pub async fn close(&self) {
        with_pool!(self, |pool, kind| pool.close().await);
        with_pool!(@backend self.records, |pool, kind| pool.close().await)
    }

    /// Record a committed change and wake in-process subscribers.
    fn committed(&self, counter: i64) {
        self.last_committed.fetch_max(counter, Ordering::AcqRel);
        // No receiver is fine: nobody in this process is listening.
        let _ = self.local.send(());
    }

    /// Providers, keys, active tokens and the change counter, read in one transaction so the
    /// router never mixes two states.
    pub async fn load_routing(&self) -> Result<RoutingData, StoreError> {
        self.load_routing_within(None).await
    }

    /// [`Store::load_routing`], with PostgreSQL told to give up on any statement that runs
    /// longer than `limit` (`statement_timeout`). A caller that times out client-side only
    /// would leave its session waiting (on a lock, say) and its pool slot taken for as long as
    /// the hang lasts, one more per retry; cancelled by the server, the session comes back.
    pub async fn load_routing_within(
        &self,
        limit: Option<Duration>,
    ) -> Result<RoutingData, StoreError> {
        with_pool!(self, |pool, kind| {
            let mut tx = pool.begin().await?;
            if kind == Kind::Postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .execute(&mut *tx)
                    .await?;
                if let Some(limit) = limit {
                    // SET takes no bind parameters; a whole number of milliseconds is safe.
                    let ms = limit.as_millis().clamp(1, i32::MAX as u128);
                    sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let counter: i64 =
                sqlx::query_scalar("SELECT counter FROM aibridge_changes WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
            let providers = select_providers!(self, tx);
            let tokens: Vec<AgentToken> = sqlx::query_as(tokens::SELECT_ACTIVE)
                .fetch_all(&mut *tx)
                .await?;
            let models: Vec<Model> = sqlx::query_as(
                "SELECT id, provider_id, model, display_name, context_limit, enabled, is_default, created_at, \
                 updated_at FROM ai_models ORDER BY created_at, id",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(RoutingData {
                models,
                providers,
                tokens,
                counter,
            })
        })
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

fn parse_id(id_or_name: &str) -> Option<Uuid> {
    Uuid::parse_str(id_or_name).ok()
}

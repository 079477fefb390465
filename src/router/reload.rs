//! The reloader: the one task that writes the router.
//!
//! It is woken through a [`Wake`] (see [`crate::pubsub`]); all events that arrived before it
//! looks are covered by what it then reads, so a burst of events costs at most two passes.
//! Each pass first asks the store's change log what was committed after the serving snapshot's
//! counter ([`Store::changes_since`]): token changes alone are applied as a delta to the
//! snapshot (time in the number of changed tokens, not in the number stored); anything else — a
//! provider or model write, a hand edit, a pruned log, an unknown notification, a re-established
//! LISTEN — is a full reload, the correctness backstop. Passes are serialized by construction
//! (one task) and every installed snapshot gets the next generation, delta or full. A failed pass
//! keeps the previous snapshot serving and is retried with backoff until it succeeds.

use super::{Router, Snapshot};
use crate::net::upstream::UpstreamFactory;
use crate::shutdown::Shutdown;
use crate::store::{Changes, Store, StoreError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Counters for tests and metrics. `ok` counts installed snapshots (full or delta); a pass that
/// found nothing new installs nothing and counts nowhere.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Full reloads installed.
    pub full: AtomicU64,
    /// Token deltas installed.
    pub deltas: AtomicU64,
}

/// How the subscriber wakes the reloader: "something changed, catch up" or "re-read
/// everything". Any number of wake-ups before the reloader looks collapse into one pass.
#[derive(Default)]
pub struct Wake {
    notify: Notify,
    full: AtomicBool,
}

impl Wake {
    pub fn new() -> Self {
        Self::default()
    }

    /// A change was committed: catch up from the change log (which falls back to a full
    /// reload when it cannot be sure).
    pub fn changed(&self) {
        self.notify.notify_one();
    }

    /// Re-read everything (a notification that names nothing known, a re-established LISTEN,
    /// a failed start).
    pub fn full(&self) {
        self.full.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    fn take_full(&self) -> bool {
        self.full.swap(false, Ordering::AcqRel)
    }
}

/// What one pass installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Full(u64),
    Delta(u64),
    Nothing,
}

pub struct Reloader {
    store: Store,
    router: Arc<Router>,
    upstreams: UpstreamFactory,
    generation: u64,
    migrated: bool,
    stats: Arc<ReloadStats>,
    timeout: Duration,
}

impl Reloader {
    pub fn new(store: Store, router: Arc<Router>, upstreams: UpstreamFactory) -> Self {
        Reloader {
            store,
            router,
            upstreams,
            generation: 0,
            migrated: false,
            stats: Arc::default(),
            timeout: crate::config::DEFAULT_RELOAD_TIMEOUT,
        }
    }

    /// Count a reload that takes longer than `timeout` as failed (default [`crate::config::DEFAULT_RELOAD_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn stats(&self) -> Arc<ReloadStats> {
        self.stats.clone()
    }

    /// Read the store and install a new snapshot. On error the previous snapshot stays.
    pub async fn reload(&mut self) -> Result<u64, StoreError> {
        // A hung query must not stall the only writer of the router forever.
        let result = match tokio::time::timeout(self.timeout, self.try_reload()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        };
        let counter = if result.is_ok() {
            &self.stats.ok
        } else {
            &self.stats.errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Bring the snapshot up to the store's latest change: a token delta when the change log
    /// covers everything since the serving snapshot, a full reload otherwise.
    pub async fn catch_up(&mut self) -> Result<Pass, StoreError> {
        if self.generation == 0 {
            return self.reload().await.map(Pass::Full);
        }
        let from = self.router.load().counter;
        let changes = match tokio::time::timeout(self.timeout, self.store.changes_since(from)).await
        {
            Ok(Ok(changes)) => changes,
            Ok(Err(e)) => return Err(self.failed(e)),
            Err(_) => return Err(self.failed(StoreError::Database(sqlx::Error::PoolTimedOut))),
        };
        match changes {
            Changes::None => Ok(Pass::Nothing),
            Changes::Gap => self.reload().await.map(Pass::Full),
            Changes::Tokens { counter, tokens } => {
                let changed = tokens.len();
                self.generation += 1;
                let snapshot =
                    self.router
                        .load()
                        .with_token_changes(tokens, counter, self.generation);
                tracing::debug!(
                    generation = snapshot.generation,
                    counter,
                    changed,
                    "token changes applied"
                );
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                self.stats.deltas.fetch_add(1, Ordering::Relaxed);
                self.router.install(snapshot);
                Ok(Pass::Delta(self.generation))
            }
        }
    }

    fn failed(&self, e: StoreError) -> StoreError {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        e
    }

    async fn try_reload(&mut self) -> Result<u64, StoreError> {
        if !self.migrated {
            // A database that was down at start is migrated on its first successful contact.
            self.store.migrate().await?;
            self.migrated = true;
        }
        let data = self.store.load_routing_within(Some(self.timeout)).await?;
        self.generation += 1;
        let previous = self.router.snapshot();
        let snapshot = Snapshot::build(data, self.generation, &previous, &self.upstreams);
        tracing::info!(
            generation = snapshot.generation,
            routes = snapshot.host_map().len(),
            tokens = snapshot.tokens().len(),
            counter = snapshot.counter,
            "router reloaded"
        );
        // Counted before it serves, so whoever sees it served sees it counted.
        self.stats.full.fetch_add(1, Ordering::Relaxed);
        self.router.install(snapshot);
        Ok(self.generation)
    }

    /// One pass per wake-up until shutdown, retrying failures with backoff.
    pub async fn run(mut self, wake: Arc<Wake>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notify.notified() => {}
            }
            let mut backoff = BACKOFF_MIN;
            let mut full = wake.take_full();
            loop {
                let result = if full {
                    self.reload().await.map(Pass::Full)
                } else {
                    self.catch_up().await
                };
                let Err(e) = result else { break };
                tracing::warn!(error = %e, retry_in = ?backoff, "router reload failed; previous snapshot keeps serving");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                full |= wake.take_full();
            }
        }
    }
}

//! The reloader: the one task that writes the router.
//!
//! It is woken through a [`Notify`] (see [`crate::pubsub`]); all events that arrived before a
//! reload starts are covered by that reload, so a burst of events costs at most two. Reloads are
//! serialized by construction (one task) and each snapshot gets the next generation. A failed
//! reload keeps the previous snapshot serving and is retried with backoff until it succeeds.

use super::{Router, Snapshot};
use crate::net::upstream::UpstreamFactory;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
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
            counter = snapshot.counter,
            "router reloaded"
        );
        self.router.install(snapshot);
        Ok(self.generation)
    }

    /// Reload on every wake-up until shutdown, retrying failures with backoff.
    pub async fn run(mut self, wake: Arc<Notify>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
            }
            let mut backoff = BACKOFF_MIN;
            while let Err(e) = self.reload().await {
                tracing::warn!(error = %e, retry_in = ?backoff, "router reload failed; previous snapshot keeps serving");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

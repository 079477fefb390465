//! The reloader: the one task that writes the router.
//!
//! It subscribes before its first load, so a change committed during start-up is never missed.
//! Wake-ups (an in-process change, or a poll that sees the store's change counter move, which
//! catches other processes such as the CLI) are coalesced: everything pending when a reload
//! starts is covered by that reload. Reloads are serialized by construction (one task). A failed
//! reload keeps the previous snapshot serving and retries with backoff.

use super::{Router, Snapshot};
use crate::bridge::upstream::UpstreamFactory;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How often the store's change counter is polled (SPEC §6: at most one second).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
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
    local: broadcast::Receiver<()>,
    generation: u64,
    stats: Arc<ReloadStats>,
}

impl Reloader {
    /// Subscribe to changes; call [`Reloader::reload`] once before serving, then [`Reloader::run`].
    pub fn new(store: Store, router: Arc<Router>, upstreams: UpstreamFactory) -> Self {
        let local = store.subscribe_local();
        Reloader {
            store,
            router,
            upstreams,
            local,
            generation: 0,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<ReloadStats> {
        self.stats.clone()
    }

    /// Read the store and install a new snapshot. On error the previous snapshot stays.
    pub async fn reload(&mut self) -> Result<u64, StoreError> {
        // Everything signalled so far is covered by the read below.
        while self.local.try_recv().is_ok() {}
        let data = match self.store.load_routing().await {
            Ok(d) => d,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
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
        self.stats.ok.fetch_add(1, Ordering::Relaxed);
        Ok(self.generation)
    }

    /// Reload whenever the store changes, until shutdown.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = BACKOFF_MIN;
        let mut failing = !self.router.is_ready();
        loop {
            let wake = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.local.recv() => !matches!(r, Err(broadcast::error::RecvError::Closed)),
                _ = poll.tick() => failing || self.counter_moved().await,
            };
            if !wake {
                continue;
            }
            match self.reload().await {
                Ok(_) => {
                    failing = false;
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    failing = true;
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

    async fn counter_moved(&self) -> bool {
        match self.store.change_counter().await {
            Ok(counter) => counter != self.router.load().counter,
            Err(e) => {
                tracing::debug!(error = %e, "change counter poll failed");
                true
            }
        }
    }
}

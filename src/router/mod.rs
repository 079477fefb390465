//! The router: host:port → provider, as one immutable [`Snapshot`] swapped atomically.
//!
//! Readers (one load per CONNECT, one per decrypted request) never block and never see a
//! half-built snapshot; the single writer is the [`reload::Reloader`]. An in-flight request keeps
//! the `Arc<ProviderRoute>` it started with, so a reload never cuts it.

pub mod reload;
pub mod snapshot;
pub mod tokens;

pub use snapshot::{ProviderRoute, ProviderState, Snapshot};
pub use tokens::{TokenEntry, TokenTable};

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The live snapshot plus whether one has ever been loaded from the store.
pub struct Router {
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
    /// The change counter of the installed snapshot, for writers waiting to see their change.
    counter: watch::Sender<i64>,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            ready: AtomicBool::new(false),
            counter: watch::Sender::new(-1),
        }
    }
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current snapshot (one atomic load).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for work that outlives a guard.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Install a new snapshot; readers see it on their next load.
    pub fn install(&self, snapshot: Snapshot) {
        let counter = snapshot.counter;
        self.current.store(Arc::new(snapshot));
        self.ready.store(true, Ordering::Release);
        self.counter.send_replace(counter);
    }

    /// Wait until the serving snapshot reflects change `counter` (or a later one). Returns
    /// whether it did within `timeout`. The admin API uses it so that a write's response means
    /// "this proxy now routes accordingly".
    pub async fn wait_for_counter(&self, counter: i64, timeout: Duration) -> bool {
        let mut rx = self.counter.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= counter))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Changes each time a snapshot is installed: long-lived work (an open WebSocket) re-checks
    /// its token against the new snapshot.
    pub fn installs(&self) -> watch::Receiver<i64> {
        self.counter.subscribe()
    }

    /// Whether a snapshot loaded from the store is serving (readiness).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

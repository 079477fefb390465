//! The router: host:port → provider, as one immutable [`Snapshot`] swapped atomically.
//!
//! Readers (one load per CONNECT, one per decrypted request) never block and never see a
//! half-built snapshot; the single writer is the [`reload::Reloader`]. An in-flight request keeps
//! the `Arc<ProviderRoute>` it started with, so a reload never cuts it.

pub mod reload;
pub mod snapshot;

pub use snapshot::{ProviderRoute, ProviderState, Snapshot, TokenEntry};

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The live snapshot plus whether one has ever been loaded from the store.
pub struct Router {
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            ready: AtomicBool::new(false),
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
        self.current.store(Arc::new(snapshot));
        self.ready.store(true, Ordering::Release);
    }

    /// Whether a snapshot loaded from the store is serving (readiness).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

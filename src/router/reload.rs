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

/// Counters for tests and metrics, and what readiness needs to know about the reloader. `ok`
/// counts installed snapshots (full or delta); a pass that found nothing new installs nothing
/// and counts nowhere.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Full reloads installed.
    pub full: AtomicU64,
    /// Token deltas installed.
    pub deltas: AtomicU64,
    /// A reload panicked and no reload has completed since: nothing can change the router.
    dead: AtomicBool,
    /// Since when (Unix milliseconds) every reload has failed; 0 while the last one succeeded.
    failing_since_ms: AtomicU64,
}

/// Why the router cannot be trusted to follow the store, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// The reloader died (panicked) and its restart has not completed a reload yet.
    ReloaderDown,
    /// Reloads have been failing for longer than allowed.
    FailingTooLong,
}

impl ReloadStats {
    /// Whether reloads can happen and the last good one is recent enough: `Err` while the
    /// reloader is dead, or while every reload for `stale_after` has failed.
    pub fn freshness(&self, stale_after: Duration) -> Result<(), Stale> {
        if self.dead.load(Ordering::Acquire) {
            return Err(Stale::ReloaderDown);
        }
        match self.failing_for() {
            Some(d) if d > stale_after => Err(Stale::FailingTooLong),
            _ => Ok(()),
        }
    }

    /// How long reloads have been failing, if they are.
    pub fn failing_for(&self) -> Option<Duration> {
        match self.failing_since_ms.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }

    /// The store answered and the router follows it (nothing new to install): neither dead nor
    /// failing.
    fn reached_store(&self) {
        self.dead.store(false, Ordering::Release);
        self.failing_since_ms.store(0, Ordering::Release);
    }

    fn completed(&self, ok: bool) {
        self.dead.store(false, Ordering::Release);
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.failing_since_ms.store(0, Ordering::Release);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let _ = self.failing_since_ms.compare_exchange(
                0,
                now_ms().max(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Marks the reloader dead if a reload unwinds (it is dropped while panicking).
struct DeathWatch<'a>(&'a ReloadStats);

impl Drop for DeathWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.dead.store(true, Ordering::Release);
        }
    }
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
    /// Test seam: while set, every reload panics (fault injection, no flag).
    panic_seam: Option<Arc<AtomicBool>>,
}

impl Reloader {
    /// Generations continue from the router's: a reloader restarted after a panic never hands
    /// out a generation already served.
    pub fn new(store: Store, router: Arc<Router>, upstreams: UpstreamFactory) -> Self {
        Reloader {
            store,
            generation: router.load().generation,
            router,
            upstreams,
            migrated: false,
            stats: Arc::default(),
            timeout: crate::config::DEFAULT_RELOAD_TIMEOUT,
            panic_seam: None,
        }
    }

    /// Share counters and health with an earlier reloader (a restart after a panic).
    pub fn with_stats(mut self, stats: Arc<ReloadStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Test seam: every reload panics while `flag` is set.
    pub fn with_panic_seam(mut self, flag: Option<Arc<AtomicBool>>) -> Self {
        self.panic_seam = flag;
        self
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
        let stats = self.stats.clone();
        let _watch = DeathWatch(&stats);
        if self
            .panic_seam
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
        {
            injected_panic();
        }
        // A hung query must not stall the only writer of the router forever.
        let result = match tokio::time::timeout(self.timeout, self.try_reload()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        };
        stats.completed(result.is_ok());
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
            Changes::None => {
                self.stats.reached_store();
                Ok(Pass::Nothing)
            }
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
                self.stats.deltas.fetch_add(1, Ordering::Relaxed);
                self.stats.completed(true);
                self.router.install(snapshot);
                Ok(Pass::Delta(self.generation))
            }
        }
    }

    fn failed(&self, e: StoreError) -> StoreError {
        self.stats.completed(false);
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

/// Fault injection for tests (a reloader that dies); the seam has no flag.
#[allow(clippy::panic)]
fn injected_panic() -> ! {
    panic!("injected fault: reload panic")
}

//! The interception record writer: a bounded queue in front of batched inserts.
//!
//! The request path only `try_send`s (never waits on the database, never wakes a thread unless
//! the writer is idle). One background task drains the queue in batches sized by time: a commit
//! starts at most once per [`COMMIT_INTERVAL`] (sooner only when [`BATCH`] records wait), so
//! under load each commit carries every record of its interval. A commit's cost is mostly the
//! pages it touches (the table's and each index's newest leaf pages, written to SQLite's WAL
//! and later checkpointed), so rows per commit is what sets the database I/O per request:
//! measured on the real schema with SQLite, 50 rows per commit cost ~1.9 page writes and reads
//! per row, 500 rows ~0.7. After an idle spell the first record also waits [`LINGER`]: a
//! commit right away would land just as that client's next request starts (an agent's turns
//! follow each other) and, on a busy core, delay its first bytes by the commit's few ms.
//!
//! When the database fails, the batch is held and retried with backoff while new records queue
//! up behind it. When the queue is full a record is dropped — counted and logged, never
//! silently. On shutdown the queue is drained and flushed.

use crate::metrics::Metrics;
use crate::otlp::Tracer;
use crate::shutdown::Shutdown;
use crate::store::{Interception, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// Records waiting for the database, at most.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Records in one commit, at most; a full batch is committed without waiting for the interval.
pub const BATCH: usize = 2_000;
/// Commits start at most this often: how long a record can wait before its commit starts, and
/// what batches records under load.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// How long the first record after an idle spell waits for company before its commit.
pub const LINGER: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct RecorderStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Interception>,
    /// The process's shutdown scope: a request dropped by its cut is recorded as such.
    scope: Shutdown,
    stats: Arc<RecorderStats>,
    metrics: Arc<Metrics>,
    /// Finished requests as they are queued (without prompt and tool calls), for the admin
    /// console's live feed; costs nothing while nobody listens.
    live: broadcast::Sender<Arc<Interception>>,
    /// Where finished requests' spans go (`--otlp-endpoint`).
    tracer: Option<Tracer>,
}

/// Finished requests the live feed holds for a slow listener before it reports a gap.
const LIVE_BACKLOG: usize = 256;

impl Recorder {
    /// Export a span for every finished request that carries a trace context.
    pub fn with_tracer(mut self, tracer: Option<Tracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// The span exporter, when traces are exported.
    pub fn tracer(&self) -> Option<&Tracer> {
        self.tracer.as_ref()
    }

    /// Start the writer. It runs until every `Recorder` clone is dropped, then flushes and ends.
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        scope: Shutdown,
    ) -> (Recorder, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(RecorderStats::default());
        let task = tokio::spawn(write_loop(store, rx, stats.clone()));
        (
            Recorder {
                tx,
                scope,
                stats,
                metrics,
                live: broadcast::Sender::new(LIVE_BACKLOG),
                tracer: None,
            },
            task,
        )
    }

    /// A bridged request to `provider` started; [`Recorder::record`] ends it.
    pub fn started(&self, provider: &str) {
        self.metrics
            .inflight_requests
            .with_label_values(&[provider])
            .inc();
    }

    /// Account a finished request and queue its record without waiting. `model_label` is the
    /// record's model if the provider configures it (metric labels come from that bounded set;
    /// anything else counts as `other`).
    pub fn record(&self, mut r: Interception, model_label: Option<&str>) {
        self.metrics
            .inflight_requests
            .with_label_values(&[r.provider.as_str()])
            .dec();
        super::observe::observe(&self.metrics, &r, model_label);
        if self.live.receiver_count() > 0 {
            // The summary is cloned without the (possibly large) prompt and tool calls.
            let prompt = r.prompt.take();
            let tool_calls = std::mem::take(&mut r.tool_calls);
            let _ = self.live.send(Arc::new(r.clone()));
            (r.prompt, r.tool_calls) = (prompt, tool_calls);
        }
        if let (Some(tracer), Some(_)) = (&self.tracer, &r.trace) {
            tracer.emit(super::observe::span(&r));
        }
        if let Err(e) = self.tx.try_send(r) {
            self.metrics.interceptions_dropped_total.inc();
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let rec = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            tracing::warn!(request_id = %rec.request_id, dropped_total = n, "interception record dropped: queue full");
        }
    }

    /// Why a request that ended without its answer did: the client left, or the shutdown's
    /// grace period ran out.
    pub fn cancel_reason(&self) -> &'static str {
        if self.scope.is_cut() {
            "shutdown"
        } else {
            "client_cancelled"
        }
    }

    /// Follow finished requests as they are recorded (summaries: no prompt, no tool calls).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Interception>> {
        self.live.subscribe()
    }

    pub fn stats(&self) -> &Arc<RecorderStats> {
        &self.stats
    }
}

async fn write_loop(store: Store, mut rx: mpsc::Receiver<Interception>, stats: Arc<RecorderStats>) {
    let mut pending: Vec<Interception> = Vec::with_capacity(BATCH);
    let mut backoff = BACKOFF_MIN;
    let mut open = true;
    // When the last commit started: the next one waits out the rest of its interval.
    let mut last_commit: Option<tokio::time::Instant> = None;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => pending.push(r),
                None => return,
            }
            if rx.len() + 1 < BATCH {
                let lingered = tokio::time::Instant::now() + LINGER;
                let due = last_commit.map_or(lingered, |t| (t + COMMIT_INTERVAL).max(lingered));
                tokio::time::sleep_until(due).await;
            }
        }
        while pending.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => pending.push(r),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        last_commit = Some(tokio::time::Instant::now());
        match store.insert_interceptions(&pending).await {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                pending.clear();
                backoff = BACKOFF_MIN;
                if !open && rx.is_empty() {
                    return;
                }
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, held = pending.len(), retry_in = ?backoff, "interception records not written; holding them");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

//! One shutdown scope for every task the process spawns.
//!
//! Connection tasks, post-upgrade tunnel and MITM tasks, the HTTP/2 stream tasks of intercepted
//! connections (through [`ShutdownExecutor`]) and background loops are all spawned through
//! [`Shutdown::spawn`]. Stopping happens in two steps:
//!
//! 1. **drain** ([`Shutdown::cancelled`]): listeners stop accepting, hyper connections finish
//!    the request in flight and close, background loops return;
//! 2. **cut**, once the grace period is over: every task still alive is dropped where it
//!    stands. Dropping is what ends a stream cleanly for our books — the response body's drop
//!    writes its interception record — so records are complete before the writer flushes.
//!
//! A task spawned any other way would outlive the drain and be cut without its record.
//!
//! A task that panics dies alone (tokio catches the unwind); the scope counts it in
//! `task_panics_total` so a bug that kills connections is visible, not silent.

use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long cut tasks get to unwind (drop their state, queue their records).
const CUT_UNWIND: Duration = Duration::from_secs(2);
/// First and longest pause before a panicked background loop is started again.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// A loop that ran this long before panicking starts again from the shortest pause.
const RESTART_RESET: Duration = Duration::from_secs(60);

/// Cancellation signals plus the set of live tasks.
#[derive(Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    cut: CancellationToken,
    tracker: TaskTracker,
    panics: Option<prometheus::IntCounter>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count the tasks of this scope that panic in `counter`.
    pub fn count_panics(mut self, counter: prometheus::IntCounter) -> Self {
        self.panics = Some(counter);
        self
    }

    /// Spawn a task that belongs to this scope: it runs until it ends or the scope is cut.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let cut = self.cut.clone();
        let panics = self.panics.clone();
        // Unwind safety: a panicking task's state is dropped with it, never observed again.
        let task = AssertUnwindSafe(task).catch_unwind();
        self.tracker.spawn(async move {
            tokio::select! {
                r = task => {
                    if r.is_err() {
                        tracing::error!("a task panicked (a bug); it was dropped alone");
                        if let Some(c) = panics {
                            c.inc();
                        }
                    }
                }
                _ = cut.cancelled() => {}
            }
        })
    }

    /// Spawn a task that is told of the cut instead of being dropped by it: work that must end
    /// in words (a WebSocket's close frame, the records of what it was doing) gets the cut
    /// token, and [`CUT_UNWIND`] after the cut to finish before it is dropped anyway.
    pub fn spawn_until_cut<F, Fut>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let cut = self.cut.clone();
        let panics = self.panics.clone();
        let task = AssertUnwindSafe(task(cut.clone())).catch_unwind();
        self.tracker.spawn(async move {
            let deadline = async {
                cut.cancelled().await;
                tokio::time::sleep(CUT_UNWIND).await;
            };
            tokio::select! {
                r = task => {
                    if r.is_err() {
                        tracing::error!("a task panicked (a bug); it was dropped alone");
                        if let Some(c) = panics {
                            c.inc();
                        }
                    }
                }
                _ = deadline => {}
            }
        })
    }

    /// Run a background loop for the life of the scope, building a fresh one with `make` after
    /// each panic (with backoff, counted in `restarts`): a loop that died must not leave the
    /// process frozen — the router never reloaded again — while it keeps answering probes.
    /// `make` gets the restart number (0 first), so a restarted loop can catch up on what the
    /// dead one may have swallowed. A loop that returns is done.
    pub fn spawn_supervised<F, Fut>(
        &self,
        name: &'static str,
        restarts: prometheus::IntCounter,
        mut make: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(u64) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let scope = self.clone();
        self.spawn(async move {
            let mut backoff = RESTART_MIN;
            for restart in 0u64.. {
                let started = tokio::time::Instant::now();
                // Unwind safety: the dead loop's state is dropped; the next one is built anew.
                if AssertUnwindSafe(make(restart)).catch_unwind().await.is_ok() {
                    return;
                }
                if let Some(c) = &scope.panics {
                    c.inc();
                }
                if started.elapsed() > RESTART_RESET {
                    backoff = RESTART_MIN;
                }
                tracing::error!(task = name, retry_in = ?backoff, "a background loop panicked (a bug); restarting it");
                tokio::select! {
                    _ = scope.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                restarts.inc();
                backoff = (backoff * 2).min(RESTART_MAX);
            }
        })
    }

    /// Resolves when shutdown has begun: listeners stop accepting and loops return.
    pub async fn cancelled(&self) {
        self.drain.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// The cut signal, for work that runs outside the scope's tasks (the admin listener's
    /// connections are axum's) to end itself when the grace runs out.
    pub fn cut_token(&self) -> CancellationToken {
        self.cut.clone()
    }

    /// Whether the grace period ran out and remaining work is being dropped.
    pub fn is_cut(&self) -> bool {
        self.cut.is_cancelled()
    }

    /// Begin the drain and wait up to `grace` for every task to finish; then cut what is left
    /// and give it a moment to unwind. Returns how many tasks had to be cut (0 = clean).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.drain.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let cut = self.tracker.len();
        self.cut.cancel();
        let _ = tokio::time::timeout(CUT_UNWIND, self.tracker.wait()).await;
        cut
    }

    /// Number of tasks still alive (for tests and metrics).
    pub fn task_count(&self) -> usize {
        self.tracker.len()
    }
}

/// A hyper executor spawning into the shutdown scope (HTTP/2 stream tasks of intercepted
/// connections), so their responses are drained and cut with everything else.
#[derive(Clone)]
pub struct ShutdownExecutor(pub Shutdown);

impl<F> hyper::rt::Executor<F> for ShutdownExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_short_tasks_and_cut_drops_long_ones() {
        let s = Shutdown::new();
        let (short_tx, short_rx) = tokio::sync::oneshot::channel::<()>();
        let (long_tx, long_rx) = tokio::sync::oneshot::channel::<()>();
        s.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _keep = short_tx;
        });
        s.spawn(async move {
            let _keep = long_tx;
            std::future::pending::<()>().await;
        });
        assert_eq!(s.shutdown(Duration::from_millis(300)).await, 1);
        assert!(s.is_cut());
        assert_eq!(s.task_count(), 0);
        // Both senders are gone: the short one finished, the long one was dropped by the cut.
        assert!(short_rx.await.is_err());
        assert!(long_rx.await.is_err());
    }

    #[tokio::test]
    async fn a_panicking_task_is_counted_and_the_scope_lives_on() {
        let counter = prometheus::IntCounter::new("p", "p").unwrap();
        let s = Shutdown::new().count_panics(counter.clone());
        let joined = s.spawn(async {
            if counter_is_zero() {
                panic!("injected");
            }
        });
        assert!(joined.await.is_ok(), "the unwind stops at the scope");
        assert_eq!(counter.get(), 1);
        assert!(s.spawn(async {}).await.is_ok());
        assert_eq!(s.shutdown(Duration::from_secs(1)).await, 0);
    }

    fn counter_is_zero() -> bool {
        true
    }

    #[tokio::test]
    async fn a_supervised_loop_is_restarted_after_a_panic() {
        let restarts = prometheus::IntCounter::new("r", "r").unwrap();
        let s = Shutdown::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
        let mut tx = Some(tx);
        s.spawn_supervised("test", restarts.clone(), move |n| {
            let tx = if n >= 2 { tx.take() } else { None };
            async move {
                match tx {
                    Some(tx) => {
                        let _ = tx.send(n);
                    }
                    None => panic!("injected"),
                }
            }
        });
        assert_eq!(rx.await.unwrap(), 2, "two panics, then the third loop runs");
        assert_eq!(restarts.get(), 2);
        assert_eq!(s.shutdown(Duration::from_secs(1)).await, 0);
    }

    #[tokio::test]
    async fn a_clean_drain_cuts_nothing() {
        let s = Shutdown::new();
        let watcher = s.clone();
        s.spawn(async move { watcher.cancelled().await });
        assert_eq!(s.shutdown(Duration::from_secs(1)).await, 0);
        assert!(!s.is_cut());
    }
}

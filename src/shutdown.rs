//! One shutdown scope for every task the process spawns.
//!
//! Connection tasks, post-upgrade tunnel and MITM tasks and background loops are all spawned
//! through [`Shutdown::spawn`], so that stopping the process can first stop accepting, then wait
//! for (or cut) everything that is still running. A task spawned any other way would outlive
//! the drain and be cut without notice.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancellation signal plus the set of live tasks.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawn a task that belongs to this scope.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Resolves when shutdown has begun: listeners stop accepting and loops return.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Begin shutdown, then wait up to `grace` for every task to finish. Returns whether all
    /// tasks finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Number of tasks still alive (for tests and metrics).
    pub fn task_count(&self) -> usize {
        self.tracker.len()
    }
}

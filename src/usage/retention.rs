//! Retention (`--retention`, default 90 days): a background job deletes interception records
//! older than the period, with their prompts and tool calls.
//!
//! It runs every few minutes, deletes in bounded batches (each a short transaction, with a
//! pause between them, so a busy table is never locked for long), and on PostgreSQL only one
//! replica runs it at a time (an advisory lock; the others skip their turn). Deleted records
//! are counted in `interceptions_deleted_total`, runs in `retention_runs_total{result}`.

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::interceptions::Purge;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// Records deleted per statement.
const BATCH: i64 = 1000;
/// Pause between two batches, so writers get the table in between.
const PAUSE: Duration = Duration::from_millis(20);

/// Delete old records every `interval` until shutdown. `retention` zero keeps everything (the
/// task is not started).
pub async fn run(
    store: Store,
    retention: Duration,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(age) = time::Duration::try_from(retention) else {
            return;
        };
        let cutoff = time::OffsetDateTime::now_utc() - age;
        let run = store.purge_interceptions(cutoff, BATCH, PAUSE);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = run => r,
        };
        let result = match outcome {
            Ok(Purge::Deleted(n)) => {
                metrics.interceptions_deleted_total.inc_by(n);
                if n > 0 {
                    tracing::info!(deleted = n, retention = ?retention, "old interception records deleted");
                }
                "ok"
            }
            Ok(Purge::Skipped) => "skipped",
            Err(e) => {
                tracing::warn!(error = %e, "retention run failed; retrying at the next interval");
                "error"
            }
        };
        metrics
            .retention_runs_total
            .with_label_values(&[result])
            .inc();
    }
}

//! Change notifications: whatever the backend, they end as one wake-up of the reloader.
//!
//! PostgreSQL: `LISTEN` on a dedicated connection. Loss is detected (`try_recv` returns `None`
//! when the connection drops, where plain `recv` would reconnect silently and hide the gap);
//! the subscriber reconnects with backoff, re-subscribes, and only then asks for a full reload,
//! so a change committed while it was away is never missed. This process's own writes wake the
//! reloader in-process too, without waiting for their NOTIFY. SQLite: in-process notifications
//! from this process's writes, plus a poll of the change counter that catches other processes
//! (the CLI).
//!
//! Payloads are hints. Our writes send the change counter: one the serving snapshot already
//! reflects is skipped, a newer one wakes the reloader to catch up from the change log (which
//! itself falls back to a full reload when the log does not cover the change). Anything else is
//! a change we cannot name, and asks for a full reload.
//!
//! The wake-up is a [`Wake`]: any number of events before the reloader looks collapse into
//! one pass, which is what coalesces a burst into at most two.

use crate::router::reload::Wake;
use crate::router::Router;
use crate::shutdown::Shutdown;
use crate::store::{Store, CHANNELS};
use sqlx::postgres::{PgListener, PgPool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How often SQLite's change counter is polled (SPEC §6: at most one second).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// PostgreSQL's counter poll, a safety net behind LISTEN.
pub const POSTGRES_POLL_INTERVAL: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A live subscription to store changes.
pub struct Subscription {
    source: Source,
    live: Arc<AtomicBool>,
}

enum Source {
    Local {
        rx: broadcast::Receiver<()>,
        store: Store,
    },
    Postgres {
        listener: Option<PgListener>,
        local: broadcast::Receiver<()>,
        pool: PgPool,
        store: Store,
    },
}

impl Subscription {
    /// Subscribe before the first load. On PostgreSQL one LISTEN attempt is made now; if the
    /// database is down, [`Subscription::run`] keeps trying and wakes the reloader once it is in.
    pub async fn new(store: &Store) -> Subscription {
        match store.postgres_pool() {
            None => Subscription {
                source: Source::Local {
                    rx: store.subscribe_local(),
                    store: store.clone(),
                },
                live: Arc::new(AtomicBool::new(true)),
            },
            Some(pool) => {
                let listener = match listen(pool).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN failed at start; retrying in the background");
                        None
                    }
                };
                let live = Arc::new(AtomicBool::new(listener.is_some()));
                Subscription {
                    source: Source::Postgres {
                        listener,
                        local: store.subscribe_local(),
                        pool: pool.clone(),
                        store: store.clone(),
                    },
                    live,
                }
            }
        }
    }

    /// Whether notifications are flowing (part of readiness).
    pub fn live(&self) -> Arc<AtomicBool> {
        self.live.clone()
    }

    /// Report through `live`, the flag readiness already watches: a subscription started again
    /// after its loop panicked takes over the dead one's flag.
    pub fn with_live(mut self, live: Arc<AtomicBool>) -> Subscription {
        live.store(self.live.load(Ordering::Acquire), Ordering::Release);
        self.live = live;
        self
    }

    /// Wake `wake` on every change until shutdown. If the loop panics, `live` turns false
    /// (readiness drops) until a new subscription takes over.
    pub async fn run(self, router: Arc<Router>, wake: Arc<Wake>, shutdown: Shutdown) {
        let _watch = DeathWatch(self.live.clone());
        match self.source {
            Source::Local { rx, store } => run_local(rx, store, router, wake, shutdown).await,
            Source::Postgres {
                listener,
                local,
                pool,
                store,
            } => {
                let postgres = Postgres {
                    pool,
                    store,
                    router,
                    live: self.live,
                    wake,
                };
                postgres.run(listener, local, shutdown).await
            }
        }
    }
}

/// Clears the live flag when the subscription loop unwinds.
struct DeathWatch(Arc<AtomicBool>);

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(false, Ordering::Release);
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(CHANNELS).await?;
    Ok(listener)
}

async fn run_local(
    mut rx: broadcast::Receiver<()>,
    store: Store,
    router: Arc<Router>,
    wake: Arc<Wake>,
    shutdown: Shutdown,
) {
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The counter this poller last asked a reload for: a counter the reloader is already on
    // (woken in-process) is not asked for twice.
    let mut asked = i64::MIN;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.recv() => match r {
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => wake.changed(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = poll.tick() => match store.change_counter().await {
                Ok(counter) if counter != router.load().counter && counter != asked => {
                    asked = counter;
                    wake.changed();
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "change counter poll failed"),
            },
        }
    }
}

/// What the PostgreSQL subscriber works with.
struct Postgres {
    pool: PgPool,
    store: Store,
    router: Arc<Router>,
    live: Arc<AtomicBool>,
    wake: Arc<Wake>,
}

impl Postgres {
    async fn run(
        self,
        mut listener: Option<PgListener>,
        mut local: broadcast::Receiver<()>,
        shutdown: Shutdown,
    ) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut current = match listener.take() {
                Some(l) => l,
                None => match listen(&self.pool).await {
                    Ok(l) => {
                        tracing::info!("LISTEN connection (re)established; reloading in full");
                        self.live.store(true, Ordering::Release);
                        backoff = BACKOFF_MIN;
                        self.wake.full();
                        l
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "LISTEN connection failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            // Safety net: a LISTEN connection silently dropped by the network (no FIN, no RST)
            // looks alive forever; a slow poll of the change counter catches whatever it missed.
            let mut poll = tokio::time::interval(POSTGRES_POLL_INTERVAL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = poll.tick() => {
                        if let Ok(counter) = self.store.change_counter().await {
                            if counter > self.router.load().counter {
                                self.wake.changed();
                            }
                        }
                    }
                    r = local.recv() => match r {
                        Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => self.wake.changed(),
                        Err(broadcast::error::RecvError::Closed) => {}
                    },
                    r = current.try_recv() => match r {
                        Ok(Some(n)) => self.hint(n.payload()),
                        Ok(None) | Err(_) => {
                            tracing::warn!("LISTEN connection lost; reconnecting");
                            self.live.store(false, Ordering::Release);
                            break;
                        }
                    },
                }
            }
        }
    }

    /// Act on one notification's payload (see the module doc).
    fn hint(&self, payload: &str) {
        match payload.parse::<i64>() {
            Ok(counter) if counter <= self.router.load().counter => {}
            Ok(_) => self.wake.changed(),
            Err(_) => self.wake.full(),
        }
    }
}

//! What the console watches: `GET /api/v1/status` (readiness, the serving router, reload and
//! record counters) and `GET /api/v1/events`, a server-sent event stream of
//!
//! - `status`: the status document, on connect and whenever a counter in it moves (checked
//!   every [`STATUS_EVERY`]);
//! - `reload`: a new router snapshot was installed (generation, when, change counter);
//! - `interception`: a finished request, as `/interceptions` lists it (no prompt, no tool calls);
//! - `lagged`: the listener fell behind and missed some interceptions (refetch the table).
//!
//! The stream follows the router's install signal and the recorder's feed, both of which outlive
//! any one snapshot, so reloads never end it; it ends at shutdown. `EventSource` reconnects by
//! itself after a network cut.

use super::views::{rfc3339, InterceptionView};
use super::AdminState;
use crate::store::Interception;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// How often the stream looks at the counters behind `status`.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The status document: what the overview shows at the top.
fn status(state: &AdminState) -> Value {
    let snapshot = state.router.load();
    let loaded = state.router.is_ready();
    let subscribed = state.subscription_live.load(Ordering::Acquire);
    let records = state.recorder.stats();
    json!({
        "ready": loaded && subscribed,
        "router_loaded": loaded,
        "subscribed": subscribed,
        "generation": snapshot.generation,
        "loaded_at": (snapshot.generation > 0).then(|| rfc3339(snapshot.loaded_at)),
        "reloads": {
            "ok": state.reload_stats.ok.load(Ordering::Relaxed),
            "error": state.reload_stats.errors.load(Ordering::Relaxed),
        },
        "records": {
            "written": records.written.load(Ordering::Relaxed),
            "dropped": records.dropped.load(Ordering::Relaxed),
            "write_errors": records.write_errors.load(Ordering::Relaxed),
        },
    })
}

/// `GET /api/v1/status`.
pub async fn get_status(State(state): State<Arc<AdminState>>) -> Json<Value> {
    Json(status(&state))
}

/// One listener's position in the feeds.
struct Feed {
    state: Arc<AdminState>,
    records: broadcast::Receiver<Arc<Interception>>,
    installs: watch::Receiver<i64>,
    tick: tokio::time::Interval,
    last_status: Option<Value>,
}

impl Feed {
    /// The next event to send, or `None` when the stream should end (shutdown).
    async fn next(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return None,
                changed = self.installs.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let snapshot = self.state.router.load();
                    let body = json!({
                        "generation": snapshot.generation,
                        "loaded_at": rfc3339(snapshot.loaded_at),
                        "counter": snapshot.counter,
                    });
                    return Some(event("reload", &body));
                }
                record = self.records.recv() => match record {
                    Ok(r) => {
                        let view = InterceptionView::from(Interception::clone(&r));
                        return Some(event("interception", &view));
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Some(event("lagged", &json!({ "missed": missed })));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.tick.tick() => {
                    let now = status(&self.state);
                    if self.last_status.as_ref() != Some(&now) {
                        let e = event("status", &now);
                        self.last_status = Some(now);
                        return Some(e);
                    }
                }
            }
        }
    }
}

fn event(name: &str, body: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(body)
        .unwrap_or_else(|_| Event::default().event(name).data("{}"))
}

/// `GET /api/v1/events`: the live feed (see the module docs).
pub async fn events(
    State(state): State<Arc<AdminState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        records: state.recorder.subscribe(),
        installs: state.router.installs(),
        tick,
        last_status: None,
        state,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        feed.next().await.map(|e| (Ok(e), feed))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

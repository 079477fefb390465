//! The admin listener: the REST API under `/api/v1` (bearer token, or the console's session
//! cookie), plus `/healthz` and `/ca.pem` (open), `/readyz` (token, like the API), the browser
//! console at `/` ([`console`], sign-in at `/api/session`, live feed at `/api/v1/events`) and
//! the direct bridge under `/bridge/` (agent tokens; see [`bridge`]).
//!
//! Writes go to the store, which publishes them; the handler then waits (briefly, bounded) until
//! this proxy's router serves the change, so a `2xx` means "this replica routes accordingly".
//! Other replicas converge within one NOTIFY round trip. Keys are only ever shown masked and a
//! token only in its creation response.

mod auth;
pub mod bridge;
pub mod console;
mod error;
pub mod keys;
mod live;
mod models;
mod providers;
pub mod session;
pub mod tokens;
mod usage;
pub mod views;

pub use auth::load_or_create as load_or_create_admin_token;
pub use error::ApiError;

use crate::router::Router;
use crate::shutdown::Shutdown;
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::Json;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a write waits for this proxy's router to apply it before answering anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the handlers share.
pub struct AdminState {
    pub store: Store,
    pub router: Arc<Router>,
    pub ca_pem: String,
    pub admin_token_hash: [u8; 32],
    /// Whether change notifications are flowing.
    pub subscription_live: Arc<AtomicBool>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub leaves: Arc<crate::ca::LeafCache>,
    pub reload_stats: Arc<crate::router::reload::ReloadStats>,
    /// `/readyz` fails once every reload has failed for this long.
    pub reload_stale_after: Duration,
    /// Whether the proxy's accept loop runs (`/healthz`).
    pub serving: Arc<AtomicBool>,
    /// For the direct bridge: auth mode, limits and timeouts, where records go, the shutdown.
    pub proxy: crate::config::ProxyConfig,
    pub recorder: crate::usage::recorder::Recorder,
    pub shutdown: Shutdown,
    /// The console's signed-in sessions.
    pub sessions: session::Sessions,
}

impl AdminState {
    /// Wait until this proxy serves the store's latest write made through this process.
    async fn settle(&self) {
        let counter = self.store.last_committed();
        if !self.router.wait_for_counter(counter, SETTLE_TIMEOUT).await {
            tracing::warn!(counter, "write committed but not yet applied by the router");
        }
    }
}

/// The admin API's routes.
pub fn routes(state: Arc<AdminState>) -> axum::Router {
    let api = axum::Router::new()
        .route("/providers", get(providers::list).post(providers::create))
        .route(
            "/providers/{p}",
            get(providers::get)
                .patch(providers::update)
                .delete(providers::remove),
        )
        .route("/providers/{p}/keys", post(providers::add_key))
        .route("/providers/{p}/keys/match", post(keys::matches))
        .route(
            "/providers/{p}/keys/{key_id}",
            delete(providers::remove_key),
        )
        .route("/models", get(models::list).post(models::create))
        .route(
            "/models/{id}",
            get(models::get)
                .patch(models::update)
                .delete(models::remove),
        )
        .route(
            "/default-model",
            get(models::get_default).put(models::put_default),
        )
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens:batch", post(tokens::create_batch))
        .route("/tokens/{id}", delete(tokens::revoke))
        .route("/router", get(router_view))
        .route("/interceptions", get(usage::list))
        .route("/interceptions/{id}", get(usage::get))
        .route("/usage", get(usage::usage))
        .route("/status", get(live::get_status))
        .route("/events", get(live::events));
    let protected = axum::Router::new()
        .nest("/api/v1", api)
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let own = axum::Router::new()
        .merge(protected)
        .merge(console::routes())
        .route(
            "/api/session",
            get(session::current)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .route("/healthz", get(healthz))
        .route("/ca.pem", get(ca_pem))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn(console::security_headers));
    axum::Router::new()
        .merge(own)
        // The direct bridge authenticates agents itself (their token as the API key); its
        // answers are the provider's, without the console's headers.
        .route("/bridge/{*rest}", any(bridge::handle))
        .with_state(state)
}

/// Serve the admin API until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: Shutdown) {
    let app = routes(state);
    let stop = shutdown.clone();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// Alive unless the process cannot serve at all (its proxy accept loop is gone): what a
/// liveness probe restarts for. A database outage or a stale router is readiness, not this.
async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    if state.serving.load(Ordering::Acquire) {
        (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
    } else {
        let body = json!({ "status": "down", "reason": "the proxy listener is not accepting" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Ready once a snapshot loaded from the store is serving, notifications flow, the reloader
/// is alive and reloads have not been failing for longer than `reload_stale_after`: a router
/// that can no longer follow the store is taken out of the load balancer.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    use crate::router::reload::Stale;
    let loaded = state.router.is_ready();
    let subscribed = state.subscription_live.load(Ordering::Acquire);
    let fresh = state.reload_stats.freshness(state.reload_stale_after);
    let ready = loaded && subscribed && fresh.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "router_loaded": loaded,
        "subscribed": subscribed,
        "reloader_alive": fresh != Err(Stale::ReloaderDown),
        "reloads_failing_seconds": state.reload_stats.failing_for().map(|d| d.as_secs()),
        "generation": state.router.load().generation,
    });
    (status, Json(body)).into_response()
}

/// Prometheus text. Counters kept elsewhere as atomics, and snapshot state, are read now.
async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let m = &state.metrics;
    let sync = |counter: &prometheus::IntCounter, now: u64| {
        let seen = counter.get();
        if now > seen {
            counter.inc_by(now - seen);
        }
    };
    let cache = state.leaves.stats();
    sync(&m.cert_cache_hits_total, cache.hits.load(Ordering::Relaxed));
    sync(
        &m.cert_cache_misses_total,
        cache.mints.load(Ordering::Relaxed) + cache.mint_errors.load(Ordering::Relaxed),
    );
    sync(
        &m.reloads_total.with_label_values(&["ok"]),
        state.reload_stats.ok.load(Ordering::Relaxed),
    );
    sync(
        &m.reloads_total.with_label_values(&["error"]),
        state.reload_stats.errors.load(Ordering::Relaxed),
    );
    let snapshot = state.router.snapshot();
    m.router_generation.set(snapshot.generation as i64);
    if snapshot.generation > 0 {
        m.last_reload_success_timestamp_seconds
            .set(snapshot.loaded_at.unix_timestamp() as f64);
    }
    m.provider_info.reset();
    let kinds: std::collections::HashMap<uuid::Uuid, &str> = snapshot
        .host_routes()
        .map(|r| (r.id, r.kind.as_str()))
        .collect();
    for p in snapshot.providers.iter() {
        let kind = kinds.get(&p.id).copied().unwrap_or("unknown");
        m.provider_info
            .with_label_values(&[p.name.as_str(), kind, p.status])
            .set(1);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response()
}

async fn ca_pem(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca_pem.clone(),
    )
        .into_response()
}

async fn router_view(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let snapshot = state.router.load();
    let hosts: serde_json::Map<String, serde_json::Value> = snapshot
        .host_map()
        .into_iter()
        .map(|(h, p)| (h, serde_json::Value::String(p)))
        .collect();
    Json(json!({
        "generation": snapshot.generation,
        "loaded_at": views::rfc3339(snapshot.loaded_at),
        "counter": snapshot.counter,
        "hosts": hosts,
        "providers": snapshot.providers,
    }))
}

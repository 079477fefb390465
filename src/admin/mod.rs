//! The admin listener: the REST API under `/api/v1` (bearer token), plus `/healthz` and
//! `/ca.pem` (open) and `/readyz` (token, like the API).
//!
//! Writes go to the store, which publishes them; the handler then waits (briefly, bounded) until
//! this proxy's router serves the change, so a `2xx` means "this replica routes accordingly".
//! Other replicas converge within one NOTIFY round trip. Keys are only ever shown masked and a
//! token only in its creation response.

mod auth;
mod error;
mod models;
mod providers;
mod tokens;
mod usage;
mod views;

pub use auth::load_or_create as load_or_create_admin_token;
pub use error::ApiError;

use crate::router::Router;
use crate::shutdown::Shutdown;
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
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
        .route("/tokens/{id}", delete(tokens::revoke))
        .route("/router", get(router_view))
        .route("/interceptions", get(usage::list))
        .route("/usage", get(usage::usage));
    let protected = axum::Router::new()
        .nest("/api/v1", api)
        .route("/readyz", get(readyz))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    axum::Router::new()
        .merge(protected)
        .route("/healthz", get(healthz))
        .route("/ca.pem", get(ca_pem))
        .fallback(|| async { ApiError::not_found("route") })
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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready once a snapshot loaded from the store is serving and notifications flow.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let loaded = state.router.is_ready();
    let subscribed = state.subscription_live.load(Ordering::Acquire);
    let status = if loaded && subscribed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": loaded && subscribed,
        "router_loaded": loaded,
        "subscribed": subscribed,
        "generation": state.router.load().generation,
    });
    (status, Json(body)).into_response()
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

//! What a request to the proxy becomes, and every answer the proxy itself gives.
//!
//! `CONNECT` → parse and normalize the target (400), check the port (400), authenticate (407),
//! then look the target up in the router: a hit is intercepted, a miss tunnelled or refused
//! (403), a failed dial answered 502. Absolute-form requests go to [`super::forward`]. Refusals
//! close the connection (`Connection: close`), so nothing pipelined behind them is read.

use super::auth::{self, AuthError};
use super::target::{Target, TargetError};
use super::{forward, mitm, tunnel, ProxyState};
use crate::bridge::{headers, ProxyBody};
use crate::config::{AuthMode, NonProviderHosts};
use crate::metrics::Metrics;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// Longest request-target accepted (`414` beyond). Provider APIs use short paths; a target this
/// long is an attack on something downstream more likely than a request.
pub const MAX_REQUEST_TARGET: usize = 8 * 1024;

/// A request head refused before anything else reads it: status, metric reason, client text.
pub(super) struct HeadRefusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: &'static str,
}

/// The checks every request head passes first, on the listener and inside an intercepted
/// connection: its size, its request-target's length and its body framing.
pub(super) fn check_head<B>(req: &Request<B>, max_header_bytes: usize) -> Result<(), HeadRefusal> {
    if super::head_size(req) > max_header_bytes {
        return Err(HeadRefusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            reason: "head_too_large",
            message: "request header fields too large",
        });
    }
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_REQUEST_TARGET {
        return Err(HeadRefusal {
            status: StatusCode::URI_TOO_LONG,
            reason: "uri_too_long",
            message: "request-target too long",
        });
    }
    if headers::check_transfer_encoding(req.headers()).is_err() {
        return Err(HeadRefusal {
            status: StatusCode::BAD_REQUEST,
            reason: "bad_transfer_encoding",
            message: "Transfer-Encoding other than chunked",
        });
    }
    Ok(())
}

/// Route one request that arrived on the proxy listener.
pub async fn handle(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if let Err(r) = check_head(&req, state.config.max_header_bytes) {
        return reject(&state.metrics, peer, r.status, r.reason, r.message);
    }
    if state.config.auth == AuthMode::Token && !state.router.is_ready() {
        // No token is known before the first load: a 407 would tell the agent its token is
        // wrong when the proxy is only starting (its database unreachable so far).
        let mut resp = reject(
            &state.metrics,
            peer,
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the proxy has not loaded its configuration yet; retry shortly",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    }
    if req.method() == Method::CONNECT {
        handle_connect(state, peer, req).await
    } else if req.uri().scheme().is_some() {
        forward::handle(state, peer, req).await
    } else {
        reject(
            &state.metrics,
            peer,
            StatusCode::BAD_REQUEST,
            "not_proxy_request",
            "send CONNECT or an absolute-form request",
        )
    }
}

async fn handle_connect(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let target = match connect_target(&req) {
        Ok(t) => t,
        Err(e) => {
            return reject(
                &state.metrics,
                peer,
                StatusCode::BAD_REQUEST,
                e.reason(),
                "malformed CONNECT target",
            )
        }
    };
    if !state.config.connect_ports.contains(&target.port) {
        return reject(
            &state.metrics,
            peer,
            StatusCode::BAD_REQUEST,
            "port_not_allowed",
            "CONNECT port not allowed",
        );
    }
    if has_body(&req) {
        return reject(
            &state.metrics,
            peer,
            StatusCode::BAD_REQUEST,
            "connect_with_body",
            "CONNECT must not have a body",
        );
    }
    let snapshot = state.router.snapshot();
    let who = match auth::authenticate(req.headers(), &snapshot, state.config.auth) {
        Ok(a) => a,
        Err(e) => return auth_required(&state.metrics, peer, e),
    };
    let key = target.key();
    if let Some(route) = snapshot.route(&key) {
        let provider_id = route.id;
        tracing::debug!(%peer, target = %key, provider = %route.name, user = %who.user(), "intercepting");
        let upgrade = hyper::upgrade::on(&mut req);
        state
            .metrics
            .connections_total
            .with_label_values(&["mitm"])
            .inc();
        let session = mitm::Session {
            state: state.clone(),
            target,
            key,
            provider_id,
            auth: who,
        };
        let slot = req.extensions().get::<super::ConnSlot>().cloned();
        state.shutdown.spawn(async move {
            let _slot = slot;
            session.serve(upgrade).await
        });
        return established();
    }
    drop(snapshot);
    if state.config.non_provider_hosts == NonProviderHosts::Deny {
        return reject(
            &state.metrics,
            peer,
            StatusCode::FORBIDDEN,
            "non_provider_denied",
            "destination not allowed",
        );
    }
    let upstream = match state.dialer.dial(&target.host, target.port).await {
        Ok(s) => s,
        Err(e) if e.is_denied() => {
            tracing::info!(%peer, target = %key, error = %e, "tunnel refused");
            return reject(
                &state.metrics,
                peer,
                StatusCode::FORBIDDEN,
                e.reason(),
                "destination not allowed",
            );
        }
        Err(e) => {
            tracing::info!(%peer, target = %key, error = %e, "tunnel dial failed");
            return reject(
                &state.metrics,
                peer,
                StatusCode::BAD_GATEWAY,
                e.reason(),
                "could not connect to destination",
            );
        }
    };
    tracing::debug!(%peer, target = %key, user = %who.user(), "tunnelling");
    state
        .metrics
        .connections_total
        .with_label_values(&["tunnel"])
        .inc();
    let active = super::ActiveGuard::new(&state.metrics, "tunnel");
    let slot = req.extensions().get::<super::ConnSlot>().cloned();
    let idle = state.config.idle_timeout;
    let relay = tunnel::relay(hyper::upgrade::on(&mut req), upstream, key, idle, active);
    state.shutdown.spawn(async move {
        let _slot = slot;
        relay.await
    });
    established()
}

/// The authority-form target of a CONNECT; any other request-target form is refused.
fn connect_target(req: &Request<Incoming>) -> Result<Target, TargetError> {
    let uri = req.uri();
    let authority = uri.authority().ok_or(TargetError::NotAuthorityForm)?;
    if uri.scheme().is_some()
        || uri
            .path_and_query()
            .is_some_and(|pq| !pq.as_str().is_empty())
    {
        return Err(TargetError::NotAuthorityForm);
    }
    Target::parse(authority.as_str())
}

fn has_body(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// `200` for a CONNECT; hyper writes the head in one write, which some clients (Bun) need.
fn established() -> Response<ProxyBody> {
    Response::new(empty())
}

/// `407` with the Basic challenge; the connection closes.
pub(super) fn auth_required(
    metrics: &Metrics,
    peer: SocketAddr,
    e: AuthError,
) -> Response<ProxyBody> {
    let mut resp = reject(
        metrics,
        peer,
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        e.reason(),
        "Proxy Authentication Required",
    );
    resp.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"aibridge-proxy\""),
    );
    resp
}

/// A refusal: status, one-line body, connection closed. The reason is logged, not sent.
pub(super) fn reject(
    metrics: &Metrics,
    peer: SocketAddr,
    status: StatusCode,
    reason: &'static str,
    message: &str,
) -> Response<ProxyBody> {
    tracing::info!(%peer, status = status.as_u16(), reason, "request refused");
    metrics
        .connections_total
        .with_label_values(&["rejected"])
        .inc();
    metrics
        .connect_rejections_total
        .with_label_values(&[reason])
        .inc();
    let body = Full::from(format!("{message}\n"))
        .map_err(|e| match e {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

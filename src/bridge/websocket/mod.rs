//! WebSocket through an intercepted host: Codex's Responses WebSocket mode and the Realtime
//! API, with the provider key injected and every response accounted.
//!
//! A request with `Upgrade: websocket` (HTTP/1.1) is authenticated like any other (the MITM
//! session did that), its credentials replaced by the provider key exactly as for HTTP, and sent
//! to the upstream over HTTP/1.1 with the upgrade fields intact. Only after the upstream answers
//! `101` with a valid `Sec-WebSocket-Accept` does either side switch to frames (RELIABILITY C20:
//! never switch to raw bytes on the client's word alone); any other answer reaches the client as
//! a normal response and the connection stays HTTP.
//!
//! `permessage-deflate` is taken out of the offer, so both sides agree on no extension and every
//! frame can be read as it passes without keeping an inflate context per direction; an upstream
//! that answers with an extension anyway is refused. RFC 8441 extended CONNECT over HTTP/2 is not
//! offered (SETTINGS_ENABLE_CONNECT_PROTOCOL is never sent), so clients open their sockets over
//! HTTP/1.1, as Codex does.

mod account;
mod relay;

pub use account::SocketApi;

use super::{error::BridgeError, headers, ErrorReason, RequestContext, REQUEST_ID};
use crate::metrics::Metrics;
use crate::net::upstream::ProxyBody;
use crate::provider::Passthrough;
use crate::router::{ProviderRoute, Router};
use crate::shutdown::Shutdown;
use crate::store::Interception;
use crate::usage::recorder::Recorder;
use account::{Account, Limits};
use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Instant;

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a socket needs beyond the request: where its records go, what can end it, and the
/// client connection's place under `--max-connections` (held until the socket closes).
pub struct SocketEnv<H> {
    pub recorder: Recorder,
    pub router: Arc<Router>,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    pub max_message: usize,
    pub hold: H,
}

/// Whether `req` asks to become a WebSocket (RFC 6455 §4.1: GET, HTTP/1.1, `Upgrade:
/// websocket`, `Connection: upgrade`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method() == http::Method::GET
        && req.version() == Version::HTTP_11
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
}

/// Relay the upgrade to `route`'s upstream; on its `101`, switch both sides to the socket relay.
pub async fn upgrade<B, H>(
    route: Arc<ProviderRoute>,
    mut req: Request<B>,
    ctx: &RequestContext,
    env: SocketEnv<H>,
) -> Response<ProxyBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::BoxError>,
    H: Send + 'static,
{
    let started = Instant::now();
    let api = SocketApi::detect(route.kind, req.uri().path());
    let url_model = req.uri().query().and_then(|q| query_param(q, "model"));
    let mut record = template(&route, &req, ctx, api);
    record.trace = ctx.trace(&env.recorder, req.headers(), route.kind);
    if let Some(t) = &record.trace {
        if let Ok(v) = HeaderValue::from_str(&t.context.traceparent()) {
            req.headers_mut().insert(super::TRACEPARENT, v);
        }
    }
    if api.is_none() && route.passthrough == Passthrough::Deny {
        let resp = super::policy::provider_error(
            route.kind,
            StatusCode::FORBIDDEN,
            "passthrough_denied",
            "this provider accepts model calls only through this proxy",
            &ctx.request_id,
        );
        return refused(record, resp, "passthrough_denied", started, &env.recorder);
    }
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .map(str::to_string)
    else {
        // The client's mistake: nothing goes upstream.
        let resp = super::error::error_response(
            StatusCode::BAD_REQUEST,
            "bad request: a WebSocket upgrade needs Sec-WebSocket-Key",
            &ctx.request_id,
        );
        return refused(record, resp, "bad_upgrade", started, &env.recorder);
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let outgoing = match upstream_request(&route, req, ctx) {
        Ok(r) => r,
        Err(e) => {
            let resp = e.into_response(&ctx.request_id);
            return refused(record, resp, "invalid_key", started, &env.recorder);
        }
    };
    let sent =
        tokio::time::timeout(ctx.response_timeout, route.upstream_http1.request(outgoing)).await;
    let mut resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            return failed(
                record,
                BridgeError::from_client(e),
                ctx,
                started,
                &env.recorder,
            )
        }
        Err(_) => {
            let e = BridgeError::Timeout(ctx.response_timeout);
            return failed(record, e, ctx, started, &env.recorder);
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream said no: its answer goes back as it is, the connection stays HTTP.
        let mut resp = resp.map(|b| b.map_err(Into::into).boxed_unsync());
        answer_headers(resp.headers_mut(), ctx);
        return refused(record, resp, "upgrade_refused", started, &env.recorder);
    }
    if let Err(why) = check_accept(resp.headers(), &key) {
        tracing::warn!(request_id = %ctx.request_id, provider = %route.name, why, "upstream WebSocket handshake refused");
        let e = BridgeError::Upstream(format!("invalid WebSocket handshake: {why}"));
        return failed(record, e, ctx, started, &env.recorder);
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let mut answer = Response::new(
        http_body_util::Empty::new()
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = resp.headers().clone();
    answer_headers(answer.headers_mut(), ctx);
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    answer
        .headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let relay = relay::Relay {
        account: Account::new(
            api,
            record,
            env.recorder.clone(),
            route.models.clone(),
            Limits {
                prompt_limit: ctx.prompt_limit(&route),
                max_tool_args: ctx.max_tool_args_bytes,
            },
            url_model,
        ),
        idle: ctx.idle_timeout,
        max_message: env.max_message,
        token_id: ctx.token_id,
        router: env.router.clone(),
        metrics: env.metrics.clone(),
        provider: route.name.clone(),
        request_id: ctx.request_id.clone(),
    };
    let hold = env.hold;
    env.shutdown
        .spawn_until_cut(move |cut| relay::run(relay, client_upgrade, upstream_upgrade, cut, hold));
    answer
}

/// The record every response on this socket starts from.
fn template<B>(
    route: &ProviderRoute,
    req: &Request<B>,
    ctx: &RequestContext,
    api: Option<SocketApi>,
) -> Interception {
    let mut record = ctx.record(route, req, api.is_some(), "websocket");
    record.status = 101;
    record
}

/// The upgrade request as the upstream gets it: base URL + path, HTTP/1.1, the provider's key
/// in place of the client's credentials, the handshake fields kept, no extension offered.
fn upstream_request<B>(
    route: &ProviderRoute,
    req: Request<B>,
    ctx: &RequestContext,
) -> Result<Request<ProxyBody>, BridgeError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::BoxError>,
{
    let (mut parts, _body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    parts.uri = route.base.join(&path_and_query)?;
    parts.version = Version::HTTP_11;
    parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    headers::prepare_request(
        &mut parts.headers,
        route.kind,
        route.key.as_ref().map(|k| k.expose().as_str()),
    )
    .map_err(|_| BridgeError::InvalidKey)?;
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let _ = ctx;
    let body = http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync();
    Ok(Request::from_parts(parts, body))
}

/// The upstream's `101` must prove it read our key (RFC 6455 §4.1: `Sec-WebSocket-Accept` =
/// base64(SHA-1(key + GUID))), say `Upgrade: websocket`, and agree to no extension.
fn check_accept(headers: &HeaderMap, key: &str) -> Result<(), &'static str> {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return Err("no Upgrade: websocket");
    }
    if headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
        return Err("an extension that was not offered");
    }
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{ACCEPT_GUID}").as_bytes(),
    );
    let expected = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    match headers.get(header::SEC_WEBSOCKET_ACCEPT) {
        Some(v) if v.as_bytes() == expected.as_bytes() => Ok(()),
        _ => Err("Sec-WebSocket-Accept does not match the key"),
    }
}

/// Hop-by-hop fields off, our request id on (the upstream's kept apart).
fn answer_headers(headers: &mut HeaderMap, ctx: &RequestContext) {
    headers::prepare_response(headers);
    if let Some(theirs) = headers.remove(REQUEST_ID) {
        headers.insert(super::UPSTREAM_REQUEST_ID, theirs);
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert(REQUEST_ID, v);
    }
}

/// The upgrade did not happen: record it (one record, the answer's status) and answer.
fn refused(
    mut record: Interception,
    resp: Response<ProxyBody>,
    reason: &'static str,
    started: Instant,
    recorder: &Recorder,
) -> Response<ProxyBody> {
    record.status = i32::from(resp.status().as_u16());
    record.error = Some(
        resp.extensions()
            .get::<ErrorReason>()
            .map_or(reason, |r| r.0)
            .to_string(),
    );
    record.duration_ms = started.elapsed().as_millis() as i64;
    record.ttfb_ms = Some(record.duration_ms);
    tracing::info!(request_id = %record.request_id, provider = %record.provider, status = record.status, error = ?record.error, "WebSocket upgrade not made");
    recorder.started(&record.provider);
    recorder.record(record, None);
    resp
}

fn failed(
    record: Interception,
    e: BridgeError,
    ctx: &RequestContext,
    started: Instant,
    recorder: &Recorder,
) -> Response<ProxyBody> {
    tracing::warn!(request_id = %ctx.request_id, reason = e.reason(), error = %e, "WebSocket upgrade failed");
    let reason = e.reason();
    refused(
        record,
        e.into_response(&ctx.request_id),
        reason,
        started,
        recorder,
    )
}

/// The value of `name` in a query string (no percent-decoding: model names need none).
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_is_the_rfc_example() {
        // RFC 6455 §1.3.
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert_eq!(check_accept(&h, "dGhlIHNhbXBsZSBub25jZQ=="), Ok(()));
        assert!(check_accept(&h, "another key").is_err());
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        assert!(check_accept(&h, "dGhlIHNhbXBsZSBub25jZQ==").is_err());
    }

    #[test]
    fn the_model_is_read_from_the_query() {
        assert_eq!(
            query_param("a=1&model=gpt-realtime&b", "model").as_deref(),
            Some("gpt-realtime")
        );
        assert_eq!(query_param("models=x", "model"), None);
    }
}

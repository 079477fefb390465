//! The bridge: one decrypted (or plain) request in, the provider's answer streamed out.
//!
//! It builds the upstream request (base URL + path, hop-by-hop headers dropped, client
//! credentials replaced by the provider key), sends it over the provider's pooled client and
//! relays the response frame by frame: nothing is collected, so an SSE event reaches the client
//! as soon as the upstream's read returns it. Request bodies stream the same way. Dropping the
//! response (client gone) drops the upstream request with it.

pub mod body;
pub mod error;
pub mod headers;
pub mod policy;
pub mod websocket;

pub use error::BridgeError;

use crate::config::ProxyConfig;
use crate::net::upstream::ProxyBody;
use crate::otlp::{SpanContext, TraceInfo};
use crate::provider::{Passthrough, ProviderKind};
use crate::router::ProviderRoute;
use crate::store::Interception;
use crate::usage::recorder::Recorder;
use crate::usage::request::{self, RequestFacts};
use crate::usage::{Api, UsageTap};
use body::TappedBody;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The response header carrying our request id. An upstream's own `x-request-id` is kept as
/// `x-upstream-request-id`, because provider support asks for theirs.
pub const REQUEST_ID: &str = "x-request-id";
pub const UPSTREAM_REQUEST_ID: &str = "x-upstream-request-id";
/// W3C trace context: taken from the client, replaced by our span's on the way upstream.
pub const TRACEPARENT: &str = "traceparent";

/// Who is asking, and the limits their request is read under.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// One id per request: the `X-Request-Id` the client sees and the interception record's id.
    pub id: uuid::Uuid,
    /// `id` as text, for headers and logs.
    pub request_id: String,
    pub token_id: Option<uuid::Uuid>,
    /// Largest request body read for the model policy (`--max-request-body`).
    pub max_request_body: usize,
    /// `--upstream-response-timeout`: from sending the request (connect and any streamed upload
    /// included) to the upstream's response head.
    pub response_timeout: Duration,
    /// `--idle-timeout`: the longest silence while waiting on the request or the response body.
    pub idle_timeout: Duration,
    pub user: std::sync::Arc<str>,
    /// `--record-prompts` (the provider's own setting also applies).
    pub record_prompts: bool,
    pub max_prompt_bytes: usize,
    pub max_tool_args_bytes: usize,
    /// The span this request's span hangs under when the client sent no `traceparent` (the
    /// intercepted session's).
    pub trace_parent: Option<SpanContext>,
}

impl RequestContext {
    /// A fresh request id for an authenticated request. Time-ordered (UUIDv7), so record ids
    /// append at the end of the primary-key index instead of landing on a random page of it.
    pub fn new(auth: &crate::auth::Authenticated, config: &ProxyConfig) -> Self {
        let id = uuid::Uuid::now_v7();
        RequestContext {
            id,
            request_id: id.to_string(),
            token_id: auth.token_id(),
            max_request_body: config.max_request_body,
            response_timeout: config.upstream_response_timeout,
            idle_timeout: config.idle_timeout,
            user: auth.user().clone(),
            record_prompts: config.record_prompts,
            max_prompt_bytes: config.max_prompt_bytes,
            max_tool_args_bytes: config.max_tool_args_bytes,
            trace_parent: None,
        }
    }

    /// This request's span, when traces are exported: under the client's `traceparent` if it
    /// sent one, else under [`RequestContext::trace_parent`], else a new trace.
    pub fn trace(
        &self,
        recorder: &Recorder,
        headers: &http::HeaderMap,
        kind: ProviderKind,
    ) -> Option<TraceInfo> {
        recorder.tracer()?;
        let context = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(SpanContext::child_of_traceparent)
            .unwrap_or_else(|| {
                self.trace_parent
                    .map_or_else(SpanContext::root, |parent| parent.child())
            });
        Some(TraceInfo {
            context,
            system: match kind {
                ProviderKind::Anthropic => "anthropic",
                ProviderKind::Openai | ProviderKind::OpenaiCompatible => "openai",
            },
            requested_model: None,
        })
    }

    /// The prompt bound for a model call to `route`, or `None` when prompts are not recorded.
    pub fn prompt_limit(&self, route: &ProviderRoute) -> Option<usize> {
        (self.record_prompts && route.record_prompts).then_some(self.max_prompt_bytes)
    }

    /// The record a bridged exchange starts from: who asked which provider for what, over
    /// `transport`; `failed` with no status until an answer says otherwise.
    pub(crate) fn record<B>(
        &self,
        route: &ProviderRoute,
        req: &Request<B>,
        model_call: bool,
        transport: &str,
    ) -> Interception {
        Interception {
            id: self.id,
            request_id: self.request_id.clone(),
            token_id: self.token_id,
            user: self.user.to_string(),
            provider: route.name.clone(),
            model: None,
            method: req.method().to_string(),
            path: req.uri().path().chars().take(1024).collect(),
            status: 0,
            input_tokens: None,
            output_tokens: None,
            cache_read_tokens: None,
            cache_write_tokens: None,
            usage_source: "missing".into(),
            outcome: "failed".into(),
            started_at: time::OffsetDateTime::now_utc(),
            duration_ms: 0,
            ttfb_ms: None,
            error: None,
            route: if model_call { "model" } else { "passthrough" }.into(),
            transport: transport.into(),
            prompt: None,
            tool_calls: Vec::new(),
            trace: None,
        }
    }
}

/// Send `req` to `route`'s upstream and stream back its answer. Errors become responses.
pub async fn forward<B>(
    route: &ProviderRoute,
    req: Request<B>,
    ctx: &RequestContext,
    recorder: &Recorder,
) -> Response<ProxyBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::BoxError>,
{
    let started = Instant::now();
    let api = Api::detect(route.kind, req.uri().path());
    let model_call = api.is_model_call(req.method());
    let mut record = ctx.record(route, &req, model_call, "http");
    record.trace = ctx.trace(recorder, req.headers(), route.kind);
    recorder.started(&route.name);
    // Until an answer takes the record over, dropping this future (the client went away while
    // its body was read or the upstream was asked) writes it as cancelled.
    let mut unanswered = Unanswered {
        recorder,
        started,
        record: Some(record),
    };
    let (mut parts, body) = req.into_parts();
    if let Some(t) = unanswered.record.as_ref().and_then(|r| r.trace.as_ref()) {
        if let Ok(v) = HeaderValue::from_str(&t.context.traceparent()) {
            parts.headers.insert(TRACEPARENT, v);
        }
    }
    let body_failure = Arc::new(OnceLock::new());
    let body = body::IdleBody::new(body, ctx.idle_timeout, body_failure.clone());
    let admitted = if model_call {
        read_for_policy(route, api, body, ctx, &mut unanswered).await
    } else {
        match passthrough_refused(route, ctx, &mut unanswered) {
            Some(refusal) => Err(refusal),
            None => Ok(body.boxed_unsync()),
        }
    };
    let body = match admitted {
        Ok(body) => body,
        Err(refusal) => {
            if let Some(mut record) = unanswered.take() {
                record.status = i32::from(refusal.status().as_u16());
                if record.error.as_deref() == Some("client_cancelled") {
                    record.outcome = "client_cancelled".into();
                }
                record.duration_ms = started.elapsed().as_millis() as i64;
                tracing::info!(request_id = %ctx.request_id, provider = %route.name, status = record.status, error = ?record.error, "request refused by policy");
                recorder.record(record, None);
            }
            return refusal;
        }
    };
    let sent = match tokio::time::timeout(ctx.response_timeout, send(route, parts, body)).await {
        Ok(sent) => sent,
        // Dropping the send cancels the upstream request (its connection closes or its stream
        // is reset), so the provider stops working on an answer nobody will read.
        Err(_) => Err(BridgeError::Timeout(ctx.response_timeout)),
    };
    // The upstream request failed because the client's body did: the client's doing.
    let sent = sent.map_err(|e| match body_failure.get() {
        Some(reason) => BridgeError::ClientBody(reason, e.to_string()),
        None => e,
    });
    let Some(mut record) = unanswered.take() else {
        // Not reached (only this function takes the record); answer without one.
        return sent.unwrap_or_else(|e| e.into_response(&ctx.request_id));
    };
    match sent {
        Ok(mut resp) => {
            headers::prepare_response(resp.headers_mut());
            if let Some(theirs) = resp.headers_mut().remove(REQUEST_ID) {
                resp.headers_mut().insert(UPSTREAM_REQUEST_ID, theirs);
            }
            if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
                resp.headers_mut().insert(REQUEST_ID, v);
            }
            record.status = i32::from(resp.status().as_u16());
            record.ttfb_ms = Some(started.elapsed().as_millis() as i64);
            // A HEAD answer, a 1xx/204/304 carries no body: there is nothing to parse, and
            // its end is complete by definition.
            let bodiless = parts_method_is_head(&record.method)
                || resp.status().is_informational()
                || resp.status() == StatusCode::NO_CONTENT
                || resp.status() == StatusCode::NOT_MODIFIED;
            let tap_api = if bodiless { Api::Other } else { api };
            if bodiless {
                // Whatever the upstream's framing says (a HEAD answer keeps the length of the
                // GET it stands for), there is no body to relay: hyper's h2 client would read
                // the missing bytes as a reset.
                resp = resp.map(|_| {
                    http_body_util::Empty::new()
                        .map_err(|e| match e {})
                        .boxed_unsync()
                });
            }
            let content_type = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let tap =
                UsageTap::new(tap_api, content_type).with_max_tool_args(ctx.max_tool_args_bytes);
            let pending = body::Pending {
                recorder: recorder.clone(),
                requested_model: record.model.clone(),
                record,
                started,
                api: tap_api,
                models: route.models.clone(),
            };
            let idle = ctx.idle_timeout;
            resp.map(|b| TappedBody::new(b, tap, pending, idle).boxed_unsync())
        }
        Err(e) => {
            tracing::warn!(
                request_id = %ctx.request_id,
                provider = %route.name,
                reason = e.reason(),
                error = %e,
                "bridge request failed"
            );
            let resp = e.into_response(&ctx.request_id);
            record.status = i32::from(resp.status().as_u16());
            record.error = resp
                .extensions()
                .get::<ErrorReason>()
                .map(|r| r.0.to_string());
            if record.error.as_deref() == Some("client_cancelled") {
                record.outcome = "client_cancelled".into();
            }
            record.duration_ms = started.elapsed().as_millis() as i64;
            recorder.record(record, None);
            resp
        }
    }
}

fn parts_method_is_head(method: &str) -> bool {
    method == "HEAD"
}

/// A request's record while no answer exists yet. Dropped still holding it, it writes the record
/// as `client_cancelled`, which also ends the in-flight count `Recorder::started` began: one
/// record per request, however the request ends.
struct Unanswered<'a> {
    recorder: &'a Recorder,
    started: Instant,
    record: Option<Interception>,
}

impl Unanswered<'_> {
    /// Hand the record over to whoever writes it next.
    fn take(&mut self) -> Option<Interception> {
        self.record.take()
    }

    fn set_error(&mut self, reason: &str) {
        if let Some(r) = self.record.as_mut() {
            r.error = Some(reason.into());
        }
    }

    fn set_request(&mut self, facts: RequestFacts) {
        if let Some(r) = self.record.as_mut() {
            if let Some(t) = r.trace.as_mut() {
                t.requested_model.clone_from(&facts.model);
            }
            r.model = facts.model;
            r.prompt = facts.prompt;
        }
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            let reason = self.recorder.cancel_reason();
            record.error = Some(reason.into());
            record.outcome = if reason == "shutdown" {
                "truncated"
            } else {
                "client_cancelled"
            }
            .into();
            record.duration_ms = self.started.elapsed().as_millis() as i64;
            tracing::info!(request_id = %record.request_id, provider = %record.provider, "client went away before the answer");
            self.recorder.record(record, None);
        }
    }
}

/// The static reason of a bridge error, carried on its response for the record.
#[derive(Clone, Copy)]
pub struct ErrorReason(pub &'static str);

/// A request that is not a model call streams through untouched, unless the provider refuses
/// passthrough: then this is the `403`.
fn passthrough_refused(
    route: &ProviderRoute,
    ctx: &RequestContext,
    record: &mut Unanswered<'_>,
) -> Option<Response<ProxyBody>> {
    if route.passthrough != Passthrough::Deny {
        return None;
    }
    record.set_error("passthrough_denied");
    let msg = format!(
        "provider {} accepts model calls only through this proxy",
        route.name
    );
    Some(policy::provider_error(
        route.kind,
        StatusCode::FORBIDDEN,
        "passthrough_denied",
        &msg,
        &ctx.request_id,
    ))
}

/// A model call: read the body (bounded), note the requested model and the prompt in one pass,
/// and apply the provider's allowlist.
async fn read_for_policy<B>(
    route: &ProviderRoute,
    api: Api,
    body: body::IdleBody<B>,
    ctx: &RequestContext,
    record: &mut Unanswered<'_>,
) -> Result<ProxyBody, Response<ProxyBody>>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::BoxError>,
{
    let bytes = match policy::read(body, ctx.max_request_body).await {
        Ok(bytes) => bytes,
        Err(policy::ReadError::TooLarge) => {
            record.set_error("request_too_large");
            let msg = format!("request body exceeds {} bytes", ctx.max_request_body);
            return Err(policy::provider_error(
                route.kind,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                &msg,
                &ctx.request_id,
            ));
        }
        Err(policy::ReadError::Idle) => {
            record.set_error("client_body_timeout");
            tracing::info!(request_id = %ctx.request_id, idle = ?ctx.idle_timeout, "request body stalled");
            return Err(policy::provider_error(
                route.kind,
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body stalled",
                &ctx.request_id,
            ));
        }
        Err(policy::ReadError::Body(e)) => {
            // The client's connection broke (or it broke HTTP framing) mid-body.
            record.set_error("client_cancelled");
            tracing::info!(request_id = %ctx.request_id, error = %e, "request body could not be read");
            return Err(policy::provider_error(
                route.kind,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body could not be read",
                &ctx.request_id,
            ));
        }
    };
    let facts = request::inspect(api, &bytes, ctx.prompt_limit(route));
    let allowed = policy::allowed(route.enforce_models, &route.models, &facts);
    let shown: String = facts
        .model
        .as_deref()
        .unwrap_or("(none)")
        .chars()
        .take(128)
        .collect();
    record.set_request(facts);
    if !allowed {
        record.set_error("model_not_allowed");
        let msg = format!(
            "model {shown:?} is not configured for provider {}",
            route.name
        );
        return Err(policy::provider_error(
            route.kind,
            StatusCode::FORBIDDEN,
            "model_not_allowed",
            &msg,
            &ctx.request_id,
        ));
    }
    Ok(http_body_util::Full::new(bytes)
        .map_err(|e| match e {})
        .boxed_unsync())
}

async fn send(
    route: &ProviderRoute,
    mut parts: http::request::Parts,
    body: ProxyBody,
) -> Result<Response<ProxyBody>, BridgeError> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    parts.uri = route.base.join(path_and_query)?;
    // The client picks the upstream protocol from ALPN; the request itself is version-neutral.
    parts.version = Version::HTTP_11;
    headers::prepare_request(
        &mut parts.headers,
        route.kind,
        route.key.as_ref().map(|k| k.expose().as_str()),
    )
    .map_err(|_| BridgeError::InvalidKey)?;
    let resp = route
        .upstream
        .request(Request::from_parts(parts, body))
        .await
        .map_err(BridgeError::from_client)?;
    let h = resp.headers();
    if h.contains_key(http::header::TRANSFER_ENCODING)
        && h.contains_key(http::header::CONTENT_LENGTH)
    {
        // RFC 9112 §6.3: a smuggling or splitting attempt, "ought to be handled as an error".
        // Relaying it would pair hyper's chunked decoding with a Content-Length the client
        // trusts: a wrong body that looks complete.
        return Err(BridgeError::Upstream(
            "response with both Transfer-Encoding and Content-Length".into(),
        ));
    }
    Ok(resp.map(|b| b.map_err(Into::into).boxed_unsync()))
}

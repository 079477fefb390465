//! The bridge: one decrypted (or plain) request in, the provider's answer streamed out.
//!
//! It builds the upstream request (base URL + path, hop-by-hop headers dropped, client
//! credentials replaced by the provider key), sends it over the provider's pooled client and
//! relays the response frame by frame: nothing is collected, so an SSE event reaches the client
//! as soon as the upstream's read returns it. Request bodies stream the same way. Dropping the
//! response (client gone) drops the upstream request with it.

pub mod error;
pub mod headers;
pub mod upstream;

pub use error::BridgeError;
pub use upstream::ProxyBody;

use crate::router::ProviderRoute;
use http::{HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Instant;

/// The response header carrying our request id. An upstream's own `x-request-id` is kept as
/// `x-upstream-request-id`, because provider support asks for theirs.
pub const REQUEST_ID: &str = "x-request-id";
pub const UPSTREAM_REQUEST_ID: &str = "x-upstream-request-id";

/// Who is asking, for logs and (later) interception records.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub user: std::sync::Arc<str>,
}

/// Send `req` to `route`'s upstream and stream back its answer. Errors become responses.
pub async fn forward(
    route: &ProviderRoute,
    req: Request<Incoming>,
    ctx: &RequestContext,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = send(route, req).await;
    let response = match result {
        Ok(mut resp) => {
            headers::prepare_response(resp.headers_mut());
            if let Some(theirs) = resp.headers_mut().remove(REQUEST_ID) {
                resp.headers_mut().insert(UPSTREAM_REQUEST_ID, theirs);
            }
            if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
                resp.headers_mut().insert(REQUEST_ID, v);
            }
            resp
        }
        Err(e) => {
            tracing::warn!(
                request_id = %ctx.request_id,
                provider = %route.name,
                reason = e.reason(),
                error = %e,
                "bridge request failed"
            );
            e.into_response(&ctx.request_id)
        }
    };
    tracing::info!(
        request_id = %ctx.request_id,
        user = %ctx.user,
        provider = %route.name,
        %method,
        path = %path,
        status = response.status().as_u16(),
        ttfb_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

async fn send(
    route: &ProviderRoute,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BridgeError> {
    let (mut parts, body) = req.into_parts();
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
    let body = body.map_err(Into::into).boxed_unsync();
    let resp = route
        .upstream
        .request(Request::from_parts(parts, body))
        .await
        .map_err(BridgeError::from_client)?;
    Ok(resp.map(|b| b.map_err(Into::into).boxed_unsync()))
}

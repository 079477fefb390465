//! The direct bridge: `/bridge/{provider}/{path}` on the admin listener, for clients that can
//! set a base URL instead of a proxy (`OPENAI_BASE_URL=http://HOST:8889/bridge/openai/v1`,
//! `ANTHROPIC_BASE_URL=http://HOST:8889/bridge/anthropic`).
//!
//! The agent token stands in for the provider key the SDK sends (`Authorization: Bearer` or
//! `x-api-key`); every credential header is removed before the request goes on, so the token
//! never reaches a provider, even one configured without a key. From there the request takes the
//! same bridge as an intercepted one: key injection, model policy, streaming, usage records.
//! Answers carry `X-Request-Id`; refusals are one line: `401` (with
//! `WWW-Authenticate: Bearer`), `404` for a name that is not an enabled provider, `503` before
//! the first router load.

use super::AdminState;
use crate::bridge::{self, error::error_response, headers, RequestContext};
use crate::net::upstream::ProxyBody;
use crate::BoxError;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// The route prefix.
pub const PREFIX: &str = "/bridge/";

pub async fn handle(State(state): State<Arc<AdminState>>, req: Request) -> Response {
    let request_id = uuid::Uuid::now_v7().to_string();
    let refuse = |status: StatusCode, message: &str| {
        let mut resp = error_response(status, message, &request_id);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"aibridge-proxy\""),
            );
        }
        resp.map(axum::body::Body::new)
    };
    let Some((provider, upstream_uri)) = split_target(req.uri()) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not found: use /bridge/PROVIDER/PATH",
        );
    };
    if !state.router.is_ready() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the proxy has not loaded its configuration yet; retry shortly",
        );
    }
    let snapshot = state.router.snapshot();
    let who = match crate::auth::authenticate_api_key(req.headers(), &snapshot, state.proxy.auth) {
        Ok(who) => who,
        Err(e) => {
            tracing::info!(reason = e.reason(), "direct bridge request refused");
            state
                .metrics
                .connect_rejections_total
                .with_label_values(&[e.reason()])
                .inc();
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized: send the agent token as the API key",
            );
        }
    };
    let Some(route) = snapshot.provider(provider).cloned() else {
        tracing::info!(reason = "no_such_provider", "direct bridge request refused");
        return refuse(StatusCode::NOT_FOUND, "no enabled provider by that name");
    };
    drop(snapshot);
    let (mut parts, body) = req.into_parts();
    parts.uri = upstream_uri;
    headers::strip_credentials(&mut parts.headers);
    let mut ctx = RequestContext::new(&who, &state.proxy);
    ctx.request_id = request_id.clone();
    if let Ok(id) = uuid::Uuid::parse_str(&request_id) {
        ctx.id = id;
    }
    let resp = bridge::forward(
        &route,
        http::Request::from_parts(parts, body),
        &ctx,
        &state.recorder,
    )
    .await;
    let cut = state.shutdown.cut_token().cancelled_owned();
    resp.map(|b| axum::body::Body::new(UntilCut::new(b, cut)))
}

/// `/bridge/NAME/REST?Q` → (`NAME`, `/REST?Q`). `None` when no provider name is given.
fn split_target(uri: &Uri) -> Option<(&str, Uri)> {
    let rest = uri.path().strip_prefix(PREFIX)?;
    let (name, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if name.is_empty() {
        return None;
    }
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    Some((name, target.parse().ok()?))
}

/// A response body that ends (in error, so the client sees a cut, not a clean end) when the
/// shutdown's grace runs out. The admin listener's connections are axum's, outside the shutdown
/// scope; this puts their bridged streams back under it, so a cut writes their records.
struct UntilCut {
    inner: Option<ProxyBody>,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl UntilCut {
    fn new(inner: ProxyBody, cut: WaitForCancellationFutureOwned) -> Self {
        UntilCut {
            inner: Some(inner),
            cut: Box::pin(cut),
        }
    }
}

impl Body for UntilCut {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.cut.as_mut().poll(cx).is_ready() {
            // Dropping the bridged body writes its record (as cut by the shutdown).
            this.inner = None;
            return Poll::Ready(Some(Err("shut down before the stream ended".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_provider_and_upstream_path() {
        let split = |s: &str| {
            split_target(&s.parse().unwrap()).map(|(n, u)| (n.to_string(), u.to_string()))
        };
        assert_eq!(
            split("/bridge/openai/v1/chat/completions?x=1"),
            Some(("openai".into(), "/v1/chat/completions?x=1".into()))
        );
        assert_eq!(
            split("/bridge/anthropic"),
            Some(("anthropic".into(), "/".into()))
        );
        assert_eq!(split("/bridge/a/"), Some(("a".into(), "/".into())));
        assert_eq!(split("/bridge/"), None);
        assert_eq!(split("/bridge//v1"), None);
        assert_eq!(split("/other"), None);
    }
}

//! Every answer the proxy listener gives of its own: one [`Refusal`] type with named
//! constructors, written to the wire here and nowhere else (linkerd's `respond.rs`).
//!
//! A refusal carries a status, a static `reason` (the metric label and log field, never sent)
//! and a fixed one-line sentence for the client (never an internal error's text). On the
//! listener it is counted in `connect_rejections_total{reason}` and closes the connection, so
//! nothing pipelined behind a refused request is read. Inside an intercepted connection it
//! carries the request id instead, and closes an HTTP/1 connection only when what follows the
//! refused head cannot be trusted (`close`).

use crate::auth::AuthError;
use crate::bridge::REQUEST_ID;
use crate::metrics::Metrics;
use crate::net::egress::EgressError;
use crate::net::target::TargetError;
use crate::net::upstream::ProxyBody;
use http::{header, HeaderValue, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use std::net::SocketAddr;

/// Why the proxy answered a request itself instead of serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    /// Metric label and log field (`snake_case`, static); never sent to the client.
    pub reason: &'static str,
    /// The sentence the client reads.
    pub message: &'static str,
    /// Inside an intercepted HTTP/1 connection: end it after this answer. (Listener refusals
    /// always close.)
    pub close: bool,
    /// Send the Basic challenge (`Proxy-Authenticate`).
    challenge: bool,
    /// `Retry-After` seconds.
    retry_after: Option<&'static str>,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, message: &'static str) -> Self {
        Refusal {
            status,
            reason,
            message,
            close: true,
            challenge: false,
            retry_after: None,
        }
    }

    /// `400`: the request is not one the proxy can serve.
    pub fn bad_request(reason: &'static str, message: &'static str) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, reason, message)
    }

    /// `403`: the destination is not allowed (policy, not the network).
    pub fn forbidden(reason: &'static str) -> Self {
        Refusal::new(StatusCode::FORBIDDEN, reason, "destination not allowed")
    }

    /// `502`: the destination could not be reached.
    pub fn unreachable(reason: &'static str) -> Self {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            reason,
            "could not connect to destination",
        )
    }

    /// `407` with the Basic challenge.
    pub fn auth_required(e: AuthError) -> Self {
        Refusal {
            challenge: true,
            ..Refusal::new(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                e.reason(),
                "Proxy Authentication Required",
            )
        }
    }

    /// `407` inside an intercepted connection whose token was revoked after its CONNECT: no
    /// challenge (the agent cannot answer one there), the connection ends.
    pub fn token_revoked() -> Self {
        Refusal::new(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "token_revoked",
            "Proxy Authentication Required",
        )
    }

    /// `503` before the first router load: no token is known yet, and a `407` would tell the
    /// agent its token is wrong when the proxy is only starting.
    pub fn not_ready() -> Self {
        Refusal {
            retry_after: Some("5"),
            ..Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the proxy has not loaded its configuration yet; retry shortly",
            )
        }
    }

    /// `431`: the head is over `--max-header-bytes`.
    pub fn head_too_large() -> Self {
        Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "head_too_large",
            "request header fields too large",
        )
    }

    /// `414`: the request-target is over [`super::admit::MAX_REQUEST_TARGET`].
    pub fn uri_too_long() -> Self {
        Refusal::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "request-target too long",
        )
    }

    /// `400`: a `Transfer-Encoding` other than one `chunked`.
    pub fn bad_transfer_encoding() -> Self {
        Refusal::bad_request(
            "bad_transfer_encoding",
            "Transfer-Encoding other than chunked",
        )
    }

    /// `400` inside an intercepted connection: an HTTP/1.1 or h2 request naming no host.
    pub fn no_authority() -> Self {
        Refusal {
            close: false,
            ..Refusal::bad_request("no_authority", "bad request: the request names no host")
        }
    }

    /// `421`: a decrypted request addressed to a host other than the CONNECT target.
    pub fn misdirected() -> Self {
        Refusal {
            close: false,
            ..Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected",
                "misdirected request: the host does not match the CONNECT target",
            )
        }
    }

    /// `502`: the host no longer maps to the provider the connection was accepted for.
    pub fn route_gone() -> Self {
        Refusal {
            close: false,
            ..Refusal::new(
                StatusCode::BAD_GATEWAY,
                "route_gone",
                "the provider for this host was removed or changed; retry the request",
            )
        }
    }

    /// The listener's answer: logged (with the target when known), counted, connection closed.
    pub fn on_listener(
        self,
        metrics: &Metrics,
        peer: SocketAddr,
        target: Option<&str>,
    ) -> Response<ProxyBody> {
        tracing::info!(%peer, target = %target.unwrap_or("-"), status = self.status.as_u16(), reason = %self.reason, "request refused");
        metrics
            .connections_total
            .with_label_values(&["rejected"])
            .inc();
        metrics
            .connect_rejections_total
            .with_label_values(&[self.reason])
            .inc();
        let mut resp = self.response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }

    /// The answer inside an intercepted connection, carrying the request id; an HTTP/1
    /// connection ends after it when `close`.
    pub fn on_intercepted(
        self,
        request_id: &str,
        target: &str,
        version: Version,
    ) -> Response<ProxyBody> {
        tracing::info!(
            %request_id,
            %target,
            status = self.status.as_u16(),
            reason = %self.reason,
            "request refused"
        );
        let close = self.close && version < Version::HTTP_2;
        let mut resp = self.response();
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID, v);
        }
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    fn response(&self) -> Response<ProxyBody> {
        let body = Full::from(format!("{}\n", self.message))
            .map_err(|e| match e {})
            .boxed_unsync();
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.challenge {
            headers.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"aibridge-proxy\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        resp
    }
}

impl From<TargetError> for Refusal {
    fn from(e: TargetError) -> Self {
        Refusal::bad_request(e.reason(), "malformed request target")
    }
}

impl From<EgressError> for Refusal {
    fn from(e: EgressError) -> Self {
        if e.is_denied() {
            Refusal::forbidden(e.reason())
        } else {
            Refusal::unreachable(e.reason())
        }
    }
}

/// `200` for a CONNECT; hyper writes the head in one write, which some clients (Bun) need.
pub(crate) fn established() -> Response<ProxyBody> {
    Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_refusals_close_and_challenge_only_for_auth() {
        let metrics = Metrics::new().unwrap();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let resp = Refusal::auth_required(AuthError::Missing).on_listener(&metrics, peer, None);
        assert_eq!(resp.status(), 407);
        assert_eq!(
            resp.headers()[header::PROXY_AUTHENTICATE],
            "Basic realm=\"aibridge-proxy\""
        );
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        let resp = Refusal::not_ready().on_listener(&metrics, peer, Some("api.openai.com:443"));
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        assert!(resp.headers().get(header::PROXY_AUTHENTICATE).is_none());
        let rendered = metrics.render();
        assert!(rendered.contains("connect_rejections_total{reason=\"auth_missing\"} 1"));
        assert!(rendered.contains("connect_rejections_total{reason=\"not_ready\"} 1"));
    }

    #[test]
    fn intercepted_refusals_carry_the_request_id_and_close_http1_only_when_asked() {
        let h1 = Refusal::token_revoked().on_intercepted("rid", "t:443", Version::HTTP_11);
        assert_eq!(h1.headers()[REQUEST_ID], "rid");
        assert_eq!(h1.headers()[header::CONNECTION], "close");
        let h2 = Refusal::token_revoked().on_intercepted("rid", "t:443", Version::HTTP_2);
        assert!(h2.headers().get(header::CONNECTION).is_none());
        let kept = Refusal::misdirected().on_intercepted("rid", "t:443", Version::HTTP_11);
        assert_eq!(kept.status(), 421);
        assert!(kept.headers().get(header::CONNECTION).is_none());
    }

    #[test]
    fn egress_errors_become_403_for_policy_and_502_for_the_network() {
        let denied = Refusal::from(EgressError::Denied("10.0.0.1".parse().unwrap()));
        assert_eq!(
            (denied.status, denied.reason),
            (StatusCode::FORBIDDEN, "private_address")
        );
        let down = Refusal::from(EgressError::Timeout);
        assert_eq!(
            (down.status, down.reason),
            (StatusCode::BAD_GATEWAY, "connect_timeout")
        );
    }
}

//! The bridge's errors and their one mapping to the wire.
//!
//! Clients get a status, a fixed one-line sentence and the request id; the detail (which may
//! name hosts or carry library text) goes to the log only.

use super::upstream::ProxyBody;
use crate::proxy::egress::EgressError;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// Why a request could not be bridged.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("the request's authority does not match the CONNECT host")]
    Misdirected,
    #[error("the request names no host (no Host or :authority)")]
    NoAuthority,
    #[error("the provider for this host was removed or changed")]
    RouteGone,
    #[error("the upstream URL could not be built: {0}")]
    BadUpstreamUri(#[from] http::Error),
    #[error("the provider key cannot be sent")]
    InvalidKey,
    #[error("the upstream address {0} is not allowed")]
    EgressDenied(std::net::IpAddr),
    #[error("the upstream could not be reached: {0}")]
    Connect(String),
    #[error("the upstream request failed: {0}")]
    Upstream(String),
}

impl BridgeError {
    pub fn status(&self) -> StatusCode {
        match self {
            BridgeError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            BridgeError::NoAuthority => StatusCode::BAD_REQUEST,
            BridgeError::RouteGone
            | BridgeError::BadUpstreamUri(_)
            | BridgeError::InvalidKey
            | BridgeError::EgressDenied(_)
            | BridgeError::Connect(_)
            | BridgeError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A static label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            BridgeError::Misdirected => "misdirected",
            BridgeError::NoAuthority => "no_authority",
            BridgeError::RouteGone => "route_gone",
            BridgeError::BadUpstreamUri(_) => "bad_upstream_uri",
            BridgeError::InvalidKey => "invalid_key",
            BridgeError::EgressDenied(_) => "upstream_address_denied",
            BridgeError::Connect(_) => "connect_error",
            BridgeError::Upstream(_) => "upstream_error",
        }
    }

    /// The sentence the client sees.
    fn public_message(&self) -> &'static str {
        match self {
            BridgeError::Misdirected => {
                "misdirected request: the host does not match the CONNECT target"
            }
            BridgeError::NoAuthority => "bad request: the request names no host",
            BridgeError::RouteGone => {
                "the provider for this host was removed or changed; retry the request"
            }
            BridgeError::Connect(_) | BridgeError::EgressDenied(_) => {
                "the provider's upstream could not be reached"
            }
            _ => "the request could not be forwarded to the provider",
        }
    }

    /// Classify a hyper client error: connection setup (including a policy refusal in the
    /// dialer) or a failure after the request was under way.
    pub fn from_client(e: hyper_util::client::legacy::Error) -> Self {
        if let Some(EgressError::Denied(ip)) = std::error::Error::source(&e).and_then(find_egress) {
            return BridgeError::EgressDenied(*ip);
        }
        if e.is_connect() {
            BridgeError::Connect(chain(&e))
        } else {
            BridgeError::Upstream(chain(&e))
        }
    }

    /// The response for this error, with the request id.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let mut resp = error_response(self.status(), self.public_message(), request_id);
        resp.extensions_mut()
            .insert(super::ErrorReason(self.reason()));
        resp
    }
}

/// A plain-text error response carrying the request id.
pub fn error_response(status: StatusCode, message: &str, request_id: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::from(format!("{message}\n"))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(super::REQUEST_ID, v);
    }
    resp
}

fn find_egress<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressError> {
    loop {
        if let Some(eg) = e.downcast_ref::<EgressError>() {
            return Some(eg);
        }
        e = e.source()?;
    }
}

/// The error and its sources on one line, for logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

//! The bridge's errors and their one mapping to the wire.
//!
//! Clients get a status, a fixed one-line sentence and the request id; the detail (which may
//! name hosts or carry library text) goes to the log only.

use crate::net::egress::EgressError;
use crate::net::upstream::ProxyBody;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// Why a request could not be bridged.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("the upstream URL could not be built: {0}")]
    BadUpstreamUri(#[from] http::Error),
    #[error("the provider key cannot be sent")]
    InvalidKey,
    #[error("the upstream address {0} is not allowed")]
    EgressDenied(std::net::IpAddr),
    /// No connection to the upstream: `reason` says which step failed (`dns`,
    /// `connect_refused`, `connect_timeout`, `tls`, `connect_error`).
    #[error("the upstream could not be reached ({reason}): {detail}")]
    Connect {
        reason: &'static str,
        detail: String,
    },
    #[error("the upstream sent no response head within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the upstream request failed: {0}")]
    Upstream(String),
    /// The client's request body failed while it streamed to the upstream: the client left
    /// (`client_cancelled`) or stalled past `--idle-timeout` (`client_body_timeout`).
    #[error("the request body failed ({0}): {1}")]
    ClientBody(&'static str, String),
}

impl BridgeError {
    pub fn status(&self) -> StatusCode {
        match self {
            BridgeError::BadUpstreamUri(_)
            | BridgeError::InvalidKey
            | BridgeError::EgressDenied(_)
            | BridgeError::Connect { .. }
            | BridgeError::Upstream(_) => StatusCode::BAD_GATEWAY,
            BridgeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            BridgeError::ClientBody("client_body_timeout", _) => StatusCode::REQUEST_TIMEOUT,
            BridgeError::ClientBody(..) => StatusCode::BAD_REQUEST,
        }
    }

    /// A static label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            BridgeError::BadUpstreamUri(_) => "bad_upstream_uri",
            BridgeError::InvalidKey => "invalid_key",
            BridgeError::EgressDenied(_) => "upstream_address_denied",
            BridgeError::Connect { reason, .. } => reason,
            BridgeError::Timeout(_) => "upstream_timeout",
            BridgeError::Upstream(_) => "upstream_error",
            BridgeError::ClientBody(reason, _) => reason,
        }
    }

    /// The sentence the client sees.
    fn public_message(&self) -> &'static str {
        match self {
            BridgeError::Connect { .. } | BridgeError::EgressDenied(_) => {
                "the provider's upstream could not be reached"
            }
            BridgeError::Timeout(_) => "the provider's upstream did not answer in time",
            BridgeError::ClientBody(..) => "the request body could not be read",
            _ => "the request could not be forwarded to the provider",
        }
    }

    /// Classify a hyper client error: connection setup (a policy refusal, a name that does not
    /// resolve, a refused or slow dial, a certificate that does not verify) or a failure after
    /// the request was under way.
    pub fn from_client(e: hyper_util::client::legacy::Error) -> Self {
        let source = std::error::Error::source(&e);
        let egress = source.and_then(find::<EgressError>);
        if let Some(EgressError::Denied(ip)) = egress {
            return BridgeError::EgressDenied(*ip);
        }
        if !e.is_connect() {
            return BridgeError::Upstream(chain(&e));
        }
        let reason = match egress {
            Some(eg) => eg.reason(),
            None if source.and_then(find::<rustls::Error>).is_some() => "tls",
            None => "connect_error",
        };
        BridgeError::Connect {
            reason,
            detail: chain(&e),
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

/// The first `T` in an error's source chain. `io::Error` hides the error it wraps from
/// `source()` (it skips to that error's own source), so wrapped errors are unpacked explicitly:
/// that is where the TLS connector puts a certificate failure.
fn find<'a, T: std::error::Error + 'static>(
    mut e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    loop {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if let Some(t) = find::<T>(inner) {
                return Some(t);
            }
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

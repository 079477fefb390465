//! The request side of a model call: read the JSON body (bounded by `--max-request-body`) so
//! its model can be checked against the provider's allowlist before anything is sent.
//!
//! Refusals are written in the provider's own error shape so SDKs show a readable message:
//! OpenAI `{"error": {...}}`, Anthropic `{"type": "error", "error": {...}}`.

use crate::net::upstream::ProxyBody;
use crate::provider::ProviderKind;
use crate::usage::request::RequestFacts;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

/// Why the body could not be read.
#[derive(Debug)]
pub enum ReadError {
    TooLarge,
    /// The client stopped sending for `--idle-timeout`.
    Idle,
    Body(String),
}

/// Read the whole request body (at most `limit` bytes).
///
/// A body whose declared length is already over `limit` is refused before the first read: with
/// `Expect: 100-continue` the client is then never asked for it (hyper sends `100 Continue` only
/// once the body is polled), and nothing of it is read in any case.
pub async fn read<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(ReadError::TooLarge)
        }
        Err(e) if e.downcast_ref::<super::body::IdleTimeout>().is_some() => {
            return Err(ReadError::Idle)
        }
        Err(e) => return Err(ReadError::Body(e.to_string())),
    };
    Ok(bytes)
}

/// Whether `route`'s policy lets this request through.
pub fn allowed(
    enforce: bool,
    models: &std::collections::HashSet<String>,
    requested: &RequestFacts,
) -> bool {
    if !enforce {
        return true;
    }
    requested.well_formed && requested.model.as_ref().is_some_and(|m| models.contains(m))
}

/// A JSON error in the provider's shape.
pub fn provider_error(
    kind: ProviderKind,
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<ProxyBody> {
    let body = match kind {
        ProviderKind::Anthropic => serde_json::json!({
            "type": "error",
            "error": { "type": if status == StatusCode::FORBIDDEN { "permission_error" } else { "invalid_request_error" }, "message": message },
        }),
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => serde_json::json!({
            "error": { "message": message, "type": "invalid_request_error", "param": "model", "code": code },
        }),
    };
    let mut resp = Response::new(
        Full::from(body.to_string())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(super::REQUEST_ID, v);
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body is left unread: an HTTP/1 connection cannot be reused after it
        // (hyper drops this field on HTTP/2, where only the stream ends).
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

//! Header rewriting between the client and the upstream.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1), and any header the `Connection` header nominates, stay
//! on their hop. When the provider has a key, every client credential is removed first —
//! including aliases that some servers fold together (`x_api_key`, odd case, repeats) — and the
//! provider key is injected. A nominated header can never remove the injected key, because
//! injection happens last.

use crate::provider::ProviderKind;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that never cross the proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Credential headers replaced by the provider key.
const CREDENTIALS: &[&str] = &["authorization", "x-api-key", "api-key"];

/// Remove hop-by-hop headers and those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Prepare a client request's headers for the upstream.
pub fn prepare_request(
    headers: &mut HeaderMap,
    kind: ProviderKind,
    key: Option<&str>,
) -> Result<(), InvalidKey> {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    // Usage is parsed from the bytes as they pass; a compressed answer would hide it.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let Some(key) = key else {
        return Ok(());
    };
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_credential(n.as_str()))
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(name);
    }
    let (name, value) = match kind {
        ProviderKind::Anthropic => (HeaderName::from_static("x-api-key"), key.to_string()),
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            (header::AUTHORIZATION, format!("Bearer {key}"))
        }
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| InvalidKey)?;
    value.set_sensitive(true);
    headers.insert(name, value);
    Ok(())
}

/// Remove every credential header (the direct bridge's agent token must never travel on).
pub fn strip_credentials(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_credential(n.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Prepare an upstream response's headers for the client.
pub fn prepare_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// `Transfer-Encoding` other than one `chunked` (see [`check_transfer_encoding`]).
#[derive(Debug, thiserror::Error)]
#[error("Transfer-Encoding other than a single `chunked`")]
pub struct BadTransferEncoding;

/// A request body may be framed by `Transfer-Encoding: chunked` alone (RELIABILITY C4). hyper
/// accepts any list that ends in `chunked` (`gzip, chunked`, `chunked, chunked`, the header
/// repeated) and removes only the chunked layer, so the upstream would get bytes still under the
/// other codings with nothing saying so; such requests are refused instead. h2 never gets here
/// (the field is illegal there and h2 resets the stream).
pub fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), BadTransferEncoding> {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(()),
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(BadTransferEncoding),
    }
}

/// A stored key that cannot be a header value (validated at write, so only an old row).
#[derive(Debug, thiserror::Error)]
#[error("provider key is not a valid header value")]
pub struct InvalidKey;

/// A header carrying client credentials (`authorization`, `x-api-key`, `api-key`, and their
/// underscore aliases).
pub fn is_credential(name: &str) -> bool {
    let folded = name.replace('_', "-");
    CREDENTIALS.contains(&folded.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_and_aliases_are_replaced() {
        let mut h = headers(&[
            ("authorization", "Bearer client"),
            ("authorization", "Bearer second"),
            ("x-api-key", "client"),
            ("x_api_key", "client"),
            ("api_key", "client"),
            ("proxy-authorization", "Basic abc"),
            ("connection", "x-api-key, keep-alive, x-custom"),
            ("x-custom", "gone"),
            ("content-type", "application/json"),
            ("host", "api.openai.com"),
        ]);
        prepare_request(&mut h, ProviderKind::Openai, Some("sk-provider")).unwrap();
        let auth: Vec<_> = h.get_all("authorization").iter().collect();
        assert_eq!(auth, vec!["Bearer sk-provider"]);
        for gone in [
            "x-api-key",
            "x_api_key",
            "api_key",
            "proxy-authorization",
            "connection",
            "x-custom",
            "host",
        ] {
            assert!(h.get(gone).is_none(), "{gone} must be removed");
        }
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["accept-encoding"], "identity");
    }

    #[test]
    fn anthropic_gets_x_api_key_and_byok_passes_through() {
        let mut h = headers(&[("x-api-key", "client"), ("authorization", "Bearer client")]);
        prepare_request(&mut h, ProviderKind::Anthropic, Some("sk-ant")).unwrap();
        assert_eq!(h["x-api-key"], "sk-ant");
        assert!(h.get("authorization").is_none());

        let mut h = headers(&[
            ("authorization", "Bearer mine"),
            ("proxy-authorization", "Basic x"),
        ]);
        prepare_request(&mut h, ProviderKind::Openai, None).unwrap();
        assert_eq!(h["authorization"], "Bearer mine");
        assert!(h.get("proxy-authorization").is_none());
    }

    #[test]
    fn only_a_single_chunked_transfer_coding_is_accepted() {
        let te = |values: &[&str]| {
            let pairs: Vec<_> = values.iter().map(|v| ("transfer-encoding", *v)).collect();
            check_transfer_encoding(&headers(&pairs)).is_ok()
        };
        assert!(te(&[]));
        assert!(te(&["chunked"]));
        assert!(te(&["Chunked"]));
        for bad in [
            &["gzip"][..],
            &["gzip, chunked"],
            &["chunked, chunked"],
            &["xchunked"],
            &["chunked", "chunked"],
            &["identity"],
        ] {
            assert!(!te(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_nominated_header_never_removes_the_injected_key() {
        let mut h = headers(&[("connection", "authorization")]);
        prepare_request(&mut h, ProviderKind::Openai, Some("sk-provider")).unwrap();
        assert_eq!(h["authorization"], "Bearer sk-provider");
    }
}

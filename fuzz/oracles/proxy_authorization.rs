//! Oracle of the `proxy_authorization` fuzz target.

use super::{Outcome, Violation};
use aibridge_proxy::auth::{self, AuthError};
use aibridge_proxy::config::AuthMode;
use aibridge_proxy::router::Snapshot;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, PROXY_AUTHORIZATION};

/// `Proxy-Authorization` parsing ([`auth::basic_password`]) and its use in
/// [`auth::authenticate`]. The input is the header value.
///
/// Invariants: an accepted credential has a non-empty password and fits the length bound;
/// re-encoding that password under any user label and any scheme case gives it back; the
/// scheme's case never matters; `authenticate` fails exactly as the parser does (with an empty
/// token table an accepted credential is `Unknown`), two headers are always `Ambiguous`, and
/// `--auth none` accepts anything.
pub fn proxy_authorization(data: &[u8]) -> Outcome {
    let parsed = auth::basic_password(data);
    if let Ok(password) = &parsed {
        ensure!(!password.is_empty(), "empty password accepted");
        ensure!(data.len() <= 4096, "over-long value accepted");
        let after_first_colon = format!(":{password}");
        for (scheme, user, expect) in [
            ("Basic", "agent", password.as_str()),
            ("basic", "", password.as_str()),
            // The password is everything after the *first* colon.
            ("BASIC", "u:", after_first_colon.as_str()),
        ] {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{password}").as_bytes());
            let again = format!("{scheme} {encoded}");
            if again.len() <= 4096 {
                ensure_eq!(
                    auth::basic_password(again.as_bytes()),
                    Ok(expect.to_string()),
                    "re-encoded credential with scheme {scheme} and user {user:?}"
                );
            }
        }
    }
    // The scheme is case-insensitive: flipping its case never changes the answer (the rebuilt
    // value is the trimmed one, so only inputs within the length bound compare).
    if let (Ok(text), true) = (std::str::from_utf8(data), data.len() <= 4096) {
        let trimmed = text.trim();
        if let Some((scheme, rest)) = trimmed.split_once(' ') {
            for flipped in [scheme.to_ascii_uppercase(), scheme.to_ascii_lowercase()] {
                let value = format!("{flipped} {rest}");
                ensure_eq!(
                    auth::basic_password(value.as_bytes()),
                    parsed,
                    "scheme case of {trimmed:?}"
                );
            }
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let snapshot = Snapshot::empty();
        let mut headers = HeaderMap::new();
        headers.insert(PROXY_AUTHORIZATION, value.clone());
        let expected = match &parsed {
            Ok(_) => AuthError::Unknown,
            Err(e) => *e,
        };
        ensure_eq!(
            auth::authenticate(&headers, &snapshot, AuthMode::Token).err(),
            Some(expected),
            "authenticate disagrees with basic_password"
        );
        ensure!(
            auth::authenticate(&headers, &snapshot, AuthMode::None).is_ok(),
            "--auth none refused a request"
        );
        headers.append(PROXY_AUTHORIZATION, value);
        ensure_eq!(
            auth::authenticate(&headers, &snapshot, AuthMode::Token).err(),
            Some(AuthError::Ambiguous),
            "two Proxy-Authorization headers"
        );
    }
    Ok(())
}

//! Agent authentication from `Proxy-Authorization: Basic base64(user:token)`.
//!
//! The token is the password (everything after the first colon, RFC 7617); the username is a
//! label only. The presented token is hashed (SHA-256) and looked up in the snapshot's token
//! table — never in the database; see [`Snapshot::token`] for the constant-time compare. An
//! [`Authenticated`] can only be made here, so a path that skips the check does not compile.

use crate::config::AuthMode;
use crate::router::Snapshot;
use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION, PROXY_AUTHORIZATION};
use std::sync::Arc;
use uuid::Uuid;

/// Longest header value considered; anything longer is refused before decoding.
const MAX_CREDENTIALS_LEN: usize = 4096;

/// Why authentication failed. All of them answer 407; the reason goes to logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no Proxy-Authorization header")]
    Missing,
    #[error("more than one Proxy-Authorization header")]
    Ambiguous,
    #[error("Proxy-Authorization scheme is not Basic")]
    Scheme,
    #[error("Proxy-Authorization credentials are malformed")]
    Malformed,
    #[error("unknown or revoked token")]
    Unknown,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "auth_missing",
            AuthError::Ambiguous => "auth_ambiguous",
            AuthError::Scheme => "auth_scheme",
            AuthError::Malformed => "auth_malformed",
            AuthError::Unknown => "auth_unknown",
        }
    }
}

/// Proof that a request was authenticated (or that auth is off).
#[derive(Debug, Clone)]
pub struct Authenticated {
    token_id: Option<Uuid>,
    user: Arc<str>,
}

impl Authenticated {
    /// `--auth none`: no token, the label `anonymous`.
    fn anonymous() -> Self {
        Authenticated {
            token_id: None,
            user: Arc::from("anonymous"),
        }
    }

    /// The token's id; `None` with `--auth none`.
    pub fn token_id(&self) -> Option<Uuid> {
        self.token_id
    }

    /// The token's user label (`anonymous` with `--auth none`).
    pub fn user(&self) -> &Arc<str> {
        &self.user
    }
}

/// Authenticate a request against the snapshot's tokens.
pub fn authenticate(
    headers: &HeaderMap,
    snapshot: &Snapshot,
    mode: AuthMode,
) -> Result<Authenticated, AuthError> {
    if mode == AuthMode::None {
        return Ok(Authenticated::anonymous());
    }
    let mut values = headers.get_all(PROXY_AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Ambiguous);
    }
    let token = basic_password(value.as_bytes())?;
    known_token(snapshot, &token)
}

/// The active token `token` is, by its digest (never the database).
fn known_token(snapshot: &Snapshot, token: &str) -> Result<Authenticated, AuthError> {
    let entry = snapshot
        .token(&crate::secret::token::digest(token))
        .ok_or(AuthError::Unknown)?;
    Ok(Authenticated {
        token_id: Some(entry.id),
        user: entry.user.clone(),
    })
}

/// Authenticate a direct-bridge request, where the agent token stands in for the provider API
/// key its SDK sends: `Authorization: Bearer TOKEN` (OpenAI SDKs) or `x-api-key: TOKEN`
/// (Anthropic SDKs). Exactly one credential must be present.
pub fn authenticate_api_key(
    headers: &HeaderMap,
    snapshot: &Snapshot,
    mode: AuthMode,
) -> Result<Authenticated, AuthError> {
    if mode == AuthMode::None {
        return Ok(Authenticated::anonymous());
    }
    let bearer = headers.get_all(AUTHORIZATION).iter().map(|v| {
        let v = v.to_str().map_err(|_| AuthError::Malformed)?;
        match v.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
            _ => Err(AuthError::Scheme),
        }
    });
    let api_key = headers
        .get_all("x-api-key")
        .iter()
        .map(|v| v.to_str().map(str::trim).map_err(|_| AuthError::Malformed));
    let mut presented = bearer.chain(api_key);
    let token = presented.next().ok_or(AuthError::Missing)??;
    if presented.next().is_some() {
        return Err(AuthError::Ambiguous);
    }
    if token.is_empty() || token.len() > MAX_CREDENTIALS_LEN {
        return Err(AuthError::Malformed);
    }
    known_token(snapshot, token)
}

/// The password of a Basic credential: `Basic base64(user:password)`, scheme case-insensitive.
pub fn basic_password(value: &[u8]) -> Result<String, AuthError> {
    if value.len() > MAX_CREDENTIALS_LEN {
        return Err(AuthError::Malformed);
    }
    let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or(AuthError::Scheme)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::Scheme);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_start())
        .map_err(|_| AuthError::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
    let (_user, password) = decoded.split_once(':').ok_or(AuthError::Malformed)?;
    if password.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn basic_parsing() {
        let ok = |v: String| basic_password(v.as_bytes());
        assert_eq!(ok(format!("Basic {}", b64("user:tok"))).unwrap(), "tok");
        assert_eq!(ok(format!("basic {}", b64("user:tok"))).unwrap(), "tok");
        assert_eq!(ok(format!("BASIC {}", b64(":tok"))).unwrap(), "tok");
        assert_eq!(
            ok(format!("Basic {}", b64("u:a:b:c"))).unwrap(),
            "a:b:c",
            "password keeps its colons"
        );
        assert_eq!(ok(format!("Bearer {}", b64("u:t"))), Err(AuthError::Scheme));
        assert_eq!(ok("Digest abc".into()), Err(AuthError::Scheme));
        assert_eq!(ok("Basic".into()), Err(AuthError::Scheme));
        assert_eq!(ok("Basic !!!".into()), Err(AuthError::Malformed));
        assert_eq!(
            ok(format!("Basic {}", b64("nocolon"))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            ok(format!("Basic {}", b64("tokenasuser:"))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            ok("Basic dXNlcjp0b2s".into()),
            Err(AuthError::Malformed),
            "missing padding"
        );
        assert_eq!(
            ok("Basic dXNl cjp0b2s=".into()),
            Err(AuthError::Malformed),
            "space inside"
        );
        let non_utf8 = base64::engine::general_purpose::STANDARD.encode([b'u', b':', 0xff, 0xfe]);
        assert_eq!(ok(format!("Basic {non_utf8}")), Err(AuthError::Malformed));
        assert_eq!(
            ok(format!("Basic {}", b64(&format!("u:{}", "x".repeat(8192))))),
            Err(AuthError::Malformed)
        );
    }
}

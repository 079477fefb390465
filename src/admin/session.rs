//! Console sessions: the admin token, typed once into the sign-in form, is exchanged for a
//! random session id carried in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the
//! console is reached over HTTPS) that expires. Scripts keep using the bearer token.
//!
//! The cookie's path is `/api`: it reaches the API and this endpoint, never the direct bridge
//! (which relays request headers to providers). Sessions live in this process's memory (a
//! restart signs everyone out) and are held only as the SHA-256 of their id.
//!
//! Writes made with the cookie must prove they come from the console's own page: an `Origin`
//! naming this host, and the session's CSRF token in `X-CSRF-Token` (handed to the page by
//! `GET /api/session`, kept only in its memory).

use super::error::ApiError;
use super::AdminState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// The session cookie's name.
pub const COOKIE: &str = "aibridge_session";
/// The header a cookie-authenticated write carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after sign-in.
const TTL: time::Duration = time::Duration::hours(12);
/// Sessions held at most; signing in beyond it drops the oldest.
const MAX_SESSIONS: usize = 1024;

struct Session {
    csrf: String,
    expires_at: OffsetDateTime,
}

/// The signed-in sessions of this process.
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

/// A session found from a request's cookie.
pub struct Found {
    hash: [u8; 32],
    csrf: String,
    expires_at: OffsetDateTime,
}

impl Sessions {
    /// Open a session; returns its id (for the cookie only) and its CSRF token.
    fn open(&self) -> Result<(String, Found), ApiError> {
        let id = random_token()?;
        let csrf = random_token()?;
        let hash = digest(&id);
        let now = OffsetDateTime::now_utc();
        let expires_at = now + TTL;
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            hash,
            Session {
                csrf: csrf.clone(),
                expires_at,
            },
        );
        Ok((
            id,
            Found {
                hash,
                csrf,
                expires_at,
            },
        ))
    }

    /// The live session named by the request's cookie, if any.
    pub fn find(&self, headers: &HeaderMap) -> Option<Found> {
        let id = cookie_value(headers)?;
        let hash = digest(id);
        let map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get(&hash)?;
        (s.expires_at > OffsetDateTime::now_utc()).then(|| Found {
            hash,
            csrf: s.csrf.clone(),
            expires_at: s.expires_at,
        })
    }

    fn close(&self, found: &Found) {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&found.hash);
    }
}

/// Why a cookie-authenticated write was refused, or `None` when it may proceed: reads pass;
/// writes need a same-origin `Origin` and the session's CSRF token.
pub fn csrf_refusal(method: &Method, headers: &HeaderMap, found: &Found) -> Option<&'static str> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if !same_origin(headers) {
        return Some("a write from the console must carry this host's Origin");
    }
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if presented.is_empty() || !bool::from(presented.as_bytes().ct_eq(found.csrf.as_bytes())) {
        return Some("missing or wrong X-CSRF-Token");
    }
    None
}

/// Whether the request's `Origin` names the host it was sent to (`Host`), over http or https.
fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| !a.is_empty() && a.eq_ignore_ascii_case(host))
}

/// Whether the browser reached the console over HTTPS (directly, or through a TLS-terminating
/// reverse proxy that says so): the cookie is then `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"));
    forwarded || origin
}

/// The session cookie's value, when exactly one is sent.
fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    let mut found = None;
    for line in headers.get_all(header::COOKIE) {
        for pair in line.to_str().ok()?.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == COOKIE {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(value);
                }
            }
        }
    }
    found.filter(|v| !v.is_empty() && v.len() <= 128)
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// 32 random bytes, base64url.
fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        tracing::error!(error = %e, "no randomness for a console session");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            "no randomness available",
        )
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn set_cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={value}; Path=/api; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What the page learns about its session: the CSRF token and when the session ends.
fn session_body(found: &Found) -> Json<serde_json::Value> {
    Json(json!({
        "csrf_token": found.csrf,
        "expires_at": super::views::rfc3339(found.expires_at),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    token: String,
}

/// `POST /api/session {"token": ...}`: sign in with the admin token.
pub async fn sign_in(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    super::error::ApiJson(body): super::error::ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    if headers.contains_key(header::ORIGIN) && !same_origin(&headers) {
        tracing::warn!("console sign-in refused: cross-origin");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "sign-in must come from the console's own page",
        ));
    }
    let token = body.token.trim();
    if token.is_empty()
        || token.len() > 512
        || !bool::from(digest(token).ct_eq(&state.admin_token_hash))
    {
        tracing::warn!("console sign-in refused: wrong admin token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "that is not the admin token",
        ));
    }
    let (id, found) = state.sessions.open()?;
    tracing::info!("console signed in");
    let mut response = session_body(&found).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&id, TTL.whole_seconds(), over_tls(&headers)),
    );
    Ok(response)
}

/// `GET /api/session`: the current session's CSRF token and expiry, or 401.
pub async fn current(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let found = state
        .sessions
        .find(&headers)
        .ok_or_else(ApiError::unauthorized)?;
    Ok(session_body(&found))
}

/// `DELETE /api/session`: sign out (the session ends here, and the cookie is cleared).
pub async fn sign_out(
    State(state): State<Arc<AdminState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(found) = state.sessions.find(&headers) {
        if let Some(reason) = csrf_refusal(&method, &headers, &found) {
            tracing::warn!(reason, "console sign-out refused");
            return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", reason));
        }
        state.sessions.close(&found);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0, over_tls(&headers)));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origin_must_name_the_host() {
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8889"),
            ("host", "127.0.0.1:8889")
        ])));
        assert!(same_origin(&headers(&[
            ("origin", "https://Admin.example"),
            ("host", "admin.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8889")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "null"),
            ("host", "127.0.0.1:8889")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8889")])));
    }

    #[test]
    fn one_session_cookie_is_read_among_others() {
        let h = headers(&[("cookie", "a=1; aibridge_session=abc; b=2")]);
        assert_eq!(cookie_value(&h), Some("abc"));
        let twice = headers(&[
            ("cookie", "aibridge_session=abc"),
            ("cookie", "aibridge_session=def"),
        ]);
        assert_eq!(cookie_value(&twice), None);
        assert_eq!(
            cookie_value(&headers(&[("cookie", "aibridge_session=")])),
            None
        );
    }

    #[test]
    fn writes_need_origin_and_token_reads_do_not() {
        let sessions = Sessions::default();
        let (id, found) = sessions.open().unwrap();
        let cookie = format!("{COOKIE}={id}");
        let base = [("host", "h:1"), ("cookie", cookie.as_str())];
        let found_again = sessions.find(&headers(&base)).unwrap();
        assert_eq!(found_again.csrf, found.csrf);
        assert!(csrf_refusal(&Method::GET, &headers(&base), &found).is_none());
        assert!(csrf_refusal(&Method::POST, &headers(&base), &found).is_some());
        let with_origin = [base[0], base[1], ("origin", "http://h:1")];
        assert!(csrf_refusal(&Method::POST, &headers(&with_origin), &found).is_some());
        let full = [
            with_origin[0],
            with_origin[1],
            with_origin[2],
            ("x-csrf-token", found.csrf.as_str()),
        ];
        assert!(csrf_refusal(&Method::DELETE, &headers(&full), &found).is_none());
        let wrong = [
            with_origin[0],
            with_origin[1],
            with_origin[2],
            ("x-csrf-token", "nope"),
        ];
        assert!(csrf_refusal(&Method::PATCH, &headers(&wrong), &found).is_some());
        sessions.close(&found);
        assert!(sessions.find(&headers(&base)).is_none());
    }
}

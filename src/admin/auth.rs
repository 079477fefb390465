//! The admin bearer token: read from a 0600 file (generated on first start), held only as its
//! SHA-256, compared in constant time. A missing or wrong token gets a bare 401. The console's
//! session cookie is the other way in (see [`super::session`]).

use super::error::ApiError;
use super::AdminState;
use crate::secret::files;
use crate::secret::Secret;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Load the admin token's hash from `path`, creating the file (0600) with a fresh token if it
/// does not exist. Returns the hash and whether the file was created.
pub fn load_or_create(path: &Path) -> Result<([u8; 32], bool), files::FileError> {
    let created = if path.exists() {
        false
    } else {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| files::FileError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let token = Secret::new(format!(
            "abpa_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ));
        files::write_private(path, format!("{}\n", token.expose()).as_bytes())?;
        true
    };
    files::check_private(path)?;
    let token =
        Secret::new(
            std::fs::read_to_string(path).map_err(|source| files::FileError::Io {
                path: path.display().to_string(),
                source,
            })?,
        );
    Ok((hash(token.expose().trim()), created))
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Middleware: require `Authorization: Bearer <admin token>`, or (no `Authorization` at all)
/// a console session cookie, whose writes must also pass the CSRF check
/// ([`super::session::csrf_refusal`]).
pub async fn require_token(
    State(state): State<Arc<AdminState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !req.headers().contains_key(AUTHORIZATION) {
        let Some(found) = state.sessions.find(req.headers()) else {
            return Err(ApiError::unauthorized());
        };
        if let Some(reason) = super::session::csrf_refusal(req.method(), req.headers(), &found) {
            tracing::warn!(method = %req.method(), path = req.uri().path(), reason, "console write refused");
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                reason,
            ));
        }
        return Ok(next.run(req).await);
    }
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim),
        _ => None,
    };
    let Some(presented) = presented.filter(|t| !t.is_empty() && t.len() <= 512) else {
        return Err(ApiError::unauthorized());
    };
    if bool::from(hash(presented).ct_eq(&state.admin_token_hash)) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::unauthorized())
    }
}

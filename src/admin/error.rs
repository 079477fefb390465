//! The admin API's one mapping from errors to the wire: `{"error": "...", "detail": "..."}`.
//!
//! `error` is a short stable phrase; `detail` helps the caller fix the request. Database errors
//! are logged and answered with a generic 500: their text can name tables, hosts or values.

use crate::store::StoreError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not found",
            format!("no such {what}"),
        )
    }

    pub fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.error, "detail": self.detail })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(detail) => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
            StoreError::Invalid(e) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
            }
            StoreError::InvalidInput(detail) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail)
            }
            e @ (StoreError::Crypto(_) | StoreError::UnreadableKey { .. }) => {
                tracing::error!(error = %e, "admin API secrets error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error",
                    "a provider key could not be encrypted or decrypted",
                )
            }
            e @ (StoreError::Database(_) | StoreError::Migrate(_) | StoreError::UnsupportedUrl) => {
                tracing::error!(error = %e, "admin API database error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error",
                    "the database is unavailable",
                )
            }
        }
    }
}

/// serde quotes the value it rejected (`invalid type: string "sk-..."`), which may be a key:
/// keep the field path and the expectation, drop every quoted value.
fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for c in text.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…\"");
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// `Json<T>` whose rejections are answered in our error shape: malformed JSON 400, well-formed
/// but wrong (types, unknown fields) 422, too large 413, wrong content type 415.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let detail = redact_quoted(&r.body_text());
    match r {
        JsonRejection::JsonDataError(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail)
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed JSON", detail)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type",
            "send Content-Type: application/json",
        ),
        other => {
            let status = other.status();
            let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "payload too large"
            } else {
                "bad request"
            };
            ApiError::new(status, error, detail)
        }
    }
}

/// `Path<T>` whose rejection (a malformed id such as `/models/xyz`) is a JSON 404: no such
/// resource can exist at that path.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(_) => Err(ApiError::not_found("resource")),
        }
    }
}

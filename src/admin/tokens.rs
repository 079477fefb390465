//! `/tokens`: the clear token appears once, in the creation response.
//!
//! `POST /tokens:batch` creates many tokens in one transaction: one change counter, one
//! notification, one delta for every replica.

use super::error::{ApiError, ApiJson, ApiPath};
use super::views::{rfc3339, List, TokenView};
use super::AdminState;
use crate::store::{AgentToken, NewToken};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// The most tokens one batch request may create (its body stays far below the body limit).
pub const MAX_BATCH_REQUEST: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    user: String,
    /// RFC 3339; the token is refused from then on. Absent: never expires.
    #[serde(default)]
    expires_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    tokens: Vec<CreateToken>,
}

#[derive(Serialize)]
pub struct CreatedToken {
    id: Uuid,
    user: String,
    token: String,
    created_at: String,
    expires_at: Option<String>,
}

impl CreatedToken {
    fn new(row: AgentToken, token: &crate::secret::Secret<String>) -> Self {
        CreatedToken {
            id: row.id,
            user: row.user,
            token: token.expose().clone(),
            created_at: rfc3339(row.created_at),
            expires_at: row.expires_at.map(rfc3339),
        }
    }
}

impl CreateToken {
    /// The store's form, with `expires_at` parsed (422 naming the field when it is not a time).
    fn parse(self) -> Result<NewToken, ApiError> {
        let expires_at = match self.expires_at.as_deref() {
            None => None,
            Some(t) => Some(OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "expires_at must be an RFC 3339 time such as 2027-01-31T00:00:00Z",
                )
            })?),
        };
        Ok(NewToken {
            user: self.user,
            expires_at,
        })
    }
}

pub async fn list(State(state): State<Arc<AdminState>>) -> Result<Json<List<TokenView>>, ApiError> {
    let tokens = state.store.list_tokens().await?;
    Ok(Json(List::all(
        tokens.into_iter().map(TokenView::from).collect(),
    )))
}

pub async fn create(
    State(state): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let new = body.parse()?;
    let (row, token) = state
        .store
        .create_token_with(&new.user, new.expires_at)
        .await?;
    state.settle().await;
    Ok((StatusCode::CREATED, Json(CreatedToken::new(row, &token))))
}

/// Create up to [`MAX_BATCH_REQUEST`] tokens at once: all or none.
pub async fn create_batch(
    State(state): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<CreateBatch>,
) -> Result<(StatusCode, Json<List<CreatedToken>>), ApiError> {
    if body.tokens.is_empty() || body.tokens.len() > MAX_BATCH_REQUEST {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("tokens must hold 1 to {MAX_BATCH_REQUEST} entries"),
        ));
    }
    let batch = body
        .tokens
        .into_iter()
        .map(CreateToken::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let created = state.store.create_tokens(&batch).await?;
    state.settle().await;
    let items = created
        .into_iter()
        .map(|(row, token)| CreatedToken::new(row, &token))
        .collect();
    Ok((StatusCode::CREATED, Json(List::all(items))))
}

pub async fn revoke(
    State(state): State<Arc<AdminState>>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    if !state.store.revoke_token(id).await? {
        return Err(ApiError::not_found("active token"));
    }
    state.settle().await;
    Ok(StatusCode::NO_CONTENT)
}

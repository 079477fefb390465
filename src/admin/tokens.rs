//! `/tokens`: the clear token appears once, in the creation response.

use super::error::{ApiError, ApiJson, ApiPath};
use super::views::{rfc3339, List, TokenView};
use super::AdminState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    user: String,
}

#[derive(Serialize)]
pub struct CreatedToken {
    id: Uuid,
    user: String,
    token: String,
    created_at: String,
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
    let (row, token) = state.store.create_token(&body.user).await?;
    state.settle().await;
    let created = CreatedToken {
        id: row.id,
        user: row.user,
        token: token.expose().clone(),
        created_at: rfc3339(row.created_at),
    };
    Ok((StatusCode::CREATED, Json(created)))
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

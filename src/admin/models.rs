//! `/models` and the `/default-model` pointer.

use super::error::{ApiError, ApiJson, ApiPath};
use super::views::{List, ModelView};
use super::AdminState;
use crate::store::{ModelPatch, NewModel};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    provider: String,
    model: String,
    display_name: Option<String>,
    context_limit: Option<i64>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    is_default: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateModel {
    model: Option<String>,
    /// Absent: unchanged; `null`: cleared.
    #[serde(default, deserialize_with = "present")]
    display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    context_limit: Option<Option<i64>>,
    enabled: Option<bool>,
    is_default: Option<bool>,
}

/// Tell a field set to `null` from an absent one.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultModel {
    model_id: Option<Uuid>,
}

pub async fn list(State(state): State<Arc<AdminState>>) -> Result<Json<List<ModelView>>, ApiError> {
    let models = state.store.list_models().await?;
    Ok(Json(List::all(
        models.into_iter().map(ModelView::from).collect(),
    )))
}

pub async fn get(
    State(state): State<Arc<AdminState>>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ModelView>, ApiError> {
    let model = state
        .store
        .get_model(id)
        .await?
        .ok_or_else(|| ApiError::not_found("model"))?;
    Ok(Json(model.into()))
}

pub async fn create(
    State(state): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<CreateModel>,
) -> Result<(StatusCode, Json<ModelView>), ApiError> {
    let model = state
        .store
        .create_model(NewModel {
            provider: body.provider,
            model: body.model,
            display_name: body.display_name,
            context_limit: body.context_limit,
            enabled: body.enabled,
            is_default: body.is_default,
        })
        .await?;
    state.settle().await;
    Ok((StatusCode::CREATED, Json(model.into())))
}

pub async fn update(
    State(state): State<Arc<AdminState>>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateModel>,
) -> Result<Json<ModelView>, ApiError> {
    let patch = ModelPatch {
        model: body.model,
        display_name: body.display_name,
        context_limit: body.context_limit,
        enabled: body.enabled,
        is_default: body.is_default,
    };
    let model = state.store.update_model(id, patch).await?;
    state.settle().await;
    Ok(Json(model.into()))
}

pub async fn remove(
    State(state): State<Arc<AdminState>>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    if !state.store.delete_model(id).await? {
        return Err(ApiError::not_found("model"));
    }
    state.settle().await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_default(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<DefaultModel>, ApiError> {
    let model = state.store.default_model().await?;
    Ok(Json(DefaultModel {
        model_id: model.map(|m| m.id),
    }))
}

/// Idempotent; there is no DELETE: while models exist, one of them is the default.
pub async fn put_default(
    State(state): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<DefaultModel>,
) -> Result<Json<DefaultModel>, ApiError> {
    let id = body.model_id.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "model_id is required",
        )
    })?;
    let model = state.store.set_default_model(id).await?;
    state.settle().await;
    Ok(Json(DefaultModel {
        model_id: Some(model.id),
    }))
}

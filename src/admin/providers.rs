//! `/providers` and `/providers/{p}/keys`.

use super::error::{ApiError, ApiJson, ApiPath};
use super::views::{KeyView, List, ProviderView};
use super::AdminState;
use crate::provider::{Passthrough, ProviderKind};
use crate::secret::Secret;
use crate::store::{NewProvider, ProviderPatch};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    name: String,
    kind: ProviderKind,
    base_url: String,
    #[serde(default)]
    intercept_hosts: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    enforce_models: bool,
    #[serde(default)]
    passthrough: Passthrough,
    #[serde(default = "yes")]
    record_prompts: bool,
    #[serde(default)]
    api_keys: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProvider {
    name: Option<String>,
    kind: Option<ProviderKind>,
    base_url: Option<String>,
    intercept_hosts: Option<Vec<String>>,
    enabled: Option<bool>,
    enforce_models: Option<bool>,
    passthrough: Option<Passthrough>,
    record_prompts: Option<bool>,
    api_keys: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddKey {
    api_key: String,
}

fn secrets(keys: Vec<String>) -> Vec<Secret<String>> {
    keys.into_iter().map(Secret::new).collect()
}

pub async fn list(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<List<ProviderView>>, ApiError> {
    let snapshot = state.router.snapshot();
    let providers = state.store.list_providers().await?;
    Ok(Json(List::all(
        providers
            .into_iter()
            .map(|p| ProviderView::new(p, &snapshot))
            .collect(),
    )))
}

pub async fn get(
    State(state): State<Arc<AdminState>>,
    ApiPath(p): ApiPath<String>,
) -> Result<Json<ProviderView>, ApiError> {
    let provider = state
        .store
        .get_provider(&p)
        .await?
        .ok_or_else(|| ApiError::not_found("provider"))?;
    Ok(Json(ProviderView::new(provider, &state.router.snapshot())))
}

pub async fn create(
    State(state): State<Arc<AdminState>>,
    ApiJson(body): ApiJson<CreateProvider>,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    let created = state
        .store
        .create_provider(NewProvider {
            name: body.name,
            kind: body.kind,
            base_url: body.base_url,
            intercept_hosts: body.intercept_hosts,
            enabled: body.enabled,
            enforce_models: body.enforce_models,
            passthrough: body.passthrough,
            record_prompts: body.record_prompts,
            api_keys: secrets(body.api_keys),
        })
        .await?;
    state.settle().await;
    Ok((
        StatusCode::CREATED,
        Json(ProviderView::new(created, &state.router.snapshot())),
    ))
}

pub async fn update(
    State(state): State<Arc<AdminState>>,
    ApiPath(p): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateProvider>,
) -> Result<Json<ProviderView>, ApiError> {
    let patch = ProviderPatch {
        name: body.name,
        kind: body.kind,
        base_url: body.base_url,
        intercept_hosts: body.intercept_hosts,
        enabled: body.enabled,
        enforce_models: body.enforce_models,
        passthrough: body.passthrough,
        record_prompts: body.record_prompts,
        api_keys: body.api_keys.map(secrets),
    };
    let updated = state.store.update_provider(&p, patch).await?;
    state.settle().await;
    Ok(Json(ProviderView::new(updated, &state.router.snapshot())))
}

pub async fn remove(
    State(state): State<Arc<AdminState>>,
    ApiPath(p): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !state.store.delete_provider(&p).await? {
        return Err(ApiError::not_found("provider"));
    }
    state.settle().await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_key(
    State(state): State<Arc<AdminState>>,
    ApiPath(p): ApiPath<String>,
    ApiJson(body): ApiJson<AddKey>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let key = state.store.add_key(&p, Secret::new(body.api_key)).await?;
    state.settle().await;
    let view = KeyView {
        id: key.id,
        masked: key.masked(),
        created_at: super::views::rfc3339(key.created_at),
    };
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn remove_key(
    State(state): State<Arc<AdminState>>,
    ApiPath((p, key_id)): ApiPath<(String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    if !state.store.delete_key(&p, key_id).await? {
        return Err(ApiError::not_found("key"));
    }
    state.settle().await;
    Ok(StatusCode::NO_CONTENT)
}

//! `/interceptions` (filtered, cursor-paginated) and `/usage` (token totals per group).

use super::error::ApiError;
use super::views::{rfc3339, List};
use super::AdminState;
use crate::store::interceptions::{GroupBy, InterceptionFilter, UsageTotal};
use crate::store::Interception;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    provider: Option<String>,
    user: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

#[derive(Serialize)]
pub struct InterceptionView {
    id: Uuid,
    request_id: String,
    user: String,
    provider: String,
    model: Option<String>,
    method: String,
    path: String,
    status: i32,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cache_read_tokens: Option<i64>,
    cache_write_tokens: Option<i64>,
    usage_source: String,
    outcome: String,
    started_at: String,
    duration_ms: i64,
    ttfb_ms: Option<i64>,
    error: Option<String>,
}

impl From<Interception> for InterceptionView {
    fn from(r: Interception) -> Self {
        InterceptionView {
            id: r.id,
            request_id: r.request_id,
            user: r.user,
            provider: r.provider,
            model: r.model,
            method: r.method,
            path: r.path,
            status: r.status,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            usage_source: r.usage_source,
            outcome: r.outcome,
            started_at: rfc3339(r.started_at),
            duration_ms: r.duration_ms,
            ttfb_ms: r.ttfb_ms,
            error: r.error,
        }
    }
}

fn invalid(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", detail)
}

fn time_param(name: &str, v: &Option<String>) -> Result<Option<OffsetDateTime>, ApiError> {
    v.as_deref()
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|_| invalid(&format!("{name} must be an RFC 3339 timestamp")))
        })
        .transpose()
}

/// The cursor is opaque to clients: base64url of "unix-nanos:uuid" of the last item served.
fn encode_cursor(r: &Interception) -> String {
    let raw = format!("{}:{}", r.started_at.unix_timestamp_nanos(), r.id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(c: &str) -> Option<(OffsetDateTime, Uuid)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (nanos, id) = raw.split_once(':')?;
    let ts = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some((ts, Uuid::parse_str(id).ok()?))
}

pub async fn list(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<List<InterceptionView>>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid("limit must be from 1 to 1000"));
    }
    let before = match &q.cursor {
        Some(c) => {
            Some(decode_cursor(c).ok_or_else(|| invalid("cursor is not one this API returned"))?)
        }
        None => None,
    };
    let filter = InterceptionFilter {
        provider: q.provider,
        user: q.user,
        model: q.model,
        since: time_param("since", &q.since)?,
        until: time_param("until", &q.until)?,
        before,
        limit,
    };
    let rows = state.store.list_interceptions(&filter).await?;
    let next_cursor = if rows.len() as i64 == limit {
        rows.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(List {
        items: rows.into_iter().map(InterceptionView::from).collect(),
        next_cursor,
    }))
}

#[derive(Serialize)]
pub struct UsageView {
    group_by: &'static str,
    items: Vec<UsageTotal>,
}

pub async fn usage(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageView>, ApiError> {
    let (group_by, name) = match q.group_by.as_deref().unwrap_or("provider") {
        "provider" => (GroupBy::Provider, "provider"),
        "model" => (GroupBy::Model, "model"),
        "user" => (GroupBy::User, "user"),
        _ => return Err(invalid("group_by must be provider, model or user")),
    };
    let items = state
        .store
        .usage_totals(
            group_by,
            time_param("since", &q.since)?,
            time_param("until", &q.until)?,
        )
        .await?;
    Ok(Json(UsageView {
        group_by: name,
        items,
    }))
}

//! `/interceptions` (filtered, cursor-paginated), `/interceptions/{id}` and `/usage` (token
//! totals per group; model calls only unless `include=passthrough`).

use super::error::{ApiError, ApiPath};
use super::views::{InterceptionView, List};
use super::AdminState;
use crate::store::interceptions::{Bucket, GroupBy, InterceptionFilter, UsageBucket, UsageTotal};
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
    route: Option<String>,
    tool: Option<String>,
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
    /// `passthrough` counts non-model calls too.
    include: Option<String>,
    /// `hour` or `day`: totals per time bucket as well (see [`bucket_range`]).
    bucket: Option<String>,
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
    if q.route
        .as_deref()
        .is_some_and(|r| r != "model" && r != "passthrough")
    {
        return Err(invalid("route must be model or passthrough"));
    }
    let filter = InterceptionFilter {
        provider: q.provider,
        user: q.user,
        model: q.model,
        route: q.route,
        tool: q.tool,
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

/// One record with its prompt and tool calls.
pub async fn get(
    State(state): State<Arc<AdminState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<InterceptionView>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("interception"))?;
    let record = state
        .store
        .get_interception(id)
        .await?
        .ok_or_else(|| ApiError::not_found("interception"))?;
    Ok(Json(InterceptionView::from(record)))
}

#[derive(Serialize)]
pub struct UsageView {
    group_by: &'static str,
    items: Vec<UsageTotal>,
    /// With `bucket`: the bucket width, the range the buckets cover, and the non-empty buckets.
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    buckets: Option<Vec<UsageBucket>>,
}

/// Longest range per bucket width, so one answer stays a few thousand rows at most.
const MAX_HOUR_RANGE: time::Duration = time::Duration::days(31);
const MAX_DAY_RANGE: time::Duration = time::Duration::days(400);

/// The bucket width and the range `[since, until)` a bucketed query covers: `until` defaults to
/// now, `since` to one day (hours) or thirty days (days) before `until`.
fn bucket_range(
    bucket: &str,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
) -> Result<(Bucket, &'static str, OffsetDateTime, OffsetDateTime), ApiError> {
    let (bucket, name, default_span, max_span) = match bucket {
        "hour" => (
            Bucket::Hour,
            "hour",
            time::Duration::days(1),
            MAX_HOUR_RANGE,
        ),
        "day" => (Bucket::Day, "day", time::Duration::days(30), MAX_DAY_RANGE),
        _ => return Err(invalid("bucket must be hour or day")),
    };
    let until = until.unwrap_or_else(OffsetDateTime::now_utc);
    let since = since.unwrap_or(until - default_span);
    if since >= until {
        return Err(invalid("since must be before until"));
    }
    if until - since > max_span {
        return Err(invalid(if name == "hour" {
            "hour buckets cover at most 31 days"
        } else {
            "day buckets cover at most 400 days"
        }));
    }
    Ok((bucket, name, since, until))
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
    let include_passthrough = match q.include.as_deref() {
        None => false,
        Some("passthrough") => true,
        Some(_) => return Err(invalid("include must be passthrough")),
    };
    let mut since = time_param("since", &q.since)?;
    let mut until = time_param("until", &q.until)?;
    let over_time = match q.bucket.as_deref() {
        Some(b) => {
            let (bucket, bucket_name, from, to) = bucket_range(b, since, until)?;
            (since, until) = (Some(from), Some(to));
            let rows = state
                .store
                .usage_buckets(bucket, group_by, from, to, include_passthrough)
                .await?;
            Some((bucket_name, rows))
        }
        None => None,
    };
    let items = state
        .store
        .usage_totals(group_by, since, until, include_passthrough)
        .await?;
    let (bucket, buckets) = over_time.map_or((None, None), |(n, rows)| (Some(n), Some(rows)));
    Ok(Json(UsageView {
        group_by: name,
        items,
        since: bucket.and(since.map(super::views::rfc3339)),
        until: bucket.and(until.map(super::views::rfc3339)),
        bucket,
        buckets,
    }))
}

//! The bucketed usage query behind the console's charts: hour and day buckets in UTC, per user,
//! model or provider, over `[since, until)`, on SQLite and PostgreSQL alike; and its API.

use crate::support::{both_backends, Env};
use aibridge_proxy::store::interceptions::{Bucket, GroupBy, UsageBucket};
use aibridge_proxy::store::{Interception, Store};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

fn record(
    at: OffsetDateTime,
    user: &str,
    model: &str,
    route: &str,
    tokens: (i64, i64),
) -> Interception {
    let id = uuid::Uuid::now_v7();
    Interception {
        id,
        request_id: id.to_string(),
        token_id: None,
        user: user.into(),
        provider: "openai".into(),
        model: Some(model.into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        input_tokens: Some(tokens.0),
        output_tokens: Some(tokens.1),
        cache_read_tokens: Some(1),
        cache_write_tokens: None,
        usage_source: "reported".into(),
        outcome: "completed".into(),
        started_at: at,
        duration_ms: 10,
        ttfb_ms: Some(5),
        error: None,
        route: route.into(),
        transport: "http".into(),
        prompt: None,
        tool_calls: Vec::new(),
        trace: None,
    }
}

fn bucket(at: &str, key: &str, requests: i64, input: i64, output: i64) -> UsageBucket {
    UsageBucket {
        bucket: at.into(),
        key: Some(key.into()),
        requests,
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: requests,
        cache_write_tokens: 0,
    }
}

async fn buckets_on(db: &crate::support::db::TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    store
        .insert_interceptions(&[
            // Just before the range: left out.
            record(
                at("2026-01-01T09:59:59.999Z"),
                "alice",
                "gpt-4o",
                "model",
                (1000, 1000),
            ),
            record(
                at("2026-01-01T10:00:00Z"),
                "alice",
                "gpt-4o",
                "model",
                (100, 20),
            ),
            record(
                at("2026-01-01T10:59:59.5Z"),
                "alice",
                "gpt-4o-mini",
                "model",
                (50, 5),
            ),
            record(at("2026-01-01T10:30:00Z"), "bob", "gpt-4o", "model", (7, 3)),
            // A non-model call: counted only with include_passthrough.
            record(
                at("2026-01-01T10:20:00Z"),
                "alice",
                "gpt-4o",
                "passthrough",
                (0, 0),
            ),
            record(at("2026-01-01T11:00:00Z"), "bob", "gpt-4o", "model", (1, 1)),
            // The next day.
            record(
                at("2026-01-02T00:30:00Z"),
                "alice",
                "gpt-4o",
                "model",
                (10, 10),
            ),
            // At `until`: left out (the range is half-open).
            record(
                at("2026-01-03T00:00:00Z"),
                "alice",
                "gpt-4o",
                "model",
                (1000, 1000),
            ),
        ])
        .await
        .unwrap();
    let since = at("2026-01-01T10:00:00Z");
    let until = at("2026-01-03T00:00:00Z");

    let hours = store
        .usage_buckets(Bucket::Hour, GroupBy::User, since, until, false)
        .await
        .unwrap();
    assert_eq!(
        hours,
        vec![
            bucket("2026-01-01T10:00:00Z", "alice", 2, 150, 25),
            bucket("2026-01-01T10:00:00Z", "bob", 1, 7, 3),
            bucket("2026-01-01T11:00:00Z", "bob", 1, 1, 1),
            bucket("2026-01-02T00:00:00Z", "alice", 1, 10, 10),
        ],
        "{}",
        db.backend
    );

    let days = store
        .usage_buckets(Bucket::Day, GroupBy::Model, since, until, false)
        .await
        .unwrap();
    assert_eq!(
        days,
        vec![
            bucket("2026-01-01T00:00:00Z", "gpt-4o", 3, 108, 24),
            bucket("2026-01-01T00:00:00Z", "gpt-4o-mini", 1, 50, 5),
            bucket("2026-01-02T00:00:00Z", "gpt-4o", 1, 10, 10),
        ],
        "{}",
        db.backend
    );

    let with_passthrough = store
        .usage_buckets(Bucket::Day, GroupBy::Provider, since, until, true)
        .await
        .unwrap();
    assert_eq!(with_passthrough.len(), 2, "{with_passthrough:?}");
    assert_eq!(with_passthrough[0].requests, 5);
    assert_eq!(with_passthrough[0].key.as_deref(), Some("openai"));
    store.close().await;
}
both_backends!(usage_buckets_by_hour_and_day, buckets_on);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_over_time_through_the_api() {
    let env = Env::openai().await;
    let now = OffsetDateTime::now_utc();
    env.app
        .store
        .insert_interceptions(&[
            record(
                now - time::Duration::minutes(5),
                "alice",
                "gpt-4o",
                "model",
                (3, 4),
            ),
            record(
                now - time::Duration::days(3),
                "alice",
                "gpt-4o",
                "model",
                (5, 6),
            ),
        ])
        .await
        .unwrap();
    // Hours default to the last day: one bucket, one record; the totals cover the same range.
    let (status, body) = env
        .admin_get("/api/v1/usage?bucket=hour&group_by=user")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bucket"], "hour");
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{body}");
    assert_eq!(buckets[0]["key"], "alice");
    assert_eq!(buckets[0]["input_tokens"], 3);
    assert!(buckets[0]["bucket"].as_str().unwrap().ends_with(":00:00Z"));
    assert_eq!(body["items"][0]["requests"], 1);
    // Days default to the last thirty: both.
    let (_, body) = env.admin_get("/api/v1/usage?bucket=day").await;
    assert_eq!(body["buckets"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["items"][0]["requests"], 2);
    // Without `bucket`, the answer is the totals alone, as before.
    let (_, body) = env.admin_get("/api/v1/usage").await;
    assert!(body.get("buckets").is_none(), "{body}");
    for (query, detail) in [
        ("bucket=week", "bucket must be hour or day"),
        (
            "bucket=hour&since=2026-01-01T00:00:00Z&until=2026-03-01T00:00:00Z",
            "hour buckets cover at most 31 days",
        ),
        (
            "bucket=day&since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            "since must be before until",
        ),
    ] {
        let (status, body) = env.admin_get(&format!("/api/v1/usage?{query}")).await;
        assert_eq!(status, 422, "{query}");
        assert_eq!(body["detail"], detail, "{query}");
    }
    env.stop().await;
}

//! Usage accounting end to end: every call through the MITM path leaves one interception row
//! with the exact token counts the upstream sent, streaming or not, for all three APIs.

use crate::support::db::TestDb;
use crate::support::upstream::{
    CHAT_JSON, CHAT_SSE, MESSAGES_JSON, MESSAGES_SSE, RESPONSES_JSON, RESPONSES_SSE,
};
use crate::support::*;
use aibridge_proxy::store::Interception;

type Tokens = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);

#[tokio::test]
async fn each_api_streaming_and_not_records_exact_tokens() {
    let proxy = Env::openai_and_anthropic().await;
    let client = proxy.client(Http::Two);
    // (url, stream, body the client must get, model, (input, output, cache read, cache write))
    let cases: Vec<(&str, bool, &str, &str, Tokens)> = vec![
        (
            CHAT,
            false,
            CHAT_JSON,
            "gpt-4o-mini",
            (Some(11), Some(3), Some(0), None),
        ),
        (
            CHAT,
            true,
            CHAT_SSE,
            "gpt-4o-2024-08-06",
            (Some(176), Some(35), Some(1024), None),
        ),
        (
            "https://api.openai.com/v1/responses",
            false,
            RESPONSES_JSON,
            "gpt-4.1-mini",
            (Some(32), Some(7), Some(8), None),
        ),
        (
            "https://api.openai.com/v1/responses",
            true,
            RESPONSES_SSE,
            "gpt-4.1",
            (Some(400), Some(20), Some(100), None),
        ),
        (
            MESSAGES,
            false,
            MESSAGES_JSON,
            "claude-sonnet",
            (Some(9), Some(2), None, None),
        ),
        (
            MESSAGES,
            true,
            MESSAGES_SSE,
            "claude-sonnet-4-5",
            (Some(25), Some(15), Some(3000), Some(2000)),
        ),
    ];
    for (url, stream, want_body, model, tokens) in cases {
        let body = format!("{{\"model\":\"{model}\",\"stream\":{stream}}}");
        let resp = client.post(url).body(body).call().await;
        assert_eq!(resp.status(), 200);
        let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        // Tee, don't transform: the client gets the upstream's bytes exactly.
        assert_eq!(
            resp.text().await.unwrap(),
            want_body,
            "{url} stream={stream}"
        );
        let r = proxy.row(&request_id).await;
        let got = (
            r.input_tokens,
            r.output_tokens,
            r.cache_read_tokens,
            r.cache_write_tokens,
        );
        assert_eq!(got, tokens, "{url} stream={stream}");
        assert_eq!(r.model.as_deref(), Some(model), "{url} stream={stream}");
        assert_eq!(
            (r.status, r.usage_source.as_str(), r.outcome.as_str()),
            (200, "reported", "completed")
        );
        assert_eq!(
            (r.user.as_str(), r.token_id),
            ("alice", Some(proxy.token_id))
        );
        assert_eq!(r.method, "POST");
        assert!(r.ttfb_ms.is_some() && r.error.is_none());
    }
    assert_eq!(proxy.rows().await.len(), 6, "one row per request");
}

#[tokio::test]
async fn failed_and_cancelled_requests_are_recorded_too() {
    let dead = ProviderSpec {
        name: "dead",
        ..ProviderSpec::anthropic(format!("https://127.0.0.1:{}", free_port()))
    };
    let proxy = Env::with(|o| o.http1_upstream().openai().provider(|_| dead)).await;
    let client = proxy.client(Http::One);
    let resp = client.post(MESSAGES).body("{}").call().await;
    assert_eq!(resp.status(), 502);
    let r = proxy.row(&request_id(&resp)).await;
    assert_eq!(
        (r.status, r.error.as_deref(), r.provider.as_str()),
        (502, Some("connect_refused"), "dead")
    );

    // The client drops a stream after its first event: recorded as client_cancelled.
    let mut resp = client.get("https://api.openai.com/v1/sse").call().await;
    let id = request_id(&resp);
    let _first = resp.chunk().await.unwrap();
    drop(resp);
    drop(client);
    let r = proxy.row(&id).await;
    assert_eq!(r.outcome, "client_cancelled");
    proxy.upstream.release();
}

#[tokio::test]
async fn model_policy_refuses_unlisted_models_in_the_providers_shape() {
    let proxy = Env::with(|o| o.openai().anthropic().max_request_body(64 * 1024)).await;
    use serde_json::json;
    for p in ["openai", "anthropic"] {
        let (status, _) = proxy
            .admin_patch(
                &format!("/api/v1/providers/{p}"),
                json!({"enforce_models": true}),
            )
            .await;
        assert_eq!(status, 200);
    }
    for (p, m) in [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet")] {
        let (status, _) = proxy
            .admin_post("/api/v1/models", json!({"provider": p, "model": m}))
            .await;
        assert_eq!(status, 201);
    }
    let client = proxy.client(Http::Two);
    let ok = client
        .post(CHAT)
        .body(r#"{"model":"gpt-4o-mini","messages":[]}"#)
        .call()
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(proxy.upstream.seen().len(), 1);

    let refused = client
        .post(CHAT)
        .body(r#"{"model":"gpt-5-secret","messages":[]}"#)
        .call()
        .await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-5-secret"));

    let refused = client
        .post(MESSAGES)
        .body(r#"{"model":"claude-opus","max_tokens":1}"#)
        .call()
        .await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(
        (body["type"].as_str(), body["error"]["type"].as_str()),
        (Some("error"), Some("permission_error"))
    );

    // Ambiguous (duplicate model keys) and non-JSON bodies are refused when the model matters.
    for bad in [
        r#"{"model":"gpt-4o-mini","model":"gpt-5-secret"}"#,
        "not json",
    ] {
        assert_eq!(
            client.post(CHAT).body(bad).call().await.status(),
            403,
            "{bad}"
        );
    }
    // Over --max-request-body: 413, nothing forwarded.
    let big = format!(
        r#"{{"model":"gpt-4o-mini","pad":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    assert_eq!(client.post(CHAT).body(big).call().await.status(), 413);
    assert_eq!(
        proxy.upstream.seen().len(),
        1,
        "nothing refused reached the upstream"
    );
    // Records are written off the request path: wait for all of them.
    let rows = proxy.wait_rows(6).await;
    let refusals: Vec<_> = rows.iter().filter(|r| r.status == 403).collect();
    assert_eq!(refusals.len(), 4);
    assert!(rows
        .iter()
        .any(|r| r.status == 413 && r.error.as_deref() == Some("request_too_large")));
    assert!(refusals
        .iter()
        .all(|r| r.error.as_deref() == Some("model_not_allowed")));
}

/// One token column of an interception record.
type Column = fn(&&Interception) -> Option<i64>;

async fn usage_api(db: &TestDb) {
    let proxy = Env::with(|o| o.openai().anthropic().database(&db.url)).await;
    let client = proxy.client(Http::Two);
    let calls = [
        (CHAT, r#"{"stream":true}"#),
        (CHAT, "{}"),
        ("https://api.openai.com/v1/responses", r#"{"stream":true}"#),
        (MESSAGES, r#"{"stream":true}"#),
        (MESSAGES, "{}"),
    ];
    for (url, body) in calls {
        let resp = client.post(url).body(body).call().await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let rows = proxy.wait_rows(calls.len()).await;
    assert!(rows.len() >= calls.len(), "records written");

    // Cursor pagination walks every row once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/api/v1/interceptions?limit=2&cursor={c}"),
            None => "/api/v1/interceptions?limit=2".to_string(),
        };
        let (status, page) = proxy.admin_get(&path).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    let mut want: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(seen.len(), want.len(), "every row once");
    seen.sort();
    want.sort();
    assert_eq!(seen, want);

    let (_, anth) = proxy
        .admin_get("/api/v1/interceptions?provider=anthropic")
        .await;
    let items = anth["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items
        .iter()
        .all(|i| i["provider"] == "anthropic" && i["user"] == "alice"));
    assert_eq!(
        proxy.admin_get("/api/v1/interceptions?limit=0").await.0,
        422
    );
    assert_eq!(
        proxy
            .admin_get("/api/v1/interceptions?cursor=garbage")
            .await
            .0,
        422
    );
    assert_eq!(
        proxy
            .admin_get("/api/v1/interceptions?since=yesterday")
            .await
            .0,
        422
    );

    // /usage totals equal the sum of the rows, per group.
    for (group_by, key) in [
        ("provider", "provider"),
        ("model", "model"),
        ("user", "user"),
    ] {
        let (status, usage) = proxy
            .admin_get(&format!("/api/v1/usage?group_by={group_by}"))
            .await;
        assert_eq!(status, 200);
        for item in usage["items"].as_array().unwrap() {
            let k = item["key"].as_str();
            let group: Vec<_> = rows
                .iter()
                .filter(|r| match key {
                    "provider" => Some(r.provider.as_str()) == k,
                    "model" => r.model.as_deref() == k,
                    _ => Some(r.user.as_str()) == k,
                })
                .collect();
            let sum = |f: Column| -> i64 { group.iter().map(|r| f(r).unwrap_or(0)).sum() };
            assert_eq!(
                item["requests"].as_i64().unwrap(),
                group.len() as i64,
                "{group_by} {k:?}"
            );
            let columns: [(&str, Column); 4] = [
                ("input_tokens", |r| r.input_tokens),
                ("output_tokens", |r| r.output_tokens),
                ("cache_read_tokens", |r| r.cache_read_tokens),
                ("cache_write_tokens", |r| r.cache_write_tokens),
            ];
            for (column, field) in columns {
                assert_eq!(item[column].as_i64().unwrap(), sum(field), "{column}");
            }
        }
    }
    let (_, by_provider) = proxy.admin_get("/api/v1/usage?group_by=provider").await;
    let openai = &by_provider["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "openai")
        .unwrap()
        .clone();
    assert_eq!(openai["input_tokens"], 11 + 176 + 400);
    assert_eq!(proxy.admin_get("/api/v1/usage?group_by=color").await.0, 422);
}
both_backends!(interceptions_and_usage_through_the_api, usage_api);

#[tokio::test]
async fn metrics_move_by_exactly_the_traffic_sent() {
    let proxy = Env::openai().await;
    // Token series are labelled with configured models only (anything else is `other`).
    let (status, _) = proxy
        .admin_post(
            "/api/v1/models",
            serde_json::json!({"provider": "openai", "model": "gpt-4o-mini"}),
        )
        .await;
    assert_eq!(status, 201);
    let scrape = || async {
        let (status, _) = proxy.admin_get("/healthz").await;
        assert_eq!(status, 200);
        proxy.metrics().await
    };
    let before = scrape().await;
    let client = proxy.client(Http::Two);
    for _ in 0..3 {
        let resp = client.chat().await;
        resp.text().await.unwrap();
    }
    let req = "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n";
    assert_eq!(
        raw::status(&raw::send_head(proxy.addr, req.as_bytes()).await.0),
        407
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let text = scrape().await;
        let done = metric(
            &text,
            "aibridge_proxy_requests_total",
            &[("provider", "openai"), ("code", "200")],
        ) >= 3.0;
        if done || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(
        delta(
            "aibridge_proxy_requests_total",
            &[("provider", "openai"), ("code", "200")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "aibridge_proxy_tokens_total",
            &[
                ("provider", "openai"),
                ("model", "gpt-4o-mini"),
                ("direction", "input")
            ]
        ),
        33.0
    );
    assert_eq!(
        delta(
            "aibridge_proxy_tokens_total",
            &[
                ("provider", "openai"),
                ("model", "gpt-4o-mini"),
                ("direction", "output")
            ]
        ),
        9.0
    );
    assert_eq!(
        delta(
            "aibridge_proxy_connect_rejections_total",
            &[("reason", "auth_missing")]
        ),
        1.0
    );
    assert_eq!(
        delta("aibridge_proxy_connections_total", &[("kind", "mitm")]),
        1.0,
        "one h2 connection"
    );
    assert_eq!(delta("aibridge_proxy_cert_cache_misses_total", &[]), 1.0);
    assert_eq!(
        delta(
            "aibridge_proxy_request_duration_seconds_count",
            &[("provider", "openai")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &after,
            "aibridge_proxy_inflight_requests",
            &[("provider", "openai")]
        ),
        0.0
    );
    assert!(metric(&after, "aibridge_proxy_router_generation", &[]) >= 1.0);
    assert_eq!(
        metric(
            &after,
            "aibridge_proxy_provider_info",
            &[
                ("provider", "openai"),
                ("kind", "openai"),
                ("status", "enabled")
            ]
        ),
        1.0
    );
    assert!(metric(&after, "aibridge_proxy_reloads_total", &[("result", "ok")]) >= 1.0);
    assert!(
        !after.contains("sk-provider-openai") && !after.contains(&proxy.token),
        "no secret in /metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_database_outage() {
    let Some(db) = TestDb::postgres("usage::records_survive_a_database_outage").await else {
        return;
    };
    let relay = crate::support::relay::Relay::start("127.0.0.1:5432".parse().unwrap()).await;
    let relayed = db.url.replace("127.0.0.1:5432", &relay.addr.to_string());
    let proxy = Env::with(|o| o.openai().database(&relayed)).await;
    let client = proxy.client(Http::Two);
    relay.cut();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let resp = client.chat().await;
        assert_eq!(
            resp.status(),
            200,
            "traffic does not depend on the database"
        );
        ids.push(request_id(&resp));
        resp.text().await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        proxy
            .app
            .recorder
            .stats()
            .write_errors
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0,
        "writes were attempted and failed"
    );
    relay.restore();
    let direct = aibridge_proxy::store::Store::connect(&db.url)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = direct.recent_interceptions(100).await.unwrap();
        if ids
            .iter()
            .all(|id| rows.iter().any(|r| &r.request_id == id))
        {
            assert!(rows.iter().all(|r| r.input_tokens == Some(11)));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "held records were written after recovery"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        proxy
            .app
            .recorder
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    direct.close().await;
}

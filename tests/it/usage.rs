//! Usage accounting end to end: every call through the MITM path leaves one interception row
//! with the exact token counts the upstream sent, streaming or not, for all three APIs.

use crate::support::upstream::{
    CHAT_JSON, CHAT_SSE, MESSAGES_JSON, MESSAGES_SSE, RESPONSES_JSON, RESPONSES_SSE,
};
use crate::support::*;
use aibridge_proxy::store::Interception;

pub(crate) async fn row(proxy: &TestProxy, request_id: &str) -> Interception {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = proxy.app.store.recent_interceptions(100).await.unwrap();
        if let Some(r) = rows.into_iter().find(|r| r.request_id == request_id) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no interception row for {request_id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

type Tokens = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);

#[tokio::test]
async fn each_api_streaming_and_not_records_exact_tokens() {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![
            ProviderSpec::openai(upstream.base_url()),
            ProviderSpec::anthropic(upstream.base_url()),
        ],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        ..Default::default()
    })
    .await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    // (url, stream, body the client must get, model, (input, output, cache read, cache write))
    let cases: Vec<(&str, bool, &str, &str, Tokens)> = vec![
        (
            "https://api.openai.com/v1/chat/completions",
            false,
            CHAT_JSON,
            "gpt-4o-mini",
            (Some(11), Some(3), Some(0), None),
        ),
        (
            "https://api.openai.com/v1/chat/completions",
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
            "https://api.anthropic.com/v1/messages",
            false,
            MESSAGES_JSON,
            "claude-sonnet",
            (Some(9), Some(2), None, None),
        ),
        (
            "https://api.anthropic.com/v1/messages",
            true,
            MESSAGES_SSE,
            "claude-sonnet-4-5",
            (Some(25), Some(15), Some(3000), Some(2000)),
        ),
    ];
    for (url, stream, want_body, model, tokens) in cases {
        let body = format!("{{\"model\":\"{model}\",\"stream\":{stream}}}");
        let resp = client.post(url).body(body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        // Tee, don't transform: the client gets the upstream's bytes exactly.
        assert_eq!(
            resp.text().await.unwrap(),
            want_body,
            "{url} stream={stream}"
        );
        let r = row(&proxy, &request_id).await;
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
    let total = proxy
        .app
        .store
        .recent_interceptions(100)
        .await
        .unwrap()
        .len();
    assert_eq!(total, 6, "one row per request");
}

#[tokio::test]
async fn failed_and_cancelled_requests_are_recorded_too() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"http/1.1"])).await;
    let mut dead = ProviderSpec::anthropic(format!("https://127.0.0.1:{closed}"));
    dead.name = "dead";
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url()), dead],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        ..Default::default()
    })
    .await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::One);
    let resp = client
        .post("https://api.anthropic.com/v1/messages")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let r = row(&proxy, resp.headers()["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (r.status, r.error.as_deref(), r.provider.as_str()),
        (502, Some("connect_refused"), "dead")
    );

    // The client drops a stream after its first event: recorded as client_cancelled.
    let mut resp = client
        .get("https://api.openai.com/v1/sse")
        .send()
        .await
        .unwrap();
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let _first = resp.chunk().await.unwrap();
    drop(resp);
    drop(client);
    let r = row(&proxy, &request_id).await;
    assert_eq!(r.outcome, "client_cancelled");
    upstream.release();
}

#[tokio::test]
async fn model_policy_refuses_unlisted_models_in_the_providers_shape() {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![
            ProviderSpec::openai(upstream.base_url()),
            ProviderSpec::anthropic(upstream.base_url()),
        ],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        max_request_body: Some(64 * 1024),
        ..Default::default()
    })
    .await;
    use serde_json::json;
    for p in ["openai", "anthropic"] {
        let (status, _) = proxy
            .admin(
                "PATCH",
                &format!("/api/v1/providers/{p}"),
                Some(json!({"enforce_models": true})),
            )
            .await;
        assert_eq!(status, 200);
    }
    for (p, m) in [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet")] {
        let (status, _) = proxy
            .admin(
                "POST",
                "/api/v1/models",
                Some(json!({"provider": p, "model": m})),
            )
            .await;
        assert_eq!(status, 201);
    }
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    let chat = "https://api.openai.com/v1/chat/completions";
    let ok = client
        .post(chat)
        .body(r#"{"model":"gpt-4o-mini","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(upstream.seen().len(), 1);

    let refused = client
        .post(chat)
        .body(r#"{"model":"gpt-5-secret","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-5-secret"));

    let refused = client
        .post("https://api.anthropic.com/v1/messages")
        .body(r#"{"model":"claude-opus","max_tokens":1}"#)
        .send()
        .await
        .unwrap();
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
            client.post(chat).body(bad).send().await.unwrap().status(),
            403,
            "{bad}"
        );
    }
    // Over --max-request-body: 413, nothing forwarded.
    let big = format!(
        r#"{{"model":"gpt-4o-mini","pad":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    assert_eq!(
        client.post(chat).body(big).send().await.unwrap().status(),
        413
    );
    assert_eq!(
        upstream.seen().len(),
        1,
        "nothing refused reached the upstream"
    );
    // Records are written off the request path: wait for all of them.
    let deadline = tokio::time::Instant::now() + WAIT;
    let rows = loop {
        let rows = proxy.app.store.recent_interceptions(100).await.unwrap();
        if rows.len() == 6 || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let refusals: Vec<_> = rows.iter().filter(|r| r.status == 403).collect();
    assert_eq!(refusals.len(), 4);
    assert!(rows
        .iter()
        .any(|r| r.status == 413 && r.error.as_deref() == Some("request_too_large")));
    assert!(refusals
        .iter()
        .all(|r| r.error.as_deref() == Some("model_not_allowed")));
}

async fn usage_api(db: &crate::support::db::TestDb) {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![
            ProviderSpec::openai(upstream.base_url()),
            ProviderSpec::anthropic(upstream.base_url()),
        ],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        database_url: Some(db.url.clone()),
        ..Default::default()
    })
    .await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    let calls = [
        (
            "https://api.openai.com/v1/chat/completions",
            r#"{"stream":true}"#,
        ),
        ("https://api.openai.com/v1/chat/completions", "{}"),
        ("https://api.openai.com/v1/responses", r#"{"stream":true}"#),
        (
            "https://api.anthropic.com/v1/messages",
            r#"{"stream":true}"#,
        ),
        ("https://api.anthropic.com/v1/messages", "{}"),
    ];
    for (url, body) in calls {
        let resp = client.post(url).body(body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy
        .app
        .store
        .recent_interceptions(100)
        .await
        .unwrap()
        .len()
        < calls.len()
    {
        assert!(tokio::time::Instant::now() < deadline, "records written");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rows = proxy.app.store.recent_interceptions(100).await.unwrap();

    // Cursor pagination walks every row once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/api/v1/interceptions?limit=2&cursor={c}"),
            None => "/api/v1/interceptions?limit=2".to_string(),
        };
        let (status, page) = proxy.admin("GET", &path, None).await;
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
        .admin("GET", "/api/v1/interceptions?provider=anthropic", None)
        .await;
    let items = anth["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items
        .iter()
        .all(|i| i["provider"] == "anthropic" && i["user"] == "alice"));
    assert_eq!(
        proxy
            .admin("GET", "/api/v1/interceptions?limit=0", None)
            .await
            .0,
        422
    );
    assert_eq!(
        proxy
            .admin("GET", "/api/v1/interceptions?cursor=garbage", None)
            .await
            .0,
        422
    );
    assert_eq!(
        proxy
            .admin("GET", "/api/v1/interceptions?since=yesterday", None)
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
            .admin("GET", &format!("/api/v1/usage?group_by={group_by}"), None)
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
            let sum = |f: fn(&&aibridge_proxy::store::Interception) -> Option<i64>| -> i64 {
                group.iter().map(|r| f(r).unwrap_or(0)).sum()
            };
            assert_eq!(
                item["requests"].as_i64().unwrap(),
                group.len() as i64,
                "{group_by} {k:?}"
            );
            assert_eq!(
                item["input_tokens"].as_i64().unwrap(),
                sum(|r| r.input_tokens)
            );
            assert_eq!(
                item["output_tokens"].as_i64().unwrap(),
                sum(|r| r.output_tokens)
            );
            assert_eq!(
                item["cache_read_tokens"].as_i64().unwrap(),
                sum(|r| r.cache_read_tokens)
            );
            assert_eq!(
                item["cache_write_tokens"].as_i64().unwrap(),
                sum(|r| r.cache_write_tokens)
            );
        }
    }
    let (_, by_provider) = proxy
        .admin("GET", "/api/v1/usage?group_by=provider", None)
        .await;
    let openai = &by_provider["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "openai")
        .unwrap()
        .clone();
    assert_eq!(openai["input_tokens"], 11 + 176 + 400);
    assert_eq!(
        proxy
            .admin("GET", "/api/v1/usage?group_by=color", None)
            .await
            .0,
        422
    );
}
crate::both_backends!(interceptions_and_usage_through_the_api, usage_api);

/// `name{labels} value` lines → value, for a metric name and an exact label set.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let (n, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let mut got: Vec<(String, String)> = label_text
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        if got == want {
            return value.parse().unwrap();
        }
    }
    0.0
}

#[tokio::test]
async fn metrics_move_by_exactly_the_traffic_sent() {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        ..Default::default()
    })
    .await;
    let scrape = || async {
        let (status, _) = proxy.admin("GET", "/healthz", None).await;
        assert_eq!(status, 200);
        let url = format!("http://{}/metrics", proxy.app.admin_addr.unwrap());
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls::client_config(&[], &[]))
            .build()
            .unwrap();
        let resp = client
            .get(url)
            .bearer_auth(&proxy.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    };
    let before = scrape().await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    for _ in 0..3 {
        let resp = client
            .post("https://api.openai.com/v1/chat/completions")
            .body("{}")
            .send()
            .await
            .unwrap();
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
    let Some(db) =
        crate::support::db::TestDb::postgres("usage::records_survive_a_database_outage").await
    else {
        return;
    };
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
    let relay = crate::support::relay::Relay::start("127.0.0.1:5432".parse().unwrap()).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        database_url: Some(db.url.replace("127.0.0.1:5432", &relay.addr.to_string())),
        ..Default::default()
    })
    .await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    relay.cut();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let resp = client
            .post("https://api.openai.com/v1/chat/completions")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "traffic does not depend on the database"
        );
        ids.push(resp.headers()["x-request-id"].to_str().unwrap().to_string());
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

//! Usage accounting end to end: every call through the MITM path leaves one interception row
//! with the exact token counts the upstream sent, streaming or not, for all three APIs.

use crate::support::upstream::{
    CHAT_JSON, CHAT_SSE, MESSAGES_JSON, MESSAGES_SSE, RESPONSES_JSON, RESPONSES_SSE,
};
use crate::support::*;
use aibridge_proxy::store::Interception;

async fn row(proxy: &TestProxy, request_id: &str) -> Interception {
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
        (502, Some("connect_error"), "dead")
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

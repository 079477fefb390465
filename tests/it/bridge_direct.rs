//! The direct bridge (`/bridge/{provider}/{path}` on the admin listener): an SDK pointed at it
//! by base URL sends the agent token as its API key and gets the provider's answer, with the
//! provider key injected, the token never forwarded, and a usage record like any other.

use crate::support::upstream::{CHAT_JSON, MESSAGES_JSON};
use crate::support::*;

/// The proxy in front of an HTTP/1.1 mock upstream, so the Host it receives is visible.
async fn start(providers: impl FnOnce(Setup) -> Setup) -> Env {
    Env::with(|o| providers(o.http1_upstream())).await
}

/// The base URL an SDK is given for `provider`.
fn base(proxy: &TestProxy, provider: &str) -> String {
    proxy.admin_url(&format!("/bridge/{provider}"))
}

#[tokio::test]
async fn an_sdk_with_a_base_url_gets_the_provider_answer_and_a_record() {
    let proxy = start(|o| o.openai().anthropic()).await;
    let upstream = &proxy.upstream;
    let client = plain_client();

    // OpenAI SDK style: the token as the Bearer API key.
    let resp = client
        .post(format!(
            "{}/v1/chat/completions?trace=1",
            base(&proxy, "openai")
        ))
        .bearer_auth(&proxy.token)
        .header("x_api_key", "sk-client-alias")
        .body(r#"{"model":"gpt-4o-mini","messages":[]}"#)
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(resp.text().await.unwrap(), CHAT_JSON);
    let seen = upstream.seen();
    let req = &seen[0];
    assert_eq!(req.target(), ("POST", "/v1/chat/completions?trace=1"));
    let auth = req.values("authorization");
    assert_eq!(auth, ["Bearer sk-provider-openai-0123456789"]);
    assert!(req.headers.get("x_api_key").is_none());
    let host = req
        .headers
        .get("host")
        .map(|h| h.to_str().unwrap().to_string());
    assert_eq!(
        host,
        Some(format!("127.0.0.1:{}", upstream.addr.port())),
        "the upstream sees its own host, not the admin listener's"
    );
    let r = proxy.row(&id).await;
    assert_eq!(
        (
            r.user.as_str(),
            r.provider.as_str(),
            r.path.as_str(),
            r.input_tokens,
            r.output_tokens
        ),
        ("alice", "openai", "/v1/chat/completions", Some(11), Some(3))
    );

    // Anthropic SDK style: the token as x-api-key; a stream arrives whole, usage recorded.
    upstream.clear_seen();
    let resp = client
        .post(format!("{}/v1/messages", base(&proxy, "anthropic")))
        .header("x-api-key", &proxy.token)
        .body(r#"{"model":"claude-sonnet","max_tokens":8,"messages":[]}"#)
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), MESSAGES_JSON);
    let seen = upstream.seen();
    assert_eq!(seen[0].values("x-api-key"), ["sk-ant-provider-0123456789"]);
}

#[tokio::test]
async fn the_agent_token_never_reaches_a_provider_without_a_key() {
    let proxy = start(|o| {
        o.provider(|u| ProviderSpec {
            key: None,
            ..ProviderSpec::openai(u.base_url())
        })
    })
    .await;
    let resp = plain_client()
        .get(format!("{}/echo", base(&proxy, "openai")))
        .bearer_auth(&proxy.token)
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    let req = &proxy.upstream.seen()[0];
    assert!(
        req.headers.get("authorization").is_none(),
        "{:?}",
        req.headers
    );
}

#[tokio::test]
async fn refusals_are_one_line_and_reach_nothing() {
    let proxy = start(Setup::openai).await;
    let client = plain_client();
    let url = format!("{}/v1/models", base(&proxy, "openai"));
    let two = format!("Bearer {}", proxy.token);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("no credential", client.get(&url), 401),
        (
            "unknown token",
            client.get(&url).bearer_auth("aib_not-a-token"),
            401,
        ),
        (
            "basic scheme",
            client.get(&url).basic_auth("u", Some(&proxy.token)),
            401,
        ),
        (
            "two credentials",
            client
                .get(&url)
                .header("authorization", &two)
                .header("x-api-key", &proxy.token),
            401,
        ),
        (
            "admin token is not an agent token",
            client.get(&url).bearer_auth(&proxy.admin_token),
            401,
        ),
        (
            "unknown provider",
            client
                .get(format!("{}/v1/models", base(&proxy, "nope")))
                .bearer_auth(&proxy.token),
            404,
        ),
    ];
    for (name, req, status) in cases {
        let resp = req.call().await;
        assert_eq!(resp.status().as_u16(), status, "{name}");
        assert!(resp.headers().contains_key("x-request-id"), "{name}");
        if status == 401 {
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer realm=\"aibridge-proxy\"",
                "{name}"
            );
        }
        let body = resp.text().await.unwrap();
        assert_eq!(body.lines().count(), 1, "{name}: {body}");
        assert!(!body.contains(&proxy.token), "{name}");
    }
    assert!(
        proxy.upstream.seen().is_empty(),
        "nothing reached the upstream"
    );

    // A revoked token stops working at the next reload.
    let generation = proxy.generation();
    assert!(proxy.app.store.revoke_token(proxy.token_id).await.unwrap());
    proxy.wait_for_generation(generation).await;
    let resp = client.get(&url).bearer_auth(&proxy.token).call().await;
    assert_eq!(resp.status(), 401);
}

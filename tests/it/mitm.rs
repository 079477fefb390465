//! Interception: provider hosts are decrypted, re-sent to the provider's upstream with the
//! provider's key, and streamed back.

use crate::support::upstream::{CHAT_JSON, MESSAGES_JSON, SSE_EVENTS, UPSTREAM_REQUEST_ID};
use crate::support::*;

/// Everything `stream` sends until it closes (bounded by WAIT), as text.
async fn read_to_close(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn json_request_gets_the_provider_key_and_the_upstream_body() {
    let env = Env::openai().await;
    let resp = env
        .client(Http::Two)
        .post(format!("{CHAT}?trace=1"))
        .header("authorization", "Bearer sk-client-own-key")
        .header("x_api_key", "sk-client-alias")
        .body(r#"{"model":"gpt-4o-mini","messages":[]}"#)
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        uuid::Uuid::parse_str(&request_id).is_ok(),
        "x-request-id is a UUID: {request_id}"
    );
    assert_eq!(resp.headers()["x-upstream-request-id"], UPSTREAM_REQUEST_ID);
    assert_eq!(resp.text().await.unwrap(), CHAT_JSON);

    let seen = env.upstream.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.target(), ("POST", "/v1/chat/completions?trace=1"));
    let auth = req.values("authorization");
    assert_eq!(auth, ["Bearer sk-provider-openai-0123456789"]);
    for gone in ["x_api_key", "x-api-key", "proxy-authorization"] {
        assert!(
            req.headers.get(gone).is_none(),
            "{gone} must not reach the upstream"
        );
    }
    assert_eq!(req.headers["accept-encoding"], "identity");
}

#[tokio::test]
async fn anthropic_key_is_sent_as_x_api_key() {
    let env = Env::anthropic().await;
    let resp = env
        .client(Http::One)
        .post(MESSAGES)
        .header("x-api-key", "sk-ant-client")
        .body("{}")
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), MESSAGES_JSON);
    let seen = env.upstream.seen();
    assert_eq!(seen[0].headers["x-api-key"], "sk-ant-provider-0123456789");
    assert!(seen[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn provider_without_a_key_passes_the_client_credentials_through() {
    let env = Env::with(|o| {
        o.provider(|u| ProviderSpec {
            key: None,
            ..ProviderSpec::openai(u.base_url())
        })
    })
    .await;
    let resp = env
        .client(Http::Two)
        .post(CHAT)
        .header("authorization", "Bearer sk-byok")
        .body("{}")
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        env.upstream.seen()[0].headers["authorization"],
        "Bearer sk-byok"
    );
}

/// The upstream leg speaks HTTP/1.1 by default whatever the client speaks, though the upstream
/// offers h2; `--upstream-http2 true` takes h2 when offered.
#[tokio::test]
async fn the_upstream_leg_is_http1_unless_http2_is_turned_on() {
    for (http2, version) in [
        (false, http::Version::HTTP_11),
        (true, http::Version::HTTP_2),
    ] {
        let env = Env::with(move |o| o.openai().tweak(move |c| c.upstream_http2 = http2)).await;
        for http in [Http::One, Http::Two] {
            let resp = env.client(http).chat().await;
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.text().await.unwrap(), CHAT_JSON);
        }
        let seen = env.upstream.seen();
        assert_eq!(seen.len(), 2);
        assert!(
            seen.iter().all(|s| s.version == version),
            "{http2}: {version:?}"
        );
    }
}

#[tokio::test]
async fn http1_and_http2_clients_both_work() {
    let env = Env::openai().await;
    for (http, version) in [
        (Http::One, reqwest::Version::HTTP_11),
        (Http::Two, reqwest::Version::HTTP_2),
    ] {
        let client = env.client(http);
        for _ in 0..3 {
            let resp = client.chat().await;
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), version, "client side speaks {version:?}");
            assert_eq!(resp.text().await.unwrap(), CHAT_JSON);
        }
    }
    assert_eq!(env.upstream.seen().len(), 6);
    assert_eq!(
        env.mints(),
        1,
        "one leaf for api.openai.com, reused by every connection"
    );
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let env = Env::openai().await;
    // `/gated/v1/chat/completions` goes through the usage tap as it passes; `/v1/sse` does not.
    let paths = [
        (Http::One, "/v1/sse"),
        (Http::Two, "/v1/sse"),
        (Http::Two, "/gated/v1/chat/completions"),
    ];
    for (http, path) in paths {
        let mut resp = env
            .client(http)
            .post(format!("https://api.openai.com{path}"))
            .body("{}")
            .call()
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        // The upstream holds events two and three until we have event one: if the proxy
        // buffered, this chunk would never come (and the upstream would report a timeout).
        let first = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("first event in time")
            .unwrap();
        assert_eq!(first.as_deref(), Some(SSE_EVENTS[0].as_bytes()));
        env.upstream.release();
        let mut rest = Vec::new();
        while let Some(chunk) = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .unwrap()
            .unwrap()
        {
            rest.extend_from_slice(&chunk);
        }
        assert_eq!(String::from_utf8(rest).unwrap(), SSE_EVENTS[1..].concat());
        assert!(
            !env.upstream.released_by_timeout(),
            "{http:?}: the client got event one before the upstream sent the rest"
        );
    }
}

#[tokio::test]
async fn request_bodies_stream_to_the_upstream() {
    let env = Env::openai().await;
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let resp = env
        .client(Http::Two)
        .post("https://api.openai.com/echo")
        .body(body.clone())
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn inner_host_different_from_connect_host_gets_421() {
    let env = Env::openai().await;
    let mut tls = env.intercepted().await;
    use tokio::io::AsyncWriteExt;
    tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut tls).await;
    assert!(text.starts_with("HTTP/1.1 421"), "{text}");
    assert!(text.to_ascii_lowercase().contains("x-request-id"), "{text}");
    assert!(
        env.upstream.seen().is_empty(),
        "nothing reaches the upstream"
    );
}

#[tokio::test]
async fn sni_naming_another_host_aborts_before_any_mint() {
    let env = Env::openai().await;
    let result = env.tls_to("api.openai.com:443", "evil.example").await;
    assert!(result.is_err(), "handshake must fail");
    assert_eq!(
        env.mints(),
        0,
        "no leaf is minted for a name the client chose"
    );
}

#[tokio::test]
async fn upstream_down_gives_502_with_request_id() {
    // A provider whose upstream port has nothing listening.
    let env = Env::with(|o| o.openai_at(format!("https://127.0.0.1:{}", free_port()))).await;
    let resp = env.client(Http::One).get(MODELS).call().await;
    assert_eq!(resp.status(), 502);
    assert!(resp.headers().contains_key("x-request-id"));
    let body = resp.text().await.unwrap();
    assert_eq!(
        body, "the provider's upstream could not be reached\n",
        "generic body, no internals"
    );
}

#[tokio::test]
async fn removed_provider_is_not_intercepted_and_open_connections_get_502() {
    let env = Env::openai().await;
    let client = env.client(Http::One);
    let resp = client.get(CHAT).call().await;
    assert_eq!(resp.status(), 200);

    let generation = env.generation();
    assert!(env.app.store.delete_provider("openai").await.unwrap());
    env.wait_for_generation(generation).await;

    // Same keep-alive connection, accepted for the old provider: refused, never re-routed.
    let resp = client.get(CHAT).call().await;
    assert_eq!(resp.status(), 502);
    assert_eq!(env.upstream.seen().len(), 1);
    assert!(!env.routes("api.openai.com:443"));
}

#[tokio::test]
async fn a_token_revoked_while_a_connection_is_open_stops_working_on_it() {
    let env = Env::openai().await;
    for http in [Http::One, Http::Two] {
        let (row, token) = env.app.store.create_token("eve").await.unwrap();
        let generation = env.generation();
        env.wait_for_generation(generation).await;
        let client = env.client_as(token.expose(), http);
        assert_eq!(client.chat().await.status(), 200);
        let seen = env.upstream.seen().len();
        let generation = env.generation();
        assert!(env.app.store.revoke_token(row.id).await.unwrap());
        env.wait_for_generation(generation).await;
        // Same client, same open connection (h1 keep-alive / h2 stream): refused from now on.
        assert_eq!(client.chat().await.status(), 407, "{http:?}");
        assert_eq!(
            env.upstream.seen().len(),
            seen,
            "{http:?}: nothing more reached the upstream"
        );
    }
}

/// Agents reconnect often: a second connection to an intercepted host resumes the TLS session
/// (TLS 1.3 ticket, and TLS 1.2 too) instead of a full handshake, and works like the first.
#[tokio::test]
async fn tls_sessions_resume_on_intercepted_hosts() {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::AsyncWriteExt;
    let env = Env::openai().await;
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // One client config (and so one session store) for both connections, resumption on.
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(
            rustls_pki_types::CertificateDer::pem_slice_iter(env.ca_pem.as_bytes()).flatten(),
        );
        let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[versions])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = raw::connect(env.addr, "api.openai.com:443", &env.token).await;
            let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            kinds.push(tls.get_ref().1.handshake_kind());
            tls.write_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            )
            .await
            .unwrap();
            let text = read_to_close(&mut tls).await;
            assert!(text.starts_with("HTTP/1.1 200"), "{versions:?}: {text}");
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ],
            "{versions:?}"
        );
    }
    assert_eq!(env.mints(), 1, "one leaf serves both versions' sessions");
}

//! Agent authentication on CONNECT: 407 with the Basic challenge, connection closed.

use crate::support::*;
use base64::Engine;

async fn connect_with(proxy: &TestProxy, auth_lines: &str) -> (String, tokio::net::TcpStream) {
    let req = format!(
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{auth_lines}\r\n"
    );
    raw::send_head(proxy.addr, req.as_bytes()).await
}

async fn assert_407(proxy: &TestProxy, auth_lines: &str) {
    let (head, mut stream) = connect_with(proxy, auth_lines).await;
    assert_eq!(raw::status(&head), 407, "{auth_lines:?}: {head}");
    assert!(
        head.contains("proxy-authenticate: Basic realm=\"aibridge-proxy\""),
        "{head}"
    );
    assert!(
        raw::closes(&mut stream).await,
        "connection closes after a 407"
    );
}

#[tokio::test]
async fn missing_garbled_wrong_and_ambiguous_credentials_get_407() {
    let proxy = TestProxy::start(TestProxyOptions::default()).await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let good = raw::basic(&proxy.token);
    let cases = [
        String::new(),
        "Proxy-Authorization: Basic !!!notbase64\r\n".to_string(),
        format!("Proxy-Authorization: Bearer {}\r\n", proxy.token),
        format!("Proxy-Authorization: Basic {}\r\n", b64("agent:abp_wrong")),
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            b64(&format!("{}:", proxy.token))
        ),
        format!("Proxy-Authorization: Basic {}\r\n", b64(&proxy.token)),
        format!("Proxy-Authorization: {good}\r\nProxy-Authorization: {good}\r\n"),
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            b64(&format!("agent:{}", "x".repeat(8192)))
        ),
    ];
    for case in &cases {
        assert_407(&proxy, case).await;
    }
    // The 407 body is the fixed sentence.
    let req = "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let (head, mut stream) = raw::send_head(proxy.addr, req.as_bytes()).await;
    assert_eq!(raw::status(&head), 407);
    let mut body = Vec::new();
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(WAIT, stream.read_to_end(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, b"Proxy Authentication Required\n");
}

#[tokio::test]
async fn a_correct_token_is_accepted_with_any_scheme_case() {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"http/1.1"])).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        ..Default::default()
    })
    .await;
    let encoded = raw::basic(&proxy.token)
        .trim_start_matches("Basic ")
        .to_string();
    for scheme in ["Basic", "basic", "BASIC"] {
        let (head, _) = connect_with(
            &proxy,
            &format!("Proxy-Authorization: {scheme} {encoded}\r\n"),
        )
        .await;
        assert_eq!(raw::status(&head), 200, "{scheme}: {head}");
    }
}

#[tokio::test]
async fn a_revoked_token_gets_407_after_the_reload() {
    let proxy = TestProxy::start(TestProxyOptions {
        non_provider_hosts: aibridge_proxy::config::NonProviderHosts::Deny,
        ..Default::default()
    })
    .await;
    let auth = format!("Proxy-Authorization: {}\r\n", raw::basic(&proxy.token));
    // Before: the token passes (403: no provider for the host, and deny mode).
    let (head, _) = connect_with(&proxy, &auth).await;
    assert_eq!(raw::status(&head), 403, "{head}");

    let generation = proxy.generation();
    assert!(proxy.app.store.revoke_token(proxy.token_id).await.unwrap());
    proxy.wait_for_generation(generation).await;
    assert_407(&proxy, &auth).await;
}

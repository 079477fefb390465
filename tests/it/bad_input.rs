//! Malformed CONNECT targets and request lines: each gets its documented status, nothing
//! panics, and the proxy keeps serving.

use crate::support::*;
use aibridge_proxy::config::NonProviderHosts;

async fn proxy() -> (MockUpstream, TestProxy) {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"http/1.1"])).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        // Valid non-provider targets answer 403 at once, without DNS.
        non_provider_hosts: NonProviderHosts::Deny,
        ..Default::default()
    })
    .await;
    (upstream, proxy)
}

#[tokio::test]
async fn connect_targets_table() {
    let (_upstream, proxy) = proxy().await;
    let long_host = format!("{}.com:443", "a".repeat(250));
    let long_label = format!("{}.com:443", "a".repeat(64));
    let cases: Vec<(&str, u16)> = vec![
        ("api.openai.com:443", 200),
        ("API.OpenAI.COM:443", 200),
        ("api.openai.com.:443", 200),
        ("api.openai.com..:443", 400),
        (".api.openai.com:443", 400),
        ("api..openai.com:443", 400),
        ("api.openai.com", 400),
        ("api.openai.com:", 400),
        ("api.openai.com:0", 400),
        ("api.openai.com:65536", 400),
        ("api.openai.com:99999999999", 400),
        ("api.openai.com:-1", 400),
        ("api.openai.com:+443", 400),
        ("api.openai.com:0443", 400),
        ("api.openai.com:8443", 400),
        ("user:pw@api.openai.com:443", 400),
        ("https://api.openai.com:443/", 400),
        ("/", 400),
        ("*", 400),
        ("::1:443", 400),
        ("[fe80::1%25eth0]:443", 400),
        ("[::1]", 400),
        ("0177.0.0.1:443", 400),
        ("0x7f.1:443", 400),
        ("2130706433:443", 400),
        ("api%2eopenai.com:443", 400),
        ("ápi.openai.com:443", 400),
        (&long_host, 400),
        (&long_label, 400),
        ("api.openai .com:443", 400),
        ("-api.openai.com:443", 400),
        ("[::1]:443", 403),
        ("_dmarc.example.com:443", 403),
        ("xn--pi-7ia.openai.com:443", 403),
        ("XN--PI-7IA.openai.com:443", 403),
        ("example.com:80", 403),
    ];
    assert!(cases.len() >= 20);
    for (target, expected) in &cases {
        let req = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
            raw::basic(&proxy.token)
        );
        let (head, mut stream) = raw::send_head(proxy.addr, req.as_bytes()).await;
        assert_eq!(raw::status(&head), *expected, "CONNECT {target:?}: {head}");
        if *expected != 200 {
            assert!(
                raw::closes(&mut stream).await,
                "{target}: connection closes after a refusal"
            );
        }
    }
    // Still serving, and the three spellings of api.openai.com shared one leaf.
    let _ = raw::connect(proxy.addr, "api.openai.com:443", &proxy.token).await;
    assert!(proxy.mints() <= 1);
}

#[tokio::test]
async fn malformed_request_lines_and_heads() {
    let (_upstream, proxy) = proxy().await;
    let auth = raw::basic(&proxy.token);
    let cases: Vec<(String, u16)> = vec![
        (format!("connect api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"), 400),
        (format!("CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\nContent-Length: 5\r\n\r\nhello"), 400),
        (format!("CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        (format!("GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: {auth}\r\n\r\n"), 400),
        (format!("GET https://api.openai.com/v1/models HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n"), 400),
        ("CONNECT api.openai.com:443 HTTP/1.1\r\nBad Header: x\r\n\r\n".to_string(), 400),
        ("\x00\x01\x02garbage\r\n\r\n".to_string(), 400),
        (format!("CONNECT api.openai.com:443 HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000)), 431),
    ];
    for (req, expected) in &cases {
        let (head, _) = raw::send_head(proxy.addr, req.as_bytes()).await;
        let shown: String = req.chars().take(60).collect();
        assert_eq!(raw::status(&head), *expected, "{shown:?}: {head}");
    }
    let _ = raw::connect(proxy.addr, "api.openai.com:443", &proxy.token).await;
}

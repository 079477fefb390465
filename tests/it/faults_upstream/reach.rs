//! Reaching the upstream: F1 a refused connection, F2 a certificate the proxy must not accept,
//! F8 a name that does not resolve.

use super::*;
use crate::support::scripted::expired_server_config;

/// F1: the upstream refuses the connection. 502 with one generic line and `x-request-id`; the
/// record and `upstream_errors_total` say `connect_refused`.
#[tokio::test]
async fn f1_refused_connection_is_recorded_as_connect_refused() {
    let port = free_port();
    let proxy = Env::with(|o| o.openai_at(format!("https://{LOCALHOST}:{port}"))).await;
    for http in [Http::One, Http::Two] {
        let client = proxy.client(http);
        let resp = client.post(CHAT).body(MINI).call().await;
        assert_eq!(resp.status(), 502, "{http:?}");
        let id = request_id(&resp);
        let body = resp.text().await.unwrap();
        assert_eq!(body, GENERIC_UNREACHABLE, "{http:?}: one generic line");
        assert!(!body.contains(&port.to_string()) && !body.contains(LOCALHOST));
        let r = proxy.row(&id).await;
        assert_eq!(
            (r.status, r.error.as_deref(), r.outcome.as_str()),
            (502, Some("connect_refused"), "failed"),
            "{http:?}"
        );
        assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
    }
    wait_upstream_errors(&proxy, "openai", "connect_refused", 2.0).await;
    assert_eq!(proxy.rows().await.len(), 2, "one record per request");
}

/// F2: the upstream's certificate is signed by a CA the proxy does not trust, names another
/// host, or has expired. Every request gets 502 with reason `tls`, and verification is never
/// relaxed to retry: the upstreams complete no request.
#[tokio::test]
async fn f2_invalid_upstream_tls_is_refused_and_never_retried_unverified() {
    let setup = Env::setup();
    let stranger = TestCa::new();
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    let wrong_ca = MockUpstream::start(stranger.server_config(alpn)).await;
    let wrong_name = MockUpstream::start(setup.ca().server_config_for("other.test", alpn)).await;
    let (expiry_ca_pem, expired_config) = expired_server_config("expired.test", alpn);
    let expired = MockUpstream::start(expired_config).await;
    let proxy = setup
        .named("good", "good.example")
        .named_at("wrongca", "wrongca.example", wrong_ca.base_url())
        // The certificate is for other.test (and 127.0.0.1); the base URL names upstream.test.
        .named_at(
            "wrongname",
            "wrongname.example",
            format!("https://upstream.test:{}", wrong_name.addr.port()),
        )
        .named_at(
            "expired",
            "expired.example",
            format!("https://expired.test:{}", expired.addr.port()),
        )
        // The expired leaf's CA is trusted: expiry is its only fault.
        .trust(expiry_ca_pem)
        .resolve("upstream.test", loopback())
        .resolve("expired.test", loopback())
        .start()
        .await;
    let good = &proxy.upstream;
    let url = |host: &str| format!("https://{host}/v1/chat/completions");
    for http in [Http::One, Http::Two] {
        let client = proxy.client(http);
        let ok = client.post(url("good.example")).body("{}").call().await;
        assert_eq!(ok.status(), 200, "{http:?}: control");
        for host in ["wrongca.example", "wrongname.example", "expired.example"] {
            let resp = client.post(url(host)).body("{}").call().await;
            assert_eq!(resp.status(), 502, "{http:?} {host}");
            let id = request_id(&resp);
            assert_eq!(resp.text().await.unwrap(), GENERIC_UNREACHABLE, "{host}");
            let r = proxy.row(&id).await;
            assert_eq!(
                (r.status, r.error.as_deref()),
                (502, Some("tls")),
                "{http:?} {host}"
            );
        }
    }
    assert_eq!(good.seen().len(), 2);
    for (name, upstream) in [
        ("wrongca", &wrong_ca),
        ("wrongname", &wrong_name),
        ("expired", &expired),
    ] {
        assert!(
            upstream.seen().is_empty(),
            "{name}: no request may reach an upstream that failed verification"
        );
        wait_upstream_errors(&proxy, name, "tls", 2.0).await;
    }
}

/// F8: the provider's base URL names a host that does not resolve. 502, reason `dns`; a
/// provider whose name does resolve keeps working.
#[tokio::test]
async fn f8_unresolvable_upstream_name_gives_502_dns() {
    let setup = Env::setup();
    let upstream = MockUpstream::start(
        setup
            .ca()
            .server_config_for("upstream.test", &[b"h2", b"http/1.1"]),
    )
    .await;
    let named = format!("https://upstream.test:{}", upstream.addr.port());
    let proxy = setup
        .named_at(
            "nowhere",
            "nowhere.example",
            "https://nxdomain.invalid".into(),
        )
        .named_at("named", "named.example", named)
        .resolve("upstream.test", loopback())
        .start()
        .await;
    let client = proxy.client(Http::Two);
    let ok = client
        .post("https://named.example/v1/chat/completions")
        .body("{}")
        .call()
        .await;
    assert_eq!(ok.status(), 200, "control: a name that resolves");
    let resp = client
        .post("https://nowhere.example/v1/chat/completions")
        .body("{}")
        .call()
        .await;
    assert_eq!(resp.status(), 502);
    let id = request_id(&resp);
    let body = resp.text().await.unwrap();
    assert_eq!(body, GENERIC_UNREACHABLE);
    assert!(!body.contains("nxdomain"));
    let r = proxy.row(&id).await;
    assert_eq!((r.status, r.error.as_deref()), (502, Some("dns")));
    wait_upstream_errors(&proxy, "nowhere", "dns", 1.0).await;
}

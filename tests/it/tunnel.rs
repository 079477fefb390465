//! Tunnels: hosts no provider claims get their bytes relayed untouched, under the egress policy.

use crate::support::*;
use aibridge_proxy::config::NonProviderHosts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP echo server on loopback; returns its port.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

fn connect_request(target: &str, token: &str) -> String {
    format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        raw::basic(token)
    )
}

#[tokio::test]
async fn bytes_reach_a_local_echo_server_when_loopback_is_allowed() {
    let port = echo_server().await;
    let proxy = TestProxy::start(TestProxyOptions {
        allow_private_cidrs: vec!["127.0.0.0/8"],
        extra_ports: vec![port],
        ..Default::default()
    })
    .await;
    let mut stream = raw::connect(proxy.addr, &format!("127.0.0.1:{port}"), &proxy.token).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = stream.split();
    let write = async {
        w.write_all(&payload).await.unwrap();
    };
    let mut echoed = vec![0u8; payload.len()];
    let read = async {
        tokio::time::timeout(WAIT, r.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
    };
    tokio::join!(write, read);
    assert_eq!(echoed, payload);
    assert_eq!(proxy.mints(), 0, "tunnels mint nothing");
}

#[tokio::test]
async fn tls_through_a_tunnel_sees_the_destination_certificate() {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"http/1.1"])).await;
    let port = upstream.addr.port();
    let proxy = TestProxy::start(TestProxyOptions {
        allow_private_cidrs: vec!["127.0.0.0/8", "::1/128"],
        extra_ports: vec![port],
        ..Default::default()
    })
    .await;
    // The client trusts only the upstream's CA: success proves the proxy did not intercept.
    let client = agent_client(proxy.addr, &proxy.token, &[&ca.cert_pem], Http::One);
    let resp = client
        .post(format!("https://localhost:{port}/echo"))
        .body("through")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "through");
    assert_eq!(proxy.mints(), 0);
}

#[tokio::test]
async fn private_destinations_are_refused_without_an_allowed_cidr() {
    let port = echo_server().await;
    let proxy = TestProxy::start(TestProxyOptions {
        extra_ports: vec![port],
        ..Default::default()
    })
    .await;
    for target in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (head, mut stream) = raw::send_head(
            proxy.addr,
            connect_request(&target, &proxy.token).as_bytes(),
        )
        .await;
        assert_eq!(raw::status(&head), 403, "{target}: {head}");
        assert!(raw::closes(&mut stream).await);
    }
    // Metadata and embedded-IPv4 forms are refused on the default ports too.
    for target in [
        "169.254.169.254:443",
        "[::ffff:169.254.169.254]:443",
        "[64:ff9b::a9fe:a9fe]:443",
        "0.0.0.0:443",
    ] {
        let (head, _) =
            raw::send_head(proxy.addr, connect_request(target, &proxy.token).as_bytes()).await;
        assert_eq!(raw::status(&head), 403, "{target}: {head}");
    }
}

#[tokio::test]
async fn deny_mode_refuses_every_non_provider_host() {
    let port = echo_server().await;
    let proxy = TestProxy::start(TestProxyOptions {
        allow_private_cidrs: vec!["127.0.0.0/8"],
        extra_ports: vec![port],
        non_provider_hosts: NonProviderHosts::Deny,
        ..Default::default()
    })
    .await;
    let (head, _) = raw::send_head(
        proxy.addr,
        connect_request(&format!("127.0.0.1:{port}"), &proxy.token).as_bytes(),
    )
    .await;
    assert_eq!(raw::status(&head), 403, "{head}");
}

#[tokio::test]
async fn unreachable_destination_gets_502() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = TestProxy::start(TestProxyOptions {
        allow_private_cidrs: vec!["127.0.0.0/8"],
        extra_ports: vec![closed],
        ..Default::default()
    })
    .await;
    let (head, _) = raw::send_head(
        proxy.addr,
        connect_request(&format!("127.0.0.1:{closed}"), &proxy.token).as_bytes(),
    )
    .await;
    assert_eq!(raw::status(&head), 502, "{head}");
}

#[tokio::test]
async fn plain_http_is_forwarded_without_proxy_credentials() {
    // A plain HTTP server that answers with the headers it received.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = raw::read_head(&mut s).await;
                let body = head.to_ascii_lowercase();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let proxy = TestProxy::start(TestProxyOptions {
        allow_private_cidrs: vec!["127.0.0.0/8"],
        extra_ports: vec![port],
        ..Default::default()
    })
    .await;
    let client = agent_client(proxy.addr, &proxy.token, &[], Http::One);
    let resp = client
        .get(format!("http://127.0.0.1:{port}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = resp.text().await.unwrap();
    assert!(
        seen.starts_with("get /hello http/1.1"),
        "origin-form upstream: {seen}"
    );
    assert!(!seen.contains("proxy-authorization"), "{seen}");

    // Without credentials: 407.
    let anonymous = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", proxy.addr)).unwrap())
        .use_preconfigured_tls(crate::support::tls::client_config(&[], &[]))
        .build()
        .unwrap();
    let resp = anonymous
        .get(format!("http://127.0.0.1:{port}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 407);
}

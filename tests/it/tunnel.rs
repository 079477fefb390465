//! Tunnels: hosts no provider claims get their bytes relayed untouched, under the egress policy.

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// CONNECT `target` through the proxy: the answer's head and the connection.
async fn connect(proxy: &TestProxy, target: &str) -> (String, tokio::net::TcpStream) {
    raw::send_head(
        proxy.addr,
        raw::connect_head(target, &proxy.token).as_bytes(),
    )
    .await
}

#[tokio::test]
async fn bytes_reach_a_local_echo_server_when_loopback_is_allowed() {
    let port = echo_server().await;
    let proxy = Env::with(|o| o.tunnels_to(port)).await;
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
    let env = Env::with(|o| {
        o.http1_upstream()
            .allow_private("127.0.0.0/8")
            .allow_private("::1/128")
            .tunnels_to_upstream()
    })
    .await;
    let port = env.upstream.addr.port();
    // The client trusts only the upstream's CA: success proves the proxy did not intercept.
    let client = agent_client(env.addr, &env.token, &[&env.ca.cert_pem], Http::One);
    let resp = client
        .post(format!("https://localhost:{port}/echo"))
        .body("through")
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "through");
    assert_eq!(env.mints(), 0);
}

#[tokio::test]
async fn private_destinations_are_refused_without_an_allowed_cidr() {
    let port = echo_server().await;
    let proxy = Env::with(|o| o.port(port)).await;
    for target in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (head, mut stream) = connect(&proxy, &target).await;
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
        let (head, _) = connect(&proxy, target).await;
        assert_eq!(raw::status(&head), 403, "{target}: {head}");
    }
}

#[tokio::test]
async fn deny_mode_refuses_every_non_provider_host() {
    let port = echo_server().await;
    let proxy = Env::with(|o| o.tunnels_to(port).deny_non_providers()).await;
    let (head, _) = connect(&proxy, &format!("127.0.0.1:{port}")).await;
    assert_eq!(raw::status(&head), 403, "{head}");
}

#[tokio::test]
async fn unreachable_destination_gets_502() {
    let closed = free_port();
    let proxy = Env::with(|o| o.tunnels_to(closed)).await;
    let (head, _) = connect(&proxy, &format!("127.0.0.1:{closed}")).await;
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
    let proxy = Env::with(|o| o.tunnels_to(port)).await;
    let client = agent_client(proxy.addr, &proxy.token, &[], Http::One);
    let resp = client
        .get(format!("http://127.0.0.1:{port}/hello"))
        .call()
        .await;
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
        .use_preconfigured_tls(tls::client_config(&[], &[]))
        .build()
        .unwrap();
    let resp = anonymous
        .get(format!("http://127.0.0.1:{port}/hello"))
        .call()
        .await;
    assert_eq!(resp.status(), 407);
}

/// Bytes sent right behind the CONNECT head, a large upload, then a half-close: the
/// destination sees every byte and the end of the stream, and its whole answer (sent after
/// that end) still comes back before the tunnel closes.
#[tokio::test]
async fn a_half_closed_tunnel_still_carries_the_whole_answer() {
    let port = echo_server().await;
    let proxy = Env::with(|o| o.tunnels_to(port)).await;
    let target = format!("127.0.0.1:{port}");
    let mut first_flight = raw::connect_head(&target, &proxy.token).into_bytes();
    first_flight.extend_from_slice(b"early:");
    let (head, mut stream) = raw::send_head(proxy.addr, &first_flight).await;
    assert_eq!(raw::status(&head), 200, "{head}");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = stream.split();
    let write = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let read = async {
        tokio::time::timeout(WAIT, r.read_to_end(&mut echoed))
            .await
            .expect("the tunnel closes once the destination has answered and closed")
            .unwrap();
    };
    tokio::join!(write, read);
    assert_eq!(&echoed[..6], b"early:");
    assert!(echoed[6..] == payload[..], "{} bytes echoed", echoed.len());
}

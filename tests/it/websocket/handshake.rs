//! The handshake: only the upstream's valid `101` switches the connection to frames
//! (RELIABILITY C20); anything else reaches the client as HTTP and the connection stays HTTP.

use super::*;
use crate::support::h2raw::{self, H2};
use crate::support::raw;
use tokio::io::AsyncReadExt;

const UPGRADE: &str = "GET /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Authorization: Bearer sk-agent-own-key\r\n\r\n";

/// A client text frame (masked, as RFC 6455 requires of clients).
fn masked_text(text: &str) -> Vec<u8> {
    let key = [7u8, 1, 2, 3];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend(key);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

#[tokio::test]
async fn an_upgrade_the_upstream_refuses_is_relayed_unchanged_and_the_connection_stays_http() {
    for status in [400u16, 426] {
        let (upstream, env) = ws_env(Handshake::Refuse(status)).await;
        let mut tls = env.intercepted().await;
        raw::send(&mut tls, UPGRADE.as_bytes()).await.unwrap();
        let answer = raw::read_response(&mut tls).await;
        assert_eq!(answer.status, status);
        assert_eq!(
            String::from_utf8_lossy(&answer.body),
            r#"{"error":{"message":"upgrade refused"}}"#
        );
        assert!(answer.header("x-request-id").is_some());
        assert!(answer.header("upgrade").is_none(), "{}", answer.head);
        // Still HTTP: a plain request on the same connection is answered.
        let next = "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";
        raw::send(&mut tls, next.as_bytes()).await.unwrap();
        assert_ne!(raw::read_response(&mut tls).await.status, 0);
        let seen = &upstream.sockets()[0];
        assert_eq!(
            seen.headers["authorization"],
            "Bearer sk-provider-openai-0123456789"
        );
        let row = env
            .wait_rows(1)
            .await
            .into_iter()
            .find(|r| r.path == "/v1/responses")
            .unwrap();
        assert_eq!(
            (row.status, row.transport.as_str(), row.error.as_deref()),
            (i32::from(status), "websocket", Some("upgrade_refused"))
        );
    }
}

#[tokio::test]
async fn a_101_with_a_wrong_accept_is_refused_and_nothing_switches() {
    let (_upstream, env) = ws_env(Handshake::WrongAccept).await;
    let mut tls = env.intercepted().await;
    raw::send(&mut tls, UPGRADE.as_bytes()).await.unwrap();
    let answer = raw::read_response(&mut tls).await;
    assert_eq!(answer.status, 502);
    let row = env.wait_rows(1).await.remove(0);
    assert_eq!(
        (row.status, row.error.as_deref()),
        (502, Some("upstream_error"))
    );
}

#[tokio::test]
async fn frames_sent_before_the_101_reach_the_upstream_only_after_it() {
    // The upstream reads the handshake 300 ms late; the client sends a frame right behind its
    // upgrade request, in the same write.
    let (upstream, env) = ws_env(Handshake::Late(300)).await;
    let mut tls = env.intercepted().await;
    let mut early = UPGRADE.as_bytes().to_vec();
    early.extend(masked_text("echo:early"));
    raw::send(&mut tls, &early).await.unwrap();
    let head = raw::read_head(&mut tls).await;
    assert_eq!(raw::status(&head), 101, "{head}");
    // The upstream got the frame as the first message of the socket, and echoed it.
    let seen = upstream.wait(0, 1).await;
    assert_eq!(seen.messages[0], ws::Message::text("echo:early"));
    let mut echoed = [0u8; 12];
    tls.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed[..2], &[0x81, 10]);
    assert_eq!(&echoed[2..], b"echo:early");
}

/// RFC 8441 extended CONNECT is not offered: SETTINGS_ENABLE_CONNECT_PROTOCOL is never sent, so a
/// client that tries anyway over HTTP/2 gets its stream reset (PROTOCOL_ERROR).
#[tokio::test]
async fn http2_extended_connect_is_refused() {
    let (upstream, env) = ws_env(Handshake::Accept).await;
    let tls = env
        .tls_alpn("api.openai.com:443", "api.openai.com", &[b"h2"])
        .await
        .unwrap();
    let mut h2 = H2::handshake(tls).await.unwrap();
    h2.headers(
        1,
        &[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":authority", "api.openai.com"),
            (":path", "/v1/responses"),
            ("sec-websocket-version", "13"),
        ],
        false,
    )
    .await
    .unwrap();
    assert!(
        matches!(
            h2.reply(1).await,
            h2raw::Reply::Reset(1) | h2raw::Reply::Gone(Some(1))
        ),
        "PROTOCOL_ERROR"
    );
    assert!(
        upstream.sockets().is_empty(),
        "nothing reached the upstream"
    );
}

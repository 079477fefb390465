//! Raw-socket helpers for what a well-behaved client cannot send: malformed CONNECT lines,
//! odd credentials, a mismatched SNI or inner Host.

use base64::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("agent:{token}"))
    )
}

/// Send raw bytes, read the response head (up to the blank line) and return it with the stream.
pub async fn send_head(proxy: SocketAddr, request: &[u8]) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    let head = read_head(&mut stream).await;
    (head, stream)
}

/// Read until `\r\n\r\n` or EOF, bounded by the harness wait.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !buf.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => break,
                Ok(_) => buf.push(byte[0]),
            }
        }
    };
    tokio::time::timeout(super::WAIT, read)
        .await
        .expect("response head in time");
    String::from_utf8_lossy(&buf).into_owned()
}

/// The status code of a response head ("HTTP/1.1 407 ..." → 407); 0 if there is none.
pub fn status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Whether the server closes the connection (EOF) after what it already sent.
pub async fn closes(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(super::WAIT, stream.read_to_end(&mut rest)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}

/// CONNECT through the proxy and return the stream after a 200.
pub async fn connect(proxy: SocketAddr, target: &str, token: &str) -> TcpStream {
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic(token)
    );
    let (head, stream) = send_head(proxy, req.as_bytes()).await;
    assert_eq!(status(&head), 200, "CONNECT {target}: {head}");
    stream
}

/// CONNECT, then a TLS handshake with `sni`, trusting `ca_pem`.
pub async fn connect_tls(
    proxy: SocketAddr,
    target: &str,
    token: &str,
    sni: &str,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect(proxy, target, token).await;
    let config = super::tls::client_config(&[ca_pem], &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(super::WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
}

//! Raw-socket helpers for what a well-behaved client cannot send: malformed CONNECT lines,
//! odd credentials, a mismatched SNI or inner Host.

use base64::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("agent:{token}"))
    )
}

/// `CONNECT target` with `Host` and the agent's credentials.
pub fn connect_head(target: &str, token: &str) -> String {
    format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic(token)
    )
}

/// The first flight of a real TLS client for `api.openai.com` offering `alpn`: its ClientHello.
pub fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
    let config = super::tls::client_config(&[], alpn);
    let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Write all of `bytes` and flush. Over TLS the flush matters: when a socket write returns
/// `Pending` (tokio's cooperative budget does that to tasks driving many streams), tokio-rustls
/// has taken the plaintext but keeps the records until the next write or flush.
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Send raw bytes, read the response head (up to the blank line) and return it with the stream.
pub async fn send_head(proxy: SocketAddr, request: &[u8]) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request).await.unwrap();
    let head = read_head(&mut stream).await;
    (head, stream)
}

/// Read until `\r\n\r\n` or EOF, bounded by the harness wait (what arrived by then is returned).
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
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
    let _ = tokio::time::timeout(super::WAIT, read).await;
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
pub async fn closes<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(super::WAIT, stream.read_to_end(&mut rest)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}

/// CONNECT through the proxy and return the stream after a 200.
pub async fn connect(proxy: SocketAddr, target: &str, token: &str) -> TcpStream {
    let (head, stream) = send_head(proxy, connect_head(target, token).as_bytes()).await;
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
    connect_tls_alpn(proxy, target, token, sni, ca_pem, &[b"http/1.1"]).await
}

/// [`connect_tls`] offering the given ALPN protocols.
pub async fn connect_tls_alpn(
    proxy: SocketAddr,
    target: &str,
    token: &str,
    sni: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect(proxy, target, token).await;
    let config = super::tls::client_config(&[ca_pem], alpn);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(super::WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
}

/// One HTTP/1 response as read off the wire.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// 0 when the connection closed (or stayed silent) before a status line.
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Read one response: the head, then the body by its framing (`content-length`, chunked, or
/// until EOF), all bounded by the harness wait. Interim `1xx` answers are returned as they are.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Answer {
    read_response_to(stream, false).await
}

/// [`read_response`] for a request that was a `CONNECT` when `connect` is set: a `2xx` answer to
/// it has no body (the connection becomes the tunnel).
pub async fn read_response_to<S: AsyncRead + Unpin>(stream: &mut S, connect: bool) -> Answer {
    let head = read_head(stream).await;
    let mut answer = Answer {
        status: status(&head),
        head,
        body: Vec::new(),
    };
    if answer.status == 0
        || (100..200).contains(&answer.status)
        || answer.status == 204
        || answer.status == 304
        || (connect && (200..300).contains(&answer.status))
    {
        return answer;
    }
    let chunked = answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = answer
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let read = async {
        if chunked {
            read_chunked(stream).await
        } else if let Some(n) = length {
            let mut body = vec![0u8; n];
            stream.read_exact(&mut body).await.map(|_| body)
        } else {
            let mut body = Vec::new();
            stream.read_to_end(&mut body).await.map(|_| body)
        }
    };
    if let Ok(Ok(body)) = tokio::time::timeout(super::WAIT, read).await {
        answer.body = body;
    }
    answer
}

async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.push(stream.read_u8().await?);
    }
    Ok(String::from_utf8_lossy(&line[..line.len() - 2]).into_owned())
}

async fn read_chunked<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream).await?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            while !read_line(stream).await?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream.read_exact(&mut body[start..]).await?;
        read_line(stream).await?;
    }
}

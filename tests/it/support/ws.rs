//! WebSockets for the relay tests: a provider upstream speaking the Responses WebSocket mode
//! and the Realtime API over TLS (tokio-tungstenite behind our own TLS accept, or raw bytes for
//! handshakes no library would send), and an agent's socket through the proxy (CONNECT, TLS
//! with the proxy's CA, then the RFC 6455 handshake).

use super::tls::TestCa;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How the upstream answers the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A proper `101`, then the socket.
    Accept,
    /// This status and a short JSON body; no upgrade.
    Refuse(u16),
    /// A `101` whose `Sec-WebSocket-Accept` does not match the key.
    WrongAccept,
    /// A proper `101` after this many milliseconds.
    Late(u64),
}

/// What the upstream saw of one socket.
#[derive(Debug, Clone, Default)]
pub struct SeenSocket {
    pub path: String,
    pub headers: http::HeaderMap,
    /// Messages received, in order.
    pub messages: Vec<Message>,
    /// The close frame the peer sent, if any.
    pub close: Option<u16>,
}

/// A provider upstream for sockets. On a text message with `"type":"response.create"` it answers
/// one response: Responses events on `/v1/responses` (usage input 100·n, output 10·n for the
/// n-th response of the socket, a streamed function call), `response.created` and
/// `response.done` on `/v1/realtime`. A create whose input or instructions say `hold` gets only
/// `response.created`. `echo:...` is sent back; `close-me` gets a close (1000).
pub struct WsUpstream {
    pub addr: SocketAddr,
    sockets: Arc<Mutex<Vec<SeenSocket>>>,
}

impl WsUpstream {
    pub async fn start(ca: &TestCa, handshake: Handshake) -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&[b"http/1.1"]));
        let sockets: Arc<Mutex<Vec<SeenSocket>>> = Arc::default();
        let all = sockets.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, all) = (acceptor.clone(), all.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    serve(tls, handshake, all).await;
                });
            }
        });
        WsUpstream { addr, sockets }
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn sockets(&self) -> Vec<SeenSocket> {
        self.sockets.lock().unwrap().clone()
    }

    /// Wait until socket `i` has received `n` messages (or a close), and return it.
    pub async fn wait(&self, i: usize, n: usize) -> SeenSocket {
        let deadline = tokio::time::Instant::now() + super::WAIT;
        loop {
            if let Some(s) = self.sockets().get(i) {
                if s.messages.len() >= n {
                    return s.clone();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "socket {i}: {:?}",
                self.sockets().get(i)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

async fn serve(mut tls: Tls, handshake: Handshake, all: Arc<Mutex<Vec<SeenSocket>>>) {
    match handshake {
        Handshake::Refuse(status) => {
            let head = super::raw::read_head(&mut tls).await;
            record_head(&all, &head);
            let body = r#"{"error":{"message":"upgrade refused"}}"#;
            let reply = format!(
                "HTTP/1.1 {status} Refused\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(reply.as_bytes()).await;
            // Stay open (keep-alive): a refused upgrade leaves the connection HTTP.
            let mut rest = [0u8; 1024];
            while matches!(tls.read(&mut rest).await, Ok(n) if n > 0) {}
        }
        Handshake::WrongAccept => {
            let head = super::raw::read_head(&mut tls).await;
            record_head(&all, &head);
            let reply =
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                         sec-websocket-accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n";
            let _ = tls.write_all(reply.as_bytes()).await;
            let mut rest = [0u8; 1024];
            while matches!(tls.read(&mut rest).await, Ok(n) if n > 0) {}
        }
        Handshake::Accept | Handshake::Late(_) => {
            let delay = match handshake {
                Handshake::Late(ms) => Duration::from_millis(ms),
                _ => Duration::ZERO,
            };
            let index = {
                let mut all = all.lock().unwrap();
                all.push(SeenSocket::default());
                all.len() - 1
            };
            let seen = all.clone();
            // The error type is tungstenite's, not ours to shrink.
            #[allow(clippy::result_large_err)]
            let callback = move |req: &Request, resp: Response| {
                let mut all = seen.lock().unwrap();
                all[index].path = req.uri().to_string();
                all[index].headers = req.headers().clone();
                Ok(resp)
            };
            if !delay.is_zero() {
                // Let the client's early bytes arrive before the handshake is read.
                tokio::time::sleep(delay).await;
            }
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await else {
                return;
            };
            converse(ws, index, all).await;
        }
    }
}

fn record_head(all: &Mutex<Vec<SeenSocket>>, head: &str) {
    let mut socket = SeenSocket::default();
    let mut lines = head.lines();
    socket.path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            ) {
                socket.headers.append(n, v);
            }
        }
    }
    all.lock().unwrap().push(socket);
}

async fn converse(mut ws: WebSocketStream<Tls>, index: usize, all: Arc<Mutex<Vec<SeenSocket>>>) {
    let realtime = all.lock().unwrap()[index].path.contains("/realtime");
    let mut responses = 0;
    while let Some(Ok(msg)) = ws.next().await {
        all.lock().unwrap()[index].messages.push(msg.clone());
        match msg {
            Message::Text(text) if text.contains("\"response.create\"") => {
                responses += 1;
                let hold = text.contains("hold");
                let events = if realtime {
                    realtime_events(responses, hold)
                } else {
                    responses_events(responses, hold)
                };
                for event in events {
                    if ws.send(Message::text(event)).await.is_err() {
                        return;
                    }
                }
            }
            Message::Text(text) if text.as_str() == "close-me" => {
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    }))
                    .await;
            }
            Message::Text(text)
                if text.starts_with("echo:")
                    && ws.send(Message::Text(text.clone())).await.is_err() =>
            {
                return;
            }
            Message::Close(frame) => {
                all.lock().unwrap()[index].close = frame.map(|f| u16::from(f.code));
            }
            _ => {}
        }
    }
}

/// The n-th Responses answer of a socket: created, a function call in two pieces, completed.
pub fn responses_events(n: u64, hold: bool) -> Vec<String> {
    let created = format!(
        r#"{{"type":"response.created","response":{{"id":"resp_{n}","model":"gpt-5","status":"in_progress"}}}}"#
    );
    if hold {
        return vec![created];
    }
    vec![
        created,
        r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"fc","call_id":"call_ws","name":"exec_command","arguments":""}}"#.into(),
        r#"{"type":"response.function_call_arguments.delta","output_index":0,"delta":"{\"cmd\":"}"#.into(),
        r#"{"type":"response.function_call_arguments.delta","output_index":0,"delta":"\"ls\"}"}"#.into(),
        format!(
            r#"{{"type":"response.completed","response":{{"id":"resp_{n}","model":"gpt-5","status":"completed","usage":{{"input_tokens":{},"input_tokens_details":{{"cached_tokens":{}}},"output_tokens":{}}}}}}}"#,
            100 * n,
            10 * n,
            10 * n
        ),
    ]
}

/// The n-th Realtime answer: created, then done with usage (Realtime's own field names).
pub fn realtime_events(n: u64, hold: bool) -> Vec<String> {
    let created = format!(
        r#"{{"type":"response.created","response":{{"id":"r{n}","status":"in_progress"}}}}"#
    );
    if hold {
        return vec![created];
    }
    vec![
        created,
        format!(
            r#"{{"type":"response.done","response":{{"id":"r{n}","status":"completed","usage":{{"total_tokens":{},"input_tokens":{},"output_tokens":{},"input_token_details":{{"cached_tokens":{}}}}}}}}}"#,
            60 * n,
            50 * n,
            10 * n,
            5 * n
        ),
    ]
}

pub type ClientSocket = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// An agent's socket to `https://api.openai.com{path}` through the proxy at `proxy`, with
/// `headers` added to the upgrade request. Returns the socket and the `101`'s headers.
pub async fn connect(
    proxy: SocketAddr,
    token: &str,
    ca_pem: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(ClientSocket, http::HeaderMap), tokio_tungstenite::tungstenite::Error> {
    let tls = super::raw::connect_tls_alpn(
        proxy,
        "api.openai.com:443",
        token,
        "api.openai.com",
        ca_pem,
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let mut request = format!("wss://api.openai.com{path}").into_client_request()?;
    for (n, v) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let (ws, resp) = tokio_tungstenite::client_async(request, tls).await?;
    Ok((ws, resp.headers().clone()))
}

/// The next text message, skipping control frames; `None` when the socket ended.
pub async fn next_text(ws: &mut ClientSocket) -> Option<String> {
    loop {
        match tokio::time::timeout(super::WAIT, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Read messages until one contains `needle`; returns everything read.
pub async fn read_until(ws: &mut ClientSocket, needle: &str) -> Vec<String> {
    let mut read = Vec::new();
    while let Some(t) = next_text(ws).await {
        let done = t.contains(needle);
        read.push(t);
        if done {
            return read;
        }
    }
    panic!("the socket ended before {needle}: {read:?}");
}

//! The bench's own upstream: a lean TLS server (h2 and HTTP/1.1) answering like a provider, and a
//! plain TCP source for tunnel throughput. Unlike the test mock it records nothing, so it costs
//! the same per request in the direct and the proxied run.
//!
//! - `POST /v1/chat/completions`: a small JSON completion with usage.
//! - the same with `"stream":true`: `x-bench-events` SSE events `x-bench-gap-us` apart, each
//!   carrying its send time (`"t":` nanoseconds since [`EPOCH`]), then a usage chunk and `[DONE]`;
//!   with `x-bench-tool: 1` the events are one streamed tool call (`delta.tool_calls` pieces).
//! - `GET /v1/responses` with `Upgrade: websocket`: the Responses WebSocket mode. Each
//!   `response.create` text message is answered with `response.created`, [`WS_DELTAS`]
//!   `response.output_text.delta` events (each with its send time, as above) and
//!   `response.completed` with usage.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The clock SSE send times are measured against (client and upstream share this process).
pub static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since [`EPOCH`].
pub fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

pub const CHAT_JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}"#;

type Body = BoxBody<Bytes, Infallible>;

/// Serve TLS on a fresh loopback port; returns its address.
pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service_fn(respond))
                    .await;
            });
        }
    });
    addr
}

async fn respond(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if let Some(key) = req.headers().get("sec-websocket-key") {
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = upgrade.await {
                websocket(io).await;
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    let events = header_num(&req, "x-bench-events");
    let tool = header_num(&req, "x-bench-tool") == 1;
    let gap = Duration::from_micros(header_num(&req, "x-bench-gap-us") as u64);
    // Read the whole request first, as providers do.
    let _ = req.into_body().collect().await;
    Ok(if events > 0 {
        sse(events, gap, tool)
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(CHAT_JSON.as_bytes())).boxed())
            .unwrap()
    })
}

fn header_num(req: &Request<Incoming>, name: &str) -> usize {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sse(events: usize, gap: Duration, tool: bool) -> Response<Body> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        let mut next = tokio::time::Instant::now();
        for i in 0..events {
            // The first event goes out with the headers: a timer here would add up to a tick
            // (1 ms) of the timer's own rounding to the first-event figure.
            if i > 0 {
                tokio::time::sleep_until(next).await;
            }
            next += gap;
            let event = if !tool {
                format!(
                    "data: {{\"t\":{},\"i\":{i},\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok\"}}}}],\"usage\":null}}\n\n",
                    now_ns()
                )
            } else if i == 0 {
                format!(
                    "data: {{\"t\":{},\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{{\"name\":\"exec_command\",\"arguments\":\"\"}}}}]}}}}],\"usage\":null}}\n\n",
                    now_ns()
                )
            } else {
                // One piece of the arguments JSON (`{"cmd":"ls ..."}` spread over the events).
                let piece = match i {
                    1 => "{\\\"cmd\\\":\\\"ls",
                    _ if i + 1 == events => "\\\"}",
                    _ => " -la",
                };
                format!(
                    "data: {{\"t\":{},\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":\"{piece}\"}}}}]}}}}],\"usage\":null}}\n\n",
                    now_ns()
                )
            };
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
        let tail = "data: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":200}}\n\ndata: [DONE]\n\n";
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(tail.as_bytes()))))
            .await;
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

/// A plain TCP source: every connection receives `total` bytes, then EOF.
pub async fn start_bulk(total: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let chunk = Bytes::from(vec![0x5a_u8; 256 * 1024]);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut left = total;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if tcp.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// Text deltas per WebSocket response.
pub const WS_DELTAS: usize = 50;

/// One upgraded socket in the Responses WebSocket mode (see the module comment).
async fn websocket(io: hyper::upgrade::Upgraded) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None)
            .await;
    let mut n = 0u64;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        if !text.contains("\"response.create\"") {
            continue;
        }
        n += 1;
        let created = format!(
            r#"{{"type":"response.created","response":{{"id":"resp_{n}","model":"gpt-4o-mini","status":"in_progress"}}}}"#
        );
        if ws.send(Message::text(created)).await.is_err() {
            return;
        }
        for i in 0..WS_DELTAS {
            let delta = format!(
                r#"{{"type":"response.output_text.delta","t":{},"output_index":0,"content_index":0,"i":{i},"delta":"tok"}}"#,
                now_ns()
            );
            if ws.send(Message::text(delta)).await.is_err() {
                return;
            }
        }
        let done = format!(
            r#"{{"type":"response.completed","response":{{"id":"resp_{n}","model":"gpt-4o-mini","status":"completed","usage":{{"input_tokens":11,"input_tokens_details":{{"cached_tokens":0}},"output_tokens":{WS_DELTAS}}}}}}}"#
        );
        if ws.send(Message::text(done)).await.is_err() {
            return;
        }
    }
}

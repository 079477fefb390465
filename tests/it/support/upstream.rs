//! The mock provider: a TLS server on 127.0.0.1 speaking h2 and HTTP/1.1, recording every
//! request it sees.
//!
//! Routes: `/v1/chat/completions` (JSON), `/v1/messages` (JSON), `/v1/sse` (three SSE events;
//! after the first it waits until the test calls [`MockUpstream::release`], which the test does
//! only once its client holds the first event — a buffering proxy would deadlock there and be
//! caught), `/echo` (echoes the body), anything else 404.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const CHAT_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}"#;
pub const MESSAGES_JSON: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":9,"output_tokens":2}}"#;
pub const SSE_EVENTS: [&str; 3] = [
    "data: {\"choices\":[{\"delta\":{\"content\":\"one\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"two\"}}]}\n\n",
    "data: [DONE]\n\n",
];
pub const UPSTREAM_REQUEST_ID: &str = "upstream-req-1";

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    released_by_timeout: Arc<AtomicBool>,
}

struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    released_by_timeout: Arc<AtomicBool>,
}

impl MockUpstream {
    pub async fn start(config: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            seen: Arc::default(),
            release: Arc::new(Notify::new()),
            released_by_timeout: Arc::new(AtomicBool::new(false)),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(respond(&s, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        MockUpstream {
            addr,
            seen: shared.seen.clone(),
            release: shared.release.clone(),
            released_by_timeout: shared.released_by_timeout.clone(),
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Let a waiting SSE stream send its remaining events.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// Whether an SSE stream had to give up waiting for the client (it never saw event one).
    pub fn released_by_timeout(&self) -> bool {
        self.released_by_timeout.load(Ordering::SeqCst)
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

async fn respond(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    shared.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers.clone(),
    });
    // Read the whole request first, as real providers do (an unread h2 body is reset, and a
    // server that resets too many streams closes the connection).
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = |body: &'static str| {
        Response::builder()
            .header("content-type", "application/json")
            .header("x-request-id", UPSTREAM_REQUEST_ID)
            .body(full(body))
            .unwrap()
    };
    match parts.uri.path() {
        "/v1/chat/completions" => json(CHAT_JSON),
        "/v1/messages" => json(MESSAGES_JSON),
        "/v1/sse" => sse(shared),
        "/v1/stream" => stream(),
        "/echo" => Response::new(full(body)),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found"))
            .unwrap(),
    }
}

fn sse(shared: &Shared) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let release = shared.release.clone();
    let by_timeout = shared.released_by_timeout.clone();
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(
                SSE_EVENTS[0].as_bytes(),
            ))))
            .await;
        if tokio::time::timeout(super::WAIT / 2, release.notified())
            .await
            .is_err()
        {
            by_timeout.store(true, Ordering::SeqCst);
        }
        for event in &SSE_EVENTS[1..] {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(event.as_bytes()))))
                .await;
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

/// Five SSE events 10 ms apart, no gate: for many concurrent streams.
pub const STREAM_EVENTS: usize = 5;

fn stream() -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(STREAM_EVENTS);
    tokio::spawn(async move {
        for i in 0..STREAM_EVENTS {
            let event = format!("data: {{\"n\":{i}}}\n\n");
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(tokio_stream_from(rx)).boxed())
        .unwrap()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

//! The mock provider: a TLS server on 127.0.0.1 speaking h2 and HTTP/1.1, recording every
//! request it sees.
//!
//! Routes: `/v1/chat/completions` (JSON), `/v1/messages` (JSON), `/v1/sse` (three SSE events;
//! after the first it waits until the test calls [`MockUpstream::release`], which the test does
//! only once its client holds the first event — a buffering proxy would deadlock there and be
//! caught), `/echo` (echoes the body), anything else 404. Headers ask for more:
//! `x-mock-tools` (answers with tool calls, JSON or SSE), `x-mock-tail-ms` (a stream's body stays
//! open that long after its last event), `x-mock-echo-model` (a chat answer naming the requested
//! model), `x-mock-events`/`x-mock-gap-ms` (a paced chat stream).

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
pub const RESPONSES_JSON: &str = r#"{"id":"resp_2","object":"response","model":"gpt-4.1-mini","status":"completed","usage":{"input_tokens":40,"input_tokens_details":{"cached_tokens":8},"output_tokens":7,"total_tokens":47}}"#;
/// OpenAI chat stream with include_usage: 1200 prompt tokens (1024 cached), 35 completion.
pub const CHAT_SSE: &str = concat!(
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":35,\"prompt_tokens_details\":{\"cached_tokens\":1024}}}\n\n",
    "data: [DONE]\n\n",
);
/// Responses stream: 500 input (100 cached), 20 output.
pub const RESPONSES_SSE: &str = concat!(
    "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":null}}\n\n",
    "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":500,\"input_tokens_details\":{\"cached_tokens\":100},\"output_tokens\":20}}}\n\n",
);
/// Anthropic stream: 25 input, 2000 cache write, 3000 cache read, 15 output (cumulative deltas).
pub const MESSAGES_SSE: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":2000,\"cache_read_input_tokens\":3000,\"output_tokens\":1}}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":10}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);
/// Chat stream (`x-mock-tools`): two parallel tool calls whose argument pieces interleave.
pub const CHAT_TOOLS_SSE: &str = concat!(
    "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"read_file\",\"arguments\":\"\"}},{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"list_dir\",\"arguments\":\"\"}}]}}]}\n\n",
    "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"{\\\"dir\\\":\"}}]}}]}\n\n",
    "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"path\\\":\"}}]}}]}\n\n",
    "data: {\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"src/é.rs\\\"}\"}},{\"index\":1,\"function\":{\"arguments\":\"\\\".\\\"}\"}}]}}]}\n\n",
    "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":20}}\n\n",
    "data: [DONE]\n\n",
);
/// Responses stream (`x-mock-tools`): two function calls, arguments in pieces, then done.
pub const RESPONSES_TOOLS_SSE: &str = concat!(
    "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"shell\",\"arguments\":\"\"}}\n\n",
    "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"output_index\":1,\"item\":{\"type\":\"function_call\",\"id\":\"fc_2\",\"call_id\":\"call_2\",\"name\":\"apply\",\"arguments\":\"\"}}\n\n",
    "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":0,\"delta\":\"{\\\"cmd\\\":\"}\n\n",
    "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":1,\"delta\":\"{}\"}\n\n",
    "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"output_index\":0,\"delta\":\"\\\"ls\\\"}\"}\n\n",
    "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"status\":\"completed\",\"usage\":{\"input_tokens\":30,\"output_tokens\":12}}}\n\n",
);
/// Anthropic stream (`x-mock-tools`): text, then a tool_use block whose input comes in pieces.
pub const MESSAGES_TOOLS_SSE: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"Bash\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"command\\\":\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"ls\\\"}\"}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);
pub const CHAT_TOOLS_JSON: &str = r#"{"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","tool_calls":[{"id":"call_j","type":"function","function":{"name":"grep","arguments":"{\"q\":\"x\"}"}}]}}],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
pub const RESPONSES_TOOLS_JSON: &str = r#"{"model":"gpt-5","status":"completed","output":[{"type":"custom_tool_call","call_id":"call_c","name":"apply_patch","input":"*** Begin"}],"usage":{"input_tokens":5,"output_tokens":2}}"#;
pub const MESSAGES_TOOLS_JSON: &str = r#"{"model":"claude-sonnet-4-5","content":[{"type":"tool_use","id":"toolu_j","name":"Read","input":{"file": "a.rs"}}],"usage":{"input_tokens":5,"output_tokens":2}}"#;
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
    /// The request body as read (empty until the whole body has arrived).
    pub body: Bytes,
}

impl Seen {
    /// `(method, path and query)`.
    pub fn target(&self) -> (&str, &str) {
        (&self.method, &self.path)
    }

    /// Every value of header `name`, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        let values = self.headers.get_all(name).iter();
        values.map(|v| v.to_str().unwrap()).collect()
    }

    /// A request as its head and (possibly not yet) its body arrived.
    pub fn of(parts: &http::request::Parts, body: Bytes) -> Seen {
        Seen {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        }
    }
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
    /// A mock speaking h2 and HTTP/1.1 under a fresh test CA whose certificate is written into
    /// `dir`, for tests that run the real binary (`--upstream-ca-file` is the returned path; an
    /// in-process proxy comes with its own, in [`super::Env`]).
    pub async fn for_binary(dir: &std::path::Path) -> (MockUpstream, std::path::PathBuf) {
        let ca = super::TestCa::new();
        let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
        (upstream, ca.write_pem(dir))
    }

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

    /// Forget what was seen (long runs keep their memory flat).
    pub fn clear_seen(&self) {
        self.seen.lock().unwrap().clear();
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
    let index = {
        let mut seen = shared.seen.lock().unwrap();
        seen.push(Seen::of(&parts, Bytes::new()));
        seen.len() - 1
    };
    // Read the whole request first, as real providers do (an unread h2 body is reset, and a
    // server that resets too many streams closes the connection).
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // (The list may have been cleared meanwhile by a long run.)
    if let Some(seen) = shared.seen.lock().unwrap().get_mut(index) {
        seen.body = body.clone();
    }
    let json = |body: &'static str| {
        Response::builder()
            .header("content-type", "application/json")
            .header("x-request-id", UPSTREAM_REQUEST_ID)
            .body(full(body))
            .unwrap()
    };
    if let Some((events, gap)) = paced(&parts.headers) {
        return paced_stream(events, gap);
    }
    let streaming = String::from_utf8_lossy(&body).contains("\"stream\":true");
    let tail = pause(&parts.headers, "x-mock-tail-ms");
    let hold = pause(&parts.headers, "x-mock-hold-ms");
    if parts.headers.contains_key("x-mock-tools") {
        return match (parts.uri.path(), streaming) {
            ("/v1/chat/completions", true) => held_transcript(CHAT_TOOLS_SSE, hold, tail),
            ("/v1/responses", true) => held_transcript(RESPONSES_TOOLS_SSE, hold, tail),
            ("/v1/messages", true) => held_transcript(MESSAGES_TOOLS_SSE, hold, tail),
            ("/v1/chat/completions", false) => json(CHAT_TOOLS_JSON),
            ("/v1/responses", false) => json(RESPONSES_TOOLS_JSON),
            _ => json(MESSAGES_TOOLS_JSON),
        };
    }
    if parts.headers.contains_key("x-mock-echo-model") {
        return echo_model(&body);
    }
    match parts.uri.path() {
        "/v1/chat/completions" if streaming => sse_transcript(CHAT_SSE, tail),
        "/v1/responses" if streaming => sse_transcript(RESPONSES_SSE, tail),
        "/v1/messages" if streaming => sse_transcript(MESSAGES_SSE, tail),
        "/v1/chat/completions" => json(CHAT_JSON),
        "/v1/responses" => json(RESPONSES_JSON),
        "/v1/messages" => json(MESSAGES_JSON),
        // The gated stream under a chat path too, so it passes through the usage tap.
        "/v1/sse" | "/gated/v1/chat/completions" => sse(shared),
        "/v1/stream" => stream(),
        "/echo" => Response::new(full(body)),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found"))
            .unwrap(),
    }
}

fn sse(shared: &Shared) -> Response<Body> {
    let release = shared.release.clone();
    let by_timeout = shared.released_by_timeout.clone();
    event_stream(4, |tx| async move {
        send(&tx, SSE_EVENTS[0]).await;
        if tokio::time::timeout(super::WAIT / 2, release.notified())
            .await
            .is_err()
        {
            by_timeout.store(true, Ordering::SeqCst);
        }
        for event in &SSE_EVENTS[1..] {
            send(&tx, *event).await;
        }
    })
}

/// A transcript as SSE, one event per frame with a short pause, as a provider streams it; the
/// body then stays open for `tail` before it ends (a provider finishing its side).
fn sse_transcript(text: &'static str, tail: std::time::Duration) -> Response<Body> {
    held_transcript(text, std::time::Duration::ZERO, tail)
}

/// [`sse_transcript`], waiting `hold` before the last (terminal) event: a stream caught in the
/// middle.
fn held_transcript(
    text: &'static str,
    hold: std::time::Duration,
    tail: std::time::Duration,
) -> Response<Body> {
    event_stream(8, move |tx| async move {
        let events: Vec<&str> = text.split_inclusive("\n\n").collect();
        for (i, event) in events.iter().enumerate() {
            if i + 1 == events.len() {
                tokio::time::sleep(hold).await;
            }
            if !send(&tx, *event).await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        tokio::time::sleep(tail).await;
    })
}

/// A pause asked for in milliseconds by header `name` (`x-mock-tail-ms`: keep a stream's body
/// open after its last event; `x-mock-hold-ms`: wait before a tool stream's terminal event).
fn pause(headers: &http::HeaderMap, name: &str) -> std::time::Duration {
    let ms = headers
        .get(name)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    std::time::Duration::from_millis(ms)
}

/// A chat completion naming the model the request asked for (1 prompt, 1 completion token).
fn echo_model(request: &[u8]) -> Response<Body> {
    let model = serde_json::from_slice::<serde_json::Value>(request)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_string))
        .unwrap_or_default();
    let body = serde_json::json!({
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// `x-mock-events: N` and `x-mock-gap-ms: M` ask for a chat stream of N events M ms apart.
fn paced(headers: &http::HeaderMap) -> Option<(usize, u64)> {
    let num = |name: &str| headers.get(name)?.to_str().ok()?.parse::<u64>().ok();
    Some((
        num("x-mock-events")? as usize,
        num("x-mock-gap-ms").unwrap_or(10),
    ))
}

/// Delta `i` of a paced chat stream.
fn paced_event(i: usize) -> String {
    format!("data: {{\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{i}\"}}}}]}}\n\n")
}

/// What ends a paced chat stream: usage (7 prompt, 5 completion tokens), then `[DONE]`.
const PACED_TAIL: &str = "data: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n";

/// The whole body of a paced chat stream of `events` deltas, as a client receives it.
pub fn paced_transcript(events: usize) -> String {
    (0..events).map(paced_event).collect::<String>() + PACED_TAIL
}

/// A chat stream paced by the client: `events` deltas `gap_ms` apart, then usage and `[DONE]`.
fn paced_stream(events: usize, gap_ms: u64) -> Response<Body> {
    event_stream(4, move |tx| async move {
        for i in 0..events {
            if !send(&tx, paced_event(i)).await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(gap_ms)).await;
        }
        send(&tx, PACED_TAIL).await;
    })
}

/// Five SSE events 10 ms apart, no gate: for many concurrent streams.
pub const STREAM_EVENTS: usize = 5;

fn stream() -> Response<Body> {
    event_stream(STREAM_EVENTS, |tx| async move {
        for i in 0..STREAM_EVENTS {
            if !send(&tx, format!("data: {{\"n\":{i}}}\n\n")).await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
}

type Events = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A `text/event-stream` answer whose body `produce` writes, event by event, through a channel
/// of `capacity` frames.
fn event_stream<F, Fut>(capacity: usize, produce: F) -> Response<Body>
where
    F: FnOnce(Events) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    tokio::spawn(produce(tx));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(tokio_stream_from(rx)).boxed())
        .unwrap()
}

/// Send one event as its own frame; `false` once the client has gone.
async fn send(tx: &Events, event: impl Into<Bytes>) -> bool {
    tx.send(Ok(Frame::data(event.into()))).await.is_ok()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

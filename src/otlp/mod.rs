//! OpenTelemetry traces over OTLP/HTTP (`--otlp-endpoint`): one span per intercepted session
//! and one per bridged request, with the GenAI semantic conventions.
//!
//! Spans are built once, when their work has ended, from facts already kept (the session's
//! times, the interception record), so tracing adds nothing to a request while it runs but the
//! W3C `traceparent` it carries upstream. They go through a bounded queue (`try_send`: a full
//! queue drops the span and counts it in `otlp_spans_dropped_total`, never blocks a request) to
//! one task that batches them (up to [`BATCH`] spans or [`LINGER`]) and POSTs protobuf to
//! `{endpoint}/v1/traces`. A batch the collector does not take is dropped and counted: the
//! proxy never holds telemetry in memory for a collector that is down.
//!
//! What never goes in a span: a prompt, a tool's arguments, a key, a token.

pub mod proto;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prost::Message;
use std::cell::Cell;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Spans waiting for the exporter, at most.
pub const QUEUE: usize = 4096;
/// Spans per export request, at most.
pub const BATCH: usize = 512;
/// How long the exporter waits for more spans after the first of a batch.
pub const LINGER: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A span's place in a trace: W3C trace and span ids, its parent, whether it is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub flags: u8,
}

impl SpanContext {
    /// The first span of a new trace.
    pub fn root() -> Self {
        SpanContext {
            trace_id: random_bytes(),
            span_id: random_bytes(),
            parent: None,
            flags: 1,
        }
    }

    /// A new span under this one, in the same trace.
    pub fn child(&self) -> Self {
        SpanContext {
            trace_id: self.trace_id,
            span_id: random_bytes(),
            parent: Some(self.span_id),
            flags: self.flags,
        }
    }

    /// A new span under the caller's span named by a W3C `traceparent` value
    /// (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`); `None` if it is not one.
    pub fn child_of_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?;
        let parent: [u8; 8] = hex(parent)?;
        let [flags]: [u8; 1] = hex(flags)?;
        if trace_id == [0; 16] || parent == [0; 8] {
            return None;
        }
        Some(SpanContext {
            trace_id,
            span_id: random_bytes(),
            parent: Some(parent),
            flags,
        })
    }

    /// The `traceparent` that names this span, for the request it sends on.
    pub fn traceparent(&self) -> String {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

thread_local! {
    /// SplitMix64 state, seeded once per thread from the OS: span ids need to be unique, not
    /// secret, and a system call per id is what the hot path cannot afford.
    static RNG: Cell<u64> = Cell::new({
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        u64::from_le_bytes(seed) | 1
    });
}

fn random_u64() -> u64 {
    RNG.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let r = random_u64().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    out
}

/// What a request's span needs beside its record: its place in the trace, the GenAI system
/// (`openai`, `anthropic`) and the model the request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceInfo {
    pub context: SpanContext,
    pub system: &'static str,
    pub requested_model: Option<String>,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub context: SpanContext,
    pub name: String,
    /// Server (a session, a request received) or client (sent on).
    pub server: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// The work failed (the span's status says error).
    pub error: Option<String>,
}

/// Where spans go; cheap to clone. Emitting never waits.
#[derive(Clone)]
pub struct Tracer {
    tx: mpsc::Sender<SpanData>,
    dropped: prometheus::IntCounter,
}

/// What the exporter counts (registered by whoever owns the metrics).
#[derive(Clone)]
pub struct Counters {
    pub exported: prometheus::IntCounter,
    pub dropped: prometheus::IntCounter,
}

impl Tracer {
    /// Start exporting to `endpoint` (`http(s)://host:port[/path]`; `/v1/traces` is added
    /// unless the path already ends with it). The task ends, after a last flush, when every
    /// `Tracer` clone is dropped.
    pub fn start(
        endpoint: &str,
        service_instance: String,
        counters: Counters,
    ) -> Result<(Tracer, tokio::task::JoinHandle<()>), http::uri::InvalidUri> {
        let trimmed = endpoint.trim_end_matches('/');
        let url = if trimmed.ends_with("/v1/traces") {
            trimmed.to_string()
        } else {
            format!("{trimmed}/v1/traces")
        };
        let uri: http::Uri = url.parse()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(export_loop(uri, service_instance, rx, counters.clone()));
        Ok((
            Tracer {
                tx,
                dropped: counters.dropped,
            },
            task,
        ))
    }

    /// Queue a finished span; a full queue drops it (counted).
    pub fn emit(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

async fn export_loop(
    uri: http::Uri,
    instance: String,
    mut rx: mpsc::Receiver<SpanData>,
    counters: Counters,
) {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(https);
    let mut failures_logged = 0u32;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = encode(&instance, batch);
        let request = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            counters.dropped.inc_by(n);
            continue;
        };
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request)).await;
        match sent {
            Ok(Ok(resp)) if resp.status().is_success() => counters.exported.inc_by(n),
            outcome => {
                counters.dropped.inc_by(n);
                // A collector that is down must not become a log flood.
                if failures_logged < 5 || failures_logged % 100 == 0 {
                    let why = match outcome {
                        Ok(Ok(resp)) => format!("status {}", resp.status()),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "timed out".into(),
                    };
                    tracing::warn!(endpoint = %uri, spans = n, error = %why, "OTLP export failed; spans dropped");
                }
                failures_logged = failures_logged.saturating_add(1);
            }
        }
    }
}

/// One export request: our resource, one scope, the spans.
pub fn encode(instance: &str, spans: Vec<SpanData>) -> Vec<u8> {
    let resource = proto::Resource {
        attributes: vec![
            kv("service.name", Value::Str("aibridge-proxy".into())),
            kv(
                "service.version",
                Value::Str(env!("CARGO_PKG_VERSION").into()),
            ),
            kv("service.instance.id", Value::Str(instance.into())),
        ],
    };
    let spans = spans.into_iter().map(span_message).collect();
    let request = proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: "aibridge-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
            }],
        }],
    };
    request.encode_to_vec()
}

fn span_message(s: SpanData) -> proto::Span {
    let nanos = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    proto::Span {
        trace_id: s.context.trace_id.to_vec(),
        span_id: s.context.span_id.to_vec(),
        parent_span_id: s.context.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name,
        kind: if s.server { 2 } else { 3 },
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end),
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(match s.error {
            Some(message) => proto::Status { message, code: 2 },
            None => proto::Status {
                message: String::new(),
                code: 0,
            },
        }),
        flags: u32::from(s.context.flags),
    }
}

fn kv(key: &str, value: Value) -> proto::KeyValue {
    use proto::any_value::Value as V;
    let value = match value {
        Value::Str(s) => V::StringValue(s),
        Value::Int(i) => V::IntValue(i),
        Value::Bool(b) => V::BoolValue(b),
    };
    proto::KeyValue {
        key: key.into(),
        value: Some(proto::AnyValue { value: Some(value) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_and_written_by_the_w3c_rules() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = SpanContext::child_of_traceparent(tp).unwrap();
        assert_eq!(
            child.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(&child.traceparent()[..36], &tp[..36], "same trace");
        assert_ne!(
            &child.traceparent()[36..52],
            &tp[36..52],
            "a span of its own"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(SpanContext::child_of_traceparent(bad), None, "{bad}");
        }
        let root = SpanContext::root();
        let again = SpanContext::child_of_traceparent(&root.traceparent()).unwrap();
        assert_eq!(
            (again.trace_id, again.parent),
            (root.trace_id, Some(root.span_id))
        );
    }

    #[test]
    fn ids_differ() {
        let ids: std::collections::HashSet<[u8; 8]> =
            (0..10_000).map(|_| random_bytes::<8>()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}

//! OpenTelemetry traces (issue 16): spans exported over OTLP/HTTP to a receiver started here,
//! decoded with the official opentelemetry-proto types, checked attribute by attribute.

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An OTLP/HTTP receiver: every `POST /v1/traces` body, raw.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let kept = bodies.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            kept.lock().unwrap().push(body);
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::new(),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Receiver { url, bodies }
    }

    /// Every span received so far, decoded (the resource attributes checked on the way).
    fn spans(&self) -> Vec<Span> {
        let mut spans = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            let request = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
            for rs in request.resource_spans {
                let resource = attributes(&rs.resource.unwrap().attributes);
                assert_eq!(resource["service.name"], "aibridge-proxy");
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
        }
        spans
    }

    async fn wait_for(&self, n: usize) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} spans",
                spans.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn raw(&self) -> Vec<u8> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.to_vec())
            .collect()
    }
}

/// Attributes as strings (ints printed).
fn attributes(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn spans_carry_the_genai_attributes_and_the_trace_goes_upstream() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.url.clone();
    let env = Env::with(|o| o.openai().tweak(move |c| c.otlp_endpoint = Some(endpoint))).await;
    let client = env.client(Http::One);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"secret prompt"}]}"#;
    let with_parent = client
        .post(CHAT)
        .header("traceparent", traceparent)
        .body(body)
        .call()
        .await;
    assert_eq!(with_parent.status(), 200);
    with_parent.bytes().await.unwrap();
    let without = client.post(CHAT).body(body).call().await;
    without.bytes().await.unwrap();
    drop(client); // the intercepted session ends: its span goes too

    let spans = receiver.wait_for(3).await;
    let by_name = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let requests = by_name("chat gpt-4o-mini");
    assert_eq!(requests.len(), 2, "{spans:#?}");
    let session = by_name("CONNECT api.openai.com:443");
    assert_eq!(session.len(), 1);
    let session = session[0];

    // The client's trace: the span is its child, and the upstream saw our span as parent.
    let joined = requests
        .iter()
        .find(|s| hex(&s.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("a span in the client's trace");
    assert_eq!(hex(&joined.parent_span_id), "00f067aa0ba902b7");
    let seen = env.upstream.seen();
    let sent_up = seen[0].headers["traceparent"].to_str().unwrap();
    assert_eq!(
        sent_up,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex(&joined.span_id)
        )
    );
    // Without one, the request hangs under its session.
    let alone = requests
        .iter()
        .find(|s| s.span_id != joined.span_id)
        .unwrap();
    assert_eq!(alone.trace_id, session.trace_id);
    assert_eq!(alone.parent_span_id, session.span_id);

    let a = attributes(&joined.attributes);
    for (key, want) in [
        ("gen_ai.system", "openai"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.response.model", "gpt-4o-mini"),
        ("gen_ai.usage.input_tokens", "11"),
        ("gen_ai.usage.output_tokens", "3"),
        ("enduser.id", "alice"),
        ("aibridge.provider", "openai"),
        ("aibridge.outcome", "completed"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(
            a.get(key).map(String::as_str),
            Some(want),
            "{key} in {a:#?}"
        );
    }
    assert!(a.contains_key("aibridge.ttfb_ms"));
    let s = attributes(&session.attributes);
    assert_eq!(s["aibridge.requests"], "2");
    assert_eq!(s["server.address"], "api.openai.com");

    // Never a prompt, a key or a token.
    let raw = receiver.raw();
    let text = String::from_utf8_lossy(&raw);
    for secret in ["secret prompt", "sk-provider-openai", env.token.as_str()] {
        assert!(!text.contains(secret), "{secret} in the spans");
    }
    assert!(
        env.metric("aibridge_proxy_otlp_spans_exported_total", &[])
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let env = Env::with(|o| o.openai().tweak(move |c| c.otlp_endpoint = Some(closed))).await;
    for _ in 0..3 {
        assert_eq!(env.chat().await.status(), 200);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while env
        .metric("aibridge_proxy_otlp_spans_dropped_total", &[])
        .await
        < 3.0
    {
        assert!(tokio::time::Instant::now() < deadline, "drops not counted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.metric("aibridge_proxy_otlp_spans_exported_total", &[])
            .await,
        0.0
    );
}

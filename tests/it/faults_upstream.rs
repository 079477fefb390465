//! Upstream-side faults (RELIABILITY §10, F1–F10 and F20): refused connections, bad TLS, resets
//! mid-stream, malformed framing, pooled connections closed by the peer, GOAWAY, DNS failure,
//! clients leaving mid-upload and a full leaf cache. Each test checks what the client sees, the
//! interception record and the metrics.

use crate::support::relay::{Fault, Relay};
use crate::support::scripted::{
    channel_body, expired_server_config, scrape, RawUpstream, Reply, ScriptedUpstream, Then,
};
use crate::support::upstream::CHAT_JSON;
use crate::support::*;
use crate::usage::{metric, row};
use aibridge_proxy::provider::ProviderKind;
use aibridge_proxy::store::Interception;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

const GENERIC_UNREACHABLE: &str = "the provider's upstream could not be reached\n";
const GENERIC_FAILED: &str = "the request could not be forwarded to the provider\n";
const UPSTREAM_ERRORS: &str = "aibridge_proxy_upstream_errors_total";
const LOCALHOST: &str = "127.0.0.1";

fn loopback() -> IpAddr {
    LOCALHOST.parse().unwrap()
}

/// A port with nothing listening on it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An openai-kind provider `name` intercepting `host`, sent to `base_url`.
fn provider(name: &'static str, host: &str, base_url: String) -> ProviderSpec {
    ProviderSpec {
        name,
        kind: ProviderKind::Openai,
        base_url,
        intercept_hosts: vec![host.to_string()],
        key: Some("sk-provider-faults-0123456789"),
    }
}

async fn start_proxy(providers: Vec<ProviderSpec>, upstream_ca_pem: String) -> TestProxy {
    TestProxy::start(TestProxyOptions {
        providers,
        upstream_ca_pem: Some(upstream_ca_pem),
        ..Default::default()
    })
    .await
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-request-id")
        .expect("every answer carries x-request-id")
        .to_str()
        .unwrap()
        .to_string()
}

/// Read a body to its end: the bytes that arrived and, if it did not end cleanly, the error.
async fn drain(resp: &mut reqwest::Response) -> (Vec<u8>, Option<reqwest::Error>) {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("the body ends or fails in time")
        {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

async fn all_rows(proxy: &TestProxy) -> Vec<Interception> {
    proxy.app.store.recent_interceptions(1000).await.unwrap()
}

/// Poll the records until there are `n` (or [`WAIT`] passes), and return them.
async fn rows_at_least(proxy: &TestProxy, n: usize) -> Vec<Interception> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = all_rows(proxy).await;
        if rows.len() >= n || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `/metrics` until the series reaches `want` (records of streamed answers are written as
/// their bodies end, a moment after the client saw the end), then assert it.
async fn wait_metric(proxy: &TestProxy, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = metric(&scrape(proxy).await, name, labels);
        if got == want || tokio::time::Instant::now() > deadline {
            assert_eq!(got, want, "{name}{labels:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The reasons that blame the upstream (or the way to it), as opposed to the client or policy.
const UPSTREAM_FAULTS: &[&str] = &[
    "connect_refused",
    "dns",
    "tls",
    "connect_timeout",
    "connect_error",
    "upstream_timeout",
    "upstream_error",
    "upstream_reset",
    "upstream_idle_timeout",
];

/// Every non-zero `upstream_errors_total` series whose reason blames the upstream.
fn upstream_fault_series(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(UPSTREAM_ERRORS) && !l.ends_with(" 0"))
        .filter(|l| {
            UPSTREAM_FAULTS
                .iter()
                .any(|r| l.contains(&format!("reason=\"{r}\"")))
        })
        .map(str::to_string)
        .collect()
}

/// F1: the upstream refuses the connection. 502 with one generic line and `x-request-id`; the
/// record and `upstream_errors_total` say `connect_refused`.
#[tokio::test]
async fn f1_refused_connection_is_recorded_as_connect_refused() {
    let ca = TestCa::new();
    let port = closed_port();
    let proxy = start_proxy(
        vec![ProviderSpec::openai(format!("https://{LOCALHOST}:{port}"))],
        ca.cert_pem.clone(),
    )
    .await;
    for http in [Http::One, Http::Two] {
        let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], http);
        let resp = client
            .post("https://api.openai.com/v1/chat/completions")
            .body(r#"{"model":"gpt-4o-mini"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502, "{http:?}");
        let id = request_id(&resp);
        let body = resp.text().await.unwrap();
        assert_eq!(body, GENERIC_UNREACHABLE, "{http:?}: one generic line");
        assert!(!body.contains(&port.to_string()) && !body.contains(LOCALHOST));
        let r = row(&proxy, &id).await;
        assert_eq!(
            (r.status, r.error.as_deref(), r.outcome.as_str()),
            (502, Some("connect_refused"), "failed"),
            "{http:?}"
        );
        assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
    }
    wait_metric(
        &proxy,
        UPSTREAM_ERRORS,
        &[("provider", "openai"), ("reason", "connect_refused")],
        2.0,
    )
    .await;
    assert_eq!(all_rows(&proxy).await.len(), 2, "one record per request");
}

/// F2: the upstream's certificate is signed by a CA the proxy does not trust, names another
/// host, or has expired. Every request gets 502 with reason `tls`, and verification is never
/// relaxed to retry: the upstreams complete no request.
#[tokio::test]
async fn f2_invalid_upstream_tls_is_refused_and_never_retried_unverified() {
    let ca = TestCa::new();
    let stranger = TestCa::new();
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    let good = MockUpstream::start(ca.server_config(alpn)).await;
    let wrong_ca = MockUpstream::start(stranger.server_config(alpn)).await;
    let wrong_name = MockUpstream::start(ca.server_config_for("other.test", alpn)).await;
    let (expiry_ca_pem, expired_config) = expired_server_config("expired.test", alpn);
    let expired = MockUpstream::start(expired_config).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![
            provider("good", "good.example", good.base_url()),
            provider("wrongca", "wrongca.example", wrong_ca.base_url()),
            // The certificate is for other.test (and 127.0.0.1); the base URL names upstream.test.
            provider(
                "wrongname",
                "wrongname.example",
                format!("https://upstream.test:{}", wrong_name.addr.port()),
            ),
            provider(
                "expired",
                "expired.example",
                format!("https://expired.test:{}", expired.addr.port()),
            ),
        ],
        // The expired leaf's CA is trusted: expiry is its only fault.
        upstream_ca_pem: Some(format!("{}{}", ca.cert_pem, expiry_ca_pem)),
        hosts: vec![
            ("upstream.test".into(), loopback()),
            ("expired.test".into(), loopback()),
        ],
        ..Default::default()
    })
    .await;
    let url = |host: &str| format!("https://{host}/v1/chat/completions");
    for http in [Http::One, Http::Two] {
        let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], http);
        let ok = client
            .post(url("good.example"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{http:?}: control");
        for host in ["wrongca.example", "wrongname.example", "expired.example"] {
            let resp = client.post(url(host)).body("{}").send().await.unwrap();
            assert_eq!(resp.status(), 502, "{http:?} {host}");
            let id = request_id(&resp);
            assert_eq!(resp.text().await.unwrap(), GENERIC_UNREACHABLE, "{host}");
            let r = row(&proxy, &id).await;
            assert_eq!(
                (r.status, r.error.as_deref()),
                (502, Some("tls")),
                "{http:?} {host}"
            );
        }
    }
    assert_eq!(good.seen().len(), 2);
    for (name, upstream) in [
        ("wrongca", &wrong_ca),
        ("wrongname", &wrong_name),
        ("expired", &expired),
    ] {
        assert!(
            upstream.seen().is_empty(),
            "{name}: no request may reach an upstream that failed verification"
        );
        wait_metric(
            &proxy,
            UPSTREAM_ERRORS,
            &[("provider", name), ("reason", "tls")],
            2.0,
        )
        .await;
    }
}

/// The Anthropic stream's first two events: input, cache and 10 output tokens so far.
const MESSAGES_SSE_HEAD: [&str; 2] = [
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":2000,\"cache_read_input_tokens\":3000,\"output_tokens\":1}}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":10}}\n\n",
];

fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// F3: the upstream resets the connection mid-body, JSON and SSE, to HTTP/1 and HTTP/2
/// clients. The client sees a failed body, never a clean end; the record is `truncated` with
/// `upstream_reset` and keeps the tokens the events before the reset reported.
#[tokio::test]
async fn f3_reset_mid_body_truncates_and_keeps_partial_usage() {
    let ca = TestCa::new();
    let half_json = &CHAT_JSON[..CHAT_JSON.len() / 2];
    let upstream = RawUpstream::start(&ca, move |_, head| {
        let bytes = if head.starts_with("POST /v1/messages ") {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{}{}",
                chunk(MESSAGES_SSE_HEAD[0]),
                chunk(MESSAGES_SSE_HEAD[1])
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{half_json}",
                CHAT_JSON.len()
            )
        };
        Reply {
            bytes: bytes.into_bytes(),
            then: Then::ResetWhenReleased,
        }
    })
    .await;
    let proxy = start_proxy(
        vec![
            ProviderSpec::openai(upstream.base_url()),
            ProviderSpec::anthropic(upstream.base_url()),
        ],
        ca.cert_pem.clone(),
    )
    .await;
    let sse_head = MESSAGES_SSE_HEAD.concat();
    let cases = [
        (
            "https://api.anthropic.com/v1/messages",
            r#"{"model":"claude-sonnet-4-5","stream":true}"#,
            sse_head.as_str(),
        ),
        (
            "https://api.openai.com/v1/chat/completions",
            r#"{"model":"gpt-4o-mini"}"#,
            half_json,
        ),
    ];
    for http in [Http::One, Http::Two] {
        let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], http);
        for (url, body, partial) in cases {
            let mut resp = client.post(url).body(body).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{http:?} {url}");
            let id = request_id(&resp);
            // Everything the upstream sent arrives before the reset...
            let mut got = Vec::new();
            while got.len() < partial.len() {
                let next = tokio::time::timeout(WAIT, resp.chunk()).await.unwrap();
                got.extend_from_slice(&next.unwrap().expect("more bytes before the reset"));
            }
            assert_eq!(String::from_utf8_lossy(&got), partial, "{http:?} {url}");
            upstream.release();
            // ...and then the body fails instead of ending.
            let (rest, error) = drain(&mut resp).await;
            assert!(rest.is_empty(), "{http:?} {url}: nothing after the reset");
            let error = error.unwrap_or_else(|| {
                panic!("{http:?} {url}: a reset upstream must not look like a clean end")
            });
            assert!(error.is_body() || error.is_decode(), "{http:?}: {error:?}");
            let r = row(&proxy, &id).await;
            assert_eq!(
                (r.status, r.outcome.as_str(), r.error.as_deref()),
                (200, "truncated", Some("upstream_reset")),
                "{http:?} {url}"
            );
            if url.ends_with("/messages") {
                let tokens = (
                    r.input_tokens,
                    r.output_tokens,
                    r.cache_read_tokens,
                    r.cache_write_tokens,
                );
                assert_eq!(
                    tokens,
                    (Some(25), Some(10), Some(3000), Some(2000)),
                    "{http:?}: the usage seen before the reset is kept"
                );
                assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
                assert_eq!(r.usage_source, "reported");
            } else {
                assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"), "from the request");
            }
        }
    }
    for name in ["openai", "anthropic"] {
        wait_metric(
            &proxy,
            UPSTREAM_ERRORS,
            &[("provider", name), ("reason", "upstream_reset")],
            2.0,
        )
        .await;
    }
    assert_eq!(upstream.heads().len(), 4, "nothing retried");
}

/// A paced chat stream from the mock upstream (`x-mock-events`), as its bytes would arrive.
fn paced_body(events: usize) -> String {
    let mut out = String::new();
    for i in 0..events {
        out.push_str(&format!("data: {{\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{i}\"}}}}]}}\n\n"));
    }
    out.push_str("data: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n");
    out
}

/// F3 swept over byte offsets: the relay between proxy and upstream cuts each connection after
/// a different number of bytes (through the TLS handshake, the head, the body). Whatever the
/// offset, the client gets a 502, a failed body, or the whole stream — never a clean end of a
/// partial one — and the record says which.
async fn cut_at_every_offset(fault: Fault) {
    const EVENTS: usize = 30;
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
    let relay = Relay::start(upstream.addr).await;
    relay.set_fault(fault);
    let proxy = start_proxy(
        vec![ProviderSpec::openai(format!(
            "https://{LOCALHOST}:{}",
            relay.addr.port()
        ))],
        ca.cert_pem.clone(),
    )
    .await;
    let full = paced_body(EVENTS);
    const REQUESTS: usize = 24;
    let (mut failed, mut truncated, mut complete, mut headless) = (0, 0, 0, 0);
    for i in 0..REQUESTS {
        let http = if i % 2 == 0 { Http::One } else { Http::Two };
        let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], http);
        let sent = client
            .post("https://api.openai.com/v1/chat/completions")
            .header("x-mock-events", EVENTS.to_string())
            .header("x-mock-gap-ms", "1")
            .body(r#"{"model":"gpt-4o-mini","stream":true}"#)
            .send()
            .await;
        // The upstream's head and its failure arrived together: the answer is aborted before
        // its head reached the client (h2: RST_STREAM; HTTP/1: the connection closes). Its
        // record is checked with the others' below.
        let Ok(mut resp) = sent else {
            headless += 1;
            continue;
        };
        let id = request_id(&resp);
        let status = resp.status().as_u16();
        let (body, error) = drain(&mut resp).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        let r = row(&proxy, &id).await;
        let what = format!(
            "{fault:?} #{i} {http:?}: status {status}, {} bytes, record {:?}/{:?}",
            body.len(),
            r.outcome,
            r.error
        );
        match (status, error) {
            (502, None) => {
                failed += 1;
                assert!(
                    body == GENERIC_UNREACHABLE || body == GENERIC_FAILED,
                    "{what}: {body}"
                );
                assert!(
                    matches!(
                        r.error.as_deref(),
                        Some("connect_error" | "tls" | "upstream_error")
                    ),
                    "{what}"
                );
            }
            (200, Some(_)) => {
                truncated += 1;
                assert!(
                    full.starts_with(&body),
                    "{what}: only upstream bytes, in order"
                );
                assert_eq!(
                    (r.outcome.as_str(), r.error.as_deref()),
                    ("truncated", Some("upstream_reset")),
                    "{what}"
                );
            }
            (200, None) => {
                complete += 1;
                assert_eq!(body, full, "{what}: a clean end carries the whole stream");
                assert_eq!(
                    (r.outcome.as_str(), r.error.as_deref()),
                    ("completed", None),
                    "{what}"
                );
                assert_eq!(
                    (r.input_tokens, r.output_tokens),
                    (Some(7), Some(5)),
                    "{what}"
                );
            }
            (_, error) => panic!("{what}: unexpected ({error:?})"),
        }
    }
    let counts =
        format!("failed {failed}, truncated {truncated}, headless {headless}, complete {complete}");
    assert!(
        truncated >= 4,
        "{fault:?}: the sweep must cut mid-body ({counts})"
    );
    let rows = rows_at_least(&proxy, REQUESTS).await;
    assert_eq!(
        rows.len(),
        REQUESTS,
        "{fault:?}: one record per request ({counts})"
    );
    let cut = rows
        .iter()
        .filter(|r| {
            (r.status, r.outcome.as_str(), r.error.as_deref())
                == (200, "truncated", Some("upstream_reset"))
        })
        .count();
    assert_eq!(
        cut,
        truncated + headless,
        "{fault:?}: cut answers recorded as such ({counts})"
    );
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "aibridge_proxy_inflight_requests",
            &[("provider", "openai")]
        ),
        0.0
    );
}

/// F3: connections reset (RST) at swept offsets.
#[tokio::test]
async fn f3_reset_at_any_offset_never_looks_like_a_clean_end() {
    cut_at_every_offset(Fault::ResetAfter(7000)).await;
}

/// F3: connections closed (FIN, no TLS close_notify) at swept offsets.
#[tokio::test]
async fn f3_close_at_any_offset_never_looks_like_a_clean_end() {
    cut_at_every_offset(Fault::CloseAfter(7000)).await;
}

/// How a malformed upstream answer may reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A 502 before any byte of the upstream's answer.
    Refused,
    /// A 502, or a head and then a body that does not end cleanly.
    RefusedOrAborted,
}

/// What a raw HTTP/1 client made of an answer: its status (0 if none) and whether its body
/// ended as its framing says it must.
fn judge(transcript: &[u8]) -> (u16, bool) {
    let text = String::from_utf8_lossy(transcript);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, false);
    };
    let answer = raw::Answer {
        status: raw::status(head),
        head: head.to_string(),
        body: Vec::new(),
    };
    let clean = if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        chunked_complete(body)
    } else if let Some(n) = answer.header("content-length") {
        n.parse::<usize>().is_ok_and(|n| body.len() == n)
    } else {
        false
    };
    (answer.status, clean)
}

/// Whether `body` is a complete chunked body (down to the terminating chunk).
fn chunked_complete(mut body: &str) -> bool {
    loop {
        let Some((line, rest)) = body.split_once("\r\n") else {
            return false;
        };
        let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
        else {
            return false;
        };
        if size == 0 {
            return rest.starts_with("\r\n");
        }
        if rest.len() < size + 2 {
            return false;
        }
        body = &rest[size + 2..];
    }
}

/// F5: the upstream answers with malformed framing. The client gets a 502 or an aborted body;
/// the malformed bytes are never relayed to it raw.
#[tokio::test]
async fn f5_malformed_upstream_framing_is_never_relayed_raw() {
    const MARK: &str = "SMUGGLED";
    let cases: Vec<(&str, String, Expect)> = vec![
        (
            "/cl-and-te",
            format!("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n{}0\r\n\r\n", chunk(MARK)),
            Expect::RefusedOrAborted,
        ),
        (
            "/bad-chunk-size",
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n{MARK}\r\n0\r\n\r\n"),
            Expect::RefusedOrAborted,
        ),
        (
            "/huge-chunk-size",
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n{MARK}\r\n0\r\n\r\n"),
            Expect::RefusedOrAborted,
        ),
        (
            "/two-lengths",
            format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 8\r\n\r\n{MARK}"),
            Expect::Refused,
        ),
        (
            "/bad-length",
            format!("HTTP/1.1 200 OK\r\ncontent-length: 8x\r\n\r\n{MARK}"),
            Expect::Refused,
        ),
        (
            "/folded-header",
            format!("HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 8\r\n\r\n{MARK}"),
            Expect::Refused,
        ),
        ("/not-http", format!("{MARK} 200 OK\r\n\r\n"), Expect::Refused),
    ];
    let replies: Vec<(String, String)> = cases
        .iter()
        .map(|(path, bytes, _)| (format!("GET {path} "), bytes.clone()))
        .collect();
    let ca = TestCa::new();
    let upstream = RawUpstream::start(&ca, move |_, head| {
        let bytes = replies
            .iter()
            .find(|(start, _)| head.starts_with(start))
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        Reply {
            bytes: bytes.into_bytes(),
            then: Then::Close(Duration::ZERO),
        }
    })
    .await;
    let proxy = start_proxy(
        vec![ProviderSpec::openai(upstream.base_url())],
        ca.cert_pem.clone(),
    )
    .await;
    // Every case runs; the failures are reported together.
    let mut problems = Vec::new();
    for (path, _, expect) in &cases {
        let mut tls = raw::connect_tls(
            proxy.addr,
            "api.openai.com:443",
            &proxy.token,
            "api.openai.com",
            &proxy.ca_pem,
        )
        .await
        .unwrap();
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n");
        raw::send(&mut tls, req.as_bytes()).await.unwrap();
        let mut transcript = Vec::new();
        let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut transcript)).await;
        let text = String::from_utf8_lossy(&transcript);
        if text.contains(MARK) {
            problems.push(format!("{path}: malformed bytes relayed raw:\n{text}"));
        }
        let (status, clean) = judge(&transcript);
        match (expect, status, clean) {
            (_, 502, true) => {
                if !text.ends_with(&format!("\r\n\r\n{GENERIC_FAILED}")) {
                    problems.push(format!("{path}: not the generic body:\n{text}"));
                }
                let id = text
                    .lines()
                    .find_map(|l| l.strip_prefix("x-request-id: "))
                    .unwrap_or_else(|| panic!("{path}: x-request-id:\n{text}"));
                let r = row(&proxy, id.trim()).await;
                if (r.status, r.error.as_deref()) != (502, Some("upstream_error")) {
                    problems.push(format!(
                        "{path}: record {}/{:?}, want 502/upstream_error (failed after the \
                         request was sent, before a usable head)",
                        r.status, r.error
                    ));
                }
            }
            (Expect::RefusedOrAborted, 0 | 200, false) => {}
            _ => problems.push(format!(
                "{path}: expected {expect:?}, the client got:\n{text}"
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n---\n"));
    assert_eq!(
        upstream.heads().len(),
        cases.len(),
        "each request sent once, never retried"
    );
}

/// F6: the upstream answers with keep-alive and then closes the connection, every time. The
/// next request must not fail on the dead pooled connection: 200, one upstream request each.
#[tokio::test]
async fn f6_pooled_connection_closed_by_the_peer_is_replaced() {
    let ca = TestCa::new();
    let upstream = RawUpstream::start(&ca, |_, _| Reply {
        bytes: format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT_JSON}",
            CHAT_JSON.len()
        )
        .into_bytes(),
        then: Then::Close(Duration::ZERO),
    })
    .await;
    let proxy = start_proxy(
        vec![ProviderSpec::openai(upstream.base_url())],
        ca.cert_pem.clone(),
    )
    .await;
    let mut sent = 0;
    for http in [Http::One, Http::Two] {
        let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], http);
        for i in 0..10 {
            let resp = client
                .post("https://api.openai.com/v1/chat/completions")
                .body(format!(r#"{{"model":"gpt-4o-mini","n":{i}}}"#))
                .send()
                .await
                .unwrap();
            sent += 1;
            assert_eq!(resp.status(), 200, "{http:?} #{i}");
            assert_eq!(resp.text().await.unwrap(), CHAT_JSON);
            assert_eq!(
                upstream.heads().len(),
                sent,
                "{http:?} #{i}: one upstream request each"
            );
        }
    }
    assert_eq!(
        upstream.connections(),
        sent,
        "each closed connection replaced"
    );
    assert!(upstream_fault_series(&scrape(&proxy).await).is_empty());
}

/// F6, the other half: the upstream reads a request on a reused connection and closes it
/// without answering. The request was sent, so it is not retried: 502 `upstream_error`, the
/// upstream saw it once; the next request gets a new connection.
#[tokio::test]
async fn f6_request_sent_on_a_connection_then_closed_is_not_retried() {
    let ca = TestCa::new();
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT_JSON}",
        CHAT_JSON.len()
    );
    let upstream = RawUpstream::start(&ca, move |index, _| match index {
        0 => Reply {
            bytes: answer.clone().into_bytes(),
            then: Then::KeepAlive,
        },
        1 => Reply {
            bytes: Vec::new(),
            then: Then::Close(Duration::ZERO),
        },
        _ => Reply {
            bytes: answer.clone().into_bytes(),
            then: Then::Close(Duration::ZERO),
        },
    })
    .await;
    let proxy = start_proxy(
        vec![ProviderSpec::openai(upstream.base_url())],
        ca.cert_pem.clone(),
    )
    .await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::One);
    let url = "https://api.openai.com/v1/chat/completions";
    let body = r#"{"model":"gpt-4o-mini"}"#;
    let first = client.post(url).body(body).send().await.unwrap();
    assert_eq!(first.status(), 200);
    first.text().await.unwrap();
    let second = client.post(url).body(body).send().await.unwrap();
    assert_eq!(second.status(), 502, "sent once, never re-sent");
    let r = row(&proxy, &request_id(&second)).await;
    assert_eq!(r.error.as_deref(), Some("upstream_error"));
    assert_eq!(
        upstream.heads().len(),
        2,
        "the upstream saw the request exactly once"
    );
    let third = client.post(url).body(body).send().await.unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!((upstream.heads().len(), upstream.connections()), (3, 2));
}

/// F7: the upstream (HTTP/2) sends GOAWAY while a stream is in flight. The stream finishes, the
/// next request goes over a new connection, nothing fails.
#[tokio::test]
async fn f7_goaway_lets_streams_finish_and_moves_new_requests() {
    const EVENTS: [&str; 3] = ["data: one\n\n", "data: two\n\n", "data: [DONE]\n\n"];
    let ca = TestCa::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let served: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let (rel, log) = (release.clone(), served.clone());
    let upstream = ScriptedUpstream::start(ca.server_config(&[b"h2"]), move |conn, req| {
        let path = req.uri().path().to_string();
        log.lock().unwrap().push((conn, path.clone()));
        let release = rel.clone();
        async move {
            let _ = req.into_body().collect().await;
            if path == "/v1/slow" {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    let _ = tx.send(Bytes::from_static(EVENTS[0].as_bytes())).await;
                    release.notified().await;
                    for e in &EVENTS[1..] {
                        let _ = tx.send(Bytes::from_static(e.as_bytes())).await;
                    }
                });
                http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap()
            } else {
                http::Response::new(
                    http_body_util::Full::new(Bytes::from_static(CHAT_JSON.as_bytes())).boxed(),
                )
            }
        }
    })
    .await;
    let proxy = start_proxy(
        vec![ProviderSpec::openai(upstream.base_url())],
        ca.cert_pem.clone(),
    )
    .await;
    let streaming = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    let mut slow = streaming
        .post("https://api.openai.com/v1/slow")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let first = tokio::time::timeout(WAIT, slow.chunk())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some(EVENTS[0].as_bytes()));

    upstream.goaway();
    // The GOAWAY and the final GOAWAY after its ping cross loopback in well under this.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for http in [Http::One, Http::Two] {
        let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], http);
        let resp = client
            .post("https://api.openai.com/v1/chat/completions")
            .body(r#"{"model":"gpt-4o-mini"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{http:?}: a request after GOAWAY");
        assert_eq!(resp.text().await.unwrap(), CHAT_JSON);
    }
    release.notify_one();
    let (rest, error) = drain(&mut slow).await;
    assert!(error.is_none(), "the in-flight stream finishes: {error:?}");
    assert_eq!(String::from_utf8(rest).unwrap(), EVENTS[1..].concat());

    let served = served.lock().unwrap().clone();
    assert_eq!(
        served,
        vec![
            (0, "/v1/slow".to_string()),
            (1, "/v1/chat/completions".to_string()),
            (1, "/v1/chat/completions".to_string()),
        ],
        "new requests go over a new connection"
    );
    assert_eq!(upstream.connections(), 2);
    wait_metric(
        &proxy,
        "aibridge_proxy_requests_total",
        &[("provider", "openai"), ("code", "200")],
        3.0,
    )
    .await;
    assert!(upstream_fault_series(&scrape(&proxy).await).is_empty());
    for r in all_rows(&proxy).await {
        assert_eq!(
            (r.outcome.as_str(), r.error.as_deref()),
            ("completed", None),
            "{}",
            r.path
        );
    }
}

/// F8: the provider's base URL names a host that does not resolve. 502, reason `dns`; a
/// provider whose name does resolve keeps working.
#[tokio::test]
async fn f8_unresolvable_upstream_name_gives_502_dns() {
    let ca = TestCa::new();
    let upstream =
        MockUpstream::start(ca.server_config_for("upstream.test", &[b"h2", b"http/1.1"])).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![
            provider(
                "nowhere",
                "nowhere.example",
                "https://nxdomain.invalid".into(),
            ),
            provider(
                "named",
                "named.example",
                format!("https://upstream.test:{}", upstream.addr.port()),
            ),
        ],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        hosts: vec![("upstream.test".into(), loopback())],
        ..Default::default()
    })
    .await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    let ok = client
        .post("https://named.example/v1/chat/completions")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "control: a name that resolves");
    let resp = client
        .post("https://nowhere.example/v1/chat/completions")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let id = request_id(&resp);
    let body = resp.text().await.unwrap();
    assert_eq!(body, GENERIC_UNREACHABLE);
    assert!(!body.contains("nxdomain"));
    let r = row(&proxy, &id).await;
    assert_eq!((r.status, r.error.as_deref()), (502, Some("dns")));
    wait_metric(
        &proxy,
        UPSTREAM_ERRORS,
        &[("provider", "nowhere"), ("reason", "dns")],
        1.0,
    )
    .await;
}

/// How the upstream saw one request body end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyEnd {
    Clean(usize),
    Failed(usize),
    /// The request was cancelled while its body was being read (h2 RST_STREAM).
    Dropped(usize),
}

/// Reports how the body ended, even when the handler is dropped mid-read.
struct EndReport {
    tx: tokio::sync::mpsc::UnboundedSender<(String, BodyEnd)>,
    path: String,
    bytes: usize,
    sent: bool,
}

impl EndReport {
    fn send(&mut self, end: BodyEnd) {
        self.sent = true;
        let _ = self.tx.send((self.path.clone(), end));
    }
}

impl Drop for EndReport {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self
                .tx
                .send((self.path.clone(), BodyEnd::Dropped(self.bytes)));
        }
    }
}

/// F10: the client goes away in the middle of its upload (HTTP/1: the connection closes;
/// HTTP/2: the stream fails). A streamed upload is cancelled upstream too; a buffered model
/// request never reaches it. Exactly one record each, and nothing stays in flight.
#[tokio::test]
async fn f10_client_leaving_mid_upload_cancels_upstream_and_records_once() {
    const SENT: usize = 64 * 1024;
    let ca = TestCa::new();
    let (tx, mut ends) = tokio::sync::mpsc::unbounded_channel();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = received.clone();
    let upstream =
        ScriptedUpstream::start(ca.server_config(&[b"h2", b"http/1.1"]), move |_, req| {
            let mut report = EndReport {
                tx: tx.clone(),
                path: req.uri().path().to_string(),
                bytes: 0,
                sent: false,
            };
            let seen = seen.clone();
            async move {
                let mut body = req.into_body();
                let end = loop {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            let n = frame.data_ref().map_or(0, |d| d.len());
                            report.bytes += n;
                            seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                        }
                        Some(Err(_)) => break BodyEnd::Failed(report.bytes),
                        None => break BodyEnd::Clean(report.bytes),
                    }
                };
                report.send(end);
                http::Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")).boxed())
            }
        })
        .await;
    let proxy = start_proxy(
        vec![ProviderSpec::openai(upstream.base_url())],
        ca.cert_pem.clone(),
    )
    .await;
    let chunk = vec![b'x'; SENT];

    // HTTP/1, streamed path: the client closes its connection mid-body.
    let mut tls = raw::connect_tls(
        proxy.addr,
        "api.openai.com:443",
        &proxy.token,
        "api.openai.com",
        &proxy.ca_pem,
    )
    .await
    .unwrap();
    let head =
        "POST /v1/files/h1 HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 10000000\r\n\r\n";
    raw::send(&mut tls, head.as_bytes()).await.unwrap();
    raw::send(&mut tls, &chunk).await.unwrap();
    let r2 = received.clone();
    eventually("the upload under way upstream", move || {
        r2.load(std::sync::atomic::Ordering::SeqCst) >= SENT
    })
    .await;
    drop(tls);
    let (path, end) = tokio::time::timeout(WAIT, ends.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, "/v1/files/h1");
    assert!(
        matches!(end, BodyEnd::Failed(n) | BodyEnd::Dropped(n) if n >= SENT),
        "the upstream sees its request end uncompleted: {end:?}"
    );

    // HTTP/2, streamed path: the client's body fails, its stream is reset.
    received.store(0, std::sync::atomic::Ordering::SeqCst);
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<()>();
    let first = Bytes::from(chunk.clone());
    let stream =
        futures_util::stream::unfold((Some(first), Some(fail_rx)), |(first, rx)| async move {
            if let Some(first) = first {
                return Some((Ok::<Bytes, std::io::Error>(first), (None, rx)));
            }
            let _ = rx?.await;
            Some((Err(std::io::Error::other("client gave up")), (None, None)))
        });
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    let upload = tokio::spawn(
        client
            .post("https://api.openai.com/v1/files/h2")
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    let r2 = received.clone();
    eventually("the h2 upload under way upstream", move || {
        r2.load(std::sync::atomic::Ordering::SeqCst) >= SENT
    })
    .await;
    let _ = fail_tx.send(());
    assert!(
        upload.await.unwrap().is_err(),
        "the client's own upload failed"
    );
    drop(client);
    let (path, end) = tokio::time::timeout(WAIT, ends.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, "/v1/files/h2");
    assert!(
        matches!(end, BodyEnd::Failed(n) | BodyEnd::Dropped(n) if n >= SENT),
        "the upstream sees its request end uncompleted: {end:?}"
    );

    // HTTP/1, model request (read whole for the policy): nothing reaches the upstream.
    let mut tls = raw::connect_tls(
        proxy.addr,
        "api.openai.com:443",
        &proxy.token,
        "api.openai.com",
        &proxy.ca_pem,
    )
    .await
    .unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 100000\r\n\r\n{\"model\":\"gpt-4o-mini\",\"messages\":[";
    raw::send(&mut tls, head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(tls);

    let rows = rows_at_least(&proxy, 3).await;
    // A second record for any of them would land within the recorder's linger.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        all_rows(&proxy).await.len(),
        3,
        "exactly one record per request"
    );
    let paths = ["/v1/files/h1", "/v1/files/h2", "/v1/chat/completions"];
    let got: Vec<_> = paths
        .iter()
        .map(|path| {
            let r = rows
                .iter()
                .find(|r| r.path == *path)
                .unwrap_or_else(|| panic!("{path}: no record"));
            (*path, r.outcome.clone(), r.error.clone())
        })
        .collect();
    // Cancelled while waiting, or noticed as an unreadable body: the client's doing either way.
    for (path, outcome, error) in &got {
        assert_eq!(
            (outcome.as_str(), error.as_deref()),
            ("client_cancelled", Some("client_cancelled")),
            "{path}: the client left, not the upstream: {got:?}"
        );
    }
    assert_eq!(
        upstream.requests(),
        2,
        "the model request never reached the upstream"
    );
    wait_metric(
        &proxy,
        "aibridge_proxy_inflight_requests",
        &[("provider", "openai")],
        0.0,
    )
    .await;
    let blamed = upstream_fault_series(&scrape(&proxy).await);
    assert!(
        blamed.is_empty(),
        "the client's fault, not the upstream's: {blamed:?}"
    );
}

/// F20: a leaf cache of one entry, CONNECTs alternating between two intercepted hosts. Every
/// request succeeds; the second host keeps missing (the one entry cannot hold both), and the
/// hit and miss counters add up to the handshakes made.
#[tokio::test]
async fn f20_full_cert_cache_evicts_and_keeps_serving() {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![
            ProviderSpec::openai(upstream.base_url()),
            ProviderSpec::anthropic(upstream.base_url()),
        ],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        tweak: Some(Box::new(|c| c.cert_cache_size = 1)),
        ..Default::default()
    })
    .await;
    let counters = |text: &str| {
        (
            metric(text, "aibridge_proxy_cert_cache_hits_total", &[]),
            metric(text, "aibridge_proxy_cert_cache_misses_total", &[]),
        )
    };
    // A fresh client per request: a new CONNECT and handshake each time.
    let call = |host: &'static str| {
        let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
        let url = if host == "api.openai.com" {
            "https://api.openai.com/v1/chat/completions"
        } else {
            "https://api.anthropic.com/v1/messages"
        };
        async move {
            let resp = client.post(url).body("{}").send().await.unwrap();
            assert_eq!(resp.status(), 200, "{host}");
            resp.text().await.unwrap();
        }
    };
    // One host: one miss, then hits.
    for _ in 0..3 {
        call("api.openai.com").await;
    }
    let (hits, misses) = counters(&scrape(&proxy).await);
    assert_eq!((hits, misses), (2.0, 1.0), "one host fits");
    // Two hosts through one entry.
    const ROUNDS: usize = 6;
    for _ in 0..ROUNDS {
        call("api.anthropic.com").await;
        call("api.openai.com").await;
    }
    let (hits2, misses2) = counters(&scrape(&proxy).await);
    let (dh, dm) = (hits2 - hits, misses2 - misses);
    assert_eq!(dh + dm, (2 * ROUNDS) as f64, "one lookup per handshake");
    assert!(
        dm >= ROUNDS as f64,
        "the cache holds one leaf: at least one host misses every round (hits +{dh}, misses +{dm})"
    );
    assert_eq!(proxy.mints() as f64, misses2, "every miss mints");
    assert_eq!(upstream.seen().len(), 3 + 2 * ROUNDS);
}

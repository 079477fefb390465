//! Answers no well-behaved server sends (F5 malformed framing) and connections the upstream
//! ends under the proxy (F6 a closed pooled connection, F7 GOAWAY).

use super::*;
use crate::support::scripted::{channel_body, RawUpstream, Reply, ScriptedUpstream, Then};
use crate::support::upstream::CHAT_JSON;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

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
    let setup = Env::setup();
    let upstream = RawUpstream::start(setup.ca(), move |_, head| {
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
    let proxy = setup.openai_at(upstream.base_url()).start().await;
    // Every case runs; the failures are reported together.
    let mut problems = Vec::new();
    for (path, _, expect) in &cases {
        let mut tls = proxy.intercepted().await;
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
                let r = proxy.row(id.trim()).await;
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
    let setup = Env::setup();
    let upstream = RawUpstream::start(setup.ca(), |_, _| Reply {
        bytes: format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT_JSON}",
            CHAT_JSON.len()
        )
        .into_bytes(),
        then: Then::Close(Duration::ZERO),
    })
    .await;
    let proxy = setup.openai_at(upstream.base_url()).start().await;
    let mut sent = 0;
    for http in [Http::One, Http::Two] {
        let client = proxy.client(http);
        for i in 0..10 {
            let resp = client
                .post(CHAT)
                .body(format!(r#"{{"model":"gpt-4o-mini","n":{i}}}"#))
                .call()
                .await;
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
    assert!(upstream_fault_series(&proxy.metrics().await).is_empty());
}

/// F6, the other half: the upstream reads a request on a reused connection and closes it
/// without answering. The request was sent, so it is not retried: 502 `upstream_error`, the
/// upstream saw it once; the next request gets a new connection.
#[tokio::test]
async fn f6_request_sent_on_a_connection_then_closed_is_not_retried() {
    let setup = Env::setup();
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT_JSON}",
        CHAT_JSON.len()
    );
    let upstream = RawUpstream::start(setup.ca(), move |index, _| match index {
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
    let proxy = setup.openai_at(upstream.base_url()).start().await;
    let client = proxy.client(Http::One);
    let url = "https://api.openai.com/v1/chat/completions";
    let body = r#"{"model":"gpt-4o-mini"}"#;
    let first = client.post(url).body(body).call().await;
    assert_eq!(first.status(), 200);
    first.text().await.unwrap();
    let second = client.post(url).body(body).call().await;
    assert_eq!(second.status(), 502, "sent once, never re-sent");
    let r = proxy.row(&request_id(&second)).await;
    assert_eq!(r.error.as_deref(), Some("upstream_error"));
    assert_eq!(
        upstream.heads().len(),
        2,
        "the upstream saw the request exactly once"
    );
    let third = client.post(url).body(body).call().await;
    assert_eq!(third.status(), 200);
    assert_eq!((upstream.heads().len(), upstream.connections()), (3, 2));
}

/// F7: the upstream (HTTP/2) sends GOAWAY while a stream is in flight. The stream finishes, the
/// next request goes over a new connection, nothing fails.
#[tokio::test]
async fn f7_goaway_lets_streams_finish_and_moves_new_requests() {
    const EVENTS: [&str; 3] = ["data: one\n\n", "data: two\n\n", "data: [DONE]\n\n"];
    let setup = Env::setup();
    let release = Arc::new(tokio::sync::Notify::new());
    let served: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let (rel, log) = (release.clone(), served.clone());
    let upstream = ScriptedUpstream::start(setup.ca().server_config(&[b"h2"]), move |conn, req| {
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
    let proxy = setup.openai_at(upstream.base_url()).start().await;
    let streaming = proxy.client(Http::Two);
    let mut slow = streaming
        .post("https://api.openai.com/v1/slow")
        .body("{}")
        .call()
        .await;
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
        let client = proxy.client(http);
        let resp = client.post(CHAT).body(MINI).call().await;
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
    proxy
        .wait_metric(
            "aibridge_proxy_requests_total",
            &[("provider", "openai"), ("code", "200")],
            3.0,
        )
        .await;
    assert!(upstream_fault_series(&proxy.metrics().await).is_empty());
    for r in proxy.rows().await {
        assert_eq!(
            (r.outcome.as_str(), r.error.as_deref()),
            ("completed", None),
            "{}",
            r.path
        );
    }
}

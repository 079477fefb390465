//! F3: the upstream's answer cut mid-body — a reset after a known prefix, and resets and closes
//! swept over byte offsets by a relay.

use super::*;
use crate::support::relay::{Fault, Relay};
use crate::support::scripted::{RawUpstream, Reply, Then};
use crate::support::upstream::{paced_transcript, CHAT_JSON};

/// The Anthropic stream's first two events: input, cache and 10 output tokens so far.
const MESSAGES_SSE_HEAD: [&str; 2] = [
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":2000,\"cache_read_input_tokens\":3000,\"output_tokens\":1}}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":10}}\n\n",
];

/// F3: the upstream resets the connection mid-body, JSON and SSE, to HTTP/1 and HTTP/2
/// clients. The client sees a failed body, never a clean end; the record is `truncated` with
/// `upstream_reset` and keeps the tokens the events before the reset reported.
#[tokio::test]
async fn f3_reset_mid_body_truncates_and_keeps_partial_usage() {
    let setup = Env::setup();
    let half_json = &CHAT_JSON[..CHAT_JSON.len() / 2];
    let upstream = RawUpstream::start(setup.ca(), move |_, head| {
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
    let base = upstream.base_url();
    let proxy = setup
        .openai_at(base.clone())
        .provider(|_| ProviderSpec::anthropic(base))
        .start()
        .await;
    let sse_head = MESSAGES_SSE_HEAD.concat();
    let cases = [
        (
            MESSAGES,
            r#"{"model":"claude-sonnet-4-5","stream":true}"#,
            sse_head.as_str(),
        ),
        (CHAT, r#"{"model":"gpt-4o-mini"}"#, half_json),
    ];
    for http in [Http::One, Http::Two] {
        let client = proxy.client(http);
        for (url, body, partial) in cases {
            let mut resp = client.post(url).body(body).call().await;
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
            let r = proxy.row(&id).await;
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
        wait_upstream_errors(&proxy, name, "upstream_reset", 2.0).await;
    }
    assert_eq!(upstream.heads().len(), 4, "nothing retried");
}

/// F3 swept over byte offsets: the relay between proxy and upstream cuts each connection after
/// a different number of bytes (through the TLS handshake, the head, the body). Whatever the
/// offset, the client gets a 502, a failed body, or the whole stream — never a clean end of a
/// partial one — and the record says which.
async fn cut_at_every_offset(fault: Fault) {
    const EVENTS: usize = 30;
    let setup = Env::setup().upstream_first().await;
    let relay = Relay::start(setup.upstream().addr).await;
    relay.set_fault(fault);
    let proxy = setup
        .openai_at(format!("https://{LOCALHOST}:{}", relay.addr.port()))
        .start()
        .await;
    let full = paced_transcript(EVENTS);
    const REQUESTS: usize = 24;
    let (mut failed, mut truncated, mut complete, mut headless) = (0, 0, 0, 0);
    for i in 0..REQUESTS {
        let http = if i % 2 == 0 { Http::One } else { Http::Two };
        let client = proxy.client(http);
        let sent = paced_chat(&client, EVENTS, 1).send().await;
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
        let r = proxy.row(&id).await;
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
    let rows = proxy.wait_rows(REQUESTS).await;
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
    assert_eq!(
        proxy
            .metric(
                "aibridge_proxy_inflight_requests",
                &[("provider", "openai")]
            )
            .await,
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

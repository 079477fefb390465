//! The client's side: F10 a client leaving mid-upload, F20 a leaf cache too small for the hosts
//! clients connect to.

use super::*;
use crate::support::scripted::ScriptedUpstream;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

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

/// The next upload the upstream saw end is `path`'s, and it ended uncompleted after at least
/// `sent` bytes.
async fn ended_uncompleted(
    ends: &mut tokio::sync::mpsc::UnboundedReceiver<(String, BodyEnd)>,
    path: &str,
    sent: usize,
) {
    let (got, end) = tokio::time::timeout(WAIT, ends.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, path);
    assert!(
        matches!(end, BodyEnd::Failed(n) | BodyEnd::Dropped(n) if n >= sent),
        "the upstream sees its request end uncompleted: {end:?}"
    );
}

/// F10: the client goes away in the middle of its upload (HTTP/1: the connection closes;
/// HTTP/2: the stream fails). A streamed upload is cancelled upstream too; a buffered model
/// request never reaches it. Exactly one record each, and nothing stays in flight.
#[tokio::test]
async fn f10_client_leaving_mid_upload_cancels_upstream_and_records_once() {
    const SENT: usize = 64 * 1024;
    let setup = Env::setup();
    let (tx, mut ends) = tokio::sync::mpsc::unbounded_channel();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = received.clone();
    let upstream = ScriptedUpstream::start(
        setup.ca().server_config(&[b"h2", b"http/1.1"]),
        move |_, req| {
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
        },
    )
    .await;
    let proxy = setup.openai_at(upstream.base_url()).start().await;
    let chunk = vec![b'x'; SENT];

    // HTTP/1, streamed path: the client closes its connection mid-body.
    let mut tls = proxy.intercepted().await;
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
    ended_uncompleted(&mut ends, "/v1/files/h1", SENT).await;

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
    let client = proxy.client(Http::Two);
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
    ended_uncompleted(&mut ends, "/v1/files/h2", SENT).await;

    // HTTP/1, model request (read whole for the policy): nothing reaches the upstream.
    let mut tls = proxy.intercepted().await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 100000\r\n\r\n{\"model\":\"gpt-4o-mini\",\"messages\":[";
    raw::send(&mut tls, head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(tls);

    let rows = proxy.wait_rows(3).await;
    // A second record for any of them would land within the recorder's linger.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        proxy.rows().await.len(),
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
    proxy
        .wait_metric(
            "aibridge_proxy_inflight_requests",
            &[("provider", "openai")],
            0.0,
        )
        .await;
    let blamed = upstream_fault_series(&proxy.metrics().await);
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
    let proxy = Env::with(|o| o.openai().anthropic().tweak(|c| c.cert_cache_size = 1)).await;
    let counters = |text: &str| {
        (
            metric(text, "aibridge_proxy_cert_cache_hits_total", &[]),
            metric(text, "aibridge_proxy_cert_cache_misses_total", &[]),
        )
    };
    // A fresh client per request: a new CONNECT and handshake each time.
    let call = |host: &'static str| {
        let client = proxy.client(Http::Two);
        let url = if host == "api.openai.com" {
            CHAT
        } else {
            MESSAGES
        };
        async move {
            let resp = client.post(url).body("{}").call().await;
            assert_eq!(resp.status(), 200, "{host}");
            resp.text().await.unwrap();
        }
    };
    // One host: one miss, then hits.
    for _ in 0..3 {
        call("api.openai.com").await;
    }
    let (hits, misses) = counters(&proxy.metrics().await);
    assert_eq!((hits, misses), (2.0, 1.0), "one host fits");
    // Two hosts through one entry.
    const ROUNDS: usize = 6;
    for _ in 0..ROUNDS {
        call("api.anthropic.com").await;
        call("api.openai.com").await;
    }
    let (hits2, misses2) = counters(&proxy.metrics().await);
    let (dh, dm) = (hits2 - hits, misses2 - misses);
    assert_eq!(dh + dm, (2 * ROUNDS) as f64, "one lookup per handshake");
    assert!(
        dm >= ROUNDS as f64,
        "the cache holds one leaf: at least one host misses every round (hits +{dh}, misses +{dm})"
    );
    assert_eq!(proxy.mints() as f64, misses2, "every miss mints");
    assert_eq!(proxy.upstream.seen().len(), 3 + 2 * ROUNDS);
}

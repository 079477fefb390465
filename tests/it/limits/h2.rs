//! D6–D8: HTTP/2 abuse on an intercepted connection — Rapid Reset, MadeYouReset, CONTINUATION,
//! SETTINGS and PING floods — while a well-behaved client on another connection is served.

use super::*;
use crate::support::h2raw::{self, Gone};
use std::sync::Arc;

fn get_echo() -> Vec<u8> {
    h2raw::encode(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", HOST),
        (":path", "/echo"),
    ])
}

fn chat_post() -> Vec<u8> {
    h2raw::encode(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", HOST),
        (":path", "/v1/chat/completions"),
        ("content-type", "application/json"),
    ])
}

/// How a flood went.
#[derive(Debug)]
struct Flood {
    /// How the connection ended (or not) by the end of the wait.
    gone: Gone,
    /// Batches written before the connection ended or the flood was over.
    sent: usize,
    /// Frames the server sent back meanwhile.
    replies: usize,
}

/// Send frames (built lazily, a batch at a time) on the write half while the read half, after
/// `read_after`, watches for the end of the connection for up to `wait`.
async fn flood<S>(
    h2: H2<S>,
    batches: usize,
    mut batch: impl FnMut(usize) -> Vec<u8>,
    read_after: Duration,
    wait: Duration,
) -> Flood
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (r, w) = tokio::io::split(h2.into_inner());
    let (mut r, mut w) = (H2::new(r), H2::new(w));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let write = async move {
        let mut sent = 0;
        let mut done_rx = done_rx;
        for i in 0..batches {
            let bytes = batch(i);
            tokio::select! {
                r = w.send_raw(&bytes) => if r.is_err() { break },
                _ = &mut done_rx => break,
            }
            sent += 1;
        }
        sent
    };
    let read = async move {
        // A client that does not read its replies for a while.
        sleep(read_after).await;
        let gone = r.gone(wait).await;
        let _ = done_tx.send(());
        gone
    };
    let (sent, (gone, replies)) = tokio::join!(write, read);
    Flood {
        gone,
        sent,
        replies,
    }
}

/// Requests from a well-behaved h2 client on its own connection while `during` runs: all served,
/// the slowest returned.
async fn victim_while<F: std::future::Future>(env: &Env, during: F) -> (F::Output, Duration) {
    let stop = flag();
    let victim = async {
        let mut slowest = Duration::ZERO;
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) || n == 0 {
            slowest = slowest.max(served(env, Http::Two).await);
            n += 1;
        }
        slowest
    };
    let during = async {
        let out = during.await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    };
    tokio::join!(during, victim)
}

fn flag() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

/// D6: Rapid Reset: 10 000 streams, each `GET /echo` (a request that would reach the upstream)
/// followed at once by RST_STREAM(CANCEL), on one intercepted h2 connection. The proxy answers
/// GOAWAY(ENHANCE_YOUR_CALM) (`--h2-max-pending-accept-reset-streams`); a client on another
/// connection is served meanwhile and after; the upstream saw a bounded number of the streams;
/// `inflight_requests` is back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_rapid_reset_gets_goaway_and_costs_little() {
    let env = start(|_| {}).await;
    let h2 = open_h2(&env).await;
    let headers = get_echo();
    const STREAMS: usize = 10_000;
    const PER_BATCH: usize = 100;
    let batch = |b: usize| {
        let mut out = Vec::new();
        for i in 0..PER_BATCH {
            let id = 1 + 2 * (b * PER_BATCH + i) as u32;
            out.extend(h2raw::frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS | h2raw::END_STREAM,
                id,
                &headers,
            ));
            out.extend(h2raw::frame(
                h2raw::RST_STREAM,
                0,
                id,
                &h2raw::CANCEL.to_be_bytes(),
            ));
        }
        out
    };
    let started = Instant::now();
    let (flooded, slowest) = victim_while(
        &env,
        flood(
            h2,
            STREAMS / PER_BATCH,
            batch,
            Duration::ZERO,
            Duration::from_secs(3),
        ),
    )
    .await;
    let (gone, sent, replies) = (flooded.gone, flooded.sent, flooded.replies);
    let took = started.elapsed();
    let upstream_gets = env
        .upstream
        .seen()
        .iter()
        .filter(|s| s.method == "GET")
        .count();
    println!(
        "D6: {gone:?} after {} of {STREAMS} streams were written and {replies} frames read ({took:?}); upstream saw {upstream_gets} of them; victim slowest {slowest:?}",
        sent * PER_BATCH
    );
    assert_eq!(gone, Gone::GoAway(h2raw::ENHANCE_YOUR_CALM));
    assert!(
        upstream_gets <= 100,
        "the upstream saw {upstream_gets} cancelled streams"
    );
    assert!(slowest < MARGIN, "the victim waited {slowest:?}");
    served(&env, Http::Two).await;
    let deadline = Instant::now() + MARGIN;
    loop {
        let inflight = env
            .metric(
                "aibridge_proxy_inflight_requests",
                &[("provider", "openai")],
            )
            .await;
        if inflight == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inflight_requests stuck at {inflight}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// Stream `id` opened (`POST /v1/chat/completions`, body to follow: the proxy waits for it) and
/// made to fail on the server side: a WINDOW_UPDATE that overflows its send window is a stream
/// error (FLOW_CONTROL_ERROR) the server answers with its own RST_STREAM.
fn made_you_reset(id: u32) -> Vec<u8> {
    let mut out = h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, id, &chat_post());
    out.extend(h2raw::frame(
        h2raw::WINDOW_UPDATE,
        0,
        id,
        &0x7fff_ffffu32.to_be_bytes(),
    ));
    out
}

/// D7: MadeYouReset: with `--h2-max-local-error-reset-streams 5`, a client that makes the server
/// reset more streams than that gets GOAWAY(ENHANCE_YOUR_CALM); with the default (1024) the same
/// 20 provoked resets leave the connection serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d7_provoked_server_resets_beyond_the_limit_get_goaway() {
    let env = start(|c| c.proxy.h2_max_local_error_reset_streams = 5).await;
    let mut h2 = open_h2(&env).await;
    let mut resets = 0;
    let mut gone = Gone::Open;
    for i in 0..20u32 {
        let id = 1 + 2 * i;
        if h2.send_raw(&made_you_reset(id)).await.is_err() {
            gone = Gone::Closed;
            break;
        }
        match h2.reply(id).await {
            h2raw::Reply::Reset(_) => resets += 1,
            h2raw::Reply::Gone(Some(code)) => {
                gone = Gone::GoAway(code);
                break;
            }
            h2raw::Reply::Gone(None) => {
                gone = Gone::Closed;
                break;
            }
            other => panic!("stream {id}: {other:?}"),
        }
    }
    println!("D7 limit 5: {resets} resets, then {gone:?}");
    assert_eq!(gone, Gone::GoAway(h2raw::ENHANCE_YOUR_CALM));
    assert_eq!(resets, 5, "resets before the GOAWAY");
    assert!(env.upstream.seen().is_empty());
    served(&env, Http::Two).await;

    // The default lets the same 20 through and the connection still serves.
    let defaults = start(|_| {}).await;
    let mut h2 = open_h2(&defaults).await;
    for i in 0..20u32 {
        let id = 1 + 2 * i;
        h2.send_raw(&made_you_reset(id)).await.unwrap();
        assert!(
            matches!(h2.reply(id).await, h2raw::Reply::Reset(_)),
            "stream {id} under the default limit"
        );
    }
    h2.send_raw(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        41,
        &get_echo(),
    ))
    .await
    .unwrap();
    assert_eq!(h2.reply(41).await, h2raw::Reply::Status(200));
}

/// D8: CONTINUATION flood: a HEADERS frame without END_HEADERS, then CONTINUATION frames of
/// 16 KiB each, up to 64 MiB: the connection is closed once the header block passes the header
/// list bound (`--max-header-bytes`), long before the flood ends, and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d8_continuation_flood_closes_the_connection() {
    let env = start(|_| {}).await;
    let h2 = open_h2(&env).await;
    let block = h2raw::encode(&[("x-flood", &"a".repeat(16_000))]);
    let first = chat_post();
    let batch = |i: usize| {
        if i == 0 {
            h2raw::frame(h2raw::HEADERS, 0, 1, &first)
        } else {
            h2raw::frame(h2raw::CONTINUATION, 0, 1, &block)
        }
    };
    let batches = 64 * 1024 * 1024 / block.len();
    let (flooded, slowest) = victim_while(
        &env,
        flood(h2, batches, batch, Duration::ZERO, Duration::from_secs(3)),
    )
    .await;
    let (gone, sent, replies) = (flooded.gone, flooded.sent, flooded.replies);
    println!(
        "D8 CONTINUATION: {gone:?} after {sent} frames (~{} KiB) written, {replies} read; victim slowest {slowest:?}",
        sent * block.len() / 1024
    );
    assert_ne!(gone, Gone::Open, "still open after the flood");
    assert!(sent < batches, "the whole 64 MiB flood was accepted");
    assert!(slowest < MARGIN, "the victim waited {slowest:?}");
    assert!(
        env.upstream.seen().iter().all(|s| s.path == "/echo"),
        "the flooded request reached the upstream"
    );
    served(&env, Http::Two).await;
}

/// D8: SETTINGS flood and PING flood: 20 000 frames each, the replies left unread for 500 ms.
/// Bounded: the connection is closed, or it stays usable; either way a client on another
/// connection is served promptly meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d8_settings_and_ping_floods_are_bounded() {
    let env = start(|_| {}).await;
    const FRAMES: usize = 20_000;
    const PER_BATCH: usize = 500;
    for (name, one) in [
        (
            "SETTINGS",
            h2raw::frame(h2raw::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
        ),
        ("PING", h2raw::frame(h2raw::PING, 0, 0, &[7; 8])),
    ] {
        let h2 = open_h2(&env).await;
        let batch = |_| one.repeat(PER_BATCH);
        let started = Instant::now();
        let (flooded, slowest) = victim_while(
            &env,
            flood(
                h2,
                FRAMES / PER_BATCH,
                batch,
                Duration::from_millis(500),
                Duration::from_secs(1),
            ),
        )
        .await;
        let (gone, sent, replies) = (flooded.gone, flooded.sent, flooded.replies);
        println!(
            "D8 {name} flood: {gone:?}, {} of {FRAMES} frames written, {replies} read, {:?}; victim slowest {slowest:?}",
            sent * PER_BATCH,
            started.elapsed()
        );
        assert!(
            slowest < MARGIN,
            "{name} flood: the victim waited {slowest:?}"
        );
    }
    served(&env, Http::Two).await;
}

/// An intercepted HTTP/2 connection with no stream open for `--idle-timeout` gets a GOAWAY
/// (NO_ERROR) and closes, so an idle agent gives its `--max-connections` place back; one whose
/// stream stays open longer than the limit (a paced SSE answer, never silent for the limit) is
/// not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_gets_goaway_and_a_busy_one_does_not() {
    let limit = LIMIT * 2;
    let env = start(move |c| c.proxy.idle_timeout = limit).await;
    let client = env.client(Http::Two);
    // Eight events 200 ms apart: the stream is open for 1.6 s, longer than the limit.
    let resp = paced_chat(&client, 8, 200).call().await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    assert_eq!(
        env.metric("aibridge_proxy_h2_idle_closed_total", &[]).await,
        0.0,
        "a connection with an open stream is not idle"
    );

    let started = Instant::now();
    let mut h2 = open_h2(&env).await;
    let (gone, _) = h2.gone(limit + MARGIN * 2).await;
    assert_eq!(gone, Gone::GoAway(0), "an idle connection is sent away");
    assert!(started.elapsed() >= limit, "not before the limit");
    drop(h2);
    // The agent client's connection, idle since its stream ended, went the same way.
    env.wait_metric("aibridge_proxy_h2_idle_closed_total", &[], 2.0)
        .await;
    env.wait_metric(
        "aibridge_proxy_active_connections",
        &[("kind", "mitm")],
        0.0,
    )
    .await;
    // And the client simply reconnects for its next request.
    let resp = client.post(CHAT).body("{}").call().await;
    assert_eq!(resp.status(), 200);
}

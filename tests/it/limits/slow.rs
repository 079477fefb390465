//! D1–D5: slow heads (on the listener and inside MITM), slow TLS handshakes, stalled request
//! bodies, idle tunnels and intercepted connections, and the connection limit.

use super::*;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

// === D1 slowloris ===

/// D1: 200 connections dribble a CONNECT head a byte every 50 ms (the head would take ~6 s),
/// against `--header-read-timeout 500ms`: each is closed (EOF, error or a 408) within the timeout
/// plus a margin, a normal client is served meanwhile and afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_slowloris_heads_on_the_listener_are_cut_at_the_header_read_timeout() {
    let env = start(|c| c.proxy.header_read_timeout = LIMIT).await;
    let head = raw::connect_head(TARGET, &env.proxy.token);
    let gap = Duration::from_millis(50);
    assert!(gap * head.len() as u32 > 4 * LIMIT);
    let slow: Vec<_> = (0..200)
        .map(|_| {
            let (addr, head) = (env.proxy.addr, head.clone());
            tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                dribble(tcp, head.as_bytes(), gap, LIMIT + MARGIN).await
            })
        })
        .collect();
    sleep(LIMIT / 2).await;
    let during = served(&env, Http::One).await;
    let mut slowest = Duration::ZERO;
    for (i, task) in slow.into_iter().enumerate() {
        let cut = task
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("slow connection {i} still open after {:?}", LIMIT + MARGIN));
        assert!(
            cut.got.is_empty() || raw::status(&cut.text()) == 408,
            "slow connection {i} got {:?}",
            cut.text()
        );
        slowest = slowest.max(cut.after);
    }
    println!("D1 listener: 200 slow heads cut, the last after {slowest:?}; a normal request took {during:?} meanwhile");
    assert!(during < MARGIN, "the normal client waited {during:?}");
    served(&env, Http::One).await;
    assert!(env.upstream.seen().len() == 2);
}

/// D1: the same on an intercepted connection: after TLS, a request head dribbled a byte every
/// 50 ms is cut at the header read timeout of the inner server, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_slowloris_heads_inside_mitm_are_cut_at_the_header_read_timeout() {
    let env = start(|c| c.proxy.header_read_timeout = LIMIT).await;
    let head = format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\nok");
    let gap = Duration::from_millis(50);
    let mut slow = Vec::new();
    for _ in 0..10 {
        let tls = intercepted(&env, &[b"http/1.1"]).await;
        let head = head.clone();
        slow.push(tokio::spawn(async move {
            dribble(tls, head.as_bytes(), gap, LIMIT + MARGIN).await
        }));
    }
    for (i, task) in slow.into_iter().enumerate() {
        let cut = task
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("slow MITM connection {i} still open"));
        assert!(
            cut.got.is_empty() || raw::status(&cut.text()) == 408,
            "slow MITM connection {i} got {:?}",
            cut.text()
        );
    }
    assert!(
        env.upstream.seen().is_empty(),
        "a partial head was forwarded"
    );
    served(&env, Http::One).await;
}

// === D2 slow TLS ===

/// D2: after the `200` to a CONNECT for an intercepted host, a client that sends nothing, one
/// that dribbles its ClientHello, and one that stops after its ClientHello are each closed at
/// `--tls-handshake-timeout`; `tls_handshake_failures_total{reason="timeout"}` counts all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_slow_tls_handshakes_are_cut_at_the_handshake_timeout() {
    let env = start(|c| c.proxy.tls_handshake_timeout = LIMIT).await;
    let hello = raw::client_hello(&[b"http/1.1"]);
    let gap = Duration::from_millis(20);
    assert!(gap * hello.len() as u32 > 4 * LIMIT);

    let silent = raw::connect(env.proxy.addr, TARGET, &env.proxy.token).await;
    let dribbled = raw::connect(env.proxy.addr, TARGET, &env.proxy.token).await;
    let mut stalled = raw::connect(env.proxy.addr, TARGET, &env.proxy.token).await;
    raw::send(&mut stalled, &hello).await.unwrap();
    let (silent, dribbled, stalled) = tokio::join!(
        dribble(silent, b"", gap, LIMIT + MARGIN),
        dribble(dribbled, &hello, gap, LIMIT + MARGIN),
        dribble(stalled, b"", gap, LIMIT + MARGIN),
    );
    let silent = silent.expect("a silent client is closed");
    let dribbled = dribbled.expect("a dribbled ClientHello is closed");
    let stalled = stalled.expect("a client stalled after its ClientHello is closed");
    println!(
        "D2: silent cut after {:?}, dribbled hello after {:?}, stalled after hello after {:?} ({} bytes of server flight)",
        silent.after,
        dribbled.after,
        stalled.after,
        stalled.got.len()
    );
    for cut in [&silent, &dribbled] {
        assert!(cut.after >= LIMIT * 9 / 10, "cut early: {cut:?}");
        assert!(cut.got.is_empty() || cut.got[0] == 0x15, "{cut:?}");
    }
    assert!(
        stalled.got.first() == Some(&0x16),
        "the full ClientHello got a server flight before the cut: {stalled:?}"
    );
    let timeouts = env
        .metric(
            "aibridge_proxy_tls_handshake_failures_total",
            &[("reason", "timeout")],
        )
        .await;
    assert_eq!(
        timeouts, 3.0,
        "tls_handshake_failures_total{{reason=\"timeout\"}}"
    );
    served(&env, Http::One).await;
}

// === D3 slow body ===

/// Send `request` (a head and part of its body) on an intercepted HTTP/1.1 connection, then
/// nothing: the answer (or the close) and how long it took.
async fn stalled_body(env: &Env, request: String) -> (raw::Answer, Duration) {
    let mut tls = intercepted(env, &[b"http/1.1"]).await;
    let started = Instant::now();
    raw::send(&mut tls, request.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(LIMIT + MARGIN, raw::read_response(&mut tls))
        .await
        .expect("an answer or a close in time");
    (answer, started.elapsed())
}

/// D3: a model-call POST (`/v1/chat/completions`, whose body the proxy reads for the model
/// policy) whose body stalls longer than `--idle-timeout` is answered `408`, over HTTP/1.1; the
/// upstream sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_a_stalled_model_call_body_gets_408_over_http1() {
    let env = start(|c| c.proxy.idle_timeout = LIMIT).await;
    let (answer, took) = stalled_body(
        &env,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"model\":\"gpt-4o-mini\","
        ),
    )
    .await;
    println!("D3 h1 model call: {} after {took:?}", answer.status);
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(took >= LIMIT * 9 / 10, "408 before the limit: {took:?}");
    assert!(env.upstream.seen().is_empty());
    served(&env, Http::One).await;
}

/// D3: the same over HTTP/2: the stream is answered `408`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_a_stalled_model_call_body_gets_408_over_h2() {
    let env = start(|c| c.proxy.idle_timeout = LIMIT).await;
    let mut h2 = open_h2(&env).await;
    let started = Instant::now();
    h2.headers(
        1,
        &[
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", HOST),
            (":path", "/v1/chat/completions"),
            ("content-type", "application/json"),
        ],
        false,
    )
    .await
    .unwrap();
    h2.send(h2raw::DATA, 0, 1, b"{\"model\":\"gpt-4o-mini\",")
        .await
        .unwrap();
    let reply = h2.reply(1).await;
    let took = started.elapsed();
    println!("D3 h2 model call: {reply:?} after {took:?}");
    assert_eq!(reply, h2raw::Reply::Status(408));
    assert!(took < LIMIT + MARGIN, "408 after {took:?}");
    assert!(env.upstream.seen().is_empty());
}

/// D3: a POST on a path whose body streams through (`/echo`: the upstream reads all of it) with
/// a body that stalls: the upstream request is cancelled (it never gets the whole body) and the
/// client gets an error or a closed connection in bounded time, not a hang nor a `200`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_a_stalled_streamed_body_cancels_the_upstream_request() {
    let env = start(|c| c.proxy.idle_timeout = LIMIT).await;
    let head = format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 200\r\n\r\n");
    let (answer, took) = stalled_body(&env, head + "partial").await;
    println!(
        "D3 streamed body: status {} after {took:?} (upstream saw {:?})",
        answer.status,
        env.upstream
            .seen()
            .iter()
            .map(|s| (&s.path, s.body.len()))
            .collect::<Vec<_>>()
    );
    // The client's body stalled, not the upstream: 408, and the upstream request is cancelled.
    assert_eq!(answer.status, 408, "{answer:?}");
    let seen = env.upstream.seen();
    assert!(seen.len() <= 1, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.body.is_empty()),
        "the upstream got a whole body: {seen:?}"
    );
    served(&env, Http::One).await;
}

// === D4 idle tunnel ===

/// D4: a tunnel on which no byte moves is closed at `--idle-timeout` (not before); one that
/// carries a byte every third of the limit outlives it (three limits), then, silent, is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_silent_tunnels_close_at_the_idle_timeout_and_talking_ones_stay() {
    let port = echo_server().await;
    let env = start_tunnelling(port, |c| c.proxy.idle_timeout = LIMIT).await;
    let target = format!("127.0.0.1:{port}");
    let silent = raw::connect(env.proxy.addr, &target, &env.proxy.token).await;
    let mut talking = raw::connect(env.proxy.addr, &target, &env.proxy.token).await;
    let talk = async {
        let until = Instant::now() + 3 * LIMIT;
        let mut sent = 0u32;
        loop {
            talking
                .write_all(&[b'a' + (sent % 26) as u8])
                .await
                .unwrap();
            let mut echo = [0u8; 1];
            tokio::time::timeout(LIMIT, talking.read_exact(&mut echo))
                .await
                .expect("echo in time")
                .expect("the talking tunnel stays open");
            assert_eq!(echo[0], b'a' + (sent % 26) as u8);
            sent += 1;
            if Instant::now() >= until {
                return sent;
            }
            sleep(LIMIT / 3).await;
        }
    };
    let (cut, sent) = tokio::join!(dribble(silent, b"", LIMIT, LIMIT + MARGIN), talk);
    let cut = cut.expect("the silent tunnel is closed");
    println!(
        "D4: silent tunnel cut after {:?}; the talking one echoed {sent} bytes over {:?}",
        cut.after,
        3 * LIMIT
    );
    assert!(cut.after >= LIMIT * 9 / 10, "cut before the limit: {cut:?}");
    assert!(cut.got.is_empty());
    assert!(sent >= 6);
    // Now silent (from its last echo on), the talking tunnel goes too.
    let cut = dribble(talking, b"", LIMIT, LIMIT + MARGIN)
        .await
        .expect("the tunnel, now silent, is closed");
    assert!(cut.after >= LIMIT * 9 / 10, "{cut:?}");
}

/// D4 (intercepted): intercepted connections have no connection-level idle cut (a request
/// waiting on a slow answer is silent too); a silent HTTP/1.1 connection is bounded by the header
/// read timeout instead, fresh after its TLS handshake or idle between two requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_an_idle_intercepted_http1_connection_closes_at_the_header_read_timeout() {
    let env = start(|c| c.proxy.header_read_timeout = LIMIT).await;
    let mut used = intercepted(&env, &[b"http/1.1"]).await;
    raw::send(
        &mut used,
        format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\nok").as_bytes(),
    )
    .await
    .unwrap();
    let answer = raw::read_response(&mut used).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("connection"), None, "kept alive: {answer:?}");
    let fresh = intercepted(&env, &[b"http/1.1"]).await;
    let (fresh, used) = tokio::join!(
        dribble(fresh, b"", LIMIT, LIMIT + MARGIN),
        dribble(used, b"", LIMIT, LIMIT + MARGIN)
    );
    println!("D4 intercepted http/1.1: fresh {fresh:?}, after a request {used:?}");
    for (which, cut) in [("fresh", fresh), ("after a request", used)] {
        let cut =
            cut.unwrap_or_else(|| panic!("an idle intercepted connection ({which}) stays open"));
        assert!(
            cut.after >= LIMIT * 9 / 10,
            "{which}: cut before the limit: {cut:?}"
        );
    }
}

// === D5 max connections ===

/// Open a connection and wait for the `503` an over-limit client gets, then the close.
async fn refused(env: &Env) -> Duration {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(env.proxy.addr).await.unwrap();
    let _ = tcp
        .write_all(raw::connect_head(TARGET, &env.proxy.token).as_bytes())
        .await;
    let answer = tokio::time::timeout(MARGIN, raw::read_response(&mut tcp))
        .await
        .expect("the over-limit client is answered without a hang");
    let took = started.elapsed();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert!(
        raw::closes(&mut tcp).await,
        "the refused connection is closed"
    );
    took
}

/// Retry (bounded) until a CONNECT to `target` gets its `200`: a place freed by a closed
/// connection comes back once the proxy sees the close. Also returns the `503`s met on the way.
async fn admitted(env: &Env, target: &str) -> (TcpStream, usize) {
    let deadline = Instant::now() + MARGIN;
    let mut refusals = 0;
    loop {
        let (head, tcp) = raw::send_head(
            env.proxy.addr,
            raw::connect_head(target, &env.proxy.token).as_bytes(),
        )
        .await;
        match raw::status(&head) {
            200 => return (tcp, refusals),
            503 if Instant::now() < deadline => {
                refusals += 1;
                sleep(Duration::from_millis(20)).await
            }
            _ => panic!("CONNECT {target}: {head:?}"),
        }
    }
}

/// D5: with `--max-connections 3`, three open connections hold the places; a fourth reads a `503`
/// with `Connection: close` at once and is closed, counted in
/// `connect_rejections_total{reason="max_connections"}`. A closed connection frees its place;
/// a tunnel and a MITM session hold one (a fourth is refused while they live) and free it when
/// they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_connections_beyond_the_limit_get_503_and_places_come_back() {
    let port = echo_server().await;
    let env = start_tunnelling(port, |c| c.proxy.max_connections = 3).await;
    let echo = format!("127.0.0.1:{port}");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(env.proxy.addr).await.unwrap());
    }
    let took = refused(&env).await;
    println!("D5: the 4th connection was refused in {took:?}");
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");
    assert_eq!(
        env.metric(
            "aibridge_proxy_connect_rejections_total",
            &[("reason", "max_connections")]
        )
        .await,
        1.0
    );

    // A closed connection frees its place: a tunnel takes it, and holds it.
    drop(held.pop());
    let (mut tunnel, retries) = admitted(&env, &echo).await;
    let mut expected = 1 + retries;
    tunnel.write_all(b"x").await.unwrap();
    let mut echoed = [0u8; 1];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"x");
    refused(&env).await;
    expected += 1;

    // The tunnel's end frees it; a MITM session then takes it and holds it.
    drop(tunnel);
    let (mitm, retries) = admitted(&env, TARGET).await;
    expected += retries;
    let config = tls::client_config(&[&env.proxy.ca_pem], &[b"http/1.1"]);
    let mut mitm = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls_pki_types::ServerName::try_from(HOST).unwrap(), mitm)
        .await
        .unwrap();
    refused(&env).await;
    expected += 1;
    raw::send(
        &mut mitm,
        format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\nok").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(raw::read_response(&mut mitm).await.status, 200);
    refused(&env).await;
    expected += 1;
    assert_eq!(
        env.metric(
            "aibridge_proxy_connect_rejections_total",
            &[("reason", "max_connections")]
        )
        .await,
        expected as f64,
        "one count per 503"
    );

    // All closed: a normal client is served again.
    drop(mitm);
    drop(held);
    let deadline = Instant::now() + MARGIN;
    loop {
        match env
            .client(Http::One)
            .post(format!("https://{HOST}/echo"))
            .body("back")
            .send()
            .await
        {
            Ok(resp) if resp.status() == 200 => break,
            _ if Instant::now() < deadline => sleep(Duration::from_millis(20)).await,
            other => panic!("not served after the load dropped: {other:?}"),
        }
    }
}

//! RELIABILITY §9.4, rows D1–D8: slow clients, the connection limit and HTTP/2 abuse. Every test
//! starts its own proxy with short limits (a few hundred milliseconds, through the config tweak)
//! in front of the mock provider upstream, and checks the offending connection ends in bounded
//! time while a well-behaved client on another connection is still served.

use crate::support::h2raw::{self, Gone, H2};
use crate::support::*;
use crate::usage::metric;
use aibridge_proxy::config::AppConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, Instant};

const HOST: &str = "api.openai.com";
const TARGET: &str = "api.openai.com:443";
/// The limit under test (header read, TLS handshake or idle timeout).
const LIMIT: Duration = Duration::from_millis(500);
/// What a cut may take beyond its limit on a loaded two-core machine.
const MARGIN: Duration = Duration::from_millis(1500);

struct Env {
    _ca: TestCa,
    upstream: MockUpstream,
    proxy: TestProxy,
}

/// The proxy with `tweak` applied, intercepting `api.openai.com` to the mock upstream.
async fn start(tweak: impl FnOnce(&mut AppConfig) + Send + 'static) -> Env {
    env_with(tweak, TestProxyOptions::default()).await
}

async fn env_with(
    tweak: impl FnOnce(&mut AppConfig) + Send + 'static,
    opts: TestProxyOptions,
) -> Env {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        tweak: Some(Box::new(tweak)),
        ..opts
    })
    .await;
    Env {
        _ca: ca,
        upstream,
        proxy,
    }
}

impl Env {
    /// One request from a well-behaved agent on a fresh connection: `POST /echo` answered by the
    /// upstream. Returns how long it took.
    async fn served(&self, http: Http) -> Duration {
        let started = Instant::now();
        let client = agent_client(
            self.proxy.addr,
            &self.proxy.token,
            &[&self.proxy.ca_pem],
            http,
        );
        let resp = client
            .post(format!("https://{HOST}/echo"))
            .body("still here")
            .send()
            .await
            .expect("a normal client is served");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "still here");
        started.elapsed()
    }

    /// CONNECT to the intercepted host and finish TLS offering `alpn`.
    async fn tls(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        raw::connect_tls_alpn(
            self.proxy.addr,
            TARGET,
            &self.proxy.token,
            HOST,
            &self.proxy.ca_pem,
            alpn,
        )
        .await
        .expect("TLS through the proxy")
    }

    /// An HTTP/2 connection to the intercepted host, past the SETTINGS exchange.
    async fn h2(&self) -> H2<tokio_rustls::client::TlsStream<TcpStream>> {
        H2::handshake(self.tls(&[b"h2"]).await)
            .await
            .expect("h2 handshake")
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.proxy.app.admin_addr.unwrap());
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls::client_config(&[], &[]))
            .build()
            .unwrap();
        let resp = client
            .get(url)
            .bearer_auth(&self.proxy.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(
            &self.metrics().await,
            &format!("aibridge_proxy_{name}"),
            labels,
        )
    }
}

/// Write `bytes` one at a time, `gap` apart (then nothing more), while reading. Returns when the
/// server closed the connection (EOF or error) and what it sent before, or `None` if it was still
/// open after `wait`.
async fn dribble<S>(stream: S, bytes: &[u8], gap: Duration, wait: Duration) -> Option<Cut>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        for b in bytes {
            if raw::send(&mut w, std::slice::from_ref(b)).await.is_err() {
                break;
            }
            sleep(gap).await;
        }
        std::future::pending::<()>().await
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = r.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
        got
    };
    tokio::select! {
        got = read => Some(Cut { after: started.elapsed(), got }),
        _ = write => None,
        _ = sleep(wait) => None,
    }
}

/// A connection the server ended.
#[derive(Debug)]
struct Cut {
    after: Duration,
    /// What the server sent before closing.
    got: Vec<u8>,
}

impl Cut {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.got).into_owned()
    }
}

/// A TCP echo server on loopback; returns its port.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Tunnels to loopback allowed, for the echo server.
fn tunnels_to(port: u16) -> TestProxyOptions {
    TestProxyOptions {
        allow_private_cidrs: vec!["127.0.0.0/8"],
        extra_ports: vec![port],
        ..Default::default()
    }
}

fn connect_head(target: &str, token: &str) -> String {
    format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        raw::basic(token)
    )
}

// === D1 slowloris ===

/// D1: 200 connections dribble a CONNECT head a byte every 50 ms (the head would take ~6 s),
/// against `--header-read-timeout 500ms`: each is closed (EOF, error or a 408) within the timeout
/// plus a margin, a normal client is served meanwhile and afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_slowloris_heads_on_the_listener_are_cut_at_the_header_read_timeout() {
    let env = start(|c| c.proxy.header_read_timeout = LIMIT).await;
    let head = connect_head(TARGET, &env.proxy.token);
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
    let during = env.served(Http::One).await;
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
    env.served(Http::One).await;
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
        let tls = env.tls(&[b"http/1.1"]).await;
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
    env.served(Http::One).await;
}

// === D2 slow TLS ===

/// The first flight of a real TLS client for `api.openai.com`.
fn client_hello(ca_pem: &str) -> Vec<u8> {
    let config = Arc::new(tls::client_config(&[ca_pem], &[b"http/1.1"]));
    let name = rustls_pki_types::ServerName::try_from(HOST).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// D2: after the `200` to a CONNECT for an intercepted host, a client that sends nothing, one
/// that dribbles its ClientHello, and one that stops after its ClientHello are each closed at
/// `--tls-handshake-timeout`; `tls_handshake_failures_total{reason="timeout"}` counts all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_slow_tls_handshakes_are_cut_at_the_handshake_timeout() {
    let env = start(|c| c.proxy.tls_handshake_timeout = LIMIT).await;
    let hello = client_hello(&env.proxy.ca_pem);
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
        .metric("tls_handshake_failures_total", &[("reason", "timeout")])
        .await;
    assert_eq!(
        timeouts, 3.0,
        "tls_handshake_failures_total{{reason=\"timeout\"}}"
    );
    env.served(Http::One).await;
}

// === D3 slow body ===

/// D3: a model-call POST (`/v1/chat/completions`, whose body the proxy reads for the model
/// policy) whose body stalls longer than `--idle-timeout` is answered `408`, over HTTP/1.1; the
/// upstream sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_a_stalled_model_call_body_gets_408_over_http1() {
    let env = start(|c| c.proxy.idle_timeout = LIMIT).await;
    let mut tls = env.tls(&[b"http/1.1"]).await;
    let started = Instant::now();
    raw::send(
        &mut tls,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"model\":\"gpt-4o-mini\","
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = tokio::time::timeout(LIMIT + MARGIN, raw::read_response(&mut tls))
        .await
        .expect("an answer in time");
    let took = started.elapsed();
    println!("D3 h1 model call: {} after {took:?}", answer.status);
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(took >= LIMIT * 9 / 10, "408 before the limit: {took:?}");
    assert!(env.upstream.seen().is_empty());
    env.served(Http::One).await;
}

/// D3: the same over HTTP/2: the stream is answered `408`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_a_stalled_model_call_body_gets_408_over_h2() {
    let env = start(|c| c.proxy.idle_timeout = LIMIT).await;
    let mut h2 = env.h2().await;
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
    let mut tls = env.tls(&[b"http/1.1"]).await;
    let started = Instant::now();
    raw::send(
        &mut tls,
        format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 200\r\n\r\npartial")
            .as_bytes(),
    )
    .await
    .unwrap();
    let answer = tokio::time::timeout(LIMIT + MARGIN, raw::read_response(&mut tls))
        .await
        .expect("an answer or a close in time");
    let took = started.elapsed();
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
    env.served(Http::One).await;
}

// === D4 idle tunnel ===

/// D4: a tunnel on which no byte moves is closed at `--idle-timeout` (not before); one that
/// carries a byte every third of the limit outlives it (three limits), then, silent, is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_silent_tunnels_close_at_the_idle_timeout_and_talking_ones_stay() {
    let port = echo_server().await;
    let env = env_with(|c| c.proxy.idle_timeout = LIMIT, tunnels_to(port)).await;
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
    let mut used = env.tls(&[b"http/1.1"]).await;
    raw::send(
        &mut used,
        format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 2\r\n\r\nok").as_bytes(),
    )
    .await
    .unwrap();
    let answer = raw::read_response(&mut used).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("connection"), None, "kept alive: {answer:?}");
    let fresh = env.tls(&[b"http/1.1"]).await;
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
        .write_all(connect_head(TARGET, &env.proxy.token).as_bytes())
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
            connect_head(target, &env.proxy.token).as_bytes(),
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
    let env = env_with(|c| c.proxy.max_connections = 3, tunnels_to(port)).await;
    let echo = format!("127.0.0.1:{port}");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(env.proxy.addr).await.unwrap());
    }
    let took = refused(&env).await;
    println!("D5: the 4th connection was refused in {took:?}");
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");
    assert_eq!(
        env.metric("connect_rejections_total", &[("reason", "max_connections")])
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
        env.metric("connect_rejections_total", &[("reason", "max_connections")])
            .await,
        expected as f64,
        "one count per 503"
    );

    // All closed: a normal client is served again.
    drop(mitm);
    drop(held);
    let deadline = Instant::now() + MARGIN;
    loop {
        let client = agent_client(
            env.proxy.addr,
            &env.proxy.token,
            &[&env.proxy.ca_pem],
            Http::One,
        );
        match client
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

// === HTTP/2 abuse (D6–D8) ===

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
            slowest = slowest.max(env.served(Http::Two).await);
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
    let h2 = env.h2().await;
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
    let (
        Flood {
            gone,
            sent,
            replies,
        },
        slowest,
    ) = victim_while(
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
    env.served(Http::Two).await;
    let deadline = Instant::now() + MARGIN;
    loop {
        let inflight = env
            .metric("inflight_requests", &[("provider", "openai")])
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
    let mut h2 = env.h2().await;
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
    env.served(Http::Two).await;

    // The default lets the same 20 through and the connection still serves.
    let defaults = start(|_| {}).await;
    let mut h2 = defaults.h2().await;
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
    let h2 = env.h2().await;
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
    let (
        Flood {
            gone,
            sent,
            replies,
        },
        slowest,
    ) = victim_while(
        &env,
        flood(h2, batches, batch, Duration::ZERO, Duration::from_secs(3)),
    )
    .await;
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
    env.served(Http::Two).await;
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
        let h2 = env.h2().await;
        let batch = |_| one.repeat(PER_BATCH);
        let started = Instant::now();
        let (
            Flood {
                gone,
                sent,
                replies,
            },
            slowest,
        ) = victim_while(
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
    env.served(Http::Two).await;
}

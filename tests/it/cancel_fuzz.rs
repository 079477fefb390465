//! Cancellation fuzz (RELIABILITY.md F-4, mitmproxy's `_test_cancel`): the client disconnects —
//! a close (FIN) or a reset (RST) — at every phase of a request: mid-CONNECT head, right after
//! the `200`, mid-TLS handshake, mid-request head, mid-body, while the upstream is answering,
//! mid-response (SSE), inside a tunnel, and as an aborted HTTP/2 request. Meanwhile a fault
//! relay between the proxy and the mock upstream resets, closes or stalls the upstream side
//! after a varying number of bytes (one fault setting per batch).
//!
//! After every batch the proxy's `active_connections` and `inflight_requests` gauges and its
//! alive-task count must be back at their baseline within 1 s, a normal bridged request must
//! work, and no proxy task may have panicked. Seeded like `wire_fuzz` (`AIBRIDGE_FUZZ_SEED`);
//! `AIBRIDGE_CANCEL_FUZZ_CASES` changes the case count.

use crate::support::relay::{Fault, Relay};
use crate::support::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Cases per `cargo test` run (F-4 target).
const CASES: usize = 2_000;
/// Cases in flight at once; the relay fault is the same for one batch.
const BATCH: usize = 50;
/// Gauges and tasks must be back at baseline this soon after a batch.
const SETTLE: Duration = Duration::from_secs(1);
/// The longest a client waits for anything before it disconnects anyway.
const PATIENCE: Duration = Duration::from_millis(300);
/// Upstream faults, one per batch in turn: byte bounds cover the TLS handshake and the answer.
const FAULTS: &[Fault] = &[
    Fault::None,
    Fault::ResetAfter(6000),
    Fault::CloseAfter(6000),
    Fault::StallAfter(6000),
];

#[derive(Debug, Clone, Copy)]
enum Phase {
    ConnectHead,
    AfterEstablished,
    MidHandshake,
    MidRequestHead,
    MidBody,
    AwaitingResponse,
    MidResponse,
    Tunnel,
    H2Abort,
}

/// What the decrypted request asks for.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// POST, streamed answer (SSE transcript, events 2 ms apart).
    ChatStream,
    /// POST, JSON answer.
    ChatJson,
    /// GET, five SSE events 10 ms apart (no usage parsing).
    Stream,
    /// POST, echoed body (streamed both ways, no policy read).
    Echo,
}

#[derive(Debug, Clone)]
struct Case {
    phase: Phase,
    route: Route,
    /// RST instead of FIN.
    reset: bool,
    /// Where to stop, in thousandths of the phase's bytes.
    frac: u16,
    /// How long to linger before disconnecting, in ms.
    delay: u8,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![
            Phase::ConnectHead,
            Phase::AfterEstablished,
            Phase::MidHandshake,
            Phase::MidRequestHead,
            Phase::MidBody,
            Phase::AwaitingResponse,
            Phase::MidResponse,
            Phase::MidResponse,
            Phase::Tunnel,
            Phase::H2Abort,
        ]),
        prop::sample::select(vec![
            Route::ChatStream,
            Route::ChatJson,
            Route::Stream,
            Route::Echo,
        ]),
        any::<bool>(),
        0u16..1000,
        0u8..30,
    )
        .prop_map(|(phase, route, reset, frac, delay)| Case {
            phase,
            route,
            reset,
            frac,
            delay,
        })
}

/// What every case needs to reach the proxy.
struct Reach {
    proxy: SocketAddr,
    token: String,
    ca_pem: String,
    /// `127.0.0.1:<relay port>`: a tunnel (not a provider host) through the faulty relay.
    tunnel_target: String,
    client_hello: Vec<u8>,
}

fn prefix(bytes: &[u8], frac: u16) -> &[u8] {
    &bytes[..bytes.len() * usize::from(frac) / 1000]
}

/// Close or reset, then drop.
fn disconnect(tcp: &TcpStream, reset: bool) {
    if reset {
        let _ = tcp.set_zero_linger();
    }
}

fn request(route: Route) -> Vec<u8> {
    let pad = "x".repeat(2000);
    let (method, path, body) = match route {
        Route::ChatStream => (
            "POST",
            "/v1/chat/completions",
            format!("{{\"model\":\"gpt-4o-mini\",\"stream\":true,\"pad\":\"{pad}\"}}"),
        ),
        Route::ChatJson => (
            "POST",
            "/v1/chat/completions",
            format!("{{\"model\":\"gpt-4o-mini\",\"pad\":\"{pad}\"}}"),
        ),
        Route::Stream => ("GET", "/v1/stream", String::new()),
        Route::Echo => ("POST", "/echo", pad),
    };
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer sk-client\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn head_len(req: &[u8]) -> usize {
    req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
}

fn connect_head(env: &Reach, target: &str) -> Vec<u8> {
    raw::connect_head(target, &env.token).into_bytes()
}

/// CONNECT and read the `200`.
async fn established(env: &Reach, target: &str) -> Result<TcpStream, String> {
    let mut tcp = TcpStream::connect(env.proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(&connect_head(env, target))
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let head = raw::read_head(&mut tcp).await;
    if raw::status(&head) != 200 {
        return Err(format!("CONNECT {target}: {head:?}"));
    }
    Ok(tcp)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn intercepted(env: &Reach) -> Result<Tls, String> {
    let tcp = established(env, "api.openai.com:443").await?;
    let config = tls::client_config(&[&env.ca_pem], &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("api.openai.com").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))
}

/// Read up to `limit` bytes, giving up after [`PATIENCE`] without progress.
async fn read_some<S: AsyncReadExt + Unpin>(stream: &mut S, limit: usize) -> usize {
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while got < limit {
        let want = (limit - got).min(buf.len());
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf[..want])).await {
            Ok(Ok(n)) if n > 0 => got += n,
            _ => break,
        }
    }
    got
}

/// What the client sends inside an intercepted connection before it leaves: part of the head,
/// the head and part of the body, or the whole request.
fn sent_inside<'a>(req: &'a [u8], case: &Case) -> &'a [u8] {
    let head = head_len(req);
    match case.phase {
        Phase::MidRequestHead => prefix(&req[..head - 1], case.frac),
        Phase::MidBody => {
            let body = &req[head..];
            let cut = prefix(body, case.frac).len();
            &req[..head + cut.min(body.len().saturating_sub(1))]
        }
        _ => req,
    }
}

async fn linger(case: &Case) {
    tokio::time::sleep(Duration::from_millis(u64::from(case.delay))).await;
}

/// One case: act as the client up to the phase, then disconnect. Err means the proxy failed a
/// step that does not depend on the upstream (CONNECT, TLS with the proxy).
async fn run_case(env: &Reach, case: &Case) -> Result<(), String> {
    let req = request(case.route);
    match case.phase {
        Phase::ConnectHead => {
            let mut tcp = TcpStream::connect(env.proxy)
                .await
                .map_err(|e| e.to_string())?;
            let head = connect_head(env, "api.openai.com:443");
            // Strictly less than the whole head.
            let cut = prefix(&head, case.frac).len().min(head.len() - 1);
            let _ = tcp.write_all(&head[..cut]).await;
            linger(case).await;
            disconnect(&tcp, case.reset);
        }
        Phase::AfterEstablished => {
            let tcp = established(env, "api.openai.com:443").await?;
            linger(case).await;
            disconnect(&tcp, case.reset);
        }
        Phase::MidHandshake => {
            let mut tcp = established(env, "api.openai.com:443").await?;
            let hello = prefix(&env.client_hello, case.frac.max(1));
            let _ = tcp.write_all(hello).await;
            if hello.len() == env.client_hello.len() {
                // The proxy answers a whole ClientHello; take part of its flight.
                read_some(&mut tcp, usize::from(case.frac)).await;
            }
            linger(case).await;
            disconnect(&tcp, case.reset);
        }
        Phase::MidRequestHead | Phase::MidBody | Phase::AwaitingResponse | Phase::MidResponse => {
            let mut tls = intercepted(env).await?;
            let _ = tls.write_all(sent_inside(&req, case)).await;
            let _ = tls.flush().await;
            if matches!(case.phase, Phase::MidResponse) {
                // Up to ~1 KB of the answer: the head and some events.
                read_some(&mut tls, usize::from(case.frac) + 1).await;
            }
            linger(case).await;
            disconnect(tls.get_ref().0, case.reset);
        }
        Phase::Tunnel => {
            let mut tcp = established(env, &env.tunnel_target).await?;
            let _ = tcp.write_all(prefix(&env.client_hello, case.frac)).await;
            read_some(&mut tcp, usize::from(case.frac)).await;
            linger(case).await;
            disconnect(&tcp, case.reset);
        }
        Phase::H2Abort => {
            let client = agent_client(env.proxy, &env.token, &[&env.ca_pem], Http::Two);
            let body = req[head_len(&req)..].to_vec();
            let path = match case.route {
                Route::ChatStream | Route::ChatJson => "/v1/chat/completions",
                Route::Stream => "/v1/stream",
                Route::Echo => "/echo",
            };
            let call = async {
                let resp = client
                    .post(format!("https://api.openai.com{path}"))
                    .body(body)
                    .send()
                    .await?;
                let mut resp = resp;
                while resp.chunk().await?.is_some() {}
                Ok::<_, reqwest::Error>(())
            };
            // Abort somewhere between before the request and mid-answer.
            let _ =
                tokio::time::timeout(Duration::from_millis(u64::from(case.frac) / 4), call).await;
            drop(client);
        }
    }
    Ok(())
}

async fn run_batch(env: Arc<Reach>, batch: &[Case]) -> Result<(), String> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, case) in batch.iter().cloned().enumerate() {
        let env = env.clone();
        tasks.spawn(async move {
            let r = tokio::time::timeout(WAIT, run_case(&env, &case)).await;
            (i, case, r)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, case, r) = joined.map_err(|e| format!("case task failed: {e}"))?;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("case {i} {case:?}: {e}")),
            Err(_) => failures.push(format!("case {i} {case:?}: client side hung")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// (active mitm, active tunnel, in-flight openai, alive tasks)
fn gauges(proxy: &TestProxy) -> (i64, i64, i64, usize) {
    let m = &proxy.app.metrics;
    (
        m.active_connections.with_label_values(&["mitm"]).get(),
        m.active_connections.with_label_values(&["tunnel"]).get(),
        m.inflight_requests.with_label_values(&["openai"]).get(),
        proxy.app.shutdown.task_count(),
    )
}

/// Poll (bounded) until the gauges and the task count are back at baseline.
async fn settle(proxy: &TestProxy, baseline_tasks: usize) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let g = gauges(proxy);
        if g == (0, 0, 0, baseline_tasks) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > SETTLE {
            return Err(format!(
                "not back at baseline {SETTLE:?} after the batch: (mitm, tunnel, inflight, tasks) = {g:?}, baseline tasks {baseline_tasks}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A normal bridged request on a fresh connection.
async fn probe(env: &Reach) -> Result<(), String> {
    let client = agent_client(env.proxy, &env.token, &[&env.ca_pem], Http::One);
    let resp = client
        .post("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","messages":[]}"#)
        .send()
        .await
        .map_err(|e| format!("probe: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("probe body: {e}"))?;
    if status != 200 || !text.contains("chat.completion") {
        return Err(format!("probe: {status} {text:?}"));
    }
    Ok(())
}

/// OpenAI through a fault relay to an HTTP/1.1 mock upstream, with `change` applied (it gets the
/// relay's port).
async fn behind_relay(change: impl FnOnce(Setup, u16) -> Setup) -> (Relay, Env) {
    let setup = Env::setup().http1_upstream().upstream_first().await;
    let relay = Relay::start(setup.upstream().addr).await;
    let port = relay.addr.port();
    let env = change(setup.openai_at(format!("https://127.0.0.1:{port}")), port)
        .start()
        .await;
    (relay, env)
}

#[test]
fn disconnects_at_every_phase_leave_nothing_behind() {
    let rt = panics::runtime("cancel");
    // HTTP/1.1 upstream: one upstream connection per in-flight request, so a relay fault hits
    // the request it was meant for.
    let (relay, proxy) = rt.block_on(behind_relay(|o, port| {
        o.allow_private("127.0.0.1/32").port(port)
    }));
    let env = Arc::new(Reach {
        proxy: proxy.addr,
        token: proxy.token.clone(),
        ca_pem: proxy.ca_pem.clone(),
        tunnel_target: format!("127.0.0.1:{}", relay.addr.port()),
        client_hello: raw::client_hello(&[b"http/1.1"]),
    });
    // Baseline: listener, admin, reloader, subscription — after one normal request has come
    // and gone.
    let baseline = rt.block_on(async {
        probe(&env).await.unwrap();
        let mut last = usize::MAX;
        // The probe's connection task ends shortly after its client is dropped.
        for _ in 0..100 {
            let g = gauges(&proxy);
            if g.0 == 0 && g.2 == 0 && g.3 == last {
                break;
            }
            last = g.3;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gauges(&proxy).3
    });

    let seed = fuzz::seed();
    let cases = fuzz::cases("AIBRIDGE_CANCEL_FUZZ_CASES", CASES);
    let batches = cases.div_ceil(BATCH);
    println!("cancel fuzz: seed {seed} (replay with AIBRIDGE_FUZZ_SEED={seed}), {cases} cases in {batches} batches of {BATCH}, baseline tasks {baseline}");
    let mut runner = TestRunner::new(Config {
        cases: batches as u32,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 16,
        ..Config::default()
    });
    let started = Instant::now();
    let batch_no = std::sync::atomic::AtomicUsize::new(0);
    let worst_settle = std::sync::Mutex::new(Duration::ZERO);
    let result = runner.run(&prop::collection::vec(case(), BATCH..=BATCH), |batch| {
        let n = batch_no.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let fault = FAULTS[n % FAULTS.len()];
        rt.block_on(async {
            relay.set_fault(fault);
            relay.kill_live();
            run_batch(env.clone(), &batch)
                .await
                .map_err(|e| format!("{fault:?}: {e}"))?;
            let took = settle(&proxy, baseline)
                .await
                .map_err(|e| format!("{fault:?}: {e}"))?;
            {
                let mut worst = worst_settle.lock().unwrap();
                *worst = (*worst).max(took);
            }
            // A normal request works on a healthy upstream (stale pooled connections gone).
            relay.set_fault(Fault::None);
            relay.kill_live();
            tokio::time::sleep(Duration::from_millis(20)).await;
            probe(&env)
                .await
                .map_err(|e| format!("after {fault:?}: {e}"))
        })
        .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("cancel fuzz failed (seed {seed}, replay with AIBRIDGE_FUZZ_SEED={seed}): {e}");
    }
    println!(
        "cancel fuzz: {cases} cases in {:?}; slowest return to baseline {:?}; upstream connections {}",
        started.elapsed(),
        worst_settle.lock().unwrap(),
        relay.accepted()
    );
    let panicked = panics::seen("cancel");
    assert!(panicked.is_empty(), "proxy tasks panicked: {panicked:#?}");
    rt.block_on(proxy.stop());
}

/// The leak the fuzz found: a client that goes away while the upstream has not answered yet
/// (here: an upstream that never answers) used to leave `inflight_requests` up forever and no
/// record. Now the request is recorded as `client_cancelled` and the gauge returns to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_abandoned_before_its_answer_is_recorded_as_cancelled() {
    let (relay, proxy) = behind_relay(|o, _| o).await;
    relay.set_fault(Fault::StallAfter(0));
    let env = Reach {
        proxy: proxy.addr,
        token: proxy.token.clone(),
        ca_pem: proxy.ca_pem.clone(),
        tunnel_target: String::new(),
        client_hello: Vec::new(),
    };
    let inflight = || {
        proxy
            .app
            .metrics
            .inflight_requests
            .with_label_values(&["openai"])
            .get()
    };
    let baseline = proxy.app.shutdown.task_count();
    let mut tls = intercepted(&env).await.unwrap();
    tls.write_all(&request(Route::ChatJson)).await.unwrap();
    tls.flush().await.unwrap();
    eventually("the request to reach the stalled upstream", || {
        inflight() == 1 && relay.accepted() == 1
    })
    .await;
    disconnect(tls.get_ref().0, true);
    drop(tls);
    eventually("in-flight back to zero", || inflight() == 0).await;
    let record = proxy
        .wait_rows(1)
        .await
        .into_iter()
        .next()
        .expect("no interception record written");
    assert_eq!(record.error.as_deref(), Some("client_cancelled"));
    assert_eq!(record.outcome, "client_cancelled");
    assert_eq!(
        record.model.as_deref(),
        Some("gpt-4o-mini"),
        "requested model kept"
    );
    let tasks = proxy.app.shutdown.task_count();
    eventually("the connection task to end", || {
        proxy.app.shutdown.task_count() == baseline
    })
    .await;
    assert!(tasks <= baseline + 1, "only the connection task may linger");
}

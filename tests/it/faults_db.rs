//! Database, pubsub and process faults (RELIABILITY §10): F11 database down at start, F13 a
//! hung reload query, F15 a PostgreSQL restart, F16 odd NOTIFY payloads, F23 `EMFILE` on
//! accept; plus the evidence the tests named in the other modules leave out: F12 failed reloads
//! counted and backed off, F17 generations strictly increasing with traffic unharmed, F18 an
//! in-flight stream finishing on its snapshot, F22 a full record queue counted as dropped.
//!
//! PostgreSQL sits behind the fault relay (`support/relay.rs`) where an outage is staged; changes
//! "made during the outage" go to the real server directly, as another replica would.

use crate::support::db::TestDb;
use crate::support::relay::{Fault, Relay};
use crate::support::upstream::SSE_EVENTS;
use crate::support::*;
use aibridge_proxy::config::{AppConfig, AuthMode, NonProviderHosts};
use aibridge_proxy::provider::ProviderKind;
use aibridge_proxy::pubsub::POSTGRES_POLL_INTERVAL;
use aibridge_proxy::router::Snapshot;
use aibridge_proxy::store::{Interception, NewProvider, Store};
use serde_json::json;
use sqlx::Connection;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHAT: &str = "https://api.openai.com/v1/chat/completions";

async fn upstream() -> (MockUpstream, TestCa) {
    let ca = TestCa::new();
    (
        MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await,
        ca,
    )
}

/// A relay in front of the test database's server, and the database URL through it.
async fn relay_for(db: &TestDb) -> (Relay, String) {
    let rest = db.url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let hostport = authority.rsplit('@').next().unwrap().to_string();
    assert!(
        hostport.contains(':'),
        "the test URL names its port: {}",
        db.url
    );
    let addr = tokio::net::lookup_host(&hostport)
        .await
        .unwrap()
        .next()
        .unwrap();
    let relay = Relay::start(addr).await;
    let url = db.url.replacen(&hostport, &relay.addr.to_string(), 1);
    assert_ne!(url, db.url);
    (relay, url)
}

fn dbname(url: &str) -> String {
    let last = url.rsplit('/').next().unwrap();
    last.split('?').next().unwrap().to_string()
}

/// A proxy whose providers and token are seeded through `seed_url` (the real database) and
/// which then runs on `serve_url` (the relay), with `tweak` having the last word.
async fn pg_proxy(
    seed_url: &str,
    serve_url: &str,
    upstream: &MockUpstream,
    ca: &TestCa,
    tweak: impl FnOnce(&mut AppConfig) + Send + 'static,
) -> TestProxy {
    let serve_url = serve_url.to_string();
    TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        database_url: Some(seed_url.to_string()),
        non_provider_hosts: NonProviderHosts::Deny,
        tweak: Some(Box::new(move |c: &mut AppConfig| {
            c.database_url = serve_url;
            tweak(c);
        })),
        ..Default::default()
    })
    .await
}

fn provider(name: &str, base_url: String, host: &str) -> NewProvider {
    NewProvider {
        name: name.into(),
        kind: ProviderKind::Openai,
        base_url,
        intercept_hosts: vec![host.into()],
        enabled: true,
        enforce_models: false,
        api_keys: vec![],
    }
}

async fn writer(url: &str) -> Store {
    Store::connect(url)
        .await
        .unwrap()
        .with_upstream_policy(loopback_upstreams())
}

fn admin_http() -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(crate::support::tls::client_config(&[], &[]))
        .timeout(WAIT)
        .build()
        .unwrap()
}

async fn metrics_text(proxy: &TestProxy) -> String {
    let resp = admin_http()
        .get(format!("http://{}/metrics", proxy.app.admin_addr.unwrap()))
        .bearer_auth(&proxy.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// The value of one series (`name{labels}`) in Prometheus text; 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

async fn reloads(proxy: &TestProxy, result: &str) -> f64 {
    let series = format!("aibridge_proxy_reloads_total{{result=\"{result}\"}}");
    metric(&metrics_text(proxy).await, &series)
}

async fn readyz(proxy: &TestProxy) -> (u16, serde_json::Value) {
    proxy.admin("GET", "/readyz", None).await
}

/// Poll `/readyz` until it answers `status` (bounded); returns how long that took.
async fn wait_ready(proxy: &TestProxy, status: u16) -> Duration {
    let started = Instant::now();
    loop {
        let (now, body) = readyz(proxy).await;
        if now == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "/readyz never answered {status}: {now} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_route(proxy: &TestProxy, key: &str, present: bool) {
    let router = proxy.app.router.clone();
    let key = key.to_string();
    eventually(&format!("route {key} present={present}"), move || {
        router.load().route(&key).is_some() == present
    })
    .await;
}

/// One chat request: its status, or why it failed.
async fn chat(client: &reqwest::Client) -> Result<u16, String> {
    let resp = client
        .post(CHAT)
        .body("{}")
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    resp.bytes().await.map_err(|e| format!("{e:?}"))?;
    Ok(status)
}

/// Chat requests in a loop until stopped: every outcome other than `200` is kept, with the
/// slowest answer.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<TrafficReport>,
}

#[derive(Debug)]
struct TrafficReport {
    ok: usize,
    failures: Vec<String>,
    slowest: Duration,
}

impl Traffic {
    fn start(client: reqwest::Client) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = TrafficReport {
                ok: 0,
                failures: Vec::new(),
                slowest: Duration::ZERO,
            };
            while !flag.load(Ordering::SeqCst) {
                let started = Instant::now();
                match chat(&client).await {
                    Ok(200) => report.ok += 1,
                    other => report.failures.push(format!("{other:?}")),
                }
                report.slowest = report.slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            report
        });
        Traffic { stop, task }
    }

    async fn finish(self) -> TrafficReport {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// End the test database's sessions but the caller's, as a server restart or failover does
/// (`57P01 admin_shutdown`); `keep_listen` spares LISTEN sessions. Returns how many ended.
async fn terminate_sessions(url: &str, keep_listen: bool) -> usize {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let filter = if keep_listen {
        " AND query NOT ILIKE 'LISTEN%'"
    } else {
        ""
    };
    let ended: Vec<bool> = sqlx::query_scalar(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid(){filter}"
    ))
    .bind(dbname(url))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    ended.into_iter().filter(|e| *e).count()
}

async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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

/// CONNECT to `target` and bounce `payload` off the echo server behind it: the CONNECT status,
/// and whether the payload came back.
async fn tunnel_echo(proxy: SocketAddr, target: &str, token: &str, payload: &[u8]) -> (u16, bool) {
    let attempt = async {
        let req = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
            raw::basic(token)
        );
        let mut stream = TcpStream::connect(proxy).await.ok()?;
        stream.write_all(req.as_bytes()).await.ok()?;
        let head = raw::read_head(&mut stream).await;
        let status = raw::status(&head);
        if status != 200 {
            return Some((status, false));
        }
        stream.write_all(payload).await.ok()?;
        let mut back = vec![0u8; payload.len()];
        let echoed = stream.read_exact(&mut back).await.is_ok() && back == payload;
        Some((status, echoed))
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, false))
}

// ---------------------------------------------------------------------------------------------
// F11: database down at start.

/// SPEC §2 / `app.rs`: start with an empty router, `/readyz` false, tunnels and the admin API
/// up, the reloader retrying with backoff; once the database is back, converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f11_database_down_at_start_serves_tunnels_then_converges() {
    let Some(db) = TestDb::postgres("faults_db::f11_database_down_at_start").await else {
        return;
    };
    let (upstream, ca) = upstream().await;
    let (relay, relayed) = relay_for(&db).await;
    let echo = echo_server().await;
    relay.cut();
    // `--auth none`: with token auth no token is known before the first load (see the
    // closed-port test below).
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        database_url: Some(db.url.clone()),
        allow_private_cidrs: vec!["127.0.0.0/8"],
        extra_ports: vec![echo],
        tweak: Some(Box::new(move |c: &mut AppConfig| {
            c.database_url = relayed;
            c.proxy.auth = AuthMode::None;
        })),
        ..Default::default()
    })
    .await;
    let outage = Instant::now();
    let (status, body) = readyz(&proxy).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["router_loaded"], false, "{body}");
    assert_eq!(proxy.generation(), 0);
    assert!(proxy
        .app
        .router
        .load()
        .route("api.openai.com:443")
        .is_none());

    // Tunnels serve meanwhile (the one thing that needs no data).
    let target = format!("127.0.0.1:{echo}");
    assert_eq!(
        tunnel_echo(
            proxy.addr,
            &target,
            "",
            b"tunnel while the database is down"
        )
        .await,
        (200, true)
    );
    // The reloader retries, with backoff (100 ms doubling): a handful of attempts, not a spin.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(outage.elapsed())).await;
    let errors = reloads(&proxy, "error").await;
    let elapsed = outage.elapsed();
    println!("FIGURE F11: {errors} failed reloads in the first {elapsed:?} of the outage");
    assert!(
        (2.0..=15.0).contains(&errors),
        "retried with backoff: {errors} failed reloads in {elapsed:?}"
    );
    assert_eq!(readyz(&proxy).await.0, 503);

    let back = Instant::now();
    relay.restore();
    let waited = wait_ready(&proxy, 200).await;
    println!("FIGURE F11: database back → ready in {waited:?}");
    let (_, body) = readyz(&proxy).await;
    assert_eq!(body["router_loaded"], true, "{body}");
    assert_eq!(body["subscribed"], true, "{body}");
    // The provider created before start is intercepted now.
    let client = agent_client(proxy.addr, "unused", &[&proxy.ca_pem], Http::Two);
    assert_eq!(chat(&client).await, Ok(200));
    assert_eq!(upstream.seen().len(), 1, "the request reached the provider");
    assert!(reloads(&proxy, "ok").await >= 1.0);
    assert!(back.elapsed() < WAIT);
}

/// A database refusing connections at start (nothing listens on its port): start completes in
/// bounded time, the admin API serves, `/readyz` is false. With token auth no token is known
/// yet, so CONNECTs get `503` (not `407`) until the first load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f11_a_refusing_database_at_start_still_starts_not_ready() {
    let (upstream, ca) = upstream().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("postgres://postgres@127.0.0.1:{port}/aibridge");
    let dir = tempfile::tempdir().unwrap();
    let seed = format!("sqlite://{}", dir.path().join("seed.db").display());
    let echo = echo_server().await;
    let started = Instant::now();
    let proxy = TestProxy::start(TestProxyOptions {
        // Seeded into a throwaway SQLite file; the proxy itself runs on the closed port.
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        database_url: Some(seed),
        allow_private_cidrs: vec!["127.0.0.0/8"],
        extra_ports: vec![echo],
        tweak: Some(Box::new(move |c: &mut AppConfig| c.database_url = closed)),
        ..Default::default()
    })
    .await;
    let took = started.elapsed();
    println!("FIGURE F11: start with the database refusing took {took:?}");
    // One wait for the pool's connect timeout (3 s), not one per start-up step.
    assert!(took < Duration::from_secs(5), "start is bounded: {took:?}");
    let (status, body) = readyz(&proxy).await;
    assert_eq!(status, 503, "{body}");
    let healthz = admin_http()
        .get(format!("http://{}/healthz", proxy.app.admin_addr.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let (status, _) =
        tunnel_echo(proxy.addr, &format!("127.0.0.1:{echo}"), &proxy.token, b"x").await;
    // No token is known before the first load: "not ready", not "your token is wrong".
    assert_eq!(status, 503, "token-auth CONNECT before the first load");
}

// ---------------------------------------------------------------------------------------------
// F12: database down during reloads (reload.rs has the outage/convergence; this adds the
// failed reloads in `reloads_total{result="error"}` and their backoff).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f12_reloads_while_the_database_is_down_are_counted_and_backed_off() {
    let Some(db) = TestDb::postgres("faults_db::f12_reloads_counted").await else {
        return;
    };
    let (upstream, ca) = upstream().await;
    let (relay, relayed) = relay_for(&db).await;
    let proxy = pg_proxy(&db.url, &relayed, &upstream, &ca, |_| {}).await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    assert_eq!(chat(&client).await, Ok(200));
    wait_ready(&proxy, 200).await;
    let errors_before = reloads(&proxy, "error").await;
    let generation = proxy.generation();
    let traffic = Traffic::start(client.clone());

    // The database goes down under the pool while the LISTEN session survives, so a change
    // notification arrives and the reload it asks for fails: pooled sessions end, new ones are
    // reset by the relay.
    assert!(terminate_sessions(&db.url, true).await >= 1);
    relay.set_fault(Fault::ResetAfter(0));
    let direct = writer(&db.url).await;
    direct
        .create_provider(provider("second", upstream.base_url(), "api.anthropic.com"))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        if reloads(&proxy, "error").await > errors_before {
            break;
        }
        assert!(started.elapsed() < WAIT, "no failed reload was counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = reloads(&proxy, "error").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = reloads(&proxy, "error").await;
    println!(
        "FIGURE F12: {} failed reloads in 1.5 s of outage",
        later - first
    );
    assert!(
        later > first && later - first <= 10.0,
        "retried with backoff, not in a spin: {first} → {later}"
    );
    assert_eq!(proxy.generation(), generation, "the old snapshot serves");
    assert!(proxy
        .app
        .router
        .load()
        .route("api.anthropic.com:443")
        .is_none());

    relay.set_fault(Fault::None);
    wait_route(&proxy, "api.anthropic.com:443", true).await;
    let report = traffic.finish().await;
    println!("FIGURE F12: traffic during the outage {report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.ok > 0);
    assert!(reloads(&proxy, "ok").await >= 2.0);
    direct.close().await;
}

// ---------------------------------------------------------------------------------------------
// F13: database slow (a reload query hangs on a lock).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f13_a_hung_reload_times_out_and_requests_do_not_wait() {
    let Some(db) = TestDb::postgres("faults_db::f13_hung_reload").await else {
        return;
    };
    let (upstream, ca) = upstream().await;
    let timeout = Duration::from_millis(250);
    let proxy = pg_proxy(&db.url, &db.url, &upstream, &ca, move |c| {
        c.reload_timeout = timeout
    })
    .await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    let mut baseline = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(chat(&client).await, Ok(200));
        baseline = baseline.max(started.elapsed());
    }
    let errors_before = reloads(&proxy, "error").await;
    let generation = proxy.generation();

    // Another session holds the providers table: every read of it waits.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE ai_providers IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    // The lock holder's own change, visible only once it commits.
    sqlx::query(
        "UPDATE ai_providers SET intercept_hosts = '[\"api.openai.com\", \"slow.example\"]' \
         WHERE name = 'openai'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let traffic = Traffic::start(client.clone());
    let mut notifier = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SELECT pg_notify('ai_providers_changed', 'f13')")
        .execute(&mut notifier)
        .await
        .unwrap();

    // Reload after reload times out; the snapshot and readiness stay.
    let hang = Instant::now();
    let mut most_blocked = 0i64;
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(dbname(&db.url))
        .fetch_one(&mut notifier)
        .await
        .unwrap();
        most_blocked = most_blocked.max(blocked);
        if reloads(&proxy, "error").await >= errors_before + 4.0 {
            break;
        }
        assert!(
            hang.elapsed() < WAIT,
            "reloads did not time out: {} errors",
            reloads(&proxy, "error").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hung_for = hang.elapsed();
    assert_eq!(proxy.generation(), generation);
    assert_eq!(
        readyz(&proxy).await.0,
        200,
        "the old snapshot keeps serving"
    );
    let report = traffic.finish().await;
    println!(
        "FIGURE F13: 4 reloads timed out over {hung_for:?}; requests meanwhile {report:?} \
         (slowest before the hang {baseline:?}); at most {most_blocked} sessions waited on the lock"
    );
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.ok >= 5, "{report:?}");
    assert!(
        report.slowest < Duration::from_secs(1) && report.slowest < hung_for / 2,
        "the request path never waits on the database: slowest {:?} during a {hung_for:?} hang",
        report.slowest
    );
    // A timed-out reload gives its session back; it does not leave it waiting on the lock
    // (each would hold a pool slot for as long as the hang lasts).
    assert!(
        most_blocked <= 2,
        "{most_blocked} sessions of abandoned reloads were still waiting on the lock"
    );

    tx.commit().await.unwrap();
    wait_route(&proxy, "slow.example:443", true).await;
    assert!(proxy.generation() > generation);
    assert_eq!(chat(&client).await, Ok(200));
    let _ = holder.close().await;
    let _ = notifier.close().await;
}

// ---------------------------------------------------------------------------------------------
// F15: PostgreSQL restart / failover.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f15_a_postgres_restart_reconnects_pool_and_listener_and_applies_the_missed_change() {
    let Some(db) = TestDb::postgres("faults_db::f15_postgres_restart").await else {
        return;
    };
    let (upstream, ca) = upstream().await;
    let (relay, relayed) = relay_for(&db).await;
    let proxy = pg_proxy(&db.url, &relayed, &upstream, &ca, |_| {}).await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    assert_eq!(chat(&client).await, Ok(200));
    wait_ready(&proxy, 200).await;
    let traffic = Traffic::start(client.clone());
    for round in 0..2 {
        let accepted = relay.accepted();
        // The server ends every session, then refuses while it is down.
        assert!(terminate_sessions(&db.url, false).await >= 1);
        relay.cut();
        wait_ready(&proxy, 503).await;
        // A change committed while the proxy cannot see the database. The second one moves no
        // change counter and sends no NOTIFY (a hand edit): only the full reload after the
        // re-LISTEN can find it, the counter poll cannot.
        let host = format!("r{round}.example");
        if round == 0 {
            let direct = writer(&db.url).await;
            direct
                .create_provider(provider("r0", upstream.base_url(), &host))
                .await
                .unwrap();
            direct.close().await;
        } else {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query(
                "UPDATE ai_providers SET intercept_hosts = jsonb_build_array($1::text) \
                 WHERE name = 'r0'",
            )
            .bind(&host)
            .execute(&mut conn)
            .await
            .unwrap();
            let _ = conn.close().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let key = format!("{host}:443");
        assert!(proxy.app.router.load().route(&key).is_none());

        let back = Instant::now();
        relay.restore();
        wait_route(&proxy, &key, true).await;
        let applied = back.elapsed();
        let ready = wait_ready(&proxy, 200).await;
        println!(
            "FIGURE F15 round {round}: database back → change applied in {applied:?} \
             (ready {ready:?})"
        );
        // Reconnection backoff is still short after a short outage; the counter poll that
        // would catch a forgotten reload runs every POSTGRES_POLL_INTERVAL.
        assert!(
            applied < POSTGRES_POLL_INTERVAL / 2,
            "applied {applied:?} after recovery"
        );
        assert!(
            relay.accepted() >= accepted + 2,
            "the pool and the LISTEN session reconnected: {} new sessions",
            relay.accepted() - accepted
        );
        // The pool works again: an admin write through this proxy lands.
        let (status, body) = proxy
            .admin(
                "PATCH",
                "/api/v1/providers/openai",
                Some(json!({"api_keys": [format!("sk-after-restart-{round}-0123456789")]})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let report = traffic.finish().await;
    println!("FIGURE F15: traffic across two restarts {report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.ok > 0);
}

// ---------------------------------------------------------------------------------------------
// F16: NOTIFY payload malformed or near the 8000-byte limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_malformed_and_near_limit_notify_payloads_still_reload() {
    let Some(db) = TestDb::postgres("faults_db::f16_notify_payloads").await else {
        return;
    };
    let (upstream, ca) = upstream().await;
    let proxy = pg_proxy(&db.url, &db.url, &upstream, &ca, |_| {}).await;
    wait_ready(&proxy, 200).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let payloads: Vec<(&str, String)> = vec![
        ("ai_providers_changed", "{\"op\": \"upd".to_string()),
        (
            "agent_tokens_changed",
            "\u{1}\u{7f} ' \" \\ \u{fffd} 💥 not a hint at all".to_string(),
        ),
        ("ai_providers_changed", "x".repeat(7999)),
        ("agent_tokens_changed", "é".repeat(3999)),
        ("ai_providers_changed", String::new()),
    ];
    for (i, (channel, payload)) in payloads.iter().enumerate() {
        // A change with no NOTIFY of its own and no counter bump: only a full re-read finds it.
        let host = format!("n{i}.example");
        sqlx::query(
            "UPDATE ai_providers \
             SET intercept_hosts = jsonb_build_array('api.openai.com', $1::text) \
             WHERE name = 'openai'",
        )
        .bind(&host)
        .execute(&mut conn)
        .await
        .unwrap();
        let key = format!("{host}:443");
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                proxy.app.router.load().route(&key).is_none(),
                "nothing but the notification can reveal this change"
            );
        }
        let generation = proxy.generation();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut conn)
            .await
            .unwrap();
        wait_route(&proxy, &key, true).await;
        assert!(
            proxy.generation() > generation,
            "payload {i} ({} bytes on {channel})",
            payload.len()
        );
    }
    // One byte more is the server's to refuse; the proxy never sees it.
    let too_long = sqlx::query("SELECT pg_notify('ai_providers_changed', $1)")
        .bind("x".repeat(8000))
        .execute(&mut conn)
        .await;
    assert!(
        too_long.is_err(),
        "PostgreSQL refuses payloads of 8000 bytes"
    );
    assert_eq!(
        readyz(&proxy).await.0,
        200,
        "the subscription survived them all"
    );
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::One);
    assert_eq!(chat(&client).await, Ok(200));
    let _ = conn.close().await;
}

// ---------------------------------------------------------------------------------------------
// F17: reload storm (reload.rs counts coalesced reloads; this adds "generation strictly
// increasing; no request fails" under NOTIFY bursts and admin writes in a loop).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f17_a_reload_storm_keeps_generations_increasing_and_fails_no_request() {
    let Some(db) = TestDb::postgres("faults_db::f17_reload_storm").await else {
        return;
    };
    let (upstream, ca) = upstream().await;
    let proxy = pg_proxy(&db.url, &db.url, &upstream, &ca, |_| {}).await;
    wait_ready(&proxy, 200).await;
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    assert_eq!(chat(&client).await, Ok(200));
    let traffic = Traffic::start(client.clone());
    // Watch every snapshot swap: a new snapshot must carry a higher generation.
    let stop = Arc::new(AtomicBool::new(false));
    let violations: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let router = proxy.app.router.clone();
    let (flag, seen_bad) = (stop.clone(), violations.clone());
    let sampler = tokio::spawn(async move {
        let mut last: Arc<Snapshot> = router.snapshot();
        let mut swaps = 0u64;
        while !flag.load(Ordering::SeqCst) {
            let now = router.snapshot();
            if !Arc::ptr_eq(&now, &last) {
                swaps += 1;
                if now.generation <= last.generation {
                    seen_bad
                        .lock()
                        .unwrap()
                        .push((last.generation, now.generation));
                }
                last = now;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        swaps
    });
    let ok_before = reloads(&proxy, "ok").await;
    let generation = proxy.generation();
    let direct = writer(&db.url).await;
    let pool = direct.postgres_pool().unwrap().clone();
    let bursts = tokio::spawn(async move {
        for _ in 0..3 {
            sqlx::query(
                "WITH c AS (UPDATE aibridge_changes SET counter = counter + 1000 WHERE id = 1) \
                 SELECT pg_notify('ai_providers_changed', g::text) FROM generate_series(1, 1000) g",
            )
            .execute(&pool)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    let writes = 30;
    for i in 0..writes {
        let (status, body) = proxy
            .admin(
                "PATCH",
                "/api/v1/providers/openai",
                Some(json!({"api_keys": [format!("sk-storm-{i:04}-0123456789")]})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    bursts.await.unwrap();
    let last = direct.change_counter().await.unwrap();
    assert!(proxy.app.router.wait_for_counter(last, WAIT).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let swaps = sampler.await.unwrap();
    let report = traffic.finish().await;
    let reloaded = reloads(&proxy, "ok").await - ok_before;
    println!(
        "FIGURE F17: {writes} admin writes + 3 bursts of 1000 NOTIFYs → {reloaded} reloads, \
         {swaps} swaps observed, generation {generation} → {}; traffic {report:?}",
        proxy.generation()
    );
    let violations = violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "a new snapshot without a higher generation: {violations:?}"
    );
    assert!(swaps >= 2, "the sampler saw the storm ({swaps} swaps)");
    assert!(proxy.generation() > generation);
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.ok > 0);
    assert!(
        reloaded <= (2 * (writes + 3)) as f64,
        "coalesced (at most two per event burst): {reloaded} reloads for {writes} writes \
         and 3 bursts of 1000 NOTIFYs"
    );
    direct.close().await;
}

// ---------------------------------------------------------------------------------------------
// F18: reload racing a request (mitm.rs has the 502 on the next request; this adds the
// in-flight request finishing on the snapshot it started with).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f18_an_in_flight_stream_finishes_on_its_snapshot_after_its_provider_is_removed() {
    let (upstream, ca) = upstream().await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        non_provider_hosts: NonProviderHosts::Deny,
        ..Default::default()
    })
    .await;
    for http in [Http::One, Http::Two] {
        if http == Http::Two {
            let (status, body) = proxy
                .admin(
                    "POST",
                    "/api/v1/providers",
                    Some(json!({
                        "name": "openai",
                        "kind": "openai",
                        "base_url": upstream.base_url(),
                        "intercept_hosts": ["api.openai.com"],
                    })),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], http);
        let seen = upstream.seen().len();
        let mut resp = client
            .get("https://api.openai.com/v1/sse")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = String::new();
        while !body.contains(SSE_EVENTS[0]) {
            let chunk = tokio::time::timeout(WAIT, resp.chunk())
                .await
                .unwrap()
                .unwrap()
                .expect("the first event arrives");
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
        // The provider goes away while the stream is open.
        let generation = proxy.generation();
        let (status, _) = proxy
            .admin("DELETE", "/api/v1/providers/openai", None)
            .await;
        assert_eq!(status, 204);
        proxy.wait_for_generation(generation).await;
        assert!(proxy
            .app
            .router
            .load()
            .route("api.openai.com:443")
            .is_none());
        upstream.release();
        loop {
            match tokio::time::timeout(WAIT, resp.chunk()).await.unwrap() {
                Ok(Some(chunk)) => body.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => break,
                Err(e) => panic!("{http:?}: the in-flight stream was cut: {e:?} after {body:?}"),
            }
        }
        assert_eq!(body, SSE_EVENTS.concat(), "{http:?}: the whole stream");
        assert!(!upstream.released_by_timeout());
        // The next request on that connection re-checks: 502 with a one-line reason.
        let resp = client.post(CHAT).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 502, "{http:?}");
        let reason = resp.text().await.unwrap();
        assert!(
            !reason.trim().is_empty() && !reason.trim().contains('\n'),
            "{http:?}: one-line reason: {reason:?}"
        );
        assert_eq!(upstream.seen().len(), seen + 1, "{http:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// F19: one bad row (reload.rs covers an unparsable base_url; this adds IPv6 hosts: malformed,
// refused by the upstream policy, and as an intercept host).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f19_bad_ipv6_rows_are_excluded_alone_with_their_reason() {
    let (upstream, ca) = upstream().await;
    let proxy = TestProxy::start(TestProxyOptions {
        providers: vec![ProviderSpec::openai(upstream.base_url())],
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        non_provider_hosts: NonProviderHosts::Deny,
        ..Default::default()
    })
    .await;
    let store = &proxy.app.store;
    let bad = [
        ("v6-unparsable", "base_url", "https://[::1"),
        ("v6-refused", "base_url", "https://[fd00::1]/v1"),
        ("v6-host", "intercept_hosts", "[\"[::1\"]"),
    ];
    for (i, (name, _, _)) in bad.iter().enumerate() {
        let host = format!("bad{i}.example");
        store
            .create_provider(provider(name, upstream.base_url(), &host))
            .await
            .unwrap();
    }
    wait_route(&proxy, "bad2.example:443", true).await;
    // Rows no write path accepts (an older version, a hand edit), in one change.
    let db = format!(
        "sqlite://{}",
        proxy.dir.path().join("aibridge.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for (name, column, value) in bad {
        sqlx::query(&format!(
            "UPDATE ai_providers SET {column} = $1 WHERE name = $2"
        ))
        .bind(value)
        .bind(name)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE aibridge_changes SET counter = counter + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    pool.close().await;
    for i in 0..bad.len() {
        wait_route(&proxy, &format!("bad{i}.example:443"), false).await;
    }
    for (name, column, value) in bad {
        let (status, body) = proxy
            .admin("GET", &format!("/api/v1/providers/{name}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        println!(
            "FIGURE F19: {column} {value:?} → {} {}",
            body["status"], body["warnings"]
        );
        assert_eq!(body["status"], "error", "{name}: {body}");
        assert!(
            body["warnings"][0].as_str().is_some_and(|w| !w.is_empty()),
            "{name}: the reason is shown: {body}"
        );
    }
    let (_, good) = proxy.admin("GET", "/api/v1/providers/openai", None).await;
    assert_eq!(good["status"], "enabled", "{good}");
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    assert_eq!(chat(&client).await, Ok(200), "the good row still routes");
}

// ---------------------------------------------------------------------------------------------
// F22: interception sink down (usage.rs shows records held and written after an outage; this
// adds the overflow, counted in `interceptions_dropped_total`, never silent).

fn record(i: usize) -> Interception {
    Interception {
        id: uuid::Uuid::new_v4(),
        request_id: format!("f22-{i}"),
        token_id: None,
        user: "f22".into(),
        provider: "f22".into(),
        model: None,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        input_tokens: Some(1),
        output_tokens: Some(1),
        cache_read_tokens: None,
        cache_write_tokens: None,
        usage_source: "response".into(),
        outcome: "ok".into(),
        started_at: time::OffsetDateTime::now_utc(),
        duration_ms: 1,
        ttfb_ms: Some(1),
        error: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f22_a_full_record_queue_counts_every_dropped_record() {
    use aibridge_proxy::usage::recorder::QUEUE_CAPACITY;
    let Some(db) = TestDb::postgres("faults_db::f22_record_overflow").await else {
        return;
    };
    let (upstream, ca) = upstream().await;
    let (relay, relayed) = relay_for(&db).await;
    let proxy = pg_proxy(&db.url, &relayed, &upstream, &ca, |_| {}).await;
    relay.cut();
    // More records than the queue (plus the one batch the writer holds) can keep.
    let sent = QUEUE_CAPACITY + 1500;
    let recorder = &proxy.app.recorder;
    for i in 0..sent {
        recorder.started("f22");
        recorder.record(record(i));
    }
    let stats = recorder.stats().clone();
    let dropped = stats.dropped.load(Ordering::SeqCst);
    let text = metrics_text(&proxy).await;
    let counted = metric(&text, "aibridge_proxy_interceptions_dropped_total");
    println!("FIGURE F22: {sent} records during an outage → {dropped} dropped ({counted} counted)");
    // Bounded, and used in full before anything is dropped: what the queue and the writer's
    // held batch (at most 500) could not take, and nothing more.
    let overflow = (sent - QUEUE_CAPACITY) as u64;
    assert!(
        (overflow.saturating_sub(500)..=overflow).contains(&dropped),
        "{dropped} of {sent} dropped with a queue of {QUEUE_CAPACITY}"
    );
    assert_eq!(counted, dropped as f64, "every drop is in the metric");
    assert_eq!(stats.written.load(Ordering::SeqCst), 0);

    // Back: the held records drain (all of them takes a while in a debug build; two batches
    // show it), and nothing more is dropped.
    relay.restore();
    let started = Instant::now();
    while stats.written.load(Ordering::SeqCst) < 1000 {
        assert!(
            started.elapsed() < WAIT,
            "held records are not written after recovery: {}",
            stats.written.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM interceptions WHERE provider = 'f22'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        (1000..=sent as u64 - dropped).contains(&(rows as u64)),
        "{rows} rows written"
    );
    assert_eq!(stats.dropped.load(Ordering::SeqCst), dropped);
    let _ = conn.close().await;
}

// ---------------------------------------------------------------------------------------------
// F23: EMFILE on accept, on the real binary under a low descriptor limit.

const FD_LIMIT: usize = 128;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

async fn healthz(admin: SocketAddr) -> u16 {
    let attempt = async {
        let mut s = TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        Some(raw::status(&raw::read_head(&mut s).await))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f23_emfile_on_accept_backs_off_without_spinning_and_recovers() {
    if !std::path::Path::new("/proc/self/stat").exists() {
        eprintln!("SKIPPED f23: needs /proc");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("emfile.db").display());
    let store = Store::connect(&db).await.unwrap();
    let (_, token) = store.create_token("emfile").await.unwrap();
    store.close().await;
    let echo = echo_server().await;
    let (port, admin_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let path = |f: &str| dir.path().join(f).display().to_string();
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_aibridge-proxy"))
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--admin-listen", &admin.to_string(), "--database-url", &db])
        .args([
            "--ca-cert",
            &path("ca.pem"),
            "--ca-key",
            &path("ca-key.pem"),
        ])
        .args(["--admin-token-file", &path("admin-token")])
        .args(["--allow-private-cidrs", "127.0.0.0/8"])
        .args(["--connect-ports", &format!("443,{echo}")])
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    for var in ["DATABASE_URL", "AIBRIDGE_DATABASE_URL", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    let mut child = Child(cmd.spawn().unwrap());
    let pid = child.0.id();
    let token = token.expose().clone();
    let target = format!("127.0.0.1:{echo}");
    let started = Instant::now();
    while healthz(admin).await != 200 {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "serve exited at start: {}",
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        );
        assert!(started.elapsed() < WAIT, "serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        tunnel_echo(addr, &target, &token, b"before").await,
        (200, true)
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let max_open = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    assert!(
        max_open.split_whitespace().nth(3) == Some(&FD_LIMIT.to_string()),
        "the limit applies: {max_open}"
    );
    let baseline = open_fds(pid);
    assert!(baseline < FD_LIMIT, "{baseline} descriptors at rest");

    // Idle client connections until the process runs out of descriptors; the rest wait in the
    // listen backlog, so accept keeps failing with EMFILE.
    let mut held = Vec::new();
    for _ in 0..(FD_LIMIT - baseline + 32) {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    while open_fds(pid) < FD_LIMIT {
        assert!(
            started.elapsed() < WAIT,
            "the proxy never ran out of descriptors: {} of {FD_LIMIT}",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ticks = clock_ticks_per_second() as f64;
    let (cpu0, t0) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu1, window) = (cpu_ticks(pid), t0.elapsed());
    let cpu = (cpu1 - cpu0) as f64 / ticks;
    assert!(open_fds(pid) >= FD_LIMIT, "still out of descriptors");
    println!("FIGURE F23: {cpu:.2} CPU-seconds over {window:?} of EMFILE");
    assert!(
        cpu < 0.3,
        "the accept loop spins on EMFILE: {cpu:.2} CPU-s in {window:?}"
    );
    assert!(child.0.try_wait().unwrap().is_none(), "serve survived");

    // Descriptors come back: the proxy serves again.
    drop(held);
    let started = Instant::now();
    loop {
        if tunnel_echo(addr, &target, &token, b"after").await == (200, true) {
            break;
        }
        assert!(started.elapsed() < WAIT, "the proxy did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "FIGURE F23: serving again {:?} after the descriptors came back",
        started.elapsed()
    );
    assert_eq!(healthz(admin).await, 200);
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        log.contains("accept failed"),
        "the accept errors were logged: {}",
        log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    drop(child);
}

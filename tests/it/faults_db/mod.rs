//! Database, pubsub and process faults (RELIABILITY §10): F11 database down at start, F13 a
//! hung reload query, F15 a PostgreSQL restart, F16 odd NOTIFY payloads, F23 `EMFILE` on
//! accept; plus the evidence the tests named in the other modules leave out: F12 failed reloads
//! counted and backed off, F17 generations strictly increasing with traffic unharmed, F18 an
//! in-flight stream finishing on its snapshot, F22 a full record queue counted as dropped.
//!
//! PostgreSQL sits behind the fault relay (`support/relay.rs`) where an outage is staged; changes
//! "made during the outage" go to the real server directly, as another replica would.
//!
//! `outage`: the database unreachable (F11 at start, F12 during reloads, F15 a restart);
//! `reload`: reloads under stress (F13 hung, F16 odd payloads, F17 storms, F18 races, F19 bad
//! rows); `capacity`: bounded queues and descriptors (F22, F23).

mod capacity;
mod outage;
mod reload;

use crate::support::db::TestDb;
use crate::support::relay::Relay;
use crate::support::*;
use aibridge_proxy::config::AppConfig;
use sqlx::Connection;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// OpenAI to the mock upstream, seeded through `seed_url` (the real database) and then run on
/// `serve_url` (the relay), refusing hosts no provider claims, with `tweak` having the last word.
async fn pg_proxy(
    seed_url: &str,
    serve_url: &str,
    tweak: impl FnOnce(&mut AppConfig) + Send + 'static,
) -> Env {
    Env::with(|o| {
        o.openai()
            .database(seed_url)
            .serve_database(serve_url)
            .deny_non_providers()
            .tweak(tweak)
    })
    .await
}

/// [`pg_proxy`] on `db` through a fault relay (seeded directly), and the relay.
async fn behind_relay(db: &TestDb) -> (Relay, Env) {
    let (relay, relayed) = relay_for(db).await;
    (relay, pg_proxy(&db.url, &relayed, |_| {}).await)
}

/// [`pg_proxy`] on `db` directly, once ready.
async fn ready_on(db: &TestDb) -> Env {
    let proxy = pg_proxy(&db.url, &db.url, |_| {}).await;
    wait_ready(&proxy, 200).await;
    proxy
}

/// The steady state a fault starts from: the proxy ready and a client whose first chat went
/// through (returned, to keep its connection).
async fn serving(proxy: &TestProxy) -> reqwest::Client {
    let client = proxy.client(Http::Two);
    assert_eq!(chat(&client).await, Ok(200));
    wait_ready(proxy, 200).await;
    client
}

/// `reloads_total{result}` now.
async fn reloads(proxy: &TestProxy, result: &str) -> f64 {
    proxy
        .metric("aibridge_proxy_reloads_total", &[("result", result)])
        .await
}

/// Poll `/readyz` until it answers `status` (bounded); returns how long that took.
async fn wait_ready(proxy: &TestProxy, status: u16) -> Duration {
    let started = Instant::now();
    loop {
        let (now, body) = proxy.readyz().await;
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

/// CONNECT to `target` and bounce `payload` off the echo server behind it: the CONNECT status,
/// and whether the payload came back.
async fn tunnel_echo(proxy: SocketAddr, target: &str, token: &str, payload: &[u8]) -> (u16, bool) {
    let attempt = async {
        let mut stream = TcpStream::connect(proxy).await.ok()?;
        stream
            .write_all(raw::connect_head(target, token).as_bytes())
            .await
            .ok()?;
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

//! Control plane at scale (issue 18): what one token change costs with 1 000 and with 100 000
//! tokens stored, on SQLite and PostgreSQL, the 1 000 case being the baseline the 100 000 case
//! is compared with in the same run.
//!
//! For each backend and size: bulk creation (the store's batch and `POST /tokens:batch`), cold
//! start of a proxy on that database (plus 1 000 providers at the largest size), snapshot bytes
//! per token, then `--ops` token creates and as many revocations through proxy A's admin API on
//! one keep-alive connection (latency until A answers, which means A serves it) while replica B
//! on the same database is watched until it applies each change, and the replica's own work per
//! change (reading the change log and building the next snapshot) measured alone.
//!
//! ```sh
//! cargo bench --bench control                                  # both backends, 1 000 and 100 000
//! cargo bench --bench control -- --backends sqlite --sizes 1000,10000 --ops 100
//! ```
//! PostgreSQL comes from `AIBRIDGE_TEST_POSTGRES_URL` (as for the tests); without a server that
//! backend is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support/mod.rs"]
mod support;

use aibridge_proxy::net::egress::{Dialer, EgressPolicy};
use aibridge_proxy::net::upstream::UpstreamFactory;
use aibridge_proxy::router::Snapshot;
use aibridge_proxy::store::{Changes, NewToken};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::db::{new_provider, writer, TestDb};
use support::*;

struct Args {
    backends: Vec<String>,
    sizes: Vec<usize>,
    ops: usize,
    providers: usize,
}

fn args() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list = |name: &str, default: &str| -> Vec<String> {
        value(name)
            .unwrap_or_else(|| default.to_string())
            .split(',')
            .map(str::to_string)
            .collect()
    };
    Args {
        backends: list("--backends", "sqlite,postgres"),
        sizes: list("--sizes", "1000,100000")
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        ops: value("--ops").map_or(200, |s| s.parse().unwrap()),
        providers: value("--providers").map_or(1000, |s| s.parse().unwrap()),
    }
}

fn main() {
    let args = args();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(args));
}

/// min / p50 / p99 / max of a sample.
struct Stats {
    min: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    Stats {
        min: v[0],
        p50: at(0.5),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} / {} / {} / {} ms",
            ms(self.min),
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// This process's CPU time (user + system) from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based) → 11 and 12 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

async fn run(args: Args) {
    println!(
        "control plane bench: sizes {:?}, {} ops per cell, {} providers at the largest size",
        args.sizes, args.ops, args.providers
    );
    for backend in &args.backends {
        let mut rows: Vec<(usize, Vec<(String, String)>)> = Vec::new();
        for (i, &size) in args.sizes.iter().enumerate() {
            let db = match backend.as_str() {
                "sqlite" => TestDb::sqlite(),
                _ => match TestDb::postgres("bench_control").await {
                    Some(db) => db,
                    None => break,
                },
            };
            let providers = if i + 1 == args.sizes.len() {
                args.providers
            } else {
                0
            };
            let cells = cell(&db, size, providers, args.ops).await;
            rows.push((size, cells));
        }
        println!("\n== {backend} ==");
        for (size, cells) in &rows {
            println!("-- {size} tokens --");
            for (name, value) in cells {
                println!("  {name:<44} {value}");
            }
        }
    }
}

/// A keep-alive client on `proxy`'s admin API.
struct Admin {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    fn new(proxy: &TestProxy) -> Admin {
        Admin {
            client: plain_client(),
            base: format!("http://{}/api/v1", proxy.app.admin_addr.unwrap()),
            token: proxy.admin_token.clone(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        let text = resp.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// Wait until `proxy` holds (or no longer holds) token `id`; no polling delay: it wakes on
/// every snapshot installed.
async fn replica_has(proxy: &TestProxy, id: uuid::Uuid, present: bool) {
    let mut installs = proxy.app.router.installs();
    tokio::time::timeout(WAIT, async {
        while proxy.app.router.load().token_active(id) != present {
            installs.changed().await.unwrap();
        }
    })
    .await
    .expect("replica applied the change");
}

/// Wait until `proxy` serves change `counter` or a later one.
async fn replica_at(proxy: &TestProxy, counter: i64) {
    let mut installs = proxy.app.router.installs();
    tokio::time::timeout(WAIT, async {
        while proxy.app.router.load().counter < counter {
            installs.changed().await.unwrap();
        }
    })
    .await
    .expect("replica caught up");
}

async fn cell(db: &TestDb, size: usize, providers: usize, ops: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let store = writer(&db.url).await;
    for p in 0..providers {
        let host = format!("p{p}.example.com");
        store
            .create_provider(new_provider(
                &format!("p{p}"),
                &format!("https://{host}"),
                &host,
            ))
            .await
            .unwrap();
    }
    // Bulk creation through the store, in batches of 10 000.
    let started = Instant::now();
    let mut left = size;
    while left > 0 {
        let n = left.min(10_000);
        let batch: Vec<NewToken> = (0..n)
            .map(|i| NewToken {
                user: format!("seed{left}-{i}"),
                expires_at: None,
            })
            .collect();
        store.create_tokens(&batch).await.unwrap();
        left -= n;
    }
    let seeded = started.elapsed();
    out.push((
        "bulk create, store batches of 10 000".into(),
        format!(
            "{:.0} tokens/s ({size} in {})",
            size as f64 / seeded.as_secs_f64(),
            ms(seeded) + " ms"
        ),
    ));

    // Cold start: a proxy on this database (CA generated, mock upstream, initial full load).
    let started = Instant::now();
    let a = Env::with(|o| o.database(&db.url)).await;
    let cold = started.elapsed();
    out.push((
        format!("cold start with {size} tokens, {providers} providers"),
        format!("{} ms to ready", ms(cold)),
    ));
    let snapshot = a.app.router.snapshot();
    out.push((
        "snapshot token table".into(),
        format!(
            "{} tokens, {:.0} bytes/token",
            snapshot.tokens().len(),
            snapshot.tokens().heap_bytes() as f64 / snapshot.tokens().len().max(1) as f64
        ),
    ));
    // The full reload alone (what a gap costs a replica).
    let upstreams = UpstreamFactory::new(
        support::tls::provider(),
        None,
        Dialer::new(EgressPolicy::default(), Duration::from_secs(1)),
    )
    .unwrap();
    let started = Instant::now();
    let data = store.load_routing().await.unwrap();
    let read = started.elapsed();
    let built = Snapshot::build(data, 1, &snapshot, &upstreams);
    let full = started.elapsed();
    drop(built);
    out.push((
        "full reload (read + build)".into(),
        format!("{} ms ({} ms read)", ms(full), ms(read)),
    ));

    // A second replica is watched on PostgreSQL only: SQLite is one proxy per file, and another
    // process's writes reach it by the 500 ms counter poll.
    let b = match db.backend {
        "postgres" => Some(a.another(|o| o.database(&db.url)).await),
        _ => None,
    };
    let admin = Admin::new(&a);
    // Bulk creation through the API: one request of 10 000.
    let batch: Vec<Value> = (0..10_000)
        .map(|i| json!({ "user": format!("api{i}") }))
        .collect();
    let started = Instant::now();
    let created = admin
        .call(
            reqwest::Method::POST,
            "/tokens:batch",
            Some(json!({ "tokens": batch })),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(created["items"].as_array().unwrap().len(), 10_000);
    out.push((
        "bulk create, POST /tokens:batch of 10 000".into(),
        format!(
            "{:.0} tokens/s ({} ms)",
            10_000.0 / took.as_secs_f64(),
            ms(took)
        ),
    ));

    // Creates and revocations through A, each watched until B has applied it, from a steady
    // state: B has applied the batch (a full reload at this size) before the first is timed.
    if let Some(b) = &b {
        replica_at(b, a.app.router.load().counter).await;
    }
    let cpu_before = cpu_time();
    let (mut create, mut create_b, mut revoke, mut revoke_b) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ids = Vec::with_capacity(ops);
    for i in 0..ops {
        let started = Instant::now();
        let body = admin
            .call(
                reqwest::Method::POST,
                "/tokens",
                Some(json!({ "user": format!("op{i}") })),
            )
            .await;
        create.push(started.elapsed());
        let id: uuid::Uuid = body["id"].as_str().unwrap().parse().unwrap();
        if let Some(b) = &b {
            replica_has(b, id, true).await;
            create_b.push(started.elapsed());
        }
        ids.push(id);
    }
    for id in &ids {
        let started = Instant::now();
        admin
            .call(reqwest::Method::DELETE, &format!("/tokens/{id}"), None)
            .await;
        revoke.push(started.elapsed());
        if let Some(b) = &b {
            replica_has(b, *id, false).await;
            revoke_b.push(started.elapsed());
        }
    }
    let cpu = cpu_time() - cpu_before;
    out.push((
        "create via A, A answered (min/p50/p99/max)".into(),
        stats(create).to_string(),
    ));
    if !create_b.is_empty() {
        out.push((
            "create via A, applied by B".into(),
            stats(create_b).to_string(),
        ));
    }
    out.push(("revoke via A, A answered".into(), stats(revoke).to_string()));
    if !revoke_b.is_empty() {
        out.push((
            "revoke via A, applied by B".into(),
            stats(revoke_b).to_string(),
        ));
    }
    out.push((
        "process CPU per change (A, B if any, client)".into(),
        format!("{} µs", us(cpu / (2 * ops as u32))),
    ));

    // A replica's own work per change, alone: read the change log after its counter, build
    // the next snapshot.
    let mut snapshot = a.app.router.snapshot();
    let mut work = Vec::with_capacity(ops);
    for i in 0..ops {
        let before = store.change_counter().await.unwrap();
        store.create_token(&format!("w{i}")).await.unwrap();
        let started = Instant::now();
        let Changes::Tokens { counter, tokens } = store.changes_since(before).await.unwrap() else {
            panic!("a token write is a delta");
        };
        let next = snapshot.with_token_changes(tokens, counter, snapshot.generation + 1);
        work.push(started.elapsed());
        snapshot = std::sync::Arc::new(next);
    }
    let apply = stats(work);
    out.push((
        "replica work per change (log read + snapshot)".into(),
        format!(
            "{} / {} / {} / {} µs",
            us(apply.min),
            us(apply.p50),
            us(apply.p99),
            us(apply.max)
        ),
    ));
    // The in-memory part alone.
    let mut snap_only = Vec::with_capacity(ops);
    for i in 0..ops {
        let entry = aibridge_proxy::store::TokenChange {
            id: uuid::Uuid::new_v4(),
            row: Some(aibridge_proxy::store::AgentToken {
                id: uuid::Uuid::new_v4(),
                user: format!("m{i}"),
                token_hash: aibridge_proxy::secret::token::digest(&format!("m{i}")).to_vec(),
                created_at: time::OffsetDateTime::now_utc(),
                last_used_at: None,
                revoked_at: None,
                expires_at: None,
            }),
        };
        let started = Instant::now();
        let next = snapshot.with_token_changes(vec![entry], snapshot.counter, 0);
        snap_only.push(started.elapsed());
        drop(next);
    }
    let snap = stats(snap_only);
    out.push((
        "snapshot delta alone (in memory)".into(),
        format!(
            "{} / {} / {} / {} µs",
            us(snap.min),
            us(snap.p50),
            us(snap.p99),
            us(snap.max)
        ),
    ));
    store.close().await;
    drop(b);
    a.stop().await;
    out
}

//! End-to-end load harness: the same client and the same TLS upstream, direct vs through the
//! proxy's MITM path, in one run. Everything runs in this process on loopback (client tasks,
//! proxy and upstream share the machine's cores — say so when quoting numbers).
//!
//! `cargo bench --bench load -- [--seconds S] [--rounds N] [--json PATH]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;

struct Options {
    seconds: f64,
    rounds: usize,
    json: Option<String>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    Options {
        seconds: value("--seconds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
        rounds: value("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3),
        json: value("--json"),
    }
}

/// One measured round: requests per second and latency percentiles in microseconds.
#[derive(Clone, Copy)]
struct Round {
    rps: f64,
    p50: f64,
    p99: f64,
}

async fn round(clients: &[reqwest::Client], url: &str, duration: Duration) -> Round {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| {
            let url = url.to_string();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let resp = client
                        .post(&url)
                        .body("{\"model\":\"gpt-4o-mini\"}")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.bytes().await.unwrap();
                    latencies.push(t.elapsed().as_micros() as u64);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64;
    Round {
        rps: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let opts = options();
    if std::env::var_os("RUST_LOG").is_some() {
        aibridge_proxy::telemetry::init(aibridge_proxy::telemetry::LogFormat::Text, "warn");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ca = TestCa::new();
        let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
        let proxy = TestProxy::start(TestProxyOptions {
            providers: vec![ProviderSpec::openai(upstream.base_url())],
            upstream_ca_pem: Some(ca.cert_pem.clone()),
            ..Default::default()
        })
        .await;
        let direct_url = format!("{}/v1/chat/completions", upstream.base_url());
        let proxy_url = "https://api.openai.com/v1/chat/completions".to_string();
        let duration = Duration::from_secs_f64(opts.seconds);
        println!(
            "load: {} cores, {} rounds of {:.1}s per cell; client, proxy and upstream share this process (tokio multi-thread)",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            opts.rounds,
            opts.seconds
        );
        println!("{:<22} {:>8} {:>28} {:>28} {:>28}", "scenario", "path", "req/s min/med/max", "p50 µs min/med/max", "p99 µs min/med/max");
        let mut json = Vec::new();
        for connections in [1usize, 16] {
            let scenario = format!("keepalive_{connections}conn");
            let direct: Vec<_> = (0..connections)
                .map(|_| {
                    let tls = support::tls::client_config(&[&ca.cert_pem], &[b"http/1.1"]);
                    reqwest::Client::builder().use_preconfigured_tls(tls).http1_only().build().unwrap()
                })
                .collect();
            let proxied: Vec<_> =
                (0..connections).map(|_| agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::One)).collect();
            // Warm both paths (connections, leaf, pool).
            round(&direct, &direct_url, Duration::from_millis(200)).await;
            round(&proxied, &proxy_url, Duration::from_millis(200)).await;
            let mut medians = Vec::new();
            for (path, clients, url) in [("direct", &direct, &direct_url), ("proxy", &proxied, &proxy_url)] {
                let mut rounds = Vec::new();
                for _ in 0..opts.rounds {
                    rounds.push(round(clients, url, duration).await);
                }
                let rps = stats(&rounds.iter().map(|r| r.rps).collect::<Vec<_>>());
                let p50 = stats(&rounds.iter().map(|r| r.p50).collect::<Vec<_>>());
                let p99 = stats(&rounds.iter().map(|r| r.p99).collect::<Vec<_>>());
                println!(
                    "{scenario:<22} {path:>8} {:>28} {:>28} {:>28}",
                    format!("{:.0}/{:.0}/{:.0}", rps.0, rps.1, rps.2),
                    format!("{:.0}/{:.0}/{:.0}", p50.0, p50.1, p50.2),
                    format!("{:.0}/{:.0}/{:.0}", p99.0, p99.1, p99.2),
                );
                medians.push((rps.1, p50.1));
                json.push(format!(
                    "{{\"scenario\":\"{scenario}\",\"path\":\"{path}\",\"rps\":[{:.1},{:.1},{:.1}],\"p50_us\":[{},{},{}],\"p99_us\":[{},{},{}]}}",
                    rps.0, rps.1, rps.2, p50.0, p50.1, p50.2, p99.0, p99.1, p99.2
                ));
            }
            let (direct_m, proxy_m) = (medians[0], medians[1]);
            println!(
                "{scenario:<22} {:>8} throughput {:.2}x direct, added p50 {:.0} µs",
                "ratio",
                proxy_m.0 / direct_m.0,
                proxy_m.1 - direct_m.1
            );
        }
        if let Some(path) = opts.json {
            std::fs::write(&path, format!("[{}]\n", json.join(",\n"))).unwrap();
            println!("wrote {path}");
        }
    });
}

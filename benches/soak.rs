//! Soak (figure F-21): mixed traffic for `--seconds` (default 120) — intercepted JSON and SSE
//! calls over HTTP/1.1 and HTTP/2, tunnels, refused bad inputs, and a provider rewritten ten
//! times a second — against the proxy in-process, with no unexpected error, and the process's
//! RSS and live task count at the end within 5 % of the halfway mark. (RELIABILITY's F-21 marks
//! at 10 s; here SQLite's page caches — 2 MiB per pooled connection, bounded — take about a
//! minute to fill as the interception table grows, so the mark is taken once they are warm:
//! a leak still shows as growth over the second half.) A long figure: run by
//! `scripts/long-figures.sh` (`cargo bench --bench soak -- --seconds 120`), built by CI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    unexpected: AtomicU64,
}

impl Counts {
    fn check(&self, good: bool, what: &str) {
        if good {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: unexpected result from {what}");
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(soak(seconds));
}

async fn soak(seconds: u64) {
    let echo = echo_server().await;
    let proxy = Arc::new(Env::with(|o| o.openai().tunnels_to(echo)).await);
    let model = serde_json::json!({"provider": "openai", "model": "gpt-4o-mini"});
    let (status, body) = proxy.admin_post("/api/v1/models", model).await;
    assert_eq!(status, 201, "{body}");
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, http) in [Http::One, Http::Two, Http::One, Http::Two]
        .into_iter()
        .enumerate()
    {
        let (proxy, counts, stop) = (proxy.clone(), counts.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = proxy.client(http);
            while !stop.load(Ordering::Relaxed) {
                let path = if i % 2 == 0 {
                    "/v1/chat/completions"
                } else {
                    "/v1/stream"
                };
                let good = match client
                    .post(format!("https://api.openai.com{path}"))
                    .body(r#"{"model":"gpt-4o-mini"}"#)
                    .send()
                    .await
                {
                    // 502 is the documented answer when a request races the provider's rewrite
                    // on an open connection (SPEC §2 step 4): the provider changed since CONNECT.
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.bytes().await.is_ok();
                        (status == 200 && body) || status == 502
                    }
                    Err(_) => false,
                };
                counts.check(good, path);
            }
        }));
    }
    {
        let (proxy, counts, stop) = (proxy.clone(), counts.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut s =
                    raw::connect(proxy.addr, &format!("127.0.0.1:{echo}"), &proxy.token).await;
                let mut buf = [0u8; 5];
                let good = s.write_all(b"hello").await.is_ok()
                    && s.read_exact(&mut buf).await.is_ok()
                    && &buf == b"hello";
                counts.check(good, "tunnel");
                // A refused bad input on a fresh connection: documented 400, then closed.
                let (head, _) =
                    raw::send_head(proxy.addr, b"CONNECT api..openai.com:443 HTTP/1.1\r\n\r\n")
                        .await;
                counts.check(raw::status(&head) == 400, "bad input");
            }
        }));
    }
    {
        let (proxy, counts, stop) = (proxy.clone(), counts.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut enforce = false;
            while !stop.load(Ordering::Relaxed) {
                enforce = !enforce;
                // The model used is configured, so requests pass with or without enforcement.
                let change = serde_json::json!({ "enforce_models": enforce });
                let (status, _) = proxy.admin_patch("/api/v1/providers/openai", change).await;
                counts.check(status == 200, "provider rewrite");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let started = Instant::now();
    let mut mark = None;
    let mut trace = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.upstream.clear_seen();
        let at = started.elapsed().as_secs();
        if at % 10 == 0 && trace.last().is_none_or(|(t, _)| *t != at) {
            trace.push((at, rss_kib()));
        }
        if mark.is_none() && started.elapsed() >= Duration::from_secs(seconds / 2) {
            mark = Some((rss_kib(), proxy.app.shutdown.task_count()));
        }
    }
    let end = (rss_kib(), proxy.app.shutdown.task_count());
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (rss_mark, tasks_mark) = mark.unwrap();
    let ok = counts.ok.load(Ordering::Relaxed);
    let unexpected = counts.unexpected.load(Ordering::Relaxed);
    println!(
        "FIGURE F-21 soak {seconds}s: {ok} operations, {unexpected} unexpected; RSS {rss_mark} KiB at the halfway mark -> {} KiB at the end ({:+.1} %); live tasks {tasks_mark} -> {}",
        end.0,
        (end.0 as f64 - rss_mark as f64) * 100.0 / rss_mark as f64,
        end.1
    );
    println!("soak RSS (s, KiB): {trace:?}");
    assert_eq!(unexpected, 0);
    assert!(ok > seconds * 100, "traffic actually ran");
    assert!(
        (end.0 as f64) <= rss_mark as f64 * 1.05,
        "RSS grew more than 5 %: {rss_mark} -> {} KiB",
        end.0
    );
    assert!(
        end.1 <= tasks_mark + 8,
        "live tasks grew: {tasks_mark} -> {}",
        end.1
    );
}

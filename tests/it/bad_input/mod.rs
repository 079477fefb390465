//! RELIABILITY §9 bad inputs as one table (figure F-1). Every row is one distinct input with its
//! documented answer: a status (or "closed without an answer", "handshake failure", "stream
//! reset"), whether the connection closes after it, what reached a destination (nothing, or
//! exactly one request of the expected shape) and, for refusals the proxy makes itself, the
//! `connect_rejections_total{reason}` it counts. After every row a full request through the same
//! proxy (CONNECT, TLS, `GET /echo`) proves the process still serves; the proxies run on a
//! runtime whose panics are counted.
//!
//! Two proxies share one mock provider upstream (TLS, h2) and one plain-HTTP destination:
//! `deny` (`--non-provider-hosts deny`: a valid non-provider target is refused at once, without
//! DNS) and `tunnel` (tunnels and plain forwards to 127.0.0.0/8 allowed, for the egress and plain
//! forwarding rows). Both run with `--max-request-body 1 MiB`.
//!
//! `cargo test --test it bad_input -- --nocapture` prints every row and the F-1 figure.
//!
//! Here: the two proxies ([`Stage`]) and the suite; `row`: what a row says; `rows`: the table;
//! `custom`: rows that make their own checks; `run`: sending a row and checking its answer.

mod custom;
mod row;
mod rows;
mod run;

use run::{probe, run_row};

use crate::support::plain::PlainServer;
use crate::support::*;
use futures_util::future::BoxFuture;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// `--max-request-body` of both proxies.
const BODY_LIMIT: usize = 1024 * 1024;
/// The panic-counting runtime's name.
const RUNTIME: &str = "bad-input";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Px {
    Deny,
    Tunnel,
}

/// The two proxies, the mock provider upstream behind both, and the plain destination.
struct Stage {
    /// `--non-provider-hosts deny`, with the mock upstream.
    deny: Env,
    /// Tunnels and plain forwards to 127.0.0.0/8 allowed.
    tunnel: TestProxy,
    plain: PlainServer,
}

impl Stage {
    async fn start() -> Stage {
        let plain = PlainServer::start().await;
        let deny = Env::with(|o| {
            o.openai_also_on_80()
                .anthropic()
                // enforce_models with one model, set below.
                .named("strict", "strict.example.com")
                // Intercepted by IP literal: no SNI, IP SAN.
                .named("byip", "10.1.2.3")
                // Touched only by D11: its first leaf is minted there.
                .named("fresh", "d11.example.com")
                .deny_non_providers()
                .max_request_body(BODY_LIMIT)
        })
        .await;
        let tunnel = deny
            .another(|o| {
                o.openai_also_on_80()
                    .tunnels_to(plain.port())
                    .tunnels_to_upstream()
                    .max_request_body(BODY_LIMIT)
            })
            .await;
        let (status, body) = deny
            .admin_patch("/api/v1/providers/strict", json!({"enforce_models": true}))
            .await;
        assert_eq!(status, 200, "{body}");
        let allowed = json!({"provider": "strict", "model": "gpt-allowed"});
        let (status, body) = deny.admin_post("/api/v1/models", allowed).await;
        assert_eq!(status, 201, "{body}");
        Stage {
            deny,
            tunnel,
            plain,
        }
    }

    fn upstream(&self) -> &MockUpstream {
        &self.deny.upstream
    }

    fn proxy(&self, px: Px) -> &TestProxy {
        match px {
            Px::Deny => &self.deny.proxy,
            Px::Tunnel => &self.tunnel,
        }
    }

    fn auth(&self, px: Px) -> String {
        raw::basic(&self.proxy(px).token)
    }

    fn rejections(&self, px: Px, reason: &str) -> u64 {
        self.proxy(px).rejections(reason)
    }

    fn connections(&self, px: Px, kind: &str) -> u64 {
        self.proxy(px)
            .app
            .metrics
            .connections_total
            .with_label_values(&[kind])
            .get()
    }
}

#[test]
fn bad_input_table() {
    let rt = panics::runtime(RUNTIME);
    let env = rt.block_on(Stage::start());
    let rows = rows::rows(&env);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut documented = 0usize;
    let mut per_group = std::collections::BTreeMap::<char, usize>::new();
    for row in &rows {
        *per_group
            .entry(row.id.chars().next().unwrap_or('?'))
            .or_default() += 1;
        let t = Instant::now();
        let result = rt.block_on(run_row(&env, row));
        let took = t.elapsed();
        let probe = rt.block_on(probe(&env, row.px));
        let mark = match (&result, &probe) {
            (Ok(()), Ok(())) => {
                documented += 1;
                "ok"
            }
            _ => "FAIL",
        };
        println!(
            "{mark:4} {:4} {:70} → {} ({} ms)",
            row.id,
            truncate(&row.input, 70),
            row.expected(),
            took.as_millis()
        );
        if let Err(e) = result {
            failures.push(format!("{} {}: {e}", row.id, row.input));
        }
        if let Err(e) = probe {
            failures.push(format!(
                "{} {}: health probe failed: {e}",
                row.id, row.input
            ));
        }
    }
    let panicked = panics::seen(RUNTIME);
    println!(
        "FIGURE F-1 bad-input cases: {}, documented answers: {documented}, panics: {} (per group {per_group:?}; a health probe after every case; {:.1} s)",
        rows.len(),
        panicked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(panicked.is_empty(), "proxy tasks panicked: {panicked:#?}");
    assert!(rows.len() >= 60, "only {} rows", rows.len());
    let Stage { deny, tunnel, .. } = env;
    rt.block_on(async {
        deny.stop().await;
        tunnel.app.stop(Duration::from_secs(5)).await;
    });
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

//! Upstream-side faults (RELIABILITY §10, F1–F10 and F20): refused connections, bad TLS, resets
//! mid-stream, malformed framing, pooled connections closed by the peer, GOAWAY, DNS failure,
//! clients leaving mid-upload and a full leaf cache. Each test checks what the client sees, the
//! interception record and the metrics.
//!
//! `reach`: reaching the upstream (F1 refused, F2 bad TLS, F8 DNS); `cut`: answers cut mid-body
//! (F3); `framing`: malformed answers and connections the upstream ends (F5–F7); `client`: the
//! client's side (F10 leaving mid-upload, F20 a full leaf cache).

mod client;
mod cut;
mod framing;
mod reach;

use crate::support::*;
use std::net::IpAddr;

const GENERIC_UNREACHABLE: &str = "the provider's upstream could not be reached\n";
const GENERIC_FAILED: &str = "the request could not be forwarded to the provider\n";
const UPSTREAM_ERRORS: &str = "aibridge_proxy_upstream_errors_total";
const LOCALHOST: &str = "127.0.0.1";
/// A chat request body naming its model.
const MINI: &str = r#"{"model":"gpt-4o-mini"}"#;

fn loopback() -> IpAddr {
    LOCALHOST.parse().unwrap()
}

/// Read a body to its end: the bytes that arrived and, if it did not end cleanly, the error.
async fn drain(resp: &mut reqwest::Response) -> (Vec<u8>, Option<reqwest::Error>) {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("the body ends or fails in time")
        {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// The reasons that blame the upstream (or the way to it), as opposed to the client or policy.
const UPSTREAM_FAULTS: &[&str] = &[
    "connect_refused",
    "dns",
    "tls",
    "connect_timeout",
    "connect_error",
    "upstream_timeout",
    "upstream_error",
    "upstream_reset",
    "upstream_idle_timeout",
];

/// Every non-zero `upstream_errors_total` series whose reason blames the upstream.
fn upstream_fault_series(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(UPSTREAM_ERRORS) && !l.ends_with(" 0"))
        .filter(|l| {
            UPSTREAM_FAULTS
                .iter()
                .any(|r| l.contains(&format!("reason=\"{r}\"")))
        })
        .map(str::to_string)
        .collect()
}

/// One chunk of a chunked body.
fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// Wait until `upstream_errors_total{provider, reason}` reaches `want`.
async fn wait_upstream_errors(proxy: &TestProxy, provider: &str, reason: &str, want: f64) {
    let labels = [("provider", provider), ("reason", reason)];
    proxy.wait_metric(UPSTREAM_ERRORS, &labels, want).await;
}

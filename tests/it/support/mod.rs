//! The shared test harness: a test CA, a mock provider upstream on loopback TLS, the proxy
//! started in-process on 127.0.0.1:0, and clients configured with the proxy as an agent would.
//! Nothing leaves the machine: clients use real provider names (`api.openai.com`), the proxy
//! intercepts them and sends the requests to the local upstream.
//!
//! Tests start what they need with one call, [`Env`]; everything they share lives here, and no
//! test module imports another.

#![allow(dead_code, unused_imports)]

pub mod bin;
pub mod browser;
pub mod client;
pub mod db;
pub mod env;
pub mod fuzz;
pub mod h2raw;
pub mod net;
pub mod observe;
pub mod panics;
pub mod plain;
pub mod proxy;
pub mod raw;
pub mod relay;
pub mod scripted;
pub mod tls;
pub mod upstream;
pub mod ws;

pub use client::{
    agent_client, paced_chat, plain_client, Call, Chat, Http, CHAT, MESSAGES, MODELS, RESPONSES,
};
pub(crate) use db::both_backends;
pub use env::{Env, Setup};
pub use net::{echo_server, free_port};
pub use observe::{metric, request_id};
pub use proxy::{loopback_upstreams, ProviderSpec, TestProxy};
pub use tls::TestCa;
pub use upstream::MockUpstream;

use std::time::Duration;

/// Upper bound for any single wait in a test: loops stop by themselves.
pub const WAIT: Duration = Duration::from_secs(10);

/// Poll `check` every 10 ms until it holds or [`WAIT`] passes.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

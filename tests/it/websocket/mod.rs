//! WebSocket through intercepted hosts (issue 13): Codex's Responses WebSocket mode and the
//! Realtime API relayed with the provider key, read as they pass, one record per response.

mod handshake;
mod lifecycle;
mod responses;

use crate::support::ws::{self, Handshake, WsUpstream};
use crate::support::*;

/// An upstream for sockets (`handshake`), and a proxy intercepting api.openai.com to it.
async fn ws_env(handshake: Handshake) -> (WsUpstream, Env) {
    ws_env_with(handshake, |o| o).await
}

async fn ws_env_with(
    handshake: Handshake,
    change: impl FnOnce(Setup) -> Setup,
) -> (WsUpstream, Env) {
    let setup = Env::setup();
    let upstream = WsUpstream::start(setup.ca(), handshake).await;
    let env = change(setup.openai_at(upstream.base_url())).start().await;
    (upstream, env)
}

/// An agent's socket to `path` through `env`'s proxy, with Codex's headers.
async fn open(env: &Env, path: &str) -> (ws::ClientSocket, http::HeaderMap) {
    ws::connect(
        env.addr,
        &env.token,
        &env.ca_pem,
        path,
        &[
            ("authorization", "Bearer sk-agent-own-key"),
            ("openai-beta", "responses_websockets=2026-02-06"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
    )
    .await
    .expect("the upgrade through the proxy")
}

/// A Codex-shaped `response.create`.
fn create(text: &str) -> ws::Message {
    ws::Message::text(
        serde_json::json!({
            "type": "response.create",
            "model": "gpt-5",
            "stream": true,
            "store": false,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}],
        })
        .to_string(),
    )
}

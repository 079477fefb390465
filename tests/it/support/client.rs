//! Real HTTP clients: an agent's (`HTTPS_PROXY` with the token in the userinfo, trusting the
//! proxy's CA — and, for tunnel tests, the upstream's) and a plain one for the admin listener.

use super::tls::client_config;
use std::future::Future;
use std::net::SocketAddr;

/// The chat completions URL an OpenAI SDK calls.
pub const CHAT: &str = "https://api.openai.com/v1/chat/completions";
/// The model list an OpenAI SDK fetches (the mock upstream answers 404).
pub const MODELS: &str = "https://api.openai.com/v1/models";
/// The Responses URL Codex and the OpenAI SDKs call.
pub const RESPONSES: &str = "https://api.openai.com/v1/responses";
/// The messages URL an Anthropic SDK calls.
pub const MESSAGES: &str = "https://api.anthropic.com/v1/messages";

/// A streamed chat the mock upstream paces: `events` deltas `gap_ms` apart, then usage and
/// `[DONE]` (see [`super::upstream::paced_transcript`]).
pub fn paced_chat(client: &reqwest::Client, events: usize, gap_ms: u64) -> reqwest::RequestBuilder {
    client
        .post(CHAT)
        .header("x-mock-events", events.to_string())
        .header("x-mock-gap-ms", gap_ms.to_string())
        .body(r#"{"model":"gpt-4o-mini","stream":true}"#)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    /// ALPN offers only http/1.1.
    One,
    /// ALPN offers h2 and http/1.1; the proxy picks h2.
    Two,
}

pub fn agent_client(
    proxy: SocketAddr,
    token: &str,
    trusted_pems: &[&str],
    http: Http,
) -> reqwest::Client {
    let alpn: &[&[u8]] = match http {
        Http::One => &[b"http/1.1"],
        Http::Two => &[b"h2", b"http/1.1"],
    };
    let tls = client_config(trusted_pems, alpn);
    let proxy = reqwest::Proxy::all(format!("http://{proxy}"))
        .unwrap()
        .basic_auth("agent", token);
    let mut builder = reqwest::Client::builder()
        .proxy(proxy)
        .use_preconfigured_tls(tls)
        .timeout(super::WAIT);
    if http == Http::One {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// A client with no proxy, for the admin listener and plain servers (the TLS config is there
/// only because reqwest is built without a default crypto provider).
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_config(&[], &[]))
        .build()
        .unwrap()
}

/// The request tests send most: `POST /v1/chat/completions` with `{}` to api.openai.com.
pub trait Chat {
    /// Send it on this client (its connections are reused) and return the answer.
    fn chat(&self) -> impl Future<Output = reqwest::Response> + Send;
}

impl Chat for reqwest::Client {
    async fn chat(&self) -> reqwest::Response {
        self.post(CHAT).body("{}").call().await
    }
}

/// Send a request whose answer the test needs: a transport error fails the test there.
pub trait Call {
    fn call(self) -> impl Future<Output = reqwest::Response> + Send;
}

impl Call for reqwest::RequestBuilder {
    async fn call(self) -> reqwest::Response {
        self.send().await.unwrap()
    }
}

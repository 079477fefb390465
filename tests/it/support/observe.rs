//! What a test asks a running proxy: its agent clients, its admin API, its `/metrics`, its
//! interception records and its router. Each wait here is bounded by [`WAIT`].

use super::client::{agent_client, plain_client, Call, Chat, Http};
use super::proxy::TestProxy;
use super::{eventually, raw, WAIT};
use aibridge_proxy::store::Interception;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A client's TLS session through the proxy.
pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl TestProxy {
    /// An agent's client: this proxy with its token, trusting its CA.
    pub fn client(&self, http: Http) -> reqwest::Client {
        self.client_as(&self.token, http)
    }

    /// An agent's client presenting `token` instead of the seeded one.
    pub fn client_as(&self, token: &str, http: Http) -> reqwest::Client {
        agent_client(self.addr, token, &[&self.ca_pem], http)
    }

    /// [`Chat::chat`] on a fresh HTTP/2 agent client.
    pub async fn chat(&self) -> reqwest::Response {
        self.client(Http::Two).chat().await
    }

    /// `CONNECT target` with this proxy's token, then TLS with `sni` trusting its CA (ALPN
    /// http/1.1).
    pub async fn tls_to(&self, target: &str, sni: &str) -> std::io::Result<Tls> {
        self.tls_alpn(target, sni, &[b"http/1.1"]).await
    }

    /// [`TestProxy::tls_to`] offering `alpn`.
    pub async fn tls_alpn(&self, target: &str, sni: &str, alpn: &[&[u8]]) -> std::io::Result<Tls> {
        raw::connect_tls_alpn(self.addr, target, &self.token, sni, &self.ca_pem, alpn).await
    }

    /// An intercepted HTTP/1.1 connection to api.openai.com, past the TLS handshake.
    pub async fn intercepted(&self) -> Tls {
        self.tls_to("api.openai.com:443", "api.openai.com")
            .await
            .expect("TLS through the proxy")
    }

    /// `http://<admin listener><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.admin_addr.unwrap())
    }

    /// Call the admin API: `(status, JSON body or Null)`.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = plain_client()
            .request(method.parse().unwrap(), self.admin_url(path))
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.call().await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET` on the admin API.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.admin("GET", path, None).await
    }

    /// `POST` `body` to the admin API.
    pub async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin("POST", path, Some(body)).await
    }

    /// `PATCH` `body` on the admin API.
    pub async fn admin_patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin("PATCH", path, Some(body)).await
    }

    /// `PUT` `body` on the admin API.
    pub async fn admin_put(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.admin("PUT", path, Some(body)).await
    }

    /// `DELETE` on the admin API.
    pub async fn admin_delete(&self, path: &str) -> (u16, Value) {
        self.admin("DELETE", path, None).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let resp = plain_client()
            .get(self.admin_url("/metrics"))
            .bearer_auth(&self.admin_token)
            .call()
            .await;
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    /// One series of `/metrics` now (see [`metric`]).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics().await, name, labels)
    }

    /// Poll `/metrics` until the series reaches `want` (records of streamed answers are written
    /// as their bodies end, a moment after the client saw the end), then assert it.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.metric(name, labels).await;
            if got == want || Instant::now() > deadline {
                assert_eq!(got, want, "{name}{labels:?}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `(status, body)` of `GET /readyz`.
    pub async fn readyz(&self) -> (u16, Value) {
        self.admin("GET", "/readyz", None).await
    }

    /// Every interception record so far (the newest 1000).
    pub async fn rows(&self) -> Vec<Interception> {
        self.app.store.recent_interceptions(1000).await.unwrap()
    }

    /// Poll the records until there are `n` (or [`WAIT`] passes), and return them: records are
    /// written off the request path.
    pub async fn wait_rows(&self, n: usize) -> Vec<Interception> {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.rows().await;
            if rows.len() >= n || Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The record of the request `request_id`, once written.
    pub async fn row(&self, request_id: &str) -> Interception {
        self.rows_of(&[request_id.to_string()]).await.remove(0)
    }

    /// The records of all `request_ids`, once all are written.
    pub async fn rows_of(&self, request_ids: &[String]) -> Vec<Interception> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mine: Vec<_> = self
                .rows()
                .await
                .into_iter()
                .filter(|r| request_ids.contains(&r.request_id))
                .collect();
            if mine.len() == request_ids.len() {
                return mine;
            }
            assert!(
                Instant::now() < deadline,
                "{} of the records of {request_ids:?} written",
                mine.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The router generation now; with [`TestProxy::wait_for_generation`] to see a change land.
    pub fn generation(&self) -> u64 {
        self.app.router.load().generation
    }

    pub async fn wait_for_generation(&self, above: u64) {
        let router = self.app.router.clone();
        eventually("router reload", move || router.load().generation > above).await;
    }

    /// Whether the live router sends `key` (`host:port`) to a provider.
    pub fn routes(&self, key: &str) -> bool {
        self.app.router.load().route(key).is_some()
    }

    /// Wait until `key` is routed (`present`) or not; returns how long that took.
    pub async fn wait_route(&self, key: &str, present: bool) -> Duration {
        let started = Instant::now();
        let router = self.app.router.clone();
        let key = key.to_string();
        eventually(&format!("route {key} present={present}"), move || {
            router.load().route(&key).is_some() == present
        })
        .await;
        started.elapsed()
    }

    /// Leaves minted so far.
    pub fn mints(&self) -> u64 {
        self.app
            .leaves
            .stats()
            .mints
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `connect_rejections_total{reason}` now.
    pub fn rejections(&self, reason: &str) -> u64 {
        self.app
            .metrics
            .connect_rejections_total
            .with_label_values(&[reason])
            .get()
    }
}

/// The `x-request-id` every answer of the proxy carries.
pub fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-request-id")
        .expect("every answer carries x-request-id")
        .to_str()
        .unwrap()
        .to_string()
}

/// `name{labels} value` lines → value, for a metric name and an exact label set; 0 if absent.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let mut got: Vec<(String, String)> = label_text
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        got.sort();
        if got == want {
            return value.parse().unwrap();
        }
    }
    0.0
}

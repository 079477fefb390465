//! The client-facing listener: accept, parse, authenticate, then intercept or tunnel.
//!
//! Each accepted connection is served by hyper's HTTP/1 server (proxies are spoken to in
//! HTTP/1.1; CONNECT has no HTTP/2 form that agents use) with a header-read timer, a bounded
//! head buffer and upgrades enabled. [`connect`] decides what each request becomes; the MITM and
//! tunnel tasks that follow a `200` are spawned into the same shutdown scope as the connection.

pub mod auth;
pub mod connect;
pub mod egress;
mod forward;
mod mitm;
pub mod target;
mod tunnel;

use crate::bridge::ProxyBody;
use crate::ca::LeafCache;
use crate::config::ProxyConfig;
use crate::router::Router;
use crate::shutdown::Shutdown;
use egress::Dialer;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long the accept loop pauses after an accept error (e.g. EMFILE) instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// What every connection task shares.
pub struct ProxyState {
    pub config: ProxyConfig,
    pub router: Arc<Router>,
    pub leaves: Arc<LeafCache>,
    /// Dials tunnels and plain forwards under the public-only policy.
    pub dialer: Dialer,
    /// Plain-HTTP forwarding client for non-provider hosts.
    pub forward_client: Client<Dialer, ProxyBody>,
    pub shutdown: Shutdown,
    /// Where interception records go.
    pub recorder: crate::usage::recorder::Recorder,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Counts one open intercepted or tunnelled connection for as long as it lives.
pub(crate) struct ActiveGuard(prometheus::IntGauge);

impl ActiveGuard {
    pub(crate) fn new(metrics: &crate::metrics::Metrics, kind: &str) -> Self {
        let g = metrics.active_connections.with_label_values(&[kind]);
        g.inc();
        ActiveGuard(g)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ProxyState {
    pub fn new(
        config: ProxyConfig,
        router: Arc<Router>,
        leaves: Arc<LeafCache>,
        shutdown: Shutdown,
        recorder: crate::usage::recorder::Recorder,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let policy = egress::EgressPolicy::public_only(config.allow_private_cidrs.clone());
        let dialer =
            Dialer::new(policy, config.connect_timeout).with_resolver(config.resolver.clone());
        let forward_client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(dialer.clone());
        ProxyState {
            config,
            router,
            leaves,
            dialer,
            forward_client,
            shutdown,
            recorder,
            metrics,
        }
    }
}

/// Most header fields a request may carry (hyper answers 431 beyond it).
pub const MAX_HEADER_FIELDS: usize = 100;

/// The size of a request head as parsed. hyper's buffer limit only bites when a head arrives in
/// pieces, so the `--max-header-bytes` limit is also enforced on what was parsed.
pub(crate) fn head_size<B>(req: &http::Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    line + req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// Accept connections until shutdown.
pub async fn serve(state: Arc<ProxyState>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let state2 = state.clone();
                state.shutdown.spawn(serve_connection(state2, stream, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(state: Arc<ProxyState>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let svc_state = state.clone();
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        async move { Ok::<_, Infallible>(connect::handle(state, peer, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .max_buf_size(state.config.max_header_bytes)
        .max_headers(MAX_HEADER_FIELDS)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "proxy connection ended with an error");
    }
}

//! The client-facing listener: accept, parse, authenticate, then intercept or tunnel.
//!
//! Each accepted connection is served by hyper's HTTP/1 server (proxies are spoken to in
//! HTTP/1.1; CONNECT has no HTTP/2 form that agents use) with a header-read timer, a bounded
//! head buffer and upgrades enabled. [`connect`] decides what each request becomes; the MITM and
//! tunnel tasks that follow a `200` are spawned into the same shutdown scope as the connection.

mod admit;
mod connect;
mod forward;
mod h2idle;
mod mitm;
mod respond;
mod tunnel;

use crate::ca::LeafCache;
use crate::config::ProxyConfig;
use crate::net::egress::Dialer;
use crate::net::upstream::ProxyBody;
use crate::router::Router;
use crate::shutdown::Shutdown;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long the accept loop pauses after an accept error (e.g. EMFILE) instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Over-limit connections being answered `503` at once.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;
/// How long an over-limit client gets to read its `503`.
const OVER_LIMIT_WRITE: Duration = Duration::from_secs(1);

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
    /// Fault injection (F24, a test seam with no flag): a decrypted request with this path
    /// panics its connection task.
    panic_on_path: Option<String>,
    /// Whether the accept loop runs: `/healthz` answers 503 once it does not.
    pub serving: Arc<AtomicBool>,
    /// Fault injection (a test seam with no flag): while set, the accept loop panics at its
    /// next connection, leaving a process that cannot serve.
    accept_panic: Option<Arc<AtomicBool>>,
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
    /// `dialer` opens tunnels and plain forwards (under `--allow-private-cidrs`).
    pub fn new(
        config: ProxyConfig,
        dialer: Dialer,
        router: Arc<Router>,
        leaves: Arc<LeafCache>,
        shutdown: Shutdown,
        recorder: crate::usage::recorder::Recorder,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
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
            panic_on_path: None,
            serving: Arc::default(),
            accept_panic: None,
        }
    }

    /// Panic on decrypted requests for `path` (fault injection; see [`crate::app::Seams`]).
    #[doc(hidden)]
    pub fn with_panic_on_path(mut self, path: Option<String>) -> Self {
        self.panic_on_path = path;
        self
    }

    /// The accept loop panics while `flag` is set (fault injection; see [`crate::app::Seams`]).
    #[doc(hidden)]
    pub fn with_accept_panic(mut self, flag: Option<Arc<AtomicBool>>) -> Self {
        self.accept_panic = flag;
        self
    }
}

/// Marks the accept loop as running for as long as it lives (a return or an unwind clears it).
struct ServingGuard(Arc<AtomicBool>);

impl ServingGuard {
    fn new(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        ServingGuard(flag.clone())
    }
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Fault injection for tests: the accept loop dies.
#[allow(clippy::panic)]
fn injected_accept_panic() -> ! {
    panic!("injected fault: accept loop panic")
}

/// Most header fields a request may carry (hyper answers 431 beyond it).
pub const MAX_HEADER_FIELDS: usize = 100;

/// One of the `--max-connections` places, held by a client connection and, after a `200` to
/// its CONNECT, by the MITM session or tunnel that takes the connection over. It travels in the
/// request's extensions from the listener to whoever spawns that task.
#[derive(Clone)]
pub(crate) struct ConnSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// What an over-limit client reads before its connection is closed.
const OVER_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Retry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 37\r\n\r\n\
the proxy is at its connection limit\n";

/// Accept connections until shutdown.
pub async fn serve(state: Arc<ProxyState>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let _serving = ServingGuard::new(&state.serving);
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        if state
            .accept_panic
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
        {
            injected_accept_panic();
        }
        match accepted {
            Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let slot = ConnSlot(Arc::new(permit));
                    let state2 = state.clone();
                    state
                        .shutdown
                        .spawn(serve_connection(state2, stream, peer, slot));
                }
                Err(_) => refuse_over_limit(&state, &refusals, stream, peer),
            },
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Answer `503` and close, without reading the request: the refusal is quick and costs a few
/// hundred bytes, so a flood of connections cannot queue up behind the limit. At most
/// [`MAX_REFUSALS_IN_FLIGHT`] refusals are written at once; beyond that a connection is closed
/// without a word, so a flood cannot hold descriptors at its own rate either.
fn refuse_over_limit(
    state: &ProxyState,
    refusals: &Arc<Semaphore>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let m = &state.metrics;
    m.connections_total.with_label_values(&["rejected"]).inc();
    let refused = m
        .connect_rejections_total
        .with_label_values(&["max_connections"]);
    refused.inc();
    // One line per thousand refusals: a flood must not become a flood of log lines.
    if refused.get() % 1000 == 1 {
        tracing::warn!(%peer, limit = state.config.max_connections, refused_total = refused.get(), "connection refused: at --max-connections");
    }
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    state.shutdown.spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(OVER_LIMIT_WRITE, async {
            stream.write_all(OVER_LIMIT_RESPONSE).await?;
            stream.shutdown().await?;
            // Read what the client sent until it closes, so closing does not reset the
            // connection (and the 503 with it) while its request sits unread.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

async fn serve_connection(
    state: Arc<ProxyState>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: ConnSlot,
) {
    let _ = stream.set_nodelay(true);
    let svc_state = state.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let state = svc_state.clone();
        // Only a CONNECT hands its connection on (to a MITM session or a tunnel).
        if req.method() == http::Method::CONNECT {
            req.extensions_mut().insert(slot.clone());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_limit_response_is_well_framed() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(OVER_LIMIT_RESPONSE) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("incomplete or invalid: {other:?}"),
        };
        assert_eq!(resp.code, Some(503));
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        assert_eq!(length, Some(OVER_LIMIT_RESPONSE.len() - head));
    }
}

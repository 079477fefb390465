//! Interception: terminate the agent's TLS with a leaf for the CONNECT host and hand every
//! decrypted request to the bridge.
//!
//! The ClientHello is read first (rustls' lazy acceptor): a ClientHello whose SNI names another
//! host aborts the handshake before any leaf is minted, so a client cannot make us sign names it
//! chose. Bytes that are not TLS end the session (both counted in `connect_rejections_total`).
//! Each decrypted request passes the listener's head checks (`431`, `414`, `400` for a
//! `Transfer-Encoding` other than `chunked`, each closing an HTTP/1 connection), must name a
//! host (else `400`), must address the CONNECT host (else `421`) and must still map to the same
//! provider in the live snapshot (else `502`): a request is never silently sent to a provider
//! other than the one it was accepted for.

use super::admit::check_head;
use super::h2idle::{self, OpenStreams};
use super::respond::Refusal;
use super::ProxyState;
use crate::auth::Authenticated;
use crate::bridge::{self, websocket, RequestContext};
use crate::net::target::{Host, Target};
use crate::net::upstream::ProxyBody;
use crate::otlp::{SpanContext, SpanData, Value};
use crate::router::ProviderRoute;
use crate::shutdown::{Shutdown, ShutdownExecutor};
use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_rustls::LazyConfigAcceptor;
use uuid::Uuid;

/// Longest an idle HTTP/2 connection's GOAWAY exchange may take before it is dropped.
const GOAWAY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One intercepted CONNECT.
pub(super) struct Session {
    pub state: Arc<ProxyState>,
    pub target: Target,
    /// `target.key()`, computed once.
    pub key: String,
    pub provider_id: Uuid,
    pub auth: Authenticated,
    /// The client connection's place under `--max-connections`; a WebSocket opened on this
    /// session holds it too, for as long as it is open.
    pub slot: Option<super::ConnSlot>,
    /// The provider's name, for the session's span.
    pub provider: String,
    /// The session's span, when traces are exported: its requests' spans hang under it.
    pub trace: Option<SpanContext>,
    /// Requests served on this session.
    pub requests: AtomicU64,
}

impl Session {
    pub async fn serve(self, upgrade: OnUpgrade) {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(target = %self.key, error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        let _active = super::ActiveGuard::new(&self.state.metrics, "mitm");
        let timeout = self.state.config.tls_handshake_timeout;
        // Awaited by reference so the connection lives until its refusal is counted: whoever
        // sees the close sees the count.
        let mut acceptor =
            LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TokioIo::new(upgraded));
        let start = match tokio::time::timeout(timeout, &mut acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                tracing::info!(target = %self.key, reason = "not_tls", error = %e, "intercepted connection did not speak TLS");
                self.rejected("not_tls");
                return;
            }
            Err(_) => {
                tracing::info!(target = %self.key, reason = "tls_handshake_timeout", "TLS handshake timed out");
                self.handshake_failed("timeout");
                return;
            }
        };
        if let Some(sni) = start.client_hello().server_name() {
            if !sni_matches(sni, &self.target.host) {
                tracing::warn!(target = %self.key, reason = "sni_mismatch", "ClientHello SNI differs from the CONNECT host");
                self.rejected("sni_mismatch");
                return;
            }
        }
        let config = match self.state.leaves.server_config(&self.target.host).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target = %self.key, error = %e, "no leaf certificate; closing");
                self.handshake_failed("no_leaf");
                return;
            }
        };
        let tls = match tokio::time::timeout(timeout, start.into_stream(config)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(target = %self.key, error = %e, "TLS handshake with the client failed");
                self.handshake_failed("handshake_error");
                return;
            }
            Err(_) => {
                tracing::info!(target = %self.key, reason = "tls_handshake_timeout", "TLS handshake timed out");
                self.handshake_failed("timeout");
                return;
            }
        };
        let started = std::time::SystemTime::now();
        let session = self.serve_decrypted(tls).await;
        session.emit_span(started);
    }

    /// Count a handshake with the agent that did not complete (`tls_handshake_failures_total`).
    fn handshake_failed(&self, reason: &'static str) {
        self.state
            .metrics
            .tls_handshake_failures_total
            .with_label_values(&[reason])
            .inc();
    }

    /// Count an intercepted connection ended before its handshake (`connect_rejections_total`).
    fn rejected(&self, reason: &'static str) {
        self.state
            .metrics
            .connect_rejections_total
            .with_label_values(&[reason])
            .inc();
    }

    /// The session's span (server side: one CONNECT's decrypted connection), when it ends.
    fn emit_span(&self, started: std::time::SystemTime) {
        let (Some(tracer), Some(context)) = (self.state.recorder.tracer(), self.trace) else {
            return;
        };
        let requests = i64::try_from(self.requests.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        tracer.emit(SpanData {
            context,
            name: format!("CONNECT {}", self.key),
            server: true,
            start: started,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("server.address", Value::Str(self.target.host.to_string())),
                ("server.port", Value::Int(i64::from(self.target.port))),
                ("enduser.id", Value::Str(self.auth.user().to_string())),
                ("aibridge.provider", Value::Str(self.provider.clone())),
                ("aibridge.requests", Value::Int(requests)),
            ],
            error: None,
        });
    }

    /// Serve the decrypted connection; hands the session back for its span.
    async fn serve_decrypted(
        self,
        tls: tokio_rustls::server::TlsStream<TokioIo<hyper::upgrade::Upgraded>>,
    ) -> Arc<Self> {
        // The protocol is fixed by ALPN: serve it directly, so no version sniffing phase (which
        // has no timer) can hold a silent connection open.
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let shutdown = self.state.shutdown.clone();
        let session = Arc::new(self);
        let svc_session = session.clone();
        let io = TokioIo::new(tls);
        let result = if h2 {
            let streams = OpenStreams::new();
            let svc_streams = streams.clone();
            let service = service_fn(move |req| {
                let session = svc_session.clone();
                let stream = svc_streams.open();
                async move {
                    let response = session.handle(req).await;
                    Ok::<_, Infallible>(response.map(|body| h2idle::hold(body, stream)))
                }
            });
            session.serve_http2(io, service, &shutdown, &streams).await
        } else {
            let service = service_fn(move |req| {
                let session = svc_session.clone();
                async move { Ok::<_, Infallible>(session.handle(req).await) }
            });
            session.serve_http1(io, service, &shutdown).await
        };
        if let Err(e) = result {
            tracing::debug!(target = %session.key, error = %e, "intercepted connection ended with an error");
        }
        session
    }

    /// HTTP/1.1 with upgrades: a WebSocket switches only after the upstream's `101`.
    async fn serve_http1<I, S>(&self, io: I, service: S, shutdown: &Shutdown) -> hyper::Result<()>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: hyper::service::HttpService<Incoming, ResBody = ProxyBody>,
        S::Error: Into<crate::BoxError>,
    {
        let config = &self.state.config;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes)
            .max_headers(super::MAX_HEADER_FIELDS)
            .keep_alive(true);
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }

    /// HTTP/2; its stream tasks join the shutdown scope, so a drain waits for them and a cut
    /// drops them (writing their records). With no stream open for `--idle-timeout` the
    /// connection gets a GOAWAY and closes ([`h2idle`]).
    async fn serve_http2<I, S>(
        &self,
        io: I,
        service: S,
        shutdown: &Shutdown,
        streams: &OpenStreams,
    ) -> hyper::Result<()>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: hyper::service::HttpService<Incoming, ResBody = ProxyBody> + Send,
        S::Future: Send + 'static,
        S::Error: Into<crate::BoxError>,
    {
        let config = &self.state.config;
        let mut builder =
            hyper::server::conn::http2::Builder::new(ShutdownExecutor(shutdown.clone()));
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(config.max_header_bytes as u32)
            .max_concurrent_streams(config.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(config.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(config.h2_max_local_error_reset_streams)
            .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
            .keep_alive_timeout(std::time::Duration::from_secs(20));
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            _ = streams.idle_for(config.idle_timeout) => {
                tracing::debug!(target = %self.key, "idle HTTP/2 connection: GOAWAY");
                self.state.metrics.h2_idle_closed_total.inc();
                conn.as_mut().graceful_shutdown();
                // The GOAWAY exchange waits for the client's PING answer: bounded, in case it
                // never comes.
                tokio::time::timeout(GOAWAY_WAIT, conn).await.unwrap_or(Ok(()))
            }
        }
    }

    /// One decrypted request.
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if self.state.panic_on_path.as_deref() == Some(req.uri().path()) {
            injected_panic();
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut ctx = RequestContext::new(&self.auth, &self.state.config);
        ctx.trace_parent = self.trace;
        match self.admit(&req) {
            Ok(route) if websocket::is_upgrade(&req) => {
                let state = &self.state;
                let env = websocket::SocketEnv {
                    recorder: state.recorder.clone(),
                    router: state.router.clone(),
                    shutdown: state.shutdown.clone(),
                    metrics: state.metrics.clone(),
                    max_message: state.config.max_ws_message_bytes,
                    hold: self.slot.clone(),
                };
                websocket::upgrade(route, req, &ctx, env).await
            }
            Ok(route) => bridge::forward(&route, req, &ctx, &self.state.recorder).await,
            Err(r) => r.on_intercepted(&ctx.request_id, &self.key, req.version()),
        }
    }

    /// The checks a decrypted request passes before the bridge: its head, its host (named, and
    /// the CONNECT target's), its token (still active) and its provider (still the same).
    fn admit(&self, req: &Request<Incoming>) -> Result<Arc<ProviderRoute>, Refusal> {
        check_head(req, self.state.config.max_header_bytes)?;
        if !names_authority(req) {
            return Err(Refusal::no_authority());
        }
        if !authority_matches(req, &self.target) {
            return Err(Refusal::misdirected());
        }
        let snapshot = self.state.router.load();
        // A token revoked while this connection is open stops working at the next request.
        if self
            .auth
            .token_id()
            .is_some_and(|id| !snapshot.token_active(id))
        {
            return Err(Refusal::token_revoked());
        }
        match snapshot.route(&self.key) {
            Some(r) if r.id == self.provider_id => Ok(r.clone()),
            _ => Err(Refusal::route_gone()),
        }
    }
}

/// Fault injection for tests (F24); `panic_on_path` has no flag.
#[allow(clippy::panic)]
fn injected_panic() -> ! {
    panic!("injected fault: panic_on_path")
}

/// SNI names the CONNECT host (case and one trailing dot aside). An IP-literal CONNECT accepts
/// an SNI only if it spells the same address.
fn sni_matches(sni: &str, host: &Host) -> bool {
    match Host::parse(sni) {
        Ok(h) => &h == host,
        Err(_) => false,
    }
}

/// HTTP/1.1 and HTTP/2 requests must name a host (`Host`, `:authority` or an absolute URI; RFC
/// 9112 §3.2, RFC 9113 §8.3.1); an HTTP/1.0 request may name none.
fn names_authority(req: &Request<Incoming>) -> bool {
    req.version() < http::Version::HTTP_11
        || req.uri().authority().is_some()
        || req.headers().contains_key(header::HOST)
}

/// Every authority the request names (`:authority`/absolute URI and `Host`) must be the CONNECT
/// target; the default port is 443. Whether one is named at all is [`names_authority`].
fn authority_matches(req: &Request<Incoming>, target: &Target) -> bool {
    let same = |s: &str| Target::parse_with_default_port(s, 443).is_ok_and(|t| &t == target);
    let uri_ok = req.uri().authority().is_none_or(|a| same(a.as_str()));
    let host_ok = req
        .headers()
        .get_all(header::HOST)
        .iter()
        .all(|v| v.to_str().is_ok_and(same));
    uri_ok && host_ok
}

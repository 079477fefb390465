//! The dispatcher: what a request to the proxy becomes.
//!
//! Every request's head is checked and readiness confirmed first; then `CONNECT` is parsed
//! (authority-form only), admitted ([`admit`]: port, no body, credentials, route) and becomes
//! an interception (a hit in the router) or a tunnel, dialled before the `200` so a refused or
//! unreachable destination is an HTTP answer. Absolute-form requests go to [`forward`].
//! Anything else is refused. Every refusal is a [`Refusal`], written by [`super::respond`].

use super::admit::{self, Admission};
use super::respond::{established, Refusal};
use super::{forward, mitm, tunnel, ConnSlot, ProxyState};
use crate::config::AuthMode;
use crate::net::target::{Target, TargetError};
use crate::net::upstream::ProxyBody;
use crate::otlp::SpanContext;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Route one request that arrived on the proxy listener.
pub(super) async fn handle(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let refused = |r: Refusal| r.on_listener(&state.metrics, peer, None);
    if let Err(r) = admit::check_head(&req, state.config.max_header_bytes) {
        return refused(r);
    }
    if state.config.auth == AuthMode::Token && !state.router.is_ready() {
        return refused(Refusal::not_ready());
    }
    if req.method() == Method::CONNECT {
        handle_connect(state.clone(), peer, req).await
    } else if req.uri().scheme().is_some() {
        forward::handle(state.clone(), peer, req).await
    } else {
        refused(Refusal::bad_request(
            "not_proxy_request",
            "send CONNECT or an absolute-form request",
        ))
    }
}

async fn handle_connect(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let target = match connect_target(&req) {
        Ok(t) => t,
        Err(e) => return Refusal::from(e).on_listener(&state.metrics, peer, None),
    };
    let key = target.key();
    let refused = |r: Refusal| r.on_listener(&state.metrics, peer, Some(&key));
    let admission = match admit::admit(&state, &target, &req) {
        Ok(a) => a,
        Err(r) => return refused(r),
    };
    // Only a CONNECT hands its connection on; its place under --max-connections goes with it.
    let slot = req.extensions().get::<ConnSlot>().cloned();
    match admission {
        Admission::Provider { who, route } => {
            tracing::debug!(%peer, target = %key, provider = %route.name, user = %who.user(), "intercepting");
            let upgrade = hyper::upgrade::on(&mut req);
            state
                .metrics
                .connections_total
                .with_label_values(&["mitm"])
                .inc();
            let session = mitm::Session {
                state: state.clone(),
                target,
                key,
                provider_id: route.id,
                auth: who,
                slot,
                trace: state.recorder.tracer().map(|_| SpanContext::root()),
                provider: route.name.clone(),
                requests: AtomicU64::new(0),
            };
            state.shutdown.spawn(session.serve(upgrade));
            established()
        }
        Admission::Pass { who } => {
            let upstream = match state.dialer.dial(&target.host, target.port).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(%peer, target = %key, error = %e, "tunnel dial failed or refused");
                    return refused(Refusal::from(e));
                }
            };
            tracing::debug!(%peer, target = %key, user = %who.user(), "tunnelling");
            state
                .metrics
                .connections_total
                .with_label_values(&["tunnel"])
                .inc();
            let active = super::ActiveGuard::new(&state.metrics, "tunnel");
            let idle = state.config.idle_timeout;
            let relay = tunnel::relay(hyper::upgrade::on(&mut req), upstream, key, idle, active);
            state.shutdown.spawn(async move {
                let _slot = slot;
                relay.await
            });
            established()
        }
    }
}

/// The authority-form target of a CONNECT; any other request-target form is refused.
fn connect_target(req: &Request<Incoming>) -> Result<Target, TargetError> {
    let uri = req.uri();
    let authority = uri.authority().ok_or(TargetError::NotAuthorityForm)?;
    if uri.scheme().is_some()
        || uri
            .path_and_query()
            .is_some_and(|pq| !pq.as_str().is_empty())
    {
        return Err(TargetError::NotAuthorityForm);
    }
    Target::parse(authority.as_str())
}

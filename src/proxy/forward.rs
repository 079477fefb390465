//! Plain HTTP proxying (absolute-form `GET http://host/path`).
//!
//! Authenticated like CONNECT. A provider host goes through the bridge (key injection and all);
//! any other host is forwarded under the same egress policy as tunnels, or refused by
//! `--non-provider-hosts deny`. `https://` in absolute form is refused: TLS goes through CONNECT.
//! `Proxy-Authorization` and the other hop-by-hop headers never reach the destination.

use super::auth;
use super::connect::{auth_required, reject};
use super::target::Target;
use super::ProxyState;
use crate::bridge::{self, headers, BridgeError, ProxyBody, RequestContext};
use crate::config::NonProviderHosts;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

pub(super) async fn handle(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if req.uri().scheme_str() != Some("http") {
        return reject(
            &state.metrics,
            peer,
            StatusCode::BAD_REQUEST,
            "bad_scheme",
            "only http:// in absolute form; use CONNECT for TLS",
        );
    }
    let target = match req
        .uri()
        .authority()
        .map(|a| Target::parse_with_default_port(a.as_str(), 80))
    {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            return reject(
                &state.metrics,
                peer,
                StatusCode::BAD_REQUEST,
                e.reason(),
                "malformed request target",
            )
        }
        None => {
            return reject(
                &state.metrics,
                peer,
                StatusCode::BAD_REQUEST,
                "no_host",
                "malformed request target",
            )
        }
    };
    if !state.config.connect_ports.contains(&target.port) {
        return reject(
            &state.metrics,
            peer,
            StatusCode::BAD_REQUEST,
            "port_not_allowed",
            "port not allowed",
        );
    }
    let snapshot = state.router.snapshot();
    let who = match auth::authenticate(req.headers(), &snapshot, state.config.auth) {
        Ok(a) => a,
        Err(e) => return auth_required(&state.metrics, peer, e),
    };
    if let Some(route) = snapshot.route(&target.key()).cloned() {
        drop(snapshot);
        let ctx = RequestContext::new(&who, &state.config);
        return bridge::forward(&route, req, &ctx, &state.recorder).await;
    }
    drop(snapshot);
    if state.config.non_provider_hosts == NonProviderHosts::Deny {
        return reject(
            &state.metrics,
            peer,
            StatusCode::FORBIDDEN,
            "non_provider_denied",
            "destination not allowed",
        );
    }
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let outgoing = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
    match state.forward_client.request(outgoing).await {
        Ok(resp) => {
            let mut resp = resp.map(|b| b.map_err(Into::into).boxed_unsync());
            headers::prepare_response(resp.headers_mut());
            resp
        }
        Err(e) => {
            let err = BridgeError::from_client(e);
            tracing::info!(%peer, target = %target, reason = err.reason(), error = %err, "plain forward failed");
            match err {
                BridgeError::EgressDenied(_) => reject(
                    &state.metrics,
                    peer,
                    StatusCode::FORBIDDEN,
                    "private_address",
                    "destination not allowed",
                ),
                _ => reject(
                    &state.metrics,
                    peer,
                    StatusCode::BAD_GATEWAY,
                    err.reason(),
                    "could not reach destination",
                ),
            }
        }
    }
}

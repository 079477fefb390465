//! Plain HTTP proxying (absolute-form `GET http://host/path`).
//!
//! Admitted like CONNECT (port, credentials, route). A provider host goes through the bridge
//! (key injection and all); any other host is forwarded under the same egress policy as
//! tunnels, or refused by `--non-provider-hosts deny`. `https://` in absolute form is refused:
//! TLS goes through CONNECT. `Proxy-Authorization` and the other hop-by-hop headers never reach
//! the destination.

use super::admit::{self, Admission};
use super::respond::Refusal;
use super::ProxyState;
use crate::bridge::{self, headers, BridgeError, RequestContext};
use crate::net::target::Target;
use crate::net::upstream::ProxyBody;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

pub(super) async fn handle(
    state: Arc<ProxyState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let target = match forward_target(&req) {
        Ok(t) => t,
        Err(r) => return r.on_listener(&state.metrics, peer, None),
    };
    let key = target.key();
    let refused = |r: Refusal| r.on_listener(&state.metrics, peer, Some(&key));
    match admit::admit(&state, &target, &req) {
        Err(r) => refused(r),
        Ok(Admission::Provider { who, route }) => {
            let ctx = RequestContext::new(&who, &state.config);
            bridge::forward(&route, req, &ctx, &state.recorder).await
        }
        Ok(Admission::Pass { .. }) => {
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
                    tracing::info!(%peer, target = %key, reason = err.reason(), error = %err, "plain forward failed");
                    refused(match err {
                        BridgeError::EgressDenied(_) => Refusal::forbidden("private_address"),
                        _ => Refusal::unreachable(err.reason()),
                    })
                }
            }
        }
    }
}

/// The `http://` target of an absolute-form request (default port 80).
fn forward_target(req: &Request<Incoming>) -> Result<Target, Refusal> {
    if req.uri().scheme_str() != Some("http") {
        return Err(Refusal::bad_request(
            "bad_scheme",
            "only http:// in absolute form; use CONNECT for TLS",
        ));
    }
    let authority = req
        .uri()
        .authority()
        .ok_or(Refusal::bad_request("no_host", "malformed request target"))?;
    Ok(Target::parse_with_default_port(authority.as_str(), 80)?)
}

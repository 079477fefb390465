//! Admission: the checks a request passes before the proxy does anything for it, shared by
//! `CONNECT`, absolute-form forwarding and (for the head) every decrypted request.
//!
//! Order, on the listener: the head ([`check_head`]: size, request-target length, body
//! framing), readiness, then [`admit`] — the port, no body on a `CONNECT`, the agent's
//! credentials, and the router: a provider host is admitted for interception, any other host
//! only when `--non-provider-hosts tunnel`. Each step's refusal is a [`Refusal`]; nothing here
//! writes to the wire.

use super::respond::Refusal;
use super::ProxyState;
use crate::auth::{self, Authenticated};
use crate::bridge::headers;
use crate::config::NonProviderHosts;
use crate::net::target::Target;
use crate::router::ProviderRoute;
use http::{header, Method, Request};
use std::sync::Arc;

/// Longest request-target accepted (`414` beyond). Provider APIs use short paths; a target this
/// long is an attack on something downstream more likely than a request.
pub const MAX_REQUEST_TARGET: usize = 8 * 1024;

/// What an admitted request may become.
pub(super) enum Admission {
    /// A provider host: intercepted (CONNECT) or bridged (absolute-form).
    Provider {
        who: Authenticated,
        route: Arc<ProviderRoute>,
    },
    /// Any other host, allowed to pass (tunnel or forward) under the egress policy.
    Pass { who: Authenticated },
}

/// The checks every request head passes first, on the listener and inside an intercepted
/// connection: its size, its request-target's length and its body framing.
pub(super) fn check_head<B>(req: &Request<B>, max_header_bytes: usize) -> Result<(), Refusal> {
    if head_size(req) > max_header_bytes {
        return Err(Refusal::head_too_large());
    }
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_REQUEST_TARGET {
        return Err(Refusal::uri_too_long());
    }
    if headers::check_transfer_encoding(req.headers()).is_err() {
        return Err(Refusal::bad_transfer_encoding());
    }
    Ok(())
}

/// The size of a request head as parsed. hyper's buffer limit only bites when a head arrives in
/// pieces, so the `--max-header-bytes` limit is also enforced on what was parsed.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    line + req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// Port, body, credentials, route: what `target` (parsed from `req`) may become.
pub(super) fn admit<B>(
    state: &ProxyState,
    target: &Target,
    req: &Request<B>,
) -> Result<Admission, Refusal> {
    if !state.config.connect_ports.contains(&target.port) {
        return Err(Refusal::bad_request("port_not_allowed", "port not allowed"));
    }
    if req.method() == Method::CONNECT && has_body(req) {
        return Err(Refusal::bad_request(
            "connect_with_body",
            "CONNECT must not have a body",
        ));
    }
    let snapshot = state.router.load();
    let who = auth::authenticate(req.headers(), &snapshot, state.config.auth)
        .map_err(Refusal::auth_required)?;
    if let Some(route) = snapshot.route(&target.key()) {
        return Ok(Admission::Provider {
            who,
            route: route.clone(),
        });
    }
    if state.config.non_provider_hosts == NonProviderHosts::Deny {
        return Err(Refusal::forbidden("non_provider_denied"));
    }
    Ok(Admission::Pass { who })
}

fn has_body<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

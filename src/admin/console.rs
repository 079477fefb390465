//! The browser console: a handful of static files (`web/`), compiled into the binary, served at
//! `/` by the admin listener. No build step: plain HTML, CSS and JavaScript, charts drawn as SVG
//! by the script. The page talks to the same `/api/v1` as scripts do, signed in with a session
//! cookie ([`super::session`]).
//!
//! Every answer of the admin listener (except the direct bridge's, which are the provider's)
//! carries the security headers of [`security_headers`]: a CSP with no inline script or style,
//! no framing, no referrer, no MIME sniffing.

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const CONSOLE_JS: &str = include_str!("../../web/console.js");
const CONSOLE_CSS: &str = include_str!("../../web/console.css");
const FAVICON_SVG: &str = include_str!("../../web/favicon.svg");

/// The policy of every page: only this origin's files, no inline code, no plugins, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes (the files; its data comes from `/api`).
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        )
}

/// One embedded file. `no-cache`: the browser revalidates, so an upgraded binary's console is
/// never mixed with a cached older script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Middleware: the security headers, on every answer it wraps.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

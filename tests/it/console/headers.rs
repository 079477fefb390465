//! Security headers on every answer of the admin listener, sign-in, and the CSRF rules for
//! cookie-authenticated writes, checked with a plain HTTP client (no browser needed).

use crate::support::{plain_client, Call, Env};
use serde_json::{json, Value};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Sign in as the console does; returns the cookie pair and the CSRF token.
async fn sign_in(env: &Env) -> (String, String) {
    let origin = format!("http://{}", env.app.admin_addr.unwrap());
    let resp = plain_client()
        .post(env.admin_url("/api/session"))
        .header("origin", origin)
        .header("content-type", "application/json")
        .body(json!({ "token": env.admin_token }).to_string())
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/api", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: no Secure flag ({cookie})"
    );
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let pair = cookie.split(';').next().unwrap().to_string();
    (pair, body["csrf_token"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_and_answer_carries_the_security_headers() {
    let env = Env::openai().await;
    let client = plain_client();
    for (path, status, kind) in [
        ("/", 200, "text/html"),
        ("/console.js", 200, "text/javascript"),
        ("/console.css", 200, "text/css"),
        ("/favicon.svg", 200, "image/svg+xml"),
        ("/ca.pem", 200, "application/x-pem-file"),
        ("/healthz", 200, "application/json"),
        ("/api/session", 401, "application/json"),
        ("/api/v1/providers", 401, "application/json"),
        ("/no/such/page", 404, "application/json"),
    ] {
        let resp = client.get(env.admin_url(path)).call().await;
        assert_eq!(resp.status(), status, "{path}");
        let h = resp.headers();
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
    }
    // The page loads its code and style from files only: nothing inline for the CSP to refuse.
    let html = client
        .get(env.admin_url("/"))
        .call()
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"<script src="/console.js" defer></script>"#));
    assert!(!html.contains("<style") && !html.contains("style="));
    let handler = html.split(" on").skip(1).find(|rest| {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert!(handler.is_none(), "an inline event handler: on{handler:?}");
    // The direct bridge answers as the provider does, without the console's headers.
    let resp = client
        .get(env.admin_url("/bridge/openai/v1/models"))
        .call()
        .await;
    assert!(!resp.headers().contains_key("content-security-policy"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_writes_need_this_origin_and_the_csrf_token() {
    let env = Env::openai().await;
    let origin = format!("http://{}", env.app.admin_addr.unwrap());
    let client = plain_client();

    // A wrong admin token gets no session.
    let resp = client
        .post(env.admin_url("/api/session"))
        .header("content-type", "application/json")
        .body(r#"{"token":"abpa_wrong"}"#)
        .call()
        .await;
    assert_eq!(resp.status(), 401);
    assert!(!resp.headers().contains_key("set-cookie"));
    // Nor does a sign-in posted from another site.
    let resp = client
        .post(env.admin_url("/api/session"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/json")
        .body(json!({ "token": env.admin_token }).to_string())
        .call()
        .await;
    assert_eq!(resp.status(), 403);

    let (cookie, csrf) = sign_in(&env).await;
    let post = |origin: Option<&str>, csrf: Option<&str>| {
        let mut req = client
            .post(env.admin_url("/api/v1/tokens"))
            .header("cookie", &cookie)
            .header("content-type", "application/json")
            .body(r#"{"user":"carol"}"#);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        req.call()
    };
    // Reads need only the cookie.
    let resp = client
        .get(env.admin_url("/api/v1/tokens"))
        .header("cookie", &cookie)
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    for (o, t, why) in [
        (Some(origin.as_str()), None, "no CSRF token"),
        (Some(origin.as_str()), Some("forged"), "wrong CSRF token"),
        (None, Some(csrf.as_str()), "no Origin"),
        (
            Some("http://evil.example"),
            Some(csrf.as_str()),
            "another Origin",
        ),
    ] {
        let resp = post(o, t).await;
        assert_eq!(resp.status(), 403, "{why}");
        let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "forbidden", "{why}");
    }
    let (_, tokens) = env.admin_get("/api/v1/tokens").await;
    assert_eq!(
        tokens["items"].as_array().unwrap().len(),
        1,
        "nothing was created"
    );
    let resp = post(Some(&origin), Some(&csrf)).await;
    assert_eq!(resp.status(), 201);

    // Scripts keep the bearer token, with no Origin or CSRF token.
    let (status, _) = env
        .admin_post("/api/v1/tokens", json!({ "user": "dave" }))
        .await;
    assert_eq!(status, 201);

    // Signing out ends the session on the server, not just in the browser.
    let resp = client
        .delete(env.admin_url("/api/session"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .header("x-csrf-token", &csrf)
        .call()
        .await;
    assert_eq!(resp.status(), 204);
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let resp = client
        .get(env.admin_url("/api/v1/tokens"))
        .header("cookie", &cookie)
        .call()
        .await;
    assert_eq!(resp.status(), 401);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_secure_behind_tls() {
    let env = Env::openai().await;
    let resp = plain_client()
        .post(env.admin_url("/api/session"))
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/json")
        .body(json!({ "token": env.admin_token }).to_string())
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));
    env.stop().await;
}

/// The live feed sends an `interception` event for a finished request, and keeps going across
/// a reload (a `reload` event, then the next request's `interception`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_follows_requests_across_reloads() {
    use crate::support::{Chat, Http};
    let env = Env::openai().await;
    let resp = plain_client()
        .get(env.admin_url("/api/v1/events"))
        .bearer_auth(&env.admin_token)
        .call()
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = Box::pin(resp.bytes_stream());
    let mut seen = String::new();
    read_until(&mut body, &mut seen, "event: status").await;
    let client = env.client(Http::Two);
    assert_eq!(client.chat().await.status(), 200);
    read_until(&mut body, &mut seen, "event: interception").await;
    assert!(
        seen.contains(r#""user":"agent""#) || seen.contains(r#""user":"alice""#),
        "{seen}"
    );
    seen.clear();
    let (status, _) = env
        .admin_post("/api/v1/tokens", json!({ "user": "erin" }))
        .await;
    assert_eq!(status, 201);
    read_until(&mut body, &mut seen, "event: reload").await;
    assert_eq!(client.chat().await.status(), 200);
    read_until(&mut body, &mut seen, "event: interception").await;
    env.stop().await;
}

/// Read the feed into `seen` until it contains `needle`.
async fn read_until<S>(body: &mut S, seen: &mut String, needle: &str)
where
    S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in the feed: {seen}"))
            .expect("the feed stays open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The console's script puts data on the page only as text: none of the DOM calls that parse
/// HTML (or run strings as code) appear in it. The browser test checks the behaviour; this keeps
/// a later edit from reaching for them.
#[test]
fn the_console_script_never_parses_html_or_code() {
    let script = include_str!("../../../web/console.js");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "createContextualFragment",
        "DOMParser",
        "eval(",
        "new Function",
        "setAttribute(\"on",
        "localStorage",
        "sessionStorage",
    ] {
        assert!(!script.contains(sink), "web/console.js uses {sink}");
    }
}

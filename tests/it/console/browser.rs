//! The console in a real headless Chromium, as an operator uses it: sign in; create a provider
//! with a key; add two models and switch the default; create an agent token and send a request
//! through the proxy with it; watch it arrive in the interceptions table without a reload;
//! open it and see a hostile prompt shown as text; revoke the token and see the next request
//! refused; a write without the CSRF token refused; each page readable at 1280 and 390 px.
//! Screenshots of each page land in `target/console-screenshots/`.

use crate::support::browser::Browser;
use crate::support::{Env, Http, CHAT};
use serde_json::{json, Value};

const KEY: &str = "sk-console-secret-key-0123456789";
/// A prompt that would run script if it were ever put on the page as HTML.
const HOSTILE: &str =
    r#"look: <img src=x onerror="window.__xss='img'"> and <script>window.__xss='script'</script>"#;

/// Visit `#page` and wait for its section to show.
async fn open(b: &Browser, page: &str) {
    b.js(&format!("location.hash = '#{page}'"), vec![]).await;
    b.wait_visible(&format!("#page-{page}")).await;
}

/// The page does not scroll sideways at the current window width.
async fn fits(b: &Browser, what: &str) {
    let overflow = b
        .js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await;
    assert!(
        overflow.as_i64().unwrap_or(0) <= 1,
        "{what} scrolls sideways by {overflow} px"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_proxy_from_the_console() {
    let Some(b) = Browser::start("console::browser").await else {
        return;
    };
    // No provider yet: the operator creates it. Base URLs on loopback are allowed here because
    // the "provider" is the local mock upstream.
    let env = Env::with(|o| o.allow_private_upstreams(&["127.0.0.0/8"])).await;

    // Sign in.
    b.goto(&env.admin_url("/")).await;
    b.wait_visible("#signin-token").await;
    b.screenshot("signin").await;
    b.type_into("#signin-token", "abpa_not-the-token").await;
    b.click("#signin-form button[type=submit]").await;
    b.wait_until(
        "the refusal",
        "return document.getElementById('signin-error').textContent.includes('not the admin token')",
    )
    .await;
    // From the keyboard: the token, then Enter.
    b.type_into("#signin-token", &format!("{}\u{E007}", env.admin_token))
        .await;
    b.wait_visible("#page-overview").await;
    b.wait_until(
        "the status",
        "return document.getElementById('ov-ready').textContent === 'ready'",
    )
    .await;
    // The session lives in an HttpOnly cookie: the page's script cannot read it, and neither the
    // admin token nor the session is in storage or the URL.
    let leaks = b
        .js(
            "return [document.cookie, JSON.stringify(localStorage), JSON.stringify(sessionStorage), location.href]",
            vec![],
        )
        .await;
    let leaks = leaks.to_string();
    assert!(
        !leaks.contains(&env.admin_token) && !leaks.contains("aibridge_session"),
        "{leaks}"
    );

    // A base URL on a private address is refused, and the page says what the API says.
    open(&b, "providers").await;
    let private = json!({"name": "lan", "kind": "openai", "base_url": "https://10.1.2.3",
                         "intercept_hosts": [], "enabled": true, "enforce_models": false});
    let (status, refusal) = env.admin_post("/api/v1/providers", private).await;
    assert_eq!(status, 422, "{refusal}");
    b.type_into("#provider-name", "lan").await;
    b.type_into("#provider-base-url", "https://10.1.2.3").await;
    b.click("#provider-submit").await;
    let shown = format!(
        "{}: {}",
        refusal["error"].as_str().unwrap(),
        refusal["detail"].as_str().unwrap()
    );
    b.wait_until(
        "the refusal",
        &format!(
            "return document.getElementById('provider-error').textContent === {}",
            json!(shown)
        ),
    )
    .await;

    // A provider with a key; the key is never shown again, only masked.
    b.type_into("#provider-name", "openai").await;
    b.type_into("#provider-base-url", &env.upstream.base_url())
        .await;
    b.type_into("#provider-hosts", "api.openai.com").await;
    b.type_into("#provider-key", KEY).await;
    b.click("#provider-submit").await;
    b.wait_until(
        "the provider row",
        "return document.querySelector('#providers-table tbody').textContent.includes('api.openai.com:443')",
    )
    .await;
    let html = b.client.source().await.unwrap();
    assert!(!html.contains(KEY), "the key is on the page");
    assert_eq!(
        b.js(
            "return document.getElementById('provider-key').value",
            vec![]
        )
        .await,
        ""
    );
    let (_, providers) = env.admin_get("/api/v1/providers").await;
    let masked = providers["items"][0]["api_keys"][0]["masked"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(b.text("#providers-table tbody").await.contains(&masked));
    // Disable it and enable it again.
    for (button, status) in [("Disable", "disabled"), ("Enable", "enabled")] {
        let script = format!(
            "[...document.querySelectorAll('#providers-table button')].find(b => b.textContent === {}).click()",
            json!(button)
        );
        b.js(&script, vec![]).await;
        b.wait_until(
            status,
            &format!(
                "return document.querySelector('#providers-table tbody .badge').textContent === {}",
                json!(status)
            ),
        )
        .await;
    }
    b.screenshot("providers").await;

    // Two models; the first is the default, then the second is made the default with a click.
    open(&b, "models").await;
    b.wait_until(
        "the provider choice",
        "return document.querySelectorAll('#model-provider option').length === 1",
    )
    .await;
    for model in ["gpt-4o", "gpt-4o-mini"] {
        b.type_into("#model-name", model).await;
        b.click("#model-form button[type=submit]").await;
        b.wait_until(
            model,
            &format!("return [...document.querySelectorAll('#models-table tbody tr')].some(r => r.cells[1].textContent === {})", json!(model)),
        )
        .await;
    }
    let checked = "return [...document.querySelectorAll('input[name=default-model]')].filter(r => r.checked).map(r => r.closest('tr').cells[1].textContent)";
    assert_eq!(b.js(checked, vec![]).await, json!(["gpt-4o"]));
    b.click("#models-table tbody tr:nth-child(2) input[name=default-model]")
        .await;
    b.wait_until(
        "the new default",
        &format!(
            "const c = (() => {{ {checked} }})(); return c.length === 1 && c[0] === 'gpt-4o-mini' \
             && !document.getElementById('models-table').hasAttribute('aria-busy')"
        ),
    )
    .await;
    // An edit the server refuses (a name the provider already has) shows its reason.
    b.click("#models-table tbody tr:nth-child(2) button").await; // Edit gpt-4o-mini
    b.type_into("#model-name", "gpt-4o").await;
    b.click("#model-submit").await;
    b.wait_until(
        "the refusal",
        "return document.getElementById('model-error').textContent.startsWith('conflict: ')",
    )
    .await;
    // An edit it accepts.
    b.type_into("#model-name", "gpt-4o-mini").await;
    b.type_into("#model-display", "Mini").await;
    b.click("#model-submit").await;
    b.wait_until(
        "the display name",
        "return [...document.querySelectorAll('#models-table tbody tr')].some(r => r.cells[3].textContent === 'Mini')",
    )
    .await;
    let (_, default) = env.admin_get("/api/v1/default-model").await;
    let (_, models) = env.admin_get("/api/v1/models").await;
    let mini = models["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "gpt-4o-mini")
        .unwrap();
    assert_eq!(default["model_id"], mini["id"], "{default}");
    b.screenshot("models").await;

    // An agent token, shown once with a copy button and the environment lines.
    open(&b, "tokens").await;
    b.type_into("#token-user", "bob").await;
    b.click("#token-form button[type=submit]").await;
    b.wait_visible("#token-created").await;
    let token = b.text("#token-value").await;
    assert!(token.len() > 20, "{token}");
    let env_lines = b.text("#token-env").await;
    for runtime in ["curl", "Python", "Node", "Claude Code", "Codex"] {
        assert!(
            env_lines.contains(runtime),
            "no {runtime} lines: {env_lines}"
        );
    }
    assert!(env_lines.contains("HTTPS_PROXY=http://bob:") && env_lines.contains(&token));
    assert!(env_lines.contains("NODE_EXTRA_CA_CERTS") && env_lines.contains("SSL_CERT_FILE"));
    assert!(b
        .client
        .find(fantoccini::Locator::Css("#token-copy"))
        .await
        .is_ok());
    b.screenshot("tokens-created").await;
    b.click("#token-done").await;
    assert_eq!(
        b.text("#token-value").await,
        "",
        "the token is gone from the page"
    );

    // The interceptions table, open; a request through the proxy with the new token appears in
    // it without the page reloading.
    open(&b, "interceptions").await;
    b.wait_until(
        "the live feed",
        "return document.getElementById('live').textContent === 'live'",
    )
    .await;
    b.js("window.__same_page = true", vec![]).await;
    let agent = env.client_as(&token, Http::Two);
    let body = json!({"model": "gpt-4o", "stream": false, "messages": [{"role": "user", "content": HOSTILE}]});
    let resp = agent
        .post(CHAT)
        .header("x-mock-tools", "1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = env.upstream.seen();
    assert_eq!(
        seen.last().unwrap().values("authorization"),
        vec![format!("Bearer {KEY}").as_str()],
        "the key typed into the console is the one injected"
    );
    b.wait_until(
        "the request in the table",
        "return [...document.querySelectorAll('#interceptions-table tbody tr')].some(r => r.cells[1].textContent === 'bob')",
    )
    .await;
    assert_eq!(
        b.js("return window.__same_page === true", vec![]).await,
        true,
        "the page reloaded"
    );
    b.screenshot("interceptions").await;

    // Its detail: the prompt shown as text, nothing run, no element made from it.
    env.wait_rows(1).await; // written before the detail is read
    b.click("#interceptions-table tbody tr:first-child button")
        .await;
    b.wait_visible("#detail").await;
    b.wait_until(
        "the prompt",
        "return document.getElementById('detail-prompt').textContent.includes('onerror')",
    )
    .await;
    assert_eq!(b.text("#detail-prompt").await, HOSTILE);
    let tools = b.text("#detail-tools").await;
    assert!(
        tools.contains("grep") && tools.contains(r#"{"q":"x"}"#),
        "{tools}"
    );
    let ran = b
        .js(
            "return [window.__xss === undefined, document.querySelectorAll('#main img, #main script').length]",
            vec![],
        )
        .await;
    assert_eq!(ran, json!([true, 0]), "the prompt ran or became elements");
    b.screenshot("interception-detail").await;

    // Filters and pages: 60 older records of another user, 50 to a page.
    let template = env.wait_rows(1).await[0].clone();
    let bulk: Vec<_> = (0..60)
        .map(|i| {
            let id = uuid::Uuid::now_v7();
            aibridge_proxy::store::Interception {
                id,
                request_id: id.to_string(),
                user: "bulk".into(),
                started_at: time::OffsetDateTime::now_utc() - time::Duration::minutes(10 + i),
                ..template.clone()
            }
        })
        .collect();
    env.app.store.insert_interceptions(&bulk).await.unwrap();
    let rows = "return document.querySelectorAll('#interceptions-table tbody tr').length";
    b.type_into("#f-user", "bulk").await;
    b.click("#filter-form button[type=submit]").await;
    b.wait_until(
        "a full page",
        &format!("return (() => {{ {rows} }})() === 50"),
    )
    .await;
    b.click("#page-older").await;
    b.wait_until(
        "the last 10",
        &format!("return (() => {{ {rows} }})() === 10"),
    )
    .await;
    assert_eq!(
        b.js(
            "return document.getElementById('page-older').disabled",
            vec![]
        )
        .await,
        true
    );
    b.click("#page-newest").await;
    b.wait_until(
        "the first page again",
        &format!("return (() => {{ {rows} }})() === 50"),
    )
    .await;
    b.type_into("#f-user", "nobody").await;
    b.click("#filter-form button[type=submit]").await;
    b.wait_until("no rows", &format!("return (() => {{ {rows} }})() === 0"))
        .await;
    b.type_into("#f-user", "").await;
    b.click("#filter-form button[type=submit]").await;
    b.wait_until(
        "every user",
        &format!("return (() => {{ {rows} }})() === 50"),
    )
    .await;

    // A write from the page without the CSRF token is refused (and creates nothing).
    let status = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/tokens', {method: 'POST', headers: {'Content-Type': 'application/json'},
                   body: JSON.stringify({user: 'mallory'})}).then(r => done(r.status), e => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    let (_, tokens) = env.admin_get("/api/v1/tokens").await;
    assert!(!tokens.to_string().contains("mallory"));

    // Revoke the token; the next request with it is refused.
    open(&b, "tokens").await;
    b.wait_until(
        "bob's token",
        "return [...document.querySelectorAll('#tokens-table tbody tr')].some(r => r.cells[0].textContent === 'bob' && r.cells[3].textContent === 'active')",
    )
    .await;
    b.click("#tokens-table button[aria-label='Revoke the token of bob']")
        .await;
    b.client.accept_alert().await.unwrap();
    b.wait_until(
        "the revocation",
        "return [...document.querySelectorAll('#tokens-table tbody tr')].some(r => r.cells[0].textContent === 'bob' && r.cells[3].textContent.startsWith('revoked'))",
    )
    .await;
    let refused = env
        .client_as(&token, Http::Two)
        .post(CHAT)
        .body("{}")
        .send()
        .await;
    match refused {
        Ok(r) => assert_eq!(r.status(), 407),
        // reqwest reports a CONNECT refused with 407 as this error.
        Err(e) => assert!(format!("{e:?}").contains("ProxyAuthRequired"), "{e:?}"),
    }

    // The other pages, at 1280 px and on a 390 px phone.
    for page in [
        "overview",
        "usage",
        "setup",
        "providers",
        "models",
        "tokens",
        "interceptions",
    ] {
        open(&b, page).await;
        if page == "usage" {
            b.wait_until(
                "the chart",
                "return document.querySelectorAll('#usage-chart rect').length > 0",
            )
            .await;
            let totals = b.text("#usage-totals tbody").await;
            assert!(totals.contains("bob"), "{totals}");
        }
        if page == "setup" {
            let lines = b.text("#setup-env").await;
            assert!(lines.contains("HTTPS_PROXY=http://agent:TOKEN@"), "{lines}");
        }
        b.wait_until(
            "the page's data",
            "return !document.getElementById('main').textContent.includes('…')",
        )
        .await;
        fits(&b, page).await;
        b.screenshot(page).await;
    }
    b.client.set_window_size(390, 844).await.unwrap();
    for page in [
        "overview",
        "providers",
        "models",
        "tokens",
        "usage",
        "interceptions",
        "setup",
    ] {
        open(&b, page).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        fits(&b, &format!("{page} at 390 px")).await;
        b.screenshot(&format!("{page}-390")).await;
    }
    b.client.set_window_size(1280, 900).await.unwrap();

    // The CA downloads from the setup page's link.
    let href: Value = b
        .js("return document.getElementById('ca-download').href", vec![])
        .await;
    assert!(href.as_str().unwrap().ends_with("/ca.pem"));

    // Sign out: back to the sign-in form, and the session no longer opens the API.
    b.click("#signout").await;
    b.wait_visible("#signin-token").await;
    let status = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/providers').then(r => done(r.status), e => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(401));
    b.close().await;
    env.stop().await;
}

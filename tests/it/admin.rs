//! The admin API on both backends: every mutation is followed by a request through the proxy
//! that proves the routing changed; auth on every route; validation answers.

use crate::support::db::TestDb;
use crate::support::upstream::{CHAT_JSON, MESSAGES_JSON};
use crate::support::*;
use serde_json::json;

/// No provider yet; hosts no provider claims are refused at once (no DNS): 403 means "not
/// intercepted".
async fn start(db: &TestDb) -> Env {
    Env::with(|o| o.database(&db.url).deny_non_providers()).await
}

/// Status of a POST through the proxy to `https://{host}/v1/...`; 403 = not intercepted.
async fn call(proxy: &TestProxy, host: &str, path: &str) -> (u16, String) {
    match proxy
        .client(Http::Two)
        .post(format!("https://{host}{path}"))
        .body("{}")
        .send()
        .await
    {
        Ok(resp) => (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        ),
        // A refused CONNECT surfaces as a client error; read its status from the proxy directly.
        Err(_) => {
            let req = raw::connect_head(&format!("{host}:443"), &proxy.token);
            let (head, _) = raw::send_head(proxy.addr, req.as_bytes()).await;
            (raw::status(&head), head)
        }
    }
}

async fn crud_reroutes(db: &TestDb) {
    let proxy = start(db).await;
    let upstream = &proxy.upstream;
    let chat = "/v1/chat/completions";
    assert_eq!(
        call(&proxy, "api.openai.com", chat).await.0,
        403,
        "nothing configured yet"
    );

    // create → intercepted with the key
    let (status, created) = proxy
        .admin_post("/api/v1/providers", json!({"name": "openai", "kind": "openai", "base_url": upstream.base_url(),
                        "intercept_hosts": ["API.OpenAI.com"], "api_keys": ["sk-admin-key-0123456789"]}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["intercept_hosts"], json!(["api.openai.com"]));
    assert_eq!(created["api_keys"][0]["masked"], "sk-...6789");
    assert!(
        !created.to_string().contains("sk-admin-key-0123456789"),
        "keys never returned"
    );
    assert_eq!(
        call(&proxy, "api.openai.com", chat).await,
        (200, CHAT_JSON.to_string())
    );
    assert_eq!(
        upstream.seen().last().unwrap().headers["authorization"],
        "Bearer sk-admin-key-0123456789"
    );

    // disable → not intercepted
    let (status, _) = proxy
        .admin_patch("/api/v1/providers/openai", json!({"enabled": false}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(call(&proxy, "api.openai.com", chat).await.0, 403);
    let (_, p) = proxy.admin_get("/api/v1/providers/openai").await;
    assert_eq!(p["status"], "disabled");

    // enable + rename → intercepted under the new name
    let (status, _) = proxy
        .admin_patch(
            "/api/v1/providers/openai",
            json!({"enabled": true, "name": "openai-eu"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(call(&proxy, "api.openai.com", chat).await.0, 200);
    assert_eq!(proxy.admin_get("/api/v1/providers/openai").await.0, 404);
    assert_eq!(proxy.admin_get("/api/v1/providers/openai-eu").await.0, 200);

    // move host
    let (status, _) = proxy
        .admin_patch(
            "/api/v1/providers/openai-eu",
            json!({"intercept_hosts": ["eu.api.openai.com"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(call(&proxy, "api.openai.com", chat).await.0, 403);
    assert_eq!(call(&proxy, "eu.api.openai.com", chat).await.0, 200);

    // a second provider; a third claiming a taken host is excluded, with a warning
    let (status, _) = proxy
        .admin_post("/api/v1/providers", json!({"name": "anthropic", "kind": "anthropic", "base_url": upstream.base_url(),
                        "intercept_hosts": ["api.anthropic.com"], "api_keys": ["sk-ant-admin-0123456789"]}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        call(&proxy, "api.anthropic.com", "/v1/messages").await,
        (200, MESSAGES_JSON.to_string())
    );
    assert_eq!(
        upstream.seen().last().unwrap().headers["x-api-key"],
        "sk-ant-admin-0123456789"
    );
    let copycat = json!({"name": "copycat", "kind": "openai", "base_url": upstream.base_url(),
                         "intercept_hosts": ["api.anthropic.com"]});
    let (status, dup) = proxy.admin_post("/api/v1/providers", copycat).await;
    assert_eq!(status, 201);
    assert_eq!(dup["status"], "excluded");
    assert!(
        dup["warnings"][0].as_str().unwrap().contains("anthropic"),
        "{dup}"
    );
    assert_eq!(
        call(&proxy, "api.anthropic.com", "/v1/messages").await.0,
        200
    );
    assert_eq!(
        upstream.seen().last().unwrap().headers["x-api-key"],
        "sk-ant-admin-0123456789",
        "the older one keeps it"
    );

    // keys: add, remove (BYOK afterwards)
    let second = json!({"api_key": "sk-second-0123456789"});
    let (status, key) = proxy
        .admin_post("/api/v1/providers/openai-eu/keys", second)
        .await;
    assert_eq!(status, 201);
    assert_eq!(key["masked"], "sk-...6789");
    let (_, p) = proxy.admin_get("/api/v1/providers/openai-eu").await;
    for k in p["api_keys"].as_array().unwrap() {
        let path = format!(
            "/api/v1/providers/openai-eu/keys/{}",
            k["id"].as_str().unwrap()
        );
        assert_eq!(proxy.admin_delete(&path).await.0, 204);
    }
    assert_eq!(call(&proxy, "eu.api.openai.com", chat).await.0, 200);
    assert!(
        upstream
            .seen()
            .last()
            .unwrap()
            .headers
            .get("authorization")
            .is_none(),
        "no key, no client key: nothing"
    );

    // delete → not intercepted; recreate → intercepted again
    assert_eq!(
        proxy.admin_delete("/api/v1/providers/openai-eu").await.0,
        204
    );
    assert_eq!(
        proxy.admin_delete("/api/v1/providers/openai-eu").await.0,
        404
    );
    assert_eq!(call(&proxy, "eu.api.openai.com", chat).await.0, 403);
    let openai = json!({"name": "openai", "kind": "openai", "base_url": upstream.base_url(),
                        "intercept_hosts": ["api.openai.com"]});
    let (status, _) = proxy.admin_post("/api/v1/providers", openai).await;
    assert_eq!(status, 201);
    assert_eq!(call(&proxy, "api.openai.com", chat).await.0, 200);

    let (status, router) = proxy.admin_get("/api/v1/router").await;
    assert_eq!(status, 200);
    assert_eq!(router["hosts"]["api.openai.com:443"], "openai");
    assert_eq!(router["hosts"]["api.anthropic.com:443"], "anthropic");
    assert!(router["generation"].as_u64().unwrap() > 5);
}
both_backends!(crud_through_the_api_reroutes_the_proxy, crud_reroutes);

async fn models_and_tokens(db: &TestDb) {
    let proxy = start(db).await;
    let upstream = &proxy.upstream;
    let (_, p) = proxy
        .admin_post(
            "/api/v1/providers",
            json!({"name": "openai", "kind": "openai", "base_url": upstream.base_url()}),
        )
        .await;
    let gpt_a = json!({"provider": "openai", "model": "gpt-a"});
    let (status, a) = proxy.admin_post("/api/v1/models", gpt_a).await;
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["is_default"], true);
    assert_eq!(a["provider_id"], p["id"]);
    let (_, b) = proxy
        .admin_post(
            "/api/v1/models",
            json!({"provider": p["id"], "model": "gpt-b", "context_limit": 8000}),
        )
        .await;
    let b_id = b["id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let (status, d) = proxy
            .admin_put("/api/v1/default-model", json!({"model_id": b_id}))
            .await;
        assert_eq!(
            (status, d["model_id"].as_str()),
            (200, Some(b_id.as_str())),
            "PUT is idempotent"
        );
    }
    assert_eq!(
        proxy.admin_delete("/api/v1/default-model").await.0,
        405,
        "no DELETE on the pointer"
    );
    assert_eq!(
        proxy
            .admin_delete(&format!("/api/v1/models/{b_id}"))
            .await
            .0,
        204
    );
    let (_, d) = proxy.admin_get("/api/v1/default-model").await;
    assert_eq!(
        d["model_id"], a["id"],
        "deleting the default promotes the remaining model"
    );
    let (status, e) = proxy
        .admin_patch(
            &format!("/api/v1/models/{}", a["id"].as_str().unwrap()),
            json!({"is_default": false}),
        )
        .await;
    assert_eq!(status, 409, "the only model stays default: {e}");
    let (status, _) = proxy
        .admin_put(
            "/api/v1/default-model",
            json!({"model_id": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = proxy
        .admin_post(
            "/api/v1/models",
            json!({"provider": "openai", "model": "x", "context_limit": 0}),
        )
        .await;
    assert_eq!(status, 422);

    // tokens: the clear token appears once; a revoked token stops working
    let (status, t) = proxy
        .admin_post("/api/v1/tokens", json!({"user": "dana"}))
        .await;
    assert_eq!(status, 201);
    let token = t["token"].as_str().unwrap().to_string();
    let (_, list) = proxy.admin_get("/api/v1/tokens").await;
    assert!(
        !list.to_string().contains(&token),
        "listed tokens never include the token"
    );
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["user"] == "dana"));
    let client = proxy.client_as(&token, Http::One);
    // api.openai.com is not claimed (the provider intercepts its base URL's host): 403 = authenticated.
    let req = format!(
        "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        raw::basic(&token)
    );
    assert_eq!(
        raw::status(&raw::send_head(proxy.addr, req.as_bytes()).await.0),
        403
    );
    drop(client);
    assert_eq!(
        proxy
            .admin_delete(&format!("/api/v1/tokens/{}", t["id"].as_str().unwrap()))
            .await
            .0,
        204
    );
    assert_eq!(
        raw::status(&raw::send_head(proxy.addr, req.as_bytes()).await.0),
        407,
        "revoked at once"
    );
}
both_backends!(models_default_and_tokens_through_the_api, models_and_tokens);

#[tokio::test]
async fn admin_token_is_required_everywhere_but_healthz_and_ca() {
    let db = TestDb::sqlite();
    let proxy = start(&db).await;
    let base = proxy.admin_url("");
    let client = plain_client();
    let id = uuid::Uuid::new_v4();
    let routes = [
        ("GET", "/api/v1/providers".to_string()),
        ("POST", "/api/v1/providers".to_string()),
        ("GET", "/api/v1/providers/openai".to_string()),
        ("PATCH", "/api/v1/providers/openai".to_string()),
        ("DELETE", "/api/v1/providers/openai".to_string()),
        ("POST", "/api/v1/providers/openai/keys".to_string()),
        ("DELETE", format!("/api/v1/providers/openai/keys/{id}")),
        ("GET", "/api/v1/models".to_string()),
        ("POST", "/api/v1/models".to_string()),
        ("GET", format!("/api/v1/models/{id}")),
        ("PATCH", format!("/api/v1/models/{id}")),
        ("DELETE", format!("/api/v1/models/{id}")),
        ("GET", "/api/v1/default-model".to_string()),
        ("PUT", "/api/v1/default-model".to_string()),
        ("GET", "/api/v1/tokens".to_string()),
        ("POST", "/api/v1/tokens".to_string()),
        ("DELETE", format!("/api/v1/tokens/{id}")),
        ("GET", "/api/v1/router".to_string()),
        ("GET", "/readyz".to_string()),
    ];
    let wrong = ["", "Bearer wrong", "Basic YWRtaW46YWRtaW4=", "bearer "];
    for (method, path) in &routes {
        for auth in wrong {
            let mut req = client
                .request(method.parse().unwrap(), format!("{base}{path}"))
                .body("{}");
            if !auth.is_empty() {
                req = req.header("authorization", auth);
            }
            let resp = req.call().await;
            assert_eq!(resp.status(), 401, "{method} {path} with {auth:?}");
            let body: serde_json::Value =
                serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            assert_eq!(body, json!({"error": "unauthorized", "detail": ""}));
        }
        let q = client.request(
            method.parse().unwrap(),
            format!("{base}{path}?token={}", proxy.admin_token),
        );
        assert_eq!(
            q.call().await.status(),
            401,
            "token in the query string is not accepted"
        );
    }
    let health = client.get(format!("{base}/healthz")).call().await;
    assert_eq!(health.status(), 200);
    let ca = client
        .get(format!("{base}/ca.pem"))
        .call()
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(ca, proxy.ca_pem);
    assert!(!ca.contains("PRIVATE KEY"));
    assert_eq!(proxy.admin_get("/readyz").await.0, 200);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(proxy.dir.path().join("admin-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let db = TestDb::sqlite();
    let proxy = start(&db).await;
    let ok = json!({"name": "openai", "kind": "openai", "base_url": proxy.upstream.base_url()});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("name", json!("Bad_Name")), 422),
        (with("kind", json!("gemini")), 422),
        (with("base_url", json!("file:///etc/passwd")), 422),
        (with("base_url", json!("ftp://x.example")), 422),
        (with("base_url", json!("https://user:pw@x.example")), 422),
        (with("base_url", json!("https://x.example/#frag")), 422),
        (with("base_url", json!("api.openai.com")), 422),
        (with("intercept_hosts", json!(["x.example:99999"])), 422),
        (with("intercept_hosts", json!(["a b"])), 422),
        (with("unknown_field", json!(1)), 422),
        (with("enabled", json!("yes")), 422),
        (with("api_keys", json!([""])), 422),
        (with("api_keys", json!("sk-live-must-not-echo")), 422),
    ];
    for (body, status) in cases {
        let (got, err) = proxy.admin_post("/api/v1/providers", body.clone()).await;
        assert_eq!(got, status, "{body} → {err}");
        assert!(
            err["error"].is_string() && err["detail"].is_string(),
            "{err}"
        );
    }
    let resp = plain_client()
        .post(proxy.admin_url("/api/v1/providers"))
        .bearer_auth(&proxy.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .call()
        .await;
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "malformed JSON");
    for path in [
        "/api/v1/providers/..%2f..%2fetc",
        "/api/v1/nope",
        "/etc/passwd",
    ] {
        assert_eq!(proxy.admin_get(path).await.0, 404, "{path}");
    }
    assert_eq!(
        proxy.admin_post("/api/v1/providers", ok.clone()).await.0,
        201
    );
    let (status, err) = proxy.admin_post("/api/v1/providers", ok).await;
    assert_eq!((status, err["error"].as_str()), (409, Some("conflict")));
    // Nothing half-written: still exactly one provider.
    let (_, list) = proxy.admin_get("/api/v1/providers").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

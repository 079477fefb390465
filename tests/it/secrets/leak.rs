//! F-19: a whole `serve` session at trace level, searched for every secret it handled.

use super::*;

/// Every response of a session, as a client saw it: status, headers, body.
#[derive(Default)]
struct Capture(String);

impl Capture {
    async fn take(&mut self, what: &str, resp: reqwest::Response) -> (u16, String) {
        let status = resp.status().as_u16();
        let headers = format!("{:?}", resp.headers());
        let body = resp.text().await.unwrap();
        self.0
            .push_str(&format!("== {what}: {status}\n{headers}\n{body}\n"));
        (status, body)
    }

    /// Send `req`, keep its answer, and return its status.
    async fn status_of(&mut self, what: &str, req: reqwest::RequestBuilder) -> u16 {
        self.take(what, req.call().await).await.0
    }
}

/// F-19: `serve` at trace level through a whole session; every log line, every response (status,
/// headers, body) and the binary's stdout are searched for every secret of the session.
#[tokio::test]
async fn no_secret_leaks_from_a_full_session_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (upstream, upstream_ca_file) = MockUpstream::for_binary(&d).await;
    let db = cli_db(&d);
    let init = cli(&d, "secrets init --secrets-key-file certs/secrets.key", &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    let mut capture = Capture(stdout(&init) + &stderr(&init));
    let (port, admin_port, down_port) = (free_port(), free_port(), free_port());
    let (log_path, out_path) = (d.join("serve.log"), d.join("serve.out"));
    let child = Child(
        bin()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--allow-private-upstreams", "127.0.0.0/8"])
            .args([
                "--database-url",
                &db,
                "--log-level",
                "trace",
                "--log-format",
                "json",
            ])
            .arg("--upstream-ca-file")
            .arg(&upstream_ca_file)
            .env("AIBRIDGE_SECRETS_KEY_FILE", "certs/secrets.key")
            .current_dir(&d)
            .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
            .spawn()
            .unwrap(),
    );
    let admin_base = format!("http://127.0.0.1:{admin_port}");
    let admin = plain_client();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let up = admin.get(format!("{admin_base}/healthz")).send().await;
        if up.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let admin_token = std::fs::read_to_string(d.join("certs/admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let call = |method: &str, path: &str, body: Option<String>| {
        let mut req = admin
            .request(method.parse().unwrap(), format!("{admin_base}{path}"))
            .bearer_auth(&admin_token);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        req
    };
    let keys = [
        "sk-leak-openai-primary-11111111",
        "sk-leak-openai-second-22222222",
        "sk-leak-anthropic-down-3333333",
        "sk-leak-rejected-422-444444444",
        "sk-leak-rejected-type-55555555",
    ];

    // Providers with keys, a model, a token: all through the admin API.
    let openai = json!({"name": "openai", "kind": "openai", "base_url": upstream.base_url(),
        "intercept_hosts": ["api.openai.com"], "enforce_models": true, "api_keys": [keys[0]]});
    let create = call("POST", "/api/v1/providers", Some(openai.to_string()));
    assert_eq!(capture.status_of("create openai", create).await, 201);
    let add = json!({"api_key": keys[1]}).to_string();
    let add = call("POST", "/api/v1/providers/openai/keys", Some(add));
    assert_eq!(capture.status_of("add key", add).await, 201);
    let down = json!({"name": "anthropic", "kind": "anthropic",
        "base_url": format!("https://127.0.0.1:{down_port}"),
        "intercept_hosts": ["api.anthropic.com"], "api_keys": [keys[2]]});
    let create = call("POST", "/api/v1/providers", Some(down.to_string()));
    assert_eq!(capture.status_of("create anthropic", create).await, 201);
    let model = json!({"provider": "openai", "model": "gpt-4o-mini"}).to_string();
    let create = call("POST", "/api/v1/models", Some(model));
    assert_eq!(capture.status_of("create model", create).await, 201);
    // The one response that must hold the token (shown once) is the only one not captured.
    let user = json!({"user": "leakcheck"}).to_string();
    let created = call("POST", "/api/v1/tokens", Some(user)).call().await;
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = serde_json::from_str(&created.text().await.unwrap()).unwrap();
    let token = created["token"].as_str().unwrap().to_string();

    // Requests through the MITM path: success (JSON and SSE), model-policy refusal, upstream down.
    let proxy_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ca_pem = std::fs::read_to_string(d.join("certs/ca.pem")).unwrap();
    let agent = agent_client(proxy_addr, &token, &[&ca_pem], Http::Two);
    let mut request_ids = Vec::new();
    for (what, url, body, expected) in [
        (
            "json",
            CHAT,
            r#"{"model":"gpt-4o-mini","messages":[]}"#,
            200,
        ),
        ("sse", CHAT, r#"{"model":"gpt-4o-mini","stream":true}"#, 200),
        ("policy", CHAT, r#"{"model":"gpt-not-allowed"}"#, 403),
        ("down", MESSAGES, r#"{"model":"claude-sonnet"}"#, 502),
    ] {
        let resp = agent
            .post(url)
            .header("authorization", "Bearer sk-agent-own-credential")
            .body(body)
            .call()
            .await;
        request_ids.push(resp.headers()["x-request-id"].to_str().unwrap().to_string());
        let (code, _) = capture.take(what, resp).await;
        assert_eq!(code, expected, "{what}");
    }
    assert_eq!(
        upstream.seen().len(),
        2,
        "the refusal never reached the upstream"
    );
    assert_eq!(
        upstream.seen()[0].headers["authorization"],
        format!("Bearer {}", keys[0]).as_str()
    );
    let wrong_token = "abp_wrong_token_value_0123456789";
    let wrong = agent_client(proxy_addr, wrong_token, &[&ca_pem], Http::One);
    let refused = wrong.get(MODELS).send().await.unwrap_err();
    capture
        .0
        .push_str(&format!("== wrong token: {refused:?}\n"));
    let (head, _) = raw::send_head(
        proxy_addr,
        raw::connect_head("api.openai.com:443", wrong_token).as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    capture.0.push_str(&head);

    // Admin error answers, some to requests carrying a key.
    let bad_name = json!({"name": "Bad_Name", "kind": "openai", "base_url": "https://x.example", "api_keys": [keys[3]]});
    let bad_type = json!({"api_key": {"nested": keys[4]}});
    for (what, method, path, body, expected) in [
        (
            "bad json",
            "POST",
            "/api/v1/providers",
            Some(format!("{{\"api_keys\": [\"{}\"", keys[3])),
            400,
        ),
        ("not found", "GET", "/api/v1/providers/nope", None, 404),
        (
            "invalid",
            "POST",
            "/api/v1/providers",
            Some(bad_name.to_string()),
            422,
        ),
        (
            "wrong type",
            "POST",
            "/api/v1/providers/openai/keys",
            Some(bad_type.to_string()),
            422,
        ),
    ] {
        let (code, _) = capture
            .take(what, call(method, path, body).call().await)
            .await;
        assert_eq!(code, expected, "{what}");
    }
    let unauthorized = admin
        .get(format!("{admin_base}/api/v1/providers"))
        .bearer_auth(format!("{admin_token}x"))
        .call()
        .await;
    assert_eq!(capture.take("unauthorized", unauthorized).await.0, 401);

    // Every read view.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = call("GET", "/api/v1/interceptions", None).call().await;
        let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        if body["items"].as_array().is_some_and(|i| i.len() >= 4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records not written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for path in [
        "/api/v1/providers",
        "/api/v1/providers/openai",
        "/api/v1/router",
        "/api/v1/models",
        "/api/v1/tokens",
        "/api/v1/interceptions",
        "/api/v1/usage?group_by=provider",
        "/metrics",
        "/ca.pem",
        "/healthz",
        "/readyz",
    ] {
        let (code, _) = capture
            .take(path, call("GET", path, None).call().await)
            .await;
        assert_eq!(code, 200, "{path}");
    }

    let status = child.terminate().await;
    assert_eq!(status.code(), Some(0));

    let logs = std::fs::read_to_string(&log_path).unwrap();
    let out = std::fs::read_to_string(&out_path).unwrap();
    let everything = format!("{logs}\n{out}\n{}", capture.0);

    // The capture is not vacuous: trace logs, request lines with their ids, every view.
    assert!(logs.lines().count() > 50, "trace logging was on");
    assert!(
        logs.contains("\"message\":\"request\""),
        "one line per request"
    );
    for id in &request_ids {
        assert!(logs.contains(id.as_str()), "request {id} logged");
    }
    for needle in [
        "openai",
        "anthropic",
        "sk-...1111",
        "aibridge_proxy_requests_total",
        "BEGIN CERTIFICATE",
        "leakcheck",
        "x-request-id",
        "== policy: 403",
        "== down: 502",
        "== bad json: 400",
        "== not found: 404",
        "== invalid: 422",
        "== unauthorized: 401",
    ] {
        assert!(
            everything.contains(needle),
            "{needle:?} missing from the capture"
        );
    }
    // SIGTERM flushed the interception records.
    let store = Store::connect(&db).await.unwrap();
    assert_eq!(store.recent_interceptions(10).await.unwrap().len(), 4);
    store.close().await;

    let stored: Vec<String> = raw_keys(&db).await.into_iter().map(|r| r.2).collect();
    assert_eq!(stored.len(), 3);
    assert!(
        stored.iter().all(|s| s.starts_with("enc:v1:")),
        "keys encrypted at rest"
    );
    let secrets_key = std::fs::read_to_string(d.join("certs/secrets.key")).unwrap();
    let ca_key = std::fs::read_to_string(d.join("certs/ca-key.pem")).unwrap();
    let ca_key_lines: Vec<&str> = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    let ca_key_body = ca_key_lines.concat();
    let basic = |t: &str| raw::basic(t).trim_start_matches("Basic ").to_string();
    let mut secrets: Vec<(String, String)> = keys
        .iter()
        .map(|k| ("provider key".to_string(), k.to_string()))
        .collect();
    secrets.extend([
        ("agent token".into(), token.clone()),
        ("agent token, Basic".into(), basic(&token)),
        ("wrong token".into(), wrong_token.to_string()),
        ("wrong token, Basic".into(), basic(wrong_token)),
        ("admin token".into(), admin_token.clone()),
        ("secrets key file".into(), secrets_key.trim().to_string()),
        ("CA key body".into(), ca_key_body),
    ]);
    secrets.extend(
        ca_key_lines
            .iter()
            .map(|l| ("CA key line".to_string(), l.to_string())),
    );
    for s in &stored {
        secrets.push(("stored ciphertext".into(), s.clone()));
        secrets.push(("ciphertext body".into(), s[16..].to_string()));
    }
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is long enough to search for");
        assert!(!everything.contains(secret.as_str()), "{what} leaked");
    }
    assert!(!everything.contains("PRIVATE KEY"));
}

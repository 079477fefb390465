//! Writing a base URL: rows written before the policy marked `error` alone; the admin API, the
//! CLI and `apply` refusing malformed and private base URLs unless allowed.

use super::*;

/// Providers written under a wide policy, then served by a proxy whose policy is narrower.
async fn seed_legacy(url: &str) {
    let store = Store::connect(url)
        .await
        .unwrap()
        .with_upstream_policy(upstream_policy(&["0.0.0.0/0", "::/0"]));
    for (name, base, host) in [
        ("legacy-meta", "http://169.254.169.254", "meta.example"),
        ("legacy-loop", "https://127.0.0.1:9", "loop.example"),
        (
            "legacy-name",
            "http://metadata.google.internal",
            "name.example",
        ),
        ("legacy-ula", "https://[fd00:ec2::254]", "ula.example"),
        ("good", "https://api.example.com", "good.example"),
    ] {
        store
            .create_provider(provider(name, base, host))
            .await
            .unwrap();
    }
    store.close().await;
}

async fn statuses(proxy: &TestProxy) -> Vec<(String, String, Vec<String>)> {
    let (code, body) = proxy.admin_get("/api/v1/providers").await;
    assert_eq!(code, 200);
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let warnings = p["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap().to_string())
                .collect();
            (
                p["name"].as_str().unwrap().to_string(),
                p["status"].as_str().unwrap().to_string(),
                warnings,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_before_the_policy_are_marked_error_alone() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("legacy.db").display());
    seed_legacy(&url).await;
    let proxy = Env::with(|o| o.database(&url).allow_private_upstreams(&[])).await;
    for (name, status, warnings) in statuses(&proxy).await {
        if name == "good" {
            assert_eq!(status, "enabled");
            continue;
        }
        assert_eq!(status, "error", "{name}");
        assert_eq!(warnings.len(), 1, "{name}: {warnings:?}");
        assert!(
            warnings[0].contains("--allow-private-upstreams"),
            "{name}: {warnings:?}"
        );
    }
    let hosts: Vec<String> = proxy
        .app
        .router
        .snapshot()
        .host_map()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert_eq!(hosts, vec!["good.example:443"]);
    assert_eq!(proxy.app.reload_stats.errors.load(Ordering::SeqCst), 0);

    // The row can still be edited without touching its base URL, and repointed to a public
    // host; a write of another private base URL is refused.
    let legacy = "/api/v1/providers/legacy-loop";
    let (code, _) = proxy
        .admin_patch(legacy, json!({"enforce_models": true}))
        .await;
    assert_eq!(code, 200);
    let private = json!({"base_url": "https://10.1.2.3"});
    let (code, err) = proxy.admin_patch(legacy, private).await;
    assert_eq!(code, 422, "{err}");
    let public = json!({"base_url": "https://llm.example.com"});
    let (code, view) = proxy.admin_patch(legacy, public).await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["status"], "enabled", "{view}");
    let errors: Vec<String> = statuses(&proxy)
        .await
        .into_iter()
        .filter(|(_, s, _)| s == "error")
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(errors, vec!["legacy-meta", "legacy-name", "legacy-ula"]);

    // Under a policy that allows the metadata address, exactly the rows pointing there serve.
    let dir2 = tempfile::tempdir().unwrap();
    let url2 = format!("sqlite://{}", dir2.path().join("legacy.db").display());
    seed_legacy(&url2).await;
    let wider = Env::with(|o| {
        o.database(&url2)
            .allow_private_upstreams(&["169.254.169.254/32"])
    })
    .await;
    let mut got: Vec<(String, String)> = statuses(&wider)
        .await
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    got.sort();
    let want = [
        ("good", "enabled"),
        ("legacy-loop", "error"),
        ("legacy-meta", "enabled"),
        ("legacy-name", "enabled"),
        ("legacy-ula", "error"),
    ];
    assert_eq!(
        got,
        want.map(|(n, s)| (n.to_string(), s.to_string())).to_vec()
    );
}

/// E5 and E6 (RELIABILITY §9.5).
const MALFORMED: &[&str] = &[
    "file:///etc/passwd",
    "ftp://x.example",
    "gopher://x.example",
    "api.openai.com",
    "https://user:s3cret-pw@x.example",
    "https://x.example/#frag",
    "https://x.example/v1?api-version=2024",
];
const PRIVATE: &[&str] = &[
    "http://169.254.169.254/latest/meta-data",
    "https://[fd00:ec2::254]/latest",
    "http://127.0.0.1:8080/latest",
    "https://localhost:8443/latest",
    "http://metadata.google.internal/latest",
    "http://100.100.100.200/latest",
    "http://[::ffff:169.254.169.254]/latest",
    "https://api.localhost/latest",
    "https://user:s3cret-pw@127.0.0.1/latest",
];

#[tokio::test]
async fn the_admin_api_refuses_malformed_and_private_base_urls_with_422() {
    let proxy = Env::with(|o| o.allow_private_upstreams(&[])).await;
    for (i, url) in MALFORMED.iter().chain(PRIVATE).enumerate() {
        let body = json!({"name": format!("p{i}"), "kind": "openai", "base_url": url});
        let (code, err) = proxy.admin_post("/api/v1/providers", body).await;
        assert_eq!(code, 422, "{url}: {err}");
        assert_eq!(err["error"], "invalid", "{url}: {err}");
        let detail = err["detail"].as_str().unwrap();
        assert!(
            !detail.contains("s3cret-pw") && !detail.contains("latest") && !detail.contains(url),
            "{url}: the detail must not echo the URL: {detail}"
        );
        if PRIVATE.contains(url) && !url.contains('@') {
            assert!(detail.contains("--allow-private-upstreams"), "{detail}");
        }
    }
    let (_, list) = proxy.admin_get("/api/v1/providers").await;
    assert_eq!(list["items"], json!([]), "nothing was written");

    // PATCH is checked the same way and leaves the row as it was.
    let (code, _) = proxy
        .admin_post(
            "/api/v1/providers",
            json!({"name": "ok", "kind": "openai", "base_url": "https://api.example.com"}),
        )
        .await;
    assert_eq!(code, 201);
    for url in PRIVATE {
        let (code, err) = proxy
            .admin_patch("/api/v1/providers/ok", json!({"base_url": url}))
            .await;
        assert_eq!(code, 422, "{url}: {err}");
    }
    let (_, ok) = proxy.admin_get("/api/v1/providers/ok").await;
    assert_eq!(ok["base_url"], "https://api.example.com");

    // With the flag, exactly the allowed range is accepted.
    let allowed =
        Env::with(|o| o.allow_private_upstreams(&["169.254.169.254/32", "fd00:ec2::/32"])).await;
    for (i, (url, code)) in [
        ("http://169.254.169.254/latest/meta-data", 201),
        ("http://metadata.google.internal", 201),
        ("https://[fd00:ec2::254]", 201),
        ("http://[::ffff:169.254.169.254]", 201),
        ("http://169.254.169.253", 422),
        ("http://127.0.0.1:8080", 422),
        ("https://localhost", 422),
        ("http://100.100.100.200", 422),
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"name": format!("a{i}"), "kind": "openai", "base_url": url});
        let (got, err) = allowed.admin_post("/api/v1/providers", body).await;
        assert_eq!(got, code, "{url}: {err}");
    }
}

#[test]
fn the_cli_and_apply_refuse_private_base_urls_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, url) in MALFORMED.iter().chain(PRIVATE).enumerate() {
        let name = format!("p{i}");
        let out = run(d, &create_provider(&name, "openai", url, &[]), &[]);
        assert_eq!(out.status.code(), Some(64), "{url}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("error: base_url"), "{url}: {err}");
        assert!(
            !err.contains("s3cret-pw") && !err.contains("latest"),
            "{url}: {err}"
        );
    }
    let list = stdout(&run(d, &["providers", "list"], &[]));
    assert_eq!(list.lines().count(), 1, "header only: {list}");

    // The flag (or its environment variable) allows exactly its ranges.
    let allow_metadata = ["--allow-private-upstreams", "169.254.0.0/16"];
    let meta = create_provider("meta", "openai", "http://169.254.169.254", &allow_metadata);
    let out = run(d, &meta, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let wrong = create_provider("loop", "openai", "https://127.0.0.1:8443", &allow_metadata);
    assert_eq!(run(d, &wrong, &[]).status.code(), Some(64));
    let out = run(
        d,
        &create_provider("loop", "openai", "https://127.0.0.1:8443", &[]),
        &[("AIBRIDGE_ALLOW_PRIVATE_UPSTREAMS", "127.0.0.0/8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // update: a new private base URL needs the flag; other edits of such a row do not.
    let update = |extra: &[&str]| {
        let mut args = vec!["providers", "update", "meta"];
        args.extend(extra);
        run(d, &args, &[])
    };
    assert_eq!(
        update(&["--base-url", "http://10.0.0.1"]).status.code(),
        Some(64)
    );
    assert_eq!(
        update(&["--base-url", "http://169.254.169.253"])
            .status
            .code(),
        Some(64)
    );
    let out = update(&["--enabled", "false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = update(&[
        "--base-url",
        "http://169.254.169.253",
        "--allow-private-upstreams",
        "169.254.0.0/16",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // apply checks every base URL before writing anything, dry run included.
    let file = d.join("aibridge.toml");
    std::fs::write(
        &file,
        "[[providers]]\nname = \"good\"\nkind = \"openai\"\nbase_url = \"https://api.example.com\"\n\n\
         [[providers]]\nname = \"bad\"\nkind = \"openai\"\nbase_url = \"http://[fd00:ec2::254]\"\n",
    )
    .unwrap();
    let path = file.display().to_string();
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec!["apply", "-f", &path];
        args.extend(extra);
        let out = run(d, &args, &[]);
        assert_eq!(out.status.code(), Some(64), "{extra:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("provider bad") && stderr(&out).contains("fd00:ec2::254"),
            "{}",
            stderr(&out)
        );
    }
    let list = stdout(&run(d, &["providers", "list"], &[]));
    assert!(!list.contains("good"), "nothing applied: {list}");
    let out = run(
        d,
        &[
            "apply",
            "-f",
            &path,
            "--allow-private-upstreams",
            "fd00::/8",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&run(d, &["providers", "list"], &[]));
    assert!(list.contains("good") && list.contains("bad"), "{list}");
}

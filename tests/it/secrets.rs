//! Provider keys at rest (S3) and secrets that never leak (S2, S4, F-19): what the database
//! holds once keys are encrypted, rows whose ciphertext was moved, wrong or missing key files,
//! rotation under a running proxy, the `secrets` commands of the real binary, and a full `serve`
//! session at trace level whose every log line, response body and header is searched for every
//! secret it handled.

use crate::both_backends;
use crate::cli::{bin, stderr, stdout, Child};
use crate::support::db::TestDb;
use crate::support::upstream::{CHAT_JSON, MESSAGES_JSON};
use crate::support::*;
use aibridge_proxy::config::NonProviderHosts;
use aibridge_proxy::provider::ProviderKind;
use aibridge_proxy::secret::Secret;
use aibridge_proxy::store::{
    CryptoError, Keyring, NewProvider, Rotation, SecretsKey, Store, StoreError,
};
use base64::Engine;
use serde_json::json;
use sqlx::Connection;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use uuid::Uuid;

/// Run `$body` with `$c` bound to a plain connection (no store involved) on either backend.
macro_rules! with_conn {
    ($url:expr, |$c:ident| $body:expr) => {{
        let url: &str = $url;
        if url.starts_with("sqlite:") {
            let mut $c = sqlx::SqliteConnection::connect(url).await.unwrap();
            let out = $body;
            $c.close().await.unwrap();
            out
        } else {
            let mut $c = sqlx::PgConnection::connect(url).await.unwrap();
            let out = $body;
            $c.close().await.unwrap();
            out
        }
    }};
}

/// `(id, provider_id, api_key)` of every key row, oldest first, as stored.
async fn raw_keys(url: &str) -> Vec<(Uuid, Uuid, String)> {
    with_conn!(url, |c| sqlx::query_as(
        "SELECT id, provider_id, api_key FROM ai_provider_keys ORDER BY created_at, id"
    )
    .fetch_all(&mut c)
    .await
    .unwrap())
}

/// Every column of every key row, as text (blobs as hex), one line per row.
async fn dump(url: &str) -> String {
    let lines: Vec<String> = if url.starts_with("sqlite:") {
        with_conn!(url, |c| {
            let columns: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM pragma_table_info('ai_provider_keys')")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
            assert_eq!(columns, 4, "the dump names every column");
            sqlx::query_scalar(
                "SELECT quote(id) || '|' || quote(provider_id) || '|' || quote(api_key) || '|' || \
                 quote(created_at) FROM ai_provider_keys",
            )
            .fetch_all(&mut c)
            .await
            .unwrap()
        })
    } else {
        // A whole-row cast: every column, whatever the table holds.
        with_conn!(url, |c| sqlx::query_scalar(
            "SELECT k::text FROM ai_provider_keys k"
        )
        .fetch_all(&mut c)
        .await
        .unwrap())
    };
    lines.join("\n")
}

async fn raw_set_key(url: &str, id: Uuid, value: &str) {
    let updated: u64 = with_conn!(url, |c| sqlx::query(
        "UPDATE ai_provider_keys SET api_key = $1 WHERE id = $2"
    )
    .bind(value)
    .bind(id)
    .execute(&mut c)
    .await
    .unwrap()
    .rows_affected());
    assert_eq!(updated, 1);
}

/// The forms a key's bytes could take in a dump: as is, hex (both cases), base64.
fn encodings(key: &str) -> Vec<String> {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        key.to_string(),
        hex.to_uppercase(),
        hex,
        base64::engine::general_purpose::STANDARD.encode(key),
    ]
}

fn new_key_file(dir: &Path, name: &str) -> (PathBuf, SecretsKey) {
    let path = dir.join(name);
    let key = SecretsKey::generate(&path, false).unwrap();
    (path, key)
}

fn keyring(primary: Option<&Path>, previous: Option<&Path>) -> Keyring {
    Keyring::load(primary, previous).unwrap()
}

fn provider(
    name: &str,
    kind: ProviderKind,
    host: &str,
    base_url: &str,
    keys: &[&str],
) -> NewProvider {
    NewProvider {
        name: name.into(),
        kind,
        base_url: base_url.into(),
        intercept_hosts: vec![host.into()],
        enabled: true,
        enforce_models: false,
        api_keys: keys.iter().map(|k| Secret::new(k.to_string())).collect(),
    }
}

fn clear_keys(p: &aibridge_proxy::store::Provider) -> Vec<String> {
    p.keys
        .iter()
        .map(|k| k.api_key.as_ref().unwrap().expose().clone())
        .collect()
}

async fn encrypted_rows_hold_no_key_bytes(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = new_key_file(dir.path(), "secrets.key");
    let store = Store::connect(&db.url)
        .await
        .unwrap()
        .with_keyring(keyring(Some(&path), None));
    let shared = "sk-shared-between-two-rows-0001";
    let keys = [
        "sk-proj-first-key-aaaaaaaaaaaa",
        "sk-proj-second-key-bbbbbbbbbbb",
        "sk-ant-added-later-ccccccccccc",
        "sk-ant-replacement-ddddddddddd",
        shared,
    ];
    store
        .create_provider(provider(
            "openai",
            ProviderKind::Openai,
            "api.openai.com",
            "https://api.openai.com",
            &[keys[0], keys[1], shared],
        ))
        .await
        .unwrap();
    store
        .create_provider(provider(
            "anthropic",
            ProviderKind::Anthropic,
            "api.anthropic.com",
            "https://api.anthropic.com",
            &[shared],
        ))
        .await
        .unwrap();
    store
        .add_key("anthropic", Secret::new(keys[2].to_string()))
        .await
        .unwrap();
    store
        .update_provider(
            "openai",
            aibridge_proxy::store::ProviderPatch {
                api_keys: Some(vec![
                    Secret::new(keys[0].to_string()),
                    Secret::new(keys[3].to_string()),
                    Secret::new(shared.to_string()),
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // Read back through the store: every key as written (the test is not vacuous).
    let providers = store.list_providers().await.unwrap();
    assert_eq!(clear_keys(&providers[0]), vec![keys[0], keys[3], shared]);
    assert_eq!(clear_keys(&providers[1]), vec![shared, keys[2]]);

    let rows = raw_keys(&db.url).await;
    assert_eq!(rows.len(), 5);
    let prefix = format!("enc:v1:{}:", key.id());
    for (_, _, stored) in &rows {
        assert!(
            stored.starts_with(&prefix),
            "{} row not encrypted",
            db.backend
        );
    }
    let shared_rows: Vec<&String> = rows
        .iter()
        .filter(|(id, _, _)| {
            providers
                .iter()
                .flat_map(|p| &p.keys)
                .any(|k| k.id == *id && k.api_key.as_ref().unwrap().expose() == shared)
        })
        .map(|(_, _, s)| s)
        .collect();
    assert_eq!(shared_rows.len(), 2);
    assert_ne!(shared_rows[0], shared_rows[1], "one nonce per value");

    let text = dump(&db.url).await;
    assert_eq!(text.lines().count(), 5, "{} dump", db.backend);
    for k in keys {
        for form in encodings(k) {
            assert!(
                !text.contains(&form),
                "key bytes in the {} dump",
                db.backend
            );
        }
    }
    assert_eq!(
        store.key_storage().await.unwrap().encrypted.get(&key.id()),
        Some(&5)
    );

    // Without the key file the keys cannot be read, and no key is written in clear next to
    // encrypted ones.
    let bare = Store::connect(&db.url).await.unwrap();
    let p = bare.get_provider("openai").await.unwrap().unwrap();
    assert!(p
        .keys
        .iter()
        .all(|k| matches!(k.api_key, Err(CryptoError::NoSecretsKey))));
    let refused = bare
        .add_key("openai", Secret::new("sk-would-be-clear-0000".into()))
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict(m)) if m.contains("--secrets-key-file")),
        "{refused:?}"
    );
    assert_eq!(raw_keys(&db.url).await.len(), 5);
    bare.close().await;
    store.close().await;

    // SQLite: not even the database files hold a key's bytes.
    if db.backend == "sqlite" {
        let file = db.url.trim_start_matches("sqlite://");
        let mut bytes = Vec::new();
        for suffix in ["", "-wal"] {
            if let Ok(b) = std::fs::read(format!("{file}{suffix}")) {
                bytes.extend(b);
            }
        }
        assert!(bytes.len() > 4096);
        for k in keys {
            assert!(
                !bytes.windows(k.len()).any(|w| w == k.as_bytes()),
                "key bytes in the SQLite files"
            );
        }
    }
}
both_backends!(
    encrypted_rows_hold_no_key_bytes_in_the_database,
    encrypted_rows_hold_no_key_bytes
);

/// POST through the proxy; `None` when the CONNECT itself was refused (host not intercepted).
async fn post(proxy: &TestProxy, url: &str) -> Option<(u16, String)> {
    let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], Http::Two);
    let resp = client.post(url).body("{}").send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap()))
}

/// `(status, warnings)` of provider `name` in `GET /api/v1/providers`, and its masked keys.
async fn provider_status(proxy: &TestProxy, name: &str) -> (String, String, Vec<String>) {
    let (code, body) = proxy.admin("GET", "/api/v1/providers", None).await;
    assert_eq!(code, 200);
    let p = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
        .clone();
    let masked = p["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["masked"].as_str().unwrap().to_string())
        .collect();
    (
        p["status"].as_str().unwrap().to_string(),
        p["warnings"].to_string(),
        masked,
    )
}

async fn upstream_and_ca() -> (MockUpstream, TestCa) {
    let ca = TestCa::new();
    let upstream = MockUpstream::start(ca.server_config(&[b"h2", b"http/1.1"])).await;
    (upstream, ca)
}

async fn swapped_ciphertext_excludes_only_its_provider(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = new_key_file(dir.path(), "secrets.key");
    let (upstream, ca) = upstream_and_ca().await;
    let base = upstream.base_url();
    let store = Store::connect(&db.url)
        .await
        .unwrap()
        .with_keyring(keyring(Some(&path), None))
        .with_upstream_policy(loopback_upstreams());
    let specs = [
        (
            "openai",
            ProviderKind::Openai,
            "api.openai.com",
            "sk-openai-key-111111111",
        ),
        (
            "anthropic",
            ProviderKind::Anthropic,
            "api.anthropic.com",
            "sk-anthropic-key-2222222",
        ),
        (
            "local",
            ProviderKind::OpenaiCompatible,
            "llm.local.test",
            "sk-local-key-333333333",
        ),
    ];
    for (name, kind, host, key) in specs {
        store
            .create_provider(provider(name, kind, host, &base, &[key]))
            .await
            .unwrap();
    }
    let providers = store.list_providers().await.unwrap();
    assert!(providers.iter().all(|p| p.keys[0].api_key.is_ok()));
    let rows = raw_keys(&db.url).await;
    let row_of = |name: &str| {
        let id = providers.iter().find(|p| p.name == name).unwrap().id;
        rows.iter().find(|r| r.1 == id).unwrap().clone()
    };
    let (a, b) = (row_of("openai"), row_of("anthropic"));
    raw_set_key(&db.url, a.0, &b.2).await;
    raw_set_key(&db.url, b.0, &a.2).await;
    store.close().await;

    let proxy = TestProxy::start(TestProxyOptions {
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        database_url: Some(db.url.clone()),
        non_provider_hosts: NonProviderHosts::Deny,
        secrets_key_file: Some(path.clone()),
        ..Default::default()
    })
    .await;
    for name in ["openai", "anthropic"] {
        let (status, warnings, masked) = provider_status(&proxy, name).await;
        assert_eq!(status, "error", "{name}: {warnings}");
        assert!(
            warnings.contains("cannot be decrypted")
                && warnings.contains("copied from another row"),
            "{warnings}"
        );
        assert!(!warnings.contains("enc:v1"), "no ciphertext in the status");
        assert_eq!(masked, vec![aibridge_proxy::store::UNREADABLE_MASK]);
    }
    let (status, _, masked) = provider_status(&proxy, "local").await;
    assert_eq!(status, "enabled");
    assert_eq!(masked, vec!["sk-...3333"]);
    let (_, router) = proxy.admin("GET", "/api/v1/router", None).await;
    assert!(!router.to_string().contains("enc:v1"));

    // The untouched provider serves with its own key; the swapped ones are not intercepted.
    let (code, body) = post(&proxy, "https://llm.local.test/v1/chat/completions")
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, CHAT_JSON));
    assert_eq!(
        upstream.seen().last().unwrap().headers["authorization"],
        "Bearer sk-local-key-333333333"
    );
    assert!(post(&proxy, "https://api.openai.com/v1/chat/completions")
        .await
        .is_none());
    assert!(post(&proxy, "https://api.anthropic.com/v1/messages")
        .await
        .is_none());
    assert_eq!(
        upstream.seen().len(),
        1,
        "nothing else reached the upstream"
    );
}
both_backends!(
    a_swapped_ciphertext_excludes_only_its_provider,
    swapped_ciphertext_excludes_only_its_provider
);

async fn wrong_or_missing_key_file(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, a) = new_key_file(dir.path(), "a.key");
    let (key_b, b) = new_key_file(dir.path(), "b.key");
    let (upstream, ca) = upstream_and_ca().await;
    let base = upstream.base_url();
    // One key in clear (written without a key file), one under key A.
    let clear = Store::connect(&db.url)
        .await
        .unwrap()
        .with_upstream_policy(loopback_upstreams());
    clear
        .create_provider(provider(
            "anthropic",
            ProviderKind::Anthropic,
            "api.anthropic.com",
            &base,
            &["sk-ant-clear-key-0123456789"],
        ))
        .await
        .unwrap();
    clear.close().await;
    let under_a = Store::connect(&db.url)
        .await
        .unwrap()
        .with_keyring(keyring(Some(&key_a), None))
        .with_upstream_policy(loopback_upstreams());
    under_a
        .create_provider(provider(
            "openai",
            ProviderKind::Openai,
            "api.openai.com",
            &base,
            &["sk-openai-under-a-0123456789"],
        ))
        .await
        .unwrap();
    under_a.close().await;

    let start = |key: Option<PathBuf>| {
        TestProxy::start(TestProxyOptions {
            upstream_ca_pem: Some(ca.cert_pem.clone()),
            database_url: Some(db.url.clone()),
            non_provider_hosts: NonProviderHosts::Deny,
            secrets_key_file: key,
            ..Default::default()
        })
    };
    let wrong = start(Some(key_b.clone())).await;
    let (status, warnings, _) = provider_status(&wrong, "openai").await;
    assert_eq!(status, "error");
    assert!(
        warnings.contains(&a.id().to_string()) && warnings.contains("was not given"),
        "{warnings}"
    );
    let (status, _, masked) = provider_status(&wrong, "anthropic").await;
    assert_eq!(
        (status.as_str(), masked),
        ("enabled", vec!["sk-...6789".to_string()])
    );
    let (code, body) = post(&wrong, "https://api.anthropic.com/v1/messages")
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, MESSAGES_JSON));
    assert_eq!(
        upstream.seen().last().unwrap().headers["x-api-key"],
        "sk-ant-clear-key-0123456789"
    );
    assert!(post(&wrong, "https://api.openai.com/v1/chat/completions")
        .await
        .is_none());
    // Its writes are sealed under B, next to A's and the clear one.
    let (code, _) = wrong
        .admin(
            "POST",
            "/api/v1/providers/anthropic/keys",
            Some(json!({"api_key": "sk-ant-second-key-0123456789"})),
        )
        .await;
    assert_eq!(code, 201);
    let stored: Vec<String> = raw_keys(&db.url).await.into_iter().map(|r| r.2).collect();
    assert_eq!(stored[0], "sk-ant-clear-key-0123456789");
    assert!(stored[1].starts_with(&format!("enc:v1:{}:", a.id())));
    assert!(stored[2].starts_with(&format!("enc:v1:{}:", b.id())));

    let missing = start(None).await;
    let (status, warnings, _) = provider_status(&missing, "openai").await;
    assert_eq!(status, "error");
    assert!(warnings.contains("no --secrets-key-file"), "{warnings}");
    let (status, warnings, _) = provider_status(&missing, "anthropic").await;
    assert_eq!(status, "error", "its second key is under B: {warnings}");
    // Without a key file nothing is written in clear next to encrypted keys.
    let (code, body) = missing
        .admin(
            "POST",
            "/api/v1/providers/anthropic/keys",
            Some(json!({"api_key": "sk-ant-would-be-clear-012345"})),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("--secrets-key-file"));
    assert_eq!(raw_keys(&db.url).await.len(), 3);
}
both_backends!(
    a_wrong_or_missing_key_file_excludes_only_those_providers,
    wrong_or_missing_key_file
);

async fn rotation_under_a_running_proxy(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (old_path, old) = new_key_file(dir.path(), "old.key");
    let (new_path, new) = new_key_file(dir.path(), "new.key");
    let (upstream, ca) = upstream_and_ca().await;
    let base = upstream.base_url();
    let (openai_key, anthropic_key) = ("sk-openai-rotated-0123456789", "sk-ant-rotated-0123456789");
    let clear = Store::connect(&db.url)
        .await
        .unwrap()
        .with_upstream_policy(loopback_upstreams());
    clear
        .create_provider(provider(
            "openai",
            ProviderKind::Openai,
            "api.openai.com",
            &base,
            &[openai_key],
        ))
        .await
        .unwrap();
    clear.close().await;
    let old_store = Store::connect(&db.url)
        .await
        .unwrap()
        .with_keyring(keyring(Some(&old_path), None))
        .with_upstream_policy(loopback_upstreams());
    old_store
        .create_provider(provider(
            "anthropic",
            ProviderKind::Anthropic,
            "api.anthropic.com",
            &base,
            &[anthropic_key],
        ))
        .await
        .unwrap();

    // Step 2 of a rotation: the proxy holds the new key and, read-only, the old one.
    let proxy = TestProxy::start(TestProxyOptions {
        upstream_ca_pem: Some(ca.cert_pem.clone()),
        database_url: Some(db.url.clone()),
        non_provider_hosts: NonProviderHosts::Deny,
        secrets_key_file: Some(new_path.clone()),
        previous_secrets_key_file: Some(old_path.clone()),
        ..Default::default()
    })
    .await;
    let injected = |upstream: &MockUpstream| {
        let seen = upstream.seen();
        let last_two = &seen[seen.len() - 2..];
        (
            last_two[0].headers["authorization"]
                .to_str()
                .unwrap()
                .to_string(),
            last_two[1].headers["x-api-key"]
                .to_str()
                .unwrap()
                .to_string(),
        )
    };
    let expected = (format!("Bearer {openai_key}"), anthropic_key.to_string());
    for url in [
        "https://api.openai.com/v1/chat/completions",
        "https://api.anthropic.com/v1/messages",
    ] {
        assert_eq!(post(&proxy, url).await.unwrap().0, 200, "{url}");
    }
    assert_eq!(injected(&upstream), expected);

    let before: Vec<String> = raw_keys(&db.url).await.into_iter().map(|r| r.2).collect();
    assert_eq!(
        before[0], openai_key,
        "written without a key file: in clear"
    );
    assert!(before[1].starts_with(&format!("enc:v1:{}:", old.id())));
    let generation = proxy.generation();
    let counter = old_store.change_counter().await.unwrap();
    let rotation = old_store
        .rotate_keys(Some(Arc::new(SecretsKey::load(&new_path).unwrap())))
        .await
        .unwrap();
    assert_eq!(
        rotation,
        Rotation {
            rewritten: 2,
            unchanged: 0
        }
    );
    assert!(
        old_store.change_counter().await.unwrap() > counter,
        "the rotation is published"
    );
    proxy.wait_for_generation(generation).await;

    let rows = raw_keys(&db.url).await;
    assert_eq!(rows.len(), 2);
    for (_, _, stored) in &rows {
        assert!(
            stored.starts_with(&format!("enc:v1:{}:", new.id())),
            "every key under the new one"
        );
    }
    let text = dump(&db.url).await;
    for k in [openai_key, anthropic_key] {
        assert!(!text.contains(k));
    }
    for url in [
        "https://api.openai.com/v1/chat/completions",
        "https://api.anthropic.com/v1/messages",
    ] {
        assert_eq!(
            post(&proxy, url).await.unwrap().0,
            200,
            "{url} after rotation"
        );
    }
    assert_eq!(
        injected(&upstream),
        expected,
        "the same keys are injected after rotation"
    );
    for name in ["openai", "anthropic"] {
        assert_eq!(provider_status(&proxy, name).await.0, "enabled");
    }

    // Idempotent: a second run changes and publishes nothing; the new key alone reads all.
    let new_store = Store::connect(&db.url)
        .await
        .unwrap()
        .with_keyring(keyring(Some(&new_path), None));
    let counter = new_store.change_counter().await.unwrap();
    let again = new_store
        .rotate_keys(new_store.keyring().primary().cloned())
        .await
        .unwrap();
    assert_eq!(
        again,
        Rotation {
            rewritten: 0,
            unchanged: 2
        }
    );
    assert_eq!(new_store.change_counter().await.unwrap(), counter);
    assert_eq!(raw_keys(&db.url).await, rows);
    let providers = new_store.list_providers().await.unwrap();
    assert_eq!(clear_keys(&providers[0]), vec![openai_key]);
    assert_eq!(clear_keys(&providers[1]), vec![anthropic_key]);

    // A key nobody can read stops the whole rotation: nothing is rewritten or published.
    let (stray_path, stray) = new_key_file(dir.path(), "stray.key");
    let stray_store = Store::connect(&db.url)
        .await
        .unwrap()
        .with_keyring(keyring(Some(&stray_path), None))
        .with_upstream_policy(loopback_upstreams());
    stray_store
        .create_provider(provider(
            "stray",
            ProviderKind::Openai,
            "stray.test",
            &base,
            &["sk-stray-0123456789"],
        ))
        .await
        .unwrap();
    stray_store.close().await;
    let before = raw_keys(&db.url).await;
    let counter = new_store.change_counter().await.unwrap();
    let err = new_store.rotate_keys(None).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::UnreadableKey { provider, reason: CryptoError::UnknownSecretsKey(id), .. } if provider == "stray" && *id == stray.id()),
        "{err}"
    );
    assert!(!err.to_string().contains("enc:v1"), "{err}");
    assert_eq!(raw_keys(&db.url).await, before);
    assert_eq!(new_store.change_counter().await.unwrap(), counter);
    new_store.close().await;
    old_store.close().await;
}
both_backends!(
    rotation_reencrypts_every_key_and_the_proxy_keeps_injecting,
    rotation_under_a_running_proxy
);

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("cli.db").display())
}

/// The binary in `dir` with `args` (split on whitespace: no argument here has a space).
fn cli(dir: &Path, args: &str, env: &[(&str, &str)]) -> Output {
    bin()
        .args(args.split_whitespace())
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test]
async fn secrets_init_status_and_rotate_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = sqlite_url(d);
    let key = "sk-cli-secret-value-abcd";
    let mut printed = String::new();
    let mut run = |args: &str, env: &[(&str, &str)]| {
        let out = cli(d, args, env);
        printed.push_str(&stdout(&out));
        printed.push_str(&stderr(&out));
        out
    };

    let init = run("secrets init --secrets-key-file keys/old.key", &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    let old_path = d.join("keys/old.key");
    let mode = std::fs::metadata(&old_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let old_text = std::fs::read_to_string(&old_path).unwrap();
    let old_id = SecretsKey::load(&old_path).unwrap().id().to_string();
    assert!(stdout(&init).contains(&old_id), "{}", stdout(&init));
    let again = run("secrets init --secrets-key-file keys/old.key", &[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read_to_string(&old_path).unwrap(),
        old_text,
        "kept"
    );

    // The key file can come from the environment, like every flag.
    let create = run(
        &format!("providers create --name openai --kind openai --base-url https://api.openai.com --key-env K --database-url {db}"),
        &[("K", key), ("AIBRIDGE_SECRETS_KEY_FILE", "keys/old.key")],
    );
    assert!(create.status.success(), "{}", stderr(&create));
    assert!(raw_keys(&db).await[0]
        .2
        .starts_with(&format!("enc:v1:{old_id}:")));

    let list = run(&format!("providers list --database-url {db}"), &[]);
    assert!(
        stdout(&list).contains(aibridge_proxy::store::UNREADABLE_MASK),
        "{}",
        stdout(&list)
    );
    let with_key = format!("--database-url {db} --secrets-key-file keys/old.key");
    let list = run(&format!("providers list {with_key}"), &[]);
    assert!(stdout(&list).contains("sk-...abcd"), "{}", stdout(&list));
    let status = run(&format!("secrets status {with_key}"), &[]);
    let line = format!("encrypted under secrets key {old_id}: 1 (--secrets-key-file)");
    assert!(stdout(&status).contains(&line), "{}", stdout(&status));

    let init = run("secrets init --secrets-key-file keys/new.key", &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    let new_id = SecretsKey::load(&d.join("keys/new.key"))
        .unwrap()
        .id()
        .to_string();
    let rotate = format!("secrets rotate --database-url {db}");
    let to_new =
        format!("{rotate} --secrets-key-file keys/old.key --new-secrets-key-file keys/new.key");
    let rotated = run(&to_new, &[]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let line =
        format!("re-encrypted 1 of 1 provider keys under secrets key {new_id} (0 already were)");
    assert!(stdout(&rotated).contains(&line), "{}", stdout(&rotated));
    assert!(raw_keys(&db).await[0]
        .2
        .starts_with(&format!("enc:v1:{new_id}:")));
    let twice = run(&to_new, &[]);
    assert!(
        stdout(&twice).contains("re-encrypted 0 of 1"),
        "{}",
        stdout(&twice)
    );
    // Without the key the rows are under, the rotation refuses and names the provider.
    let lost = run(
        &format!("{rotate} --new-secrets-key-file keys/old.key"),
        &[],
    );
    assert!(!lost.status.success());
    let err = stderr(&lost);
    assert!(err.contains("openai") && err.contains(&new_id), "{err}");
    let neither = run(&format!("{rotate} --secrets-key-file keys/new.key"), &[]);
    assert_eq!(
        neither.status.code(),
        Some(2),
        "--new-secrets-key-file or --to-plaintext"
    );

    let plain = run(
        &format!("{rotate} --secrets-key-file keys/new.key --to-plaintext"),
        &[],
    );
    assert!(
        stdout(&plain).contains("decrypted 1 of 1"),
        "{}",
        stdout(&plain)
    );
    assert_eq!(raw_keys(&db).await[0].2, key, "back in clear");
    let status = run(&format!("secrets status --database-url {db}"), &[]);
    assert!(
        stdout(&status).contains("in clear: 1"),
        "{}",
        stdout(&status)
    );

    let new_text = std::fs::read_to_string(d.join("keys/new.key")).unwrap();
    for secret in [key, old_text.trim(), new_text.trim()] {
        assert!(!printed.contains(secret), "a secret was printed");
    }
}

#[test]
fn a_group_readable_key_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = sqlite_url(d);
    let init = cli(d, "secrets init --secrets-key-file open.key", &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    std::fs::set_permissions(d.join("open.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let serve = cli(
        d,
        &format!("serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --database-url {db} --secrets-key-file open.key"),
        &[],
    );
    assert_eq!(serve.status.code(), Some(64), "{}", stderr(&serve));
    let err = stderr(&serve);
    assert!(
        err.contains("open.key") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(
        !d.join("certs/ca-key.pem").exists(),
        "refused before generating anything"
    );
    let list = cli(
        d,
        &format!("providers list --database-url {db} --previous-secrets-key-file open.key"),
        &[],
    );
    assert!(!list.status.success());
    let err = stderr(&list);
    assert!(
        err.contains("open.key") && err.contains("chmod 600"),
        "{err}"
    );
}

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
}

/// F-19: `serve` at trace level through a whole session; every log line, every response (status,
/// headers, body) and the binary's stdout are searched for every secret of the session.
#[tokio::test]
async fn no_secret_leaks_from_a_full_session_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (upstream, ca) = upstream_and_ca().await;
    let upstream_ca_file = ca.write_pem(&d);
    let db = sqlite_url(&d);
    let init = cli(&d, "secrets init --secrets-key-file certs/secrets.key", &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    let mut capture = Capture(stdout(&init) + &stderr(&init));
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, admin_port, down_port) = (free_port(), free_port(), free_port());
    let (log_path, out_path) = (d.join("serve.log"), d.join("serve.out"));
    let mut child = Child(
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
    let admin = reqwest::Client::builder()
        .use_preconfigured_tls(tls::client_config(&[], &[]))
        .timeout(WAIT)
        .build()
        .unwrap();
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
        req.send()
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
    let (code, _) = capture
        .take(
            "create openai",
            call("POST", "/api/v1/providers", Some(openai.to_string()))
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 201);
    let add = json!({"api_key": keys[1]}).to_string();
    let (code, _) = capture
        .take(
            "add key",
            call("POST", "/api/v1/providers/openai/keys", Some(add))
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 201);
    let down = json!({"name": "anthropic", "kind": "anthropic",
        "base_url": format!("https://127.0.0.1:{down_port}"),
        "intercept_hosts": ["api.anthropic.com"], "api_keys": [keys[2]]});
    let (code, _) = capture
        .take(
            "create anthropic",
            call("POST", "/api/v1/providers", Some(down.to_string()))
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 201);
    let model = json!({"provider": "openai", "model": "gpt-4o-mini"}).to_string();
    let (code, _) = capture
        .take(
            "create model",
            call("POST", "/api/v1/models", Some(model)).await.unwrap(),
        )
        .await;
    assert_eq!(code, 201);
    // The one response that must hold the token (shown once) is the only one not captured.
    let created = call(
        "POST",
        "/api/v1/tokens",
        Some(json!({"user": "leakcheck"}).to_string()),
    )
    .await
    .unwrap();
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
            "https://api.openai.com/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","messages":[]}"#,
            200,
        ),
        (
            "sse",
            "https://api.openai.com/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","stream":true}"#,
            200,
        ),
        (
            "policy",
            "https://api.openai.com/v1/chat/completions",
            r#"{"model":"gpt-not-allowed"}"#,
            403,
        ),
        (
            "down",
            "https://api.anthropic.com/v1/messages",
            r#"{"model":"claude-sonnet"}"#,
            502,
        ),
    ] {
        let resp = agent
            .post(url)
            .header("authorization", "Bearer sk-agent-own-credential")
            .body(body)
            .send()
            .await
            .unwrap();
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
    let refused = wrong
        .get("https://api.openai.com/v1/models")
        .send()
        .await
        .unwrap_err();
    capture
        .0
        .push_str(&format!("== wrong token: {refused:?}\n"));
    let (head, _) = raw::send_head(
        proxy_addr,
        format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: {}\r\n\r\n",
            raw::basic(wrong_token)
        )
        .as_bytes(),
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
            .take(what, call(method, path, body).await.unwrap())
            .await;
        assert_eq!(code, expected, "{what}");
    }
    let unauthorized = admin
        .get(format!("{admin_base}/api/v1/providers"))
        .bearer_auth(format!("{admin_token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(capture.take("unauthorized", unauthorized).await.0, 401);

    // Every read view.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = call("GET", "/api/v1/interceptions", None).await.unwrap();
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
            .take(path, call("GET", path, None).await.unwrap())
            .await;
        assert_eq!(code, 200, "{path}");
    }

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || {
        let s = child.0.wait();
        drop(child);
        s
    })
    .await
    .unwrap()
    .unwrap();
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

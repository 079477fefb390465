//! Keys at rest (S3): encrypted rows hold no key bytes, and a ciphertext moved to another row
//! excludes only its provider.

use super::*;

async fn encrypted_rows_hold_no_key_bytes(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = new_key_file(dir.path(), "secrets.key");
    let store = store_under(&db.url, Some(&path)).await;
    let shared = "sk-shared-between-two-rows-0001";
    let keys = [
        "sk-proj-first-key-aaaaaaaaaaaa",
        "sk-proj-second-key-bbbbbbbbbbb",
        "sk-ant-added-later-ccccccccccc",
        "sk-ant-replacement-ddddddddddd",
        shared,
    ];
    store
        .create_provider(openai_row(
            "https://api.openai.com",
            &[keys[0], keys[1], shared],
        ))
        .await
        .unwrap();
    store
        .create_provider(anthropic_row("https://api.anthropic.com", &[shared]))
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

async fn swapped_ciphertext_excludes_only_its_provider(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = new_key_file(dir.path(), "secrets.key");
    let setup = setup_on(db).await;
    let base = setup.upstream().base_url();
    let store = store_under(&db.url, Some(&path)).await;
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

    let proxy = setup.secrets_key(path.clone()).start().await;
    let upstream = &proxy.upstream;
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
    let (_, router) = proxy.admin_get("/api/v1/router").await;
    assert!(!router.to_string().contains("enc:v1"));

    // The untouched provider serves with its own key; the swapped ones are not intercepted.
    let local = "https://llm.local.test/v1/chat/completions";
    let local_key = ("authorization", "Bearer sk-local-key-333333333");
    served_with(&proxy, local, CHAT_JSON, local_key).await;
    assert!(post(&proxy, CHAT).await.is_none());
    assert!(post(&proxy, MESSAGES).await.is_none());
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

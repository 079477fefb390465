//! Key files under a running proxy: a wrong or missing one excludes only the providers it
//! cannot read; a rotation re-encrypts every key while the proxy keeps injecting them.

use super::*;

async fn wrong_or_missing_key_file(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, a) = new_key_file(dir.path(), "a.key");
    let (key_b, b) = new_key_file(dir.path(), "b.key");
    let setup = setup_on(db).await;
    let base = setup.upstream().base_url();
    // One key in clear (written without a key file), one under key A.
    let clear_row = anthropic_row(&base, &["sk-ant-clear-key-0123456789"]);
    write_row(&db.url, None, clear_row).await;
    let row_under_a = openai_row(&base, &["sk-openai-under-a-0123456789"]);
    write_row(&db.url, Some(&key_a), row_under_a).await;

    let wrong = setup.secrets_key(key_b.clone()).start().await;
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
    let clear_key = ("x-api-key", "sk-ant-clear-key-0123456789");
    served_with(&wrong, MESSAGES, MESSAGES_JSON, clear_key).await;
    assert!(post(&wrong, CHAT).await.is_none());
    // Its writes are sealed under B, next to A's and the clear one.
    let keys = "/api/v1/providers/anthropic/keys";
    let second = json!({"api_key": "sk-ant-second-key-0123456789"});
    assert_eq!(wrong.admin_post(keys, second).await.0, 201);
    let stored: Vec<String> = raw_keys(&db.url).await.into_iter().map(|r| r.2).collect();
    assert_eq!(stored[0], "sk-ant-clear-key-0123456789");
    assert!(stored[1].starts_with(&format!("enc:v1:{}:", a.id())));
    assert!(stored[2].starts_with(&format!("enc:v1:{}:", b.id())));

    let missing = wrong
        .another(|o| o.database(&db.url).deny_non_providers())
        .await;
    let (status, warnings, _) = provider_status(&missing, "openai").await;
    assert_eq!(status, "error");
    assert!(warnings.contains("no --secrets-key-file"), "{warnings}");
    let (status, warnings, _) = provider_status(&missing, "anthropic").await;
    assert_eq!(status, "error", "its second key is under B: {warnings}");
    // Without a key file nothing is written in clear next to encrypted keys.
    let in_clear = json!({"api_key": "sk-ant-would-be-clear-012345"});
    let (code, body) = missing.admin_post(keys, in_clear).await;
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
    let setup = setup_on(db).await;
    let base = setup.upstream().base_url();
    let (openai_key, anthropic_key) = ("sk-openai-rotated-0123456789", "sk-ant-rotated-0123456789");
    write_row(&db.url, None, openai_row(&base, &[openai_key])).await;
    let old_store = store_under(&db.url, Some(&old_path)).await;
    let row = anthropic_row(&base, &[anthropic_key]);
    old_store.create_provider(row).await.unwrap();

    // Step 2 of a rotation: the proxy holds the new key and, read-only, the old one.
    let proxy = setup
        .secrets_key(new_path.clone())
        .previous_secrets_key(old_path.clone())
        .start()
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
    assert_eq!(injected(&proxy.upstream), expected);

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
        injected(&proxy.upstream),
        expected,
        "the same keys are injected after rotation"
    );
    for name in ["openai", "anthropic"] {
        assert_eq!(provider_status(&proxy, name).await.0, "enabled");
    }

    // Idempotent: a second run changes and publishes nothing; the new key alone reads all.
    let new_store = store_under(&db.url, Some(&new_path)).await;
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
    let stray_row = provider(
        "stray",
        ProviderKind::Openai,
        "stray.test",
        &base,
        &["sk-stray-0123456789"],
    );
    write_row(&db.url, Some(&stray_path), stray_row).await;
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

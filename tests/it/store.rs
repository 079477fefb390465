//! The store on both backends: provider rules, and the default-model invariant under
//! concurrent writers.

use crate::support::both_backends;
use crate::support::db::{new_provider, TestDb};
use aibridge_proxy::secret::Secret;
use aibridge_proxy::store::{
    ModelPatch, NewModel, NewProvider, Provider, ProviderPatch, Store, StoreError,
};
use std::sync::Arc;

/// Provider `name` at `base_url`, no intercept host, one key.
fn provider(name: &str, base_url: &str) -> NewProvider {
    NewProvider {
        intercept_hosts: vec![],
        api_keys: vec![Secret::new(format!("sk-{name}-0123456789"))],
        ..new_provider(name, base_url, "")
    }
}

fn model(provider: &str, name: &str, is_default: bool) -> NewModel {
    NewModel {
        provider: provider.into(),
        model: name.into(),
        display_name: None,
        context_limit: Some(128_000),
        enabled: true,
        is_default,
    }
}

/// Point provider `name` (or id) at `base_url`, nothing else changed.
async fn rebase(store: &Store, name: &str, base_url: &str) -> Provider {
    let patch = ProviderPatch {
        base_url: Some(base_url.into()),
        ..Default::default()
    };
    store.update_provider(name, patch).await.unwrap()
}

/// A patch taking the default role off a model.
fn undefault() -> ModelPatch {
    ModelPatch {
        is_default: Some(false),
        ..Default::default()
    }
}

async fn defaults(store: &Store) -> Vec<String> {
    store
        .list_models()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.is_default)
        .map(|m| m.model)
        .collect()
}

async fn provider_rules(db: &TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    let before = store.change_counter().await.unwrap();
    let p = store
        .create_provider(provider("openai", "https://api.openai.com"))
        .await
        .unwrap();
    assert!(
        store.change_counter().await.unwrap() > before,
        "a write publishes"
    );
    assert_eq!(p.keys.len(), 1);
    assert!(matches!(
        store
            .create_provider(provider("openai", "https://x.example"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .create_provider(provider("Bad", "https://x.example"))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .create_provider(provider("x", "file:///etc/passwd"))
            .await,
        Err(StoreError::Invalid(_))
    ));
    // Moving the base URL to another host without new keys detaches the keys.
    let moved = rebase(&store, "openai", "https://elsewhere.example").await;
    assert!(
        moved.keys.is_empty(),
        "keys must not follow the provider to a new host"
    );
    // Same host, new path: keys stay.
    let p2 = store
        .create_provider(provider("two", "https://two.example/v1"))
        .await
        .unwrap();
    let kept = rebase(&store, &p2.id.to_string(), "https://two.example/v2").await;
    assert_eq!(kept.keys.len(), 1);
    // Same host and port, but plain http: the key would travel unencrypted, so it is detached.
    let downgraded = rebase(&store, "two", "http://two.example:443/v2").await;
    assert!(
        downgraded.keys.is_empty(),
        "an https → http change drops the keys"
    );
    // A failed write leaves nothing behind and publishes nothing.
    let counter = store.change_counter().await.unwrap();
    assert!(store
        .create_provider(provider("two", "https://dup.example"))
        .await
        .is_err());
    assert_eq!(store.change_counter().await.unwrap(), counter);
    assert_eq!(store.list_providers().await.unwrap().len(), 2);
    assert!(store.delete_provider("two").await.unwrap());
    assert!(!store.delete_provider("two").await.unwrap());
    store.close().await;
}
both_backends!(provider_rules_hold, provider_rules);

async fn default_model_rules(db: &TestDb) {
    let store = Store::connect(&db.url).await.unwrap();
    store
        .create_provider(provider("openai", "https://api.openai.com"))
        .await
        .unwrap();
    store
        .create_provider(provider("anthropic", "https://api.anthropic.com"))
        .await
        .unwrap();
    assert!(store.default_model().await.unwrap().is_none());

    let a = store
        .create_model(model("openai", "gpt-a", false))
        .await
        .unwrap();
    assert!(a.is_default, "the first model becomes the default");
    let b = store
        .create_model(model("openai", "gpt-b", false))
        .await
        .unwrap();
    assert!(!b.is_default);
    let c = store
        .create_model(model("anthropic", "claude-c", true))
        .await
        .unwrap();
    assert!(c.is_default);
    assert_eq!(defaults(&store).await, vec!["claude-c"]);

    // PUT is idempotent.
    store.set_default_model(b.id).await.unwrap();
    store.set_default_model(b.id).await.unwrap();
    assert_eq!(defaults(&store).await, vec!["gpt-b"]);

    // Deleting the default promotes the oldest enabled model.
    let disable = ModelPatch {
        enabled: Some(false),
        ..Default::default()
    };
    store.update_model(a.id, disable).await.unwrap();
    assert!(store.delete_model(b.id).await.unwrap());
    assert_eq!(
        defaults(&store).await,
        vec!["claude-c"],
        "oldest *enabled* model"
    );

    // Un-defaulting hands the role on; the last model cannot be un-defaulted.
    store.update_model(c.id, undefault()).await.unwrap();
    assert_eq!(defaults(&store).await, vec!["gpt-a"]);
    // Deleting a provider deletes its models; the default moves if it was one of them.
    assert!(store.delete_provider("openai").await.unwrap());
    assert_eq!(defaults(&store).await, vec!["claude-c"]);
    let only = store.list_models().await.unwrap();
    assert_eq!(only.len(), 1);
    assert!(matches!(
        store.update_model(only[0].id, undefault()).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .create_model(model("anthropic", "claude-c", false))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.create_model(model("nope", "m", false)).await,
        Err(StoreError::NotFound(_))
    ));
    let mut bad = model("anthropic", "x", false);
    bad.context_limit = Some(0);
    assert!(matches!(
        store.create_model(bad).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(store.delete_model(only[0].id).await.unwrap());
    assert!(
        store.default_model().await.unwrap().is_none(),
        "no models, no default"
    );
    store.close().await;
}
both_backends!(default_model_rules_hold, default_model_rules);

async fn concurrent_default_writers(db: &TestDb) {
    let store = Arc::new(Store::connect(&db.url).await.unwrap());
    store
        .create_provider(provider("openai", "https://api.openai.com"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            store
                .create_model(model("openai", &format!("m{i}"), false))
                .await
                .unwrap()
                .id,
        );
    }
    // 20 writers: half set defaults on any model, half delete among the first 20 (often the
    // default of the moment); the last 10 survive.
    let mut tasks = Vec::new();
    for w in 0..20usize {
        let store = store.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for round in 0..5usize {
                let pick = w * 7 + round * 3;
                let result = if w % 2 == 0 {
                    store
                        .set_default_model(ids[pick % ids.len()])
                        .await
                        .map(|_| ())
                } else {
                    store.delete_model(ids[pick % 20]).await.map(|_| ())
                };
                outcomes.push(result);
            }
            outcomes
        }));
    }
    for t in tasks {
        for outcome in t.await.unwrap() {
            match outcome {
                // A default set on a model another writer just deleted is a truthful 404.
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => panic!("{}: writer got a misleading error: {e}", db.backend),
            }
        }
        let n = defaults(&store).await.len();
        let models = store.list_models().await.unwrap().len();
        assert!(
            n == 1 || (n == 0 && models == 0),
            "{}: {n} defaults with {models} models",
            db.backend
        );
    }
    let models = store.list_models().await.unwrap();
    assert!(!models.is_empty());
    assert_eq!(
        models.iter().filter(|m| m.is_default).count(),
        1,
        "{}: exactly one default",
        db.backend
    );
    store.close().await;
}
both_backends!(
    concurrent_writers_leave_exactly_one_default,
    concurrent_default_writers
);

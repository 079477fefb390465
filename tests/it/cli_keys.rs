//! Rotating a provider key from the command line while agents keep calling: `providers keys
//! add` (the old key still injected), then `providers keys remove` of the old one — through a
//! running proxy's admin API — costs no failed request, and afterwards every request carries
//! the new key. Both backends.

use crate::support::bin::Target;
use crate::support::db::TestDb;
use crate::support::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const OLD: &str = "Bearer sk-provider-openai-0123456789";
const NEW_KEY: &str = "sk-rotated-0123456789zzzz";

async fn rotate_under_traffic(db: &TestDb) {
    let env = Env::with(|o| o.openai().database(&db.url)).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("http://{}", env.app.admin_addr.unwrap());
    let t = Target::remote(dir.path(), &admin, &env.admin_token).env("NEW_KEY", NEW_KEY);

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut agents = Vec::new();
    for http in [Http::One, Http::Two, Http::Two] {
        let client = env.client(http);
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        agents.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok =
                    matches!(client.post(CHAT).body("{}").send().await, Ok(r) if r.status() == 200);
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let progress = |n: usize| {
        let sent = sent.clone();
        async move { eventually("traffic", || sent.load(Ordering::Relaxed) >= n).await }
    };
    progress(20).await;

    let keys = t
        .json(&["providers", "keys", "list", "openai", "-o", "json"])
        .await;
    let old_id = keys[0]["id"].as_str().unwrap().to_string();
    let added = t
        .json(&[
            "providers",
            "keys",
            "add",
            "openai",
            "--key-env",
            "NEW_KEY",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(added["masked"], "sk-...zzzz");
    // The oldest key is still the one injected.
    let after_add = sent.load(Ordering::Relaxed);
    progress(after_add + 20).await;
    env.upstream.clear_seen();
    progress(sent.load(Ordering::Relaxed) + 10).await;
    assert!(env
        .upstream
        .seen()
        .iter()
        .all(|s| s.headers["authorization"] == OLD));

    t.expect(0, &["providers", "keys", "remove", "openai", &old_id])
        .await;
    // The admin API answers once this proxy serves the change: from here on, the new key.
    env.upstream.clear_seen();
    let after_remove = sent.load(Ordering::Relaxed);
    progress(after_remove + 20).await;
    stop.store(true, Ordering::Relaxed);
    for a in agents {
        a.await.unwrap();
    }
    let seen = env.upstream.seen();
    let new = format!("Bearer {NEW_KEY}");
    let tail = &seen[seen.len().saturating_sub(10)..];
    assert!(
        tail.iter().all(|s| s.headers["authorization"] == new),
        "the new key after the removal"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {} requests",
        sent.load(Ordering::Relaxed)
    );
    let keys = t
        .json(&["providers", "keys", "list", "openai", "-o", "json"])
        .await;
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["id"], added["id"]);
    env.stop().await;
}
both_backends!(key_rotation_with_traffic, rotate_under_traffic);

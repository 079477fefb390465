//! Health that tells the truth (issue 16, item 10): a reloader that panics is restarted with
//! backoff and counted, `/readyz` is 503 while no reload can happen or reloads have failed for
//! too long, and `/healthz` is 503 only when the process cannot serve at all.

use crate::support::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Poll `/readyz` until `check` holds on its status and body; panics with the last answer.
async fn readyz_until(env: &Env, what: &str, check: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let (status, body) = env.readyz().await;
        if check(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never {what}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn healthz(env: &Env) -> u16 {
    plain_client()
        .get(env.admin_url("/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Poll `/metrics` until the series reaches at least `want`.
async fn at_least(env: &Env, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = env.metric(name, labels).await;
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} = {got} < {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn restarts(task: &str) -> [(&str, &str); 1] {
    [("task", task)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reloader_is_restarted_and_readiness_follows_it() {
    let panics = Arc::new(AtomicBool::new(false));
    let env = Env::with(|o| o.openai().reload_panic(panics.clone())).await;
    let body = readyz_until(&env, "ready", |s, _| s == 200).await;
    assert_eq!(body["reloader_alive"], true);
    let generation = env.app.router.load().generation;

    panics.store(true, Ordering::Release);
    let (status, _) = env
        .admin_post(
            "/api/v1/providers",
            json!({"name": "other", "kind": "openai", "base_url": env.upstream.base_url(), "intercept_hosts": ["h1.example"]}),
        )
        .await;
    assert_eq!(
        status, 201,
        "the write is committed even if no reload applies it"
    );
    let body = readyz_until(&env, "503 with the reloader down", |s, b| {
        s == 503 && b["reloader_alive"] == false
    })
    .await;
    assert_eq!(body["ready"], false);
    // Restarted, and dying again while the fault lasts: counted each time.
    at_least(
        &env,
        "aibridge_proxy_task_restarts_total",
        &restarts("reloader"),
        2.0,
    )
    .await;
    assert!(env.metric("aibridge_proxy_task_panics_total", &[]).await >= 2.0);
    // The previous snapshot keeps serving meanwhile.
    assert_eq!(env.app.router.load().generation, generation);
    let resp = env.client(Http::Two).post(CHAT).body("{}").call().await;
    assert_eq!(resp.status(), 200);

    panics.store(false, Ordering::Release);
    env.wait_route("h1.example:443", true).await;
    let body = readyz_until(&env, "ready again", |s, _| s == 200).await;
    assert_eq!(body["reloader_alive"], true);
    assert!(
        env.app.router.load().generation > generation,
        "generations keep counting up across restarts"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_failing_for_too_long_take_readiness_away() {
    let env = Env::with(|o| {
        o.openai()
            .tweak(|c| c.reload_stale_after = Duration::from_millis(800))
    })
    .await;
    readyz_until(&env, "ready", |s, _| s == 200).await;
    // A real failure of every reload: the table the router reads is gone (and the change
    // counter moved, so the reloader tries).
    let url = format!("sqlite://{}", env.dir.path().join("aibridge.db").display());
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("ALTER TABLE ai_models RENAME TO ai_models_away")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(crate::support::db::BUMP_COUNTER)
        .execute(&db)
        .await
        .unwrap();
    let body = readyz_until(&env, "503 for stale reloads", |s, _| s == 503).await;
    assert_eq!(body["reloader_alive"], true, "{body}");
    assert_eq!(body["subscribed"], true, "{body}");
    assert!(body["reloads_failing_seconds"].as_u64().is_some(), "{body}");
    assert!(
        env.metric("aibridge_proxy_reloads_total", &[("result", "error")])
            .await
            >= 1.0
    );
    // Liveness is not readiness: the process still serves.
    assert_eq!(healthz(&env).await, 200);
    let resp = env.client(Http::One).post(CHAT).body("{}").call().await;
    assert_eq!(resp.status(), 200);

    sqlx::query("ALTER TABLE ai_models_away RENAME TO ai_models")
        .execute(&db)
        .await
        .unwrap();
    let body = readyz_until(&env, "ready again", |s, _| s == 200).await;
    assert_eq!(body["reloads_failing_seconds"], Value::Null);
    db.close().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_only_when_the_proxy_cannot_serve() {
    let dead = Arc::new(AtomicBool::new(false));
    let env = Env::with(|o| o.openai().accept_panic(dead.clone())).await;
    assert_eq!(healthz(&env).await, 200);
    dead.store(true, Ordering::Release);
    // The next connection kills the accept loop.
    let _ = tokio::net::TcpStream::connect(env.addr).await;
    let deadline = Instant::now() + WAIT;
    while healthz(&env).await != 503 {
        assert!(Instant::now() < deadline, "/healthz stayed 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = plain_client()
        .get(env.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "down");
    assert!(env.metric("aibridge_proxy_task_panics_total", &[]).await >= 1.0);
}

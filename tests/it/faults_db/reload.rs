//! Reloads under stress: F13 a hung reload query, F16 odd NOTIFY payloads, F17 a reload storm,
//! F18 a reload racing a stream, F19 bad rows.

use super::*;
use crate::support::db::{new_provider, writer, BUMP_COUNTER};
use crate::support::upstream::SSE_EVENTS;
use aibridge_proxy::router::Snapshot;
use serde_json::json;
use std::sync::Mutex;

/// F13: database slow (a reload query hangs on a lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f13_a_hung_reload_times_out_and_requests_do_not_wait() {
    let Some(db) = TestDb::postgres("faults_db::f13_hung_reload").await else {
        return;
    };
    let timeout = Duration::from_millis(250);
    let proxy = pg_proxy(&db.url, &db.url, move |c| c.reload_timeout = timeout).await;
    let client = proxy.client(Http::Two);
    let mut baseline = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(chat(&client).await, Ok(200));
        baseline = baseline.max(started.elapsed());
    }
    let errors_before = reloads(&proxy, "error").await;
    let generation = proxy.generation();

    // Another session holds the providers table: every read of it waits.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE ai_providers IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    // The lock holder's own change, visible only once it commits.
    sqlx::query(
        "UPDATE ai_providers SET intercept_hosts = '[\"api.openai.com\", \"slow.example\"]' \
         WHERE name = 'openai'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let traffic = Traffic::start(client.clone());
    let mut notifier = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SELECT pg_notify('ai_providers_changed', 'f13')")
        .execute(&mut notifier)
        .await
        .unwrap();

    // Reload after reload times out; the snapshot and readiness stay.
    let hang = Instant::now();
    let mut most_blocked = 0i64;
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(dbname(&db.url))
        .fetch_one(&mut notifier)
        .await
        .unwrap();
        most_blocked = most_blocked.max(blocked);
        if reloads(&proxy, "error").await >= errors_before + 4.0 {
            break;
        }
        assert!(
            hang.elapsed() < WAIT,
            "reloads did not time out: {} errors",
            reloads(&proxy, "error").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hung_for = hang.elapsed();
    assert_eq!(proxy.generation(), generation);
    assert_eq!(
        proxy.readyz().await.0,
        200,
        "the old snapshot keeps serving"
    );
    let report = traffic.finish().await;
    println!(
        "FIGURE F13: 4 reloads timed out over {hung_for:?}; requests meanwhile {report:?} \
         (slowest before the hang {baseline:?}); at most {most_blocked} sessions waited on the lock"
    );
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.ok >= 5, "{report:?}");
    assert!(
        report.slowest < Duration::from_secs(1) && report.slowest < hung_for / 2,
        "the request path never waits on the database: slowest {:?} during a {hung_for:?} hang",
        report.slowest
    );
    // A timed-out reload gives its session back; it does not leave it waiting on the lock
    // (each would hold a pool slot for as long as the hang lasts).
    assert!(
        most_blocked <= 2,
        "{most_blocked} sessions of abandoned reloads were still waiting on the lock"
    );

    tx.commit().await.unwrap();
    proxy.wait_route("slow.example:443", true).await;
    assert!(proxy.generation() > generation);
    assert_eq!(chat(&client).await, Ok(200));
    let _ = holder.close().await;
    let _ = notifier.close().await;
}

/// F16: NOTIFY payload malformed or near the 8000-byte limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_malformed_and_near_limit_notify_payloads_still_reload() {
    let Some(db) = TestDb::postgres("faults_db::f16_notify_payloads").await else {
        return;
    };
    let proxy = ready_on(&db).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let payloads: Vec<(&str, String)> = vec![
        ("ai_providers_changed", "{\"op\": \"upd".to_string()),
        (
            "agent_tokens_changed",
            "\u{1}\u{7f} ' \" \\ \u{fffd} 💥 not a hint at all".to_string(),
        ),
        ("ai_providers_changed", "x".repeat(7999)),
        ("agent_tokens_changed", "é".repeat(3999)),
        ("ai_providers_changed", String::new()),
    ];
    for (i, (channel, payload)) in payloads.iter().enumerate() {
        // A change with no NOTIFY of its own and no counter bump: only a full re-read finds it.
        let host = format!("n{i}.example");
        sqlx::query(
            "UPDATE ai_providers \
             SET intercept_hosts = jsonb_build_array('api.openai.com', $1::text) \
             WHERE name = 'openai'",
        )
        .bind(&host)
        .execute(&mut conn)
        .await
        .unwrap();
        let key = format!("{host}:443");
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !proxy.routes(&key),
                "nothing but the notification can reveal this change"
            );
        }
        let generation = proxy.generation();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut conn)
            .await
            .unwrap();
        proxy.wait_route(&key, true).await;
        assert!(
            proxy.generation() > generation,
            "payload {i} ({} bytes on {channel})",
            payload.len()
        );
    }
    // One byte more is the server's to refuse; the proxy never sees it.
    let too_long = sqlx::query("SELECT pg_notify('ai_providers_changed', $1)")
        .bind("x".repeat(8000))
        .execute(&mut conn)
        .await;
    assert!(
        too_long.is_err(),
        "PostgreSQL refuses payloads of 8000 bytes"
    );
    assert_eq!(
        proxy.readyz().await.0,
        200,
        "the subscription survived them all"
    );
    let client = proxy.client(Http::One);
    assert_eq!(chat(&client).await, Ok(200));
    let _ = conn.close().await;
}

/// F17: reload storm (reload.rs counts coalesced reloads; this adds "generation strictly
/// increasing; no request fails" under NOTIFY bursts and admin writes in a loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f17_a_reload_storm_keeps_generations_increasing_and_fails_no_request() {
    let Some(db) = TestDb::postgres("faults_db::f17_reload_storm").await else {
        return;
    };
    let proxy = ready_on(&db).await;
    let client = proxy.client(Http::Two);
    assert_eq!(chat(&client).await, Ok(200));
    let traffic = Traffic::start(client.clone());
    // Watch every snapshot swap: a new snapshot must carry a higher generation.
    let stop = Arc::new(AtomicBool::new(false));
    let violations: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let router = proxy.app.router.clone();
    let (flag, seen_bad) = (stop.clone(), violations.clone());
    let sampler = tokio::spawn(async move {
        let mut last: Arc<Snapshot> = router.snapshot();
        let mut swaps = 0u64;
        while !flag.load(Ordering::SeqCst) {
            let now = router.snapshot();
            if !Arc::ptr_eq(&now, &last) {
                swaps += 1;
                if now.generation <= last.generation {
                    seen_bad
                        .lock()
                        .unwrap()
                        .push((last.generation, now.generation));
                }
                last = now;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        swaps
    });
    let ok_before = reloads(&proxy, "ok").await;
    let generation = proxy.generation();
    let direct = writer(&db.url).await;
    let pool = direct.postgres_pool().unwrap().clone();
    let bursts = tokio::spawn(async move {
        for _ in 0..3 {
            sqlx::query(
                "WITH c AS (UPDATE aibridge_changes SET counter = counter + 1000 WHERE id = 1) \
                 SELECT pg_notify('ai_providers_changed', g::text) FROM generate_series(1, 1000) g",
            )
            .execute(&pool)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    let writes = 30;
    for i in 0..writes {
        let key = json!({"api_keys": [format!("sk-storm-{i:04}-0123456789")]});
        let (status, body) = proxy.admin_patch("/api/v1/providers/openai", key).await;
        assert_eq!(status, 200, "{body}");
    }
    bursts.await.unwrap();
    let last = direct.change_counter().await.unwrap();
    assert!(proxy.app.router.wait_for_counter(last, WAIT).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let swaps = sampler.await.unwrap();
    let report = traffic.finish().await;
    let reloaded = reloads(&proxy, "ok").await - ok_before;
    println!(
        "FIGURE F17: {writes} admin writes + 3 bursts of 1000 NOTIFYs → {reloaded} reloads, \
         {swaps} swaps observed, generation {generation} → {}; traffic {report:?}",
        proxy.generation()
    );
    let violations = violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "a new snapshot without a higher generation: {violations:?}"
    );
    assert!(swaps >= 2, "the sampler saw the storm ({swaps} swaps)");
    assert!(proxy.generation() > generation);
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.ok > 0);
    assert!(
        reloaded <= (2 * (writes + 3)) as f64,
        "coalesced (at most two per event burst): {reloaded} reloads for {writes} writes \
         and 3 bursts of 1000 NOTIFYs"
    );
    direct.close().await;
}

/// F18: reload racing a request (mitm.rs has the 502 on the next request; this adds the
/// in-flight request finishing on the snapshot it started with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f18_an_in_flight_stream_finishes_on_its_snapshot_after_its_provider_is_removed() {
    let proxy = Env::with(|o| o.openai().deny_non_providers()).await;
    let upstream = &proxy.upstream;
    for http in [Http::One, Http::Two] {
        if http == Http::Two {
            let (status, body) = proxy
                .admin_post(
                    "/api/v1/providers",
                    json!({
                        "name": "openai",
                        "kind": "openai",
                        "base_url": upstream.base_url(),
                        "intercept_hosts": ["api.openai.com"],
                    }),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let client = agent_client(proxy.addr, &proxy.token, &[&proxy.ca_pem], http);
        let seen = upstream.seen().len();
        let mut resp = client.get("https://api.openai.com/v1/sse").call().await;
        assert_eq!(resp.status(), 200);
        let mut body = String::new();
        while !body.contains(SSE_EVENTS[0]) {
            let chunk = tokio::time::timeout(WAIT, resp.chunk())
                .await
                .unwrap()
                .unwrap()
                .expect("the first event arrives");
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
        // The provider goes away while the stream is open.
        let generation = proxy.generation();
        let (status, _) = proxy.admin_delete("/api/v1/providers/openai").await;
        assert_eq!(status, 204);
        proxy.wait_for_generation(generation).await;
        assert!(!proxy.routes("api.openai.com:443"));
        upstream.release();
        loop {
            match tokio::time::timeout(WAIT, resp.chunk()).await.unwrap() {
                Ok(Some(chunk)) => body.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => break,
                Err(e) => panic!("{http:?}: the in-flight stream was cut: {e:?} after {body:?}"),
            }
        }
        assert_eq!(body, SSE_EVENTS.concat(), "{http:?}: the whole stream");
        assert!(!upstream.released_by_timeout());
        // hyper's client hands an HTTP/1 connection back to its pool from a task of its own once
        // the body has ended; give that task its turn, or the next request opens a connection of
        // its own (whose CONNECT is refused: the provider is gone) and never reaches this one.
        drop(resp);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The next request on that connection re-checks: 502 with a one-line reason.
        let resp = client.chat().await;
        assert_eq!(resp.status(), 502, "{http:?}");
        let reason = resp.text().await.unwrap();
        assert!(
            !reason.trim().is_empty() && !reason.trim().contains('\n'),
            "{http:?}: one-line reason: {reason:?}"
        );
        assert_eq!(upstream.seen().len(), seen + 1, "{http:?}");
    }
}

/// F19: one bad row (reload.rs covers an unparsable base_url; this adds IPv6 hosts: malformed,
/// refused by the upstream policy, and as an intercept host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f19_bad_ipv6_rows_are_excluded_alone_with_their_reason() {
    let proxy = Env::with(|o| o.openai().deny_non_providers()).await;
    let store = &proxy.app.store;
    let bad = [
        ("v6-unparsable", "base_url", "https://[::1"),
        ("v6-refused", "base_url", "https://[fd00::1]/v1"),
        ("v6-host", "intercept_hosts", "[\"[::1\"]"),
    ];
    for (i, (name, _, _)) in bad.iter().enumerate() {
        let host = format!("bad{i}.example");
        store
            .create_provider(new_provider(name, &proxy.upstream.base_url(), &host))
            .await
            .unwrap();
    }
    proxy.wait_route("bad2.example:443", true).await;
    // Rows no write path accepts (an older version, a hand edit), in one change.
    let db = format!(
        "sqlite://{}",
        proxy.dir.path().join("aibridge.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for (name, column, value) in bad {
        sqlx::query(&format!(
            "UPDATE ai_providers SET {column} = $1 WHERE name = $2"
        ))
        .bind(value)
        .bind(name)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    sqlx::query(BUMP_COUNTER).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    pool.close().await;
    for i in 0..bad.len() {
        proxy
            .wait_route(&format!("bad{i}.example:443"), false)
            .await;
    }
    for (name, column, value) in bad {
        let (status, body) = proxy.admin_get(&format!("/api/v1/providers/{name}")).await;
        assert_eq!(status, 200, "{body}");
        println!(
            "FIGURE F19: {column} {value:?} → {} {}",
            body["status"], body["warnings"]
        );
        assert_eq!(body["status"], "error", "{name}: {body}");
        assert!(
            body["warnings"][0].as_str().is_some_and(|w| !w.is_empty()),
            "{name}: the reason is shown: {body}"
        );
    }
    let (_, good) = proxy.admin_get("/api/v1/providers/openai").await;
    assert_eq!(good["status"], "enabled", "{good}");
    assert_eq!(
        proxy.chat().await.status(),
        200,
        "the good row still routes"
    );
}

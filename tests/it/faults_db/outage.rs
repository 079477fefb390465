//! The database out of reach: F11 down (or refusing) at start, F12 down during reloads, F15 a
//! PostgreSQL restart.

use super::*;
use crate::support::db::{new_provider, writer};
use crate::support::relay::Fault;
use aibridge_proxy::pubsub::POSTGRES_POLL_INTERVAL;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// F11: database down at start.

/// SPEC §2 / `app.rs`: start with an empty router, `/readyz` false, tunnels and the admin API
/// up, the reloader retrying with backoff; once the database is back, converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f11_database_down_at_start_serves_tunnels_then_converges() {
    let Some(db) = TestDb::postgres("faults_db::f11_database_down_at_start").await else {
        return;
    };
    let (relay, relayed) = relay_for(&db).await;
    let echo = echo_server().await;
    relay.cut();
    // `--auth none`: with token auth no token is known before the first load (see the
    // closed-port test below).
    let proxy = Env::with(|o| {
        o.openai()
            .database(&db.url)
            .serve_database(&relayed)
            .tunnels_to(echo)
            .tweak(|c| c.proxy.auth = aibridge_proxy::config::AuthMode::None)
    })
    .await;
    let outage = Instant::now();
    let (status, body) = proxy.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["router_loaded"], false, "{body}");
    assert_eq!(proxy.generation(), 0);
    assert!(!proxy.routes("api.openai.com:443"));

    // Tunnels serve meanwhile (the one thing that needs no data).
    let target = format!("127.0.0.1:{echo}");
    assert_eq!(
        tunnel_echo(
            proxy.addr,
            &target,
            "",
            b"tunnel while the database is down"
        )
        .await,
        (200, true)
    );
    // The reloader retries, with backoff (100 ms doubling): a handful of attempts, not a spin.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(outage.elapsed())).await;
    let errors = reloads(&proxy, "error").await;
    let elapsed = outage.elapsed();
    println!("FIGURE F11: {errors} failed reloads in the first {elapsed:?} of the outage");
    assert!(
        (2.0..=15.0).contains(&errors),
        "retried with backoff: {errors} failed reloads in {elapsed:?}"
    );
    assert_eq!(proxy.readyz().await.0, 503);

    let back = Instant::now();
    relay.restore();
    let waited = wait_ready(&proxy, 200).await;
    println!("FIGURE F11: database back → ready in {waited:?}");
    let (_, body) = proxy.readyz().await;
    assert_eq!(body["router_loaded"], true, "{body}");
    assert_eq!(body["subscribed"], true, "{body}");
    // The provider created before start is intercepted now.
    let client = proxy.client_as("unused", Http::Two);
    assert_eq!(chat(&client).await, Ok(200));
    assert_eq!(
        proxy.upstream.seen().len(),
        1,
        "the request reached the provider"
    );
    assert!(reloads(&proxy, "ok").await >= 1.0);
    assert!(back.elapsed() < WAIT);
}

/// A database refusing connections at start (nothing listens on its port): start completes in
/// bounded time, the admin API serves, `/readyz` is false. With token auth no token is known
/// yet, so CONNECTs get `503` (not `407`) until the first load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f11_a_refusing_database_at_start_still_starts_not_ready() {
    let closed = format!("postgres://postgres@127.0.0.1:{}/aibridge", free_port());
    let dir = tempfile::tempdir().unwrap();
    let seed = format!("sqlite://{}", dir.path().join("seed.db").display());
    let echo = echo_server().await;
    let started = Instant::now();
    // Seeded into a throwaway SQLite file; the proxy itself runs on the closed port.
    let proxy = Env::with(|o| {
        o.openai()
            .database(&seed)
            .serve_database(&closed)
            .tunnels_to(echo)
    })
    .await;
    let took = started.elapsed();
    println!("FIGURE F11: start with the database refusing took {took:?}");
    // One wait for the pool's connect timeout (3 s), not one per start-up step.
    assert!(took < Duration::from_secs(5), "start is bounded: {took:?}");
    let (status, body) = proxy.readyz().await;
    assert_eq!(status, 503, "{body}");
    let healthz = plain_client().get(proxy.admin_url("/healthz")).call().await;
    assert_eq!(healthz.status(), 200);
    let (status, _) =
        tunnel_echo(proxy.addr, &format!("127.0.0.1:{echo}"), &proxy.token, b"x").await;
    // No token is known before the first load: "not ready", not "your token is wrong".
    assert_eq!(status, 503, "token-auth CONNECT before the first load");
}

/// F12: database down during reloads (reload.rs has the outage/convergence; this adds the
/// failed reloads in `reloads_total{result="error"}` and their backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f12_reloads_while_the_database_is_down_are_counted_and_backed_off() {
    let Some(db) = TestDb::postgres("faults_db::f12_reloads_counted").await else {
        return;
    };
    let (relay, proxy) = behind_relay(&db).await;
    let client = serving(&proxy).await;
    let errors_before = reloads(&proxy, "error").await;
    let generation = proxy.generation();
    let traffic = Traffic::start(client.clone());

    // The database goes down under the pool while the LISTEN session survives, so a change
    // notification arrives and the reload it asks for fails: pooled sessions end, new ones are
    // reset by the relay.
    assert!(terminate_sessions(&db.url, true).await >= 1);
    relay.set_fault(Fault::ResetAfter(0));
    let direct = writer(&db.url).await;
    direct
        .create_provider(new_provider(
            "second",
            &proxy.upstream.base_url(),
            "api.anthropic.com",
        ))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        if reloads(&proxy, "error").await > errors_before {
            break;
        }
        assert!(started.elapsed() < WAIT, "no failed reload was counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = reloads(&proxy, "error").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = reloads(&proxy, "error").await;
    println!(
        "FIGURE F12: {} failed reloads in 1.5 s of outage",
        later - first
    );
    assert!(
        later > first && later - first <= 10.0,
        "retried with backoff, not in a spin: {first} → {later}"
    );
    assert_eq!(proxy.generation(), generation, "the old snapshot serves");
    assert!(!proxy.routes("api.anthropic.com:443"));

    relay.set_fault(Fault::None);
    proxy.wait_route("api.anthropic.com:443", true).await;
    let report = traffic.finish().await;
    println!("FIGURE F12: traffic during the outage {report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.ok > 0);
    assert!(reloads(&proxy, "ok").await >= 2.0);
    direct.close().await;
}

/// F15: PostgreSQL restart / failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f15_a_postgres_restart_reconnects_pool_and_listener_and_applies_the_missed_change() {
    let Some(db) = TestDb::postgres("faults_db::f15_postgres_restart").await else {
        return;
    };
    let (relay, proxy) = behind_relay(&db).await;
    let client = serving(&proxy).await;
    let traffic = Traffic::start(client.clone());
    for round in 0..2 {
        let accepted = relay.accepted();
        // The server ends every session, then refuses while it is down.
        assert!(terminate_sessions(&db.url, false).await >= 1);
        relay.cut();
        wait_ready(&proxy, 503).await;
        // A change committed while the proxy cannot see the database. The second one moves no
        // change counter and sends no NOTIFY (a hand edit): only the full reload after the
        // re-LISTEN can find it, the counter poll cannot.
        let host = format!("r{round}.example");
        if round == 0 {
            let direct = writer(&db.url).await;
            direct
                .create_provider(new_provider("r0", &proxy.upstream.base_url(), &host))
                .await
                .unwrap();
            direct.close().await;
        } else {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query(
                "UPDATE ai_providers SET intercept_hosts = jsonb_build_array($1::text) \
                 WHERE name = 'r0'",
            )
            .bind(&host)
            .execute(&mut conn)
            .await
            .unwrap();
            let _ = conn.close().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let key = format!("{host}:443");
        assert!(!proxy.routes(&key));

        let back = Instant::now();
        relay.restore();
        proxy.wait_route(&key, true).await;
        let applied = back.elapsed();
        let ready = wait_ready(&proxy, 200).await;
        println!(
            "FIGURE F15 round {round}: database back → change applied in {applied:?} \
             (ready {ready:?})"
        );
        // Reconnection backoff is still short after a short outage; the counter poll that
        // would catch a forgotten reload runs every POSTGRES_POLL_INTERVAL.
        assert!(
            applied < POSTGRES_POLL_INTERVAL / 2,
            "applied {applied:?} after recovery"
        );
        assert!(
            relay.accepted() >= accepted + 2,
            "the pool and the LISTEN session reconnected: {} new sessions",
            relay.accepted() - accepted
        );
        // The pool works again: an admin write through this proxy lands.
        let key = json!({"api_keys": [format!("sk-after-restart-{round}-0123456789")]});
        let (status, body) = proxy.admin_patch("/api/v1/providers/openai", key).await;
        assert_eq!(status, 200, "{body}");
    }
    let report = traffic.finish().await;
    println!("FIGURE F15: traffic across two restarts {report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.ok > 0);
}

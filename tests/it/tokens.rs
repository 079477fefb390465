//! The token control plane (issue 18): expiry enforced from the snapshot, token changes applied
//! as deltas (with the full reload as the backstop on a gap), batches, and replicas that agree
//! with the database after concurrent writers.

use crate::support::bin::Target;
use crate::support::db::{writer, TestDb, BUMP_COUNTER};
use crate::support::*;
use aibridge_proxy::store::{NewToken, Store};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A proxy intercepting api.openai.com on the database at `url`.
fn on(url: &str) -> impl FnOnce(Setup) -> Setup + '_ {
    move |o| o.openai().database(url)
}

/// The status of a CONNECT through `proxy` presenting `token` (200 in, 407 refused).
async fn connect_status(proxy: &TestProxy, token: &str) -> u16 {
    let req = format!(
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: {}\r\n\r\n",
        raw::basic(token)
    );
    let (head, _) = raw::send_head(proxy.addr, req.as_bytes()).await;
    raw::status(&head)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

fn parse(v: &serde_json::Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

async fn expiry(db: &TestDb) {
    let env = Env::with(on(&db.url)).await;
    // Refused: in the past, and not a time. Each answer names the field.
    for bad in ["2020-01-01T00:00:00Z", "tomorrow"] {
        let (status, body) = env
            .admin_post("/api/v1/tokens", json!({"user": "old", "expires_at": bad}))
            .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("expires_at"),
            "{body}"
        );
    }
    // A token for an hour and one for two seconds; both work now.
    let now = OffsetDateTime::now_utc();
    let hour = now + time::Duration::hours(1);
    let soon = now + time::Duration::seconds(2);
    let (status, long) = env
        .admin_post(
            "/api/v1/tokens",
            json!({"user": "long", "expires_at": rfc3339(hour)}),
        )
        .await;
    assert_eq!(status, 201, "{long}");
    assert_eq!(parse(&long["expires_at"]), hour);
    let (status, short) = env
        .admin_post(
            "/api/v1/tokens",
            json!({"user": "short", "expires_at": rfc3339(soon)}),
        )
        .await;
    assert_eq!(status, 201, "{short}");
    let short_token = short["token"].as_str().unwrap().to_string();
    let long_token = long["token"].as_str().unwrap().to_string();
    let client = env.client_as(&short_token, Http::One);
    assert_eq!(client.chat().await.status(), 200);
    assert_eq!(connect_status(&env, &short_token).await, 200);
    // The list shows both expiries; the seed token has none.
    let (_, list) = env.admin_get("/api/v1/tokens").await;
    let items = list["items"].as_array().unwrap();
    let of = |user: &str| items.iter().find(|t| t["user"] == user).unwrap().clone();
    // PostgreSQL keeps microseconds.
    let listed = parse(&of("long")["expires_at"]);
    assert!(
        (listed - hour).abs() < time::Duration::microseconds(1),
        "{listed} {hour}"
    );
    assert!(items.iter().any(|t| t["expires_at"].is_null()), "{list}");

    // Past its expiry the short token is refused like a revoked one: on a new CONNECT (407,
    // auth_unknown) and on the connection it had open, with no reload in between.
    let generation = env.generation();
    let refused_before = env.rejections("auth_unknown");
    let wait = soon - OffsetDateTime::now_utc() + time::Duration::milliseconds(50);
    tokio::time::sleep(wait.try_into().unwrap_or_default()).await;
    assert_eq!(connect_status(&env, &short_token).await, 407);
    assert_eq!(client.chat().await.status(), 407, "the open connection too");
    assert!(env.rejections("auth_unknown") > refused_before);
    assert_eq!(env.generation(), generation, "no reload was needed");
    // The hour-long token still works.
    assert_eq!(connect_status(&env, &long_token).await, 200);
    assert_eq!(
        env.client_as(&long_token, Http::Two).chat().await.status(),
        200
    );
    env.stop().await;
}
both_backends!(an_expired_token_is_refused_like_a_revoked_one, expiry);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_expires_local_and_remote() {
    let db = TestDb::sqlite();
    let env = Env::with(|o| o.database(&db.url)).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("http://{}", env.app.admin_addr.unwrap());
    let other = TestDb::sqlite();
    for target in [
        Target::local(dir.path(), &other.url),
        Target::remote(dir.path(), &admin, &env.admin_token),
    ] {
        // A bad --expires is a usage error (64) naming the flag, before anything is written.
        for bad in ["soon", "2020-01-01T00:00:00Z", "0s"] {
            let out = target
                .run(&["token", "create", "--user", "x", "--expires", bad])
                .await;
            assert_eq!(out.status.code(), Some(64), "{bad}");
            let err = bin::stderr(&out);
            assert!(err.contains("--expires"), "{bad}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        }
        let before = OffsetDateTime::now_utc();
        let created = target
            .json(&[
                "token",
                "create",
                "--user",
                "cli",
                "--expires",
                "30d",
                "--output",
                "json",
            ])
            .await;
        let expires = parse(&created["expires_at"]);
        let days = (expires - before).whole_hours();
        assert!((719..=721).contains(&days), "{created}");
        let at = "2099-01-01T00:00:00Z";
        let fixed = target
            .json(&[
                "token",
                "create",
                "--user",
                "fixed",
                "--expires",
                at,
                "--output",
                "json",
            ])
            .await;
        assert_eq!(fixed["expires_at"], at);
        let list = target.json(&["token", "list", "--output", "json"]).await;
        let listed = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == created["id"])
            .unwrap()
            .clone();
        assert_eq!(parse(&listed["expires_at"]), expires);
        // Many users: one batch, a list back with every clear token once.
        let many = target
            .json(&[
                "token",
                "create",
                "--user",
                "m1",
                "--user",
                "m2",
                "--user",
                "m3",
                "--expires",
                "1h",
                "--output",
                "json",
            ])
            .await;
        let many = many.as_array().unwrap();
        assert_eq!(many.len(), 3);
        assert_eq!(many[2]["user"], "m3");
        assert!(many
            .iter()
            .all(|t| t["token"].as_str().unwrap().len() > 20 && !t["expires_at"].is_null()));
        let table = target.expect(0, &["token", "list"]).await;
        assert!(
            table.contains("EXPIRES") && table.contains("2099-01-01"),
            "{table}"
        );
    }
    // The remote batch is served by the proxy.
    let (_, list) = env.admin_get("/api/v1/tokens").await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["user"] == "m2"),
        "{list}"
    );
    // The remote one is served by the proxy with its expiry.
    let (_, list) = env.admin_get("/api/v1/tokens").await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["user"] == "fixed" && t["expires_at"] == "2099-01-01T00:00:00Z"),
        "{list}"
    );
    env.stop().await;
}

/// The proxy's deltas and full reloads so far.
fn passes(proxy: &TestProxy) -> (u64, u64) {
    let stats = &proxy.app.reload_stats;
    (
        stats.deltas.load(Ordering::SeqCst),
        stats.full.load(Ordering::SeqCst),
    )
}

/// Wait until `proxy` serves the database's latest change.
async fn caught_up(proxy: &TestProxy, store: &Store) {
    let counter = store.change_counter().await.unwrap();
    assert!(
        proxy.app.router.wait_for_counter(counter, WAIT).await,
        "the proxy reached change {counter}"
    );
}

async fn deltas(db: &TestDb) {
    let env = Env::with(on(&db.url)).await;
    // Another process (the CLI, another replica) writes.
    let other = writer(&db.url).await;
    caught_up(&env, &other).await;
    let (deltas, full) = passes(&env);
    let (row, token) = other.create_token("delta").await.unwrap();
    caught_up(&env, &other).await;
    assert_eq!(connect_status(&env, token.expose()).await, 200);
    assert_eq!(passes(&env), (deltas + 1, full), "a create is one delta");
    assert!(other.revoke_token(row.id).await.unwrap());
    caught_up(&env, &other).await;
    assert_eq!(connect_status(&env, token.expose()).await, 407);
    assert_eq!(passes(&env), (deltas + 2, full), "a revoke is one delta");
    // A batch is one change, one delta.
    let batch: Vec<NewToken> = (0..500)
        .map(|i| NewToken {
            user: format!("bulk{i}"),
            expires_at: None,
        })
        .collect();
    let created = other.create_tokens(&batch).await.unwrap();
    caught_up(&env, &other).await;
    assert_eq!(passes(&env), (deltas + 3, full), "a batch is one delta");
    assert_eq!(connect_status(&env, created[499].1.expose()).await, 200);
    assert_eq!(created[499].0.user, "bulk499");

    // A gap: a token row written by hand with the counter moved but nothing logged. Only the
    // full reload can find it, and it does.
    let (deltas, full) = passes(&env);
    let hand = aibridge_proxy::secret::token::generate().unwrap();
    let digest = aibridge_proxy::secret::token::digest(hand.expose()).to_vec();
    let insert = "INSERT INTO agent_tokens (id, user_label, token_hash, created_at) VALUES ($1, 'hand', $2, $3)";
    match other.postgres_pool() {
        Some(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(insert)
                .bind(uuid::Uuid::new_v4())
                .bind(&digest)
                .bind(OffsetDateTime::now_utc())
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(BUMP_COUNTER).execute(&mut *tx).await.unwrap();
            sqlx::query(
                "SELECT pg_notify('agent_tokens_changed', counter::text) FROM aibridge_changes",
            )
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        None => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(insert)
                .bind(uuid::Uuid::new_v4())
                .bind(&digest)
                .bind(OffsetDateTime::now_utc())
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(BUMP_COUNTER).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            pool.close().await;
        }
    }
    caught_up(&env, &other).await;
    assert_eq!(connect_status(&env, hand.expose()).await, 200);
    assert_eq!(passes(&env), (deltas, full + 1), "a gap is a full reload");
    // And deltas resume after it.
    let (_, token) = other.create_token("after").await.unwrap();
    caught_up(&env, &other).await;
    assert_eq!(connect_status(&env, token.expose()).await, 200);
    assert_eq!(passes(&env), (deltas + 1, full + 1));
    other.close().await;
    env.stop().await;
}
both_backends!(
    token_changes_apply_as_deltas_and_a_gap_reloads_in_full,
    deltas
);

/// Run `sql` (no result) on `db` beside `store`.
async fn exec(db: &TestDb, store: &Store, sql: &str) {
    match store.postgres_pool() {
        Some(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
        None => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

/// Change-log rows at counters `<= upto` and after it.
async fn log_rows(db: &TestDb, store: &Store, upto: i64) -> (i64, i64) {
    let sql = "SELECT COALESCE(SUM(CASE WHEN counter <= $1 THEN 1 ELSE 0 END), 0), \
               COALESCE(SUM(CASE WHEN counter > $1 THEN 1 ELSE 0 END), 0) FROM aibridge_change_log";
    match store.postgres_pool() {
        Some(pool) => sqlx::query_as(sql)
            .bind(upto)
            .fetch_one(pool)
            .await
            .unwrap(),
        None => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            let rows = sqlx::query_as(sql)
                .bind(upto)
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            rows
        }
    }
}

async fn pruning(db: &TestDb) {
    use aibridge_proxy::store::LOG_KEPT;
    let store = writer(&db.url).await;
    for i in 0..3 {
        store.create_token(&format!("old{i}")).await.unwrap();
    }
    let old = store.change_counter().await.unwrap();
    assert_eq!(log_rows(db, &store, old).await, (3, 0));
    // As if LOG_KEPT changes had been made since: the three rows are now past keeping.
    exec(
        db,
        &store,
        &format!("UPDATE aibridge_changes SET counter = counter + {LOG_KEPT} WHERE id = 1"),
    )
    .await;
    // Pruning runs on one write in 64: within 64 more writes the old rows go, the new stay.
    for i in 0..64 {
        store.create_token(&format!("new{i}")).await.unwrap();
    }
    assert_eq!(log_rows(db, &store, old).await, (0, 64));
    store.close().await;
}
both_backends!(the_change_log_keeps_only_its_recent_counters, pruning);

async fn batch_api(db: &TestDb) {
    let env = Env::with(on(&db.url)).await;
    let body: Vec<_> = (0..1000)
        .map(|i| json!({"user": format!("u{i}")}))
        .collect();
    let started = Instant::now();
    let (status, created) = env
        .admin_post("/api/v1/tokens:batch", json!({"tokens": body}))
        .await;
    println!(
        "FIGURE {}: 1000 tokens in one batch request: {:?}",
        db.backend,
        started.elapsed()
    );
    assert_eq!(status, 201, "{created}");
    let items = created["items"].as_array().unwrap();
    assert_eq!(items.len(), 1000);
    assert_eq!(items[7]["user"], "u7");
    // Served by this proxy once the answer is in.
    let token = items[999]["token"].as_str().unwrap();
    assert_eq!(connect_status(&env, token).await, 200);
    // All or nothing: one bad entry writes none of them.
    let (_, before) = env.admin_get("/api/v1/tokens").await;
    let (status, err) = env
        .admin_post(
            "/api/v1/tokens:batch",
            json!({"tokens": [{"user": "fine"}, {"user": ""}]}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    let (status, err) = env
        .admin_post("/api/v1/tokens:batch", json!({"tokens": []}))
        .await;
    assert_eq!(status, 422, "{err}");
    let (_, after) = env.admin_get("/api/v1/tokens").await;
    assert_eq!(
        before["items"].as_array().unwrap().len(),
        after["items"].as_array().unwrap().len()
    );
    env.stop().await;
}
both_backends!(a_batch_creates_many_tokens_in_one_request, batch_api);

/// Terminate the LISTEN backends of the database `url` names; returns how many.
async fn kill_listeners(store: &Store, url: &str) -> usize {
    let dbname = url.rsplit('/').next().unwrap().to_string();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'LISTEN%' \
         AND pid <> pg_backend_pid()",
    )
    .bind(dbname)
    .fetch_all(store.postgres_pool().unwrap())
    .await
    .unwrap();
    killed.into_iter().filter(|k| *k).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_on_every_replica_even_across_a_listen_loss() {
    let Some(db) = TestDb::postgres("tokens::revoked_on_every_replica").await else {
        return;
    };
    let a = Env::with(on(&db.url)).await;
    // The provider row is in the shared database already.
    let b = a.another(|o| o.database(&db.url)).await;
    let other = writer(&db.url).await;
    let mut times = Vec::new();
    for round in 0..20 {
        let (status, created) = a
            .admin_post("/api/v1/tokens", json!({"user": format!("r{round}")}))
            .await;
        assert_eq!(status, 201);
        let token = created["token"].as_str().unwrap().to_string();
        let id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
        caught_up(&b, &other).await;
        assert_eq!(connect_status(&b, &token).await, 200);
        if round % 5 == 4 {
            // B's LISTEN connection is gone when the revocation lands: it must still converge.
            assert!(kill_listeners(&other, &db.url).await >= 1);
        }
        let started = Instant::now();
        let (status, _) = a.admin_delete(&format!("/api/v1/tokens/{id}")).await;
        assert_eq!(status, 204);
        assert_eq!(
            connect_status(&a, &token).await,
            407,
            "A serves it as it answers"
        );
        let router = b.app.router.clone();
        eventually("B refuses the revoked token", move || {
            !router.load().token_active(id)
        })
        .await;
        times.push(started.elapsed());
        assert_eq!(connect_status(&b, &token).await, 407);
    }
    times.sort();
    println!(
        "FIGURE revocation on A → refused on B over {} rounds (4 across a LISTEN loss): p50 {:?} max {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    other.close().await;
    a.stop().await;
}

/// What the database says each token's state is, against each replica's snapshot.
async fn snapshots_equal_database(proxies: &[&TestProxy], store: &Store) {
    let rows = store.list_tokens().await.unwrap();
    let now = OffsetDateTime::now_utc();
    for (i, proxy) in proxies.iter().enumerate() {
        caught_up(proxy, store).await;
        let snapshot = proxy.app.router.snapshot();
        let mut held: Vec<_> = snapshot
            .tokens()
            .iter()
            .filter(|e| e.valid_at(now))
            .map(|e| (e.id, e.user.to_string(), e.expires_at))
            .collect();
        let mut want: Vec<_> = rows
            .iter()
            .filter(|r| r.active_at(now))
            .map(|r| (r.id, r.user.clone(), r.expires_at))
            .collect();
        held.sort();
        want.sort();
        assert_eq!(held.len(), want.len(), "replica {i}: token count");
        assert_eq!(held, want, "replica {i}: tokens");
        for r in &rows {
            // By id, at the same instant (token_active reads its own clock).
            let active = snapshot
                .tokens()
                .by_id(r.id)
                .is_some_and(|e| e.valid_at(now));
            assert_eq!(active, r.active_at(now), "replica {i}: token {}", r.id);
        }
    }
}

/// 60 random token writes through `proxy`'s admin API: creates (a third expiring within
/// 1.5 s), batches of 1 to 20, and revocations of what this writer created.
async fn random_writes(proxy_ref: &TestProxy, mut rng: u64) {
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut ids: Vec<String> = Vec::new();
    for step in 0..60 {
        let roll = next() % 10;
        if roll < 4 || ids.is_empty() {
            let mut body = json!({"user": format!("w{step}")});
            if next() % 3 == 0 {
                let at = OffsetDateTime::now_utc()
                    + time::Duration::milliseconds((next() % 1500) as i64 + 1);
                body["expires_at"] = json!(rfc3339(at));
            }
            let (status, created) = proxy_ref.admin_post("/api/v1/tokens", body).await;
            // An expiry that passed on the way in is refused, as it should be.
            assert!(status == 201 || status == 422, "{created}");
            if status == 201 {
                ids.push(created["id"].as_str().unwrap().to_string());
            }
        } else if roll < 6 {
            let tokens: Vec<_> = (0..(next() % 20 + 1))
                .map(|i| json!({"user": format!("b{step}-{i}")}))
                .collect();
            let (status, created) = proxy_ref
                .admin_post("/api/v1/tokens:batch", json!({"tokens": tokens}))
                .await;
            assert_eq!(status, 201, "{created}");
            for item in created["items"].as_array().unwrap() {
                ids.push(item["id"].as_str().unwrap().to_string());
            }
        } else {
            let i = (next() as usize) % ids.len();
            let id = ids.swap_remove(i);
            let (status, body) = proxy_ref
                .admin_delete(&format!("/api/v1/tokens/{id}"))
                .await;
            assert_eq!(status, 204, "{body}");
        }
    }
}

async fn randomized(db: &TestDb) {
    let a = Env::with(on(&db.url)).await;
    // The provider row is in the shared database already.
    let b = a.another(|o| o.database(&db.url)).await;
    let store = writer(&db.url).await;
    // Two writers at once, one per replica, through their admin APIs: creates (some expiring
    // within the run), batches and revocations of whatever the other created.
    let seed: u64 = std::env::var("TOKENS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp_nanos() as u64);
    println!("tokens::randomized seed {seed} (TOKENS_SEED={seed} to replay)");
    tokio::join!(
        random_writes(&a, seed | 1),
        random_writes(&b, seed.rotate_left(17) | 1)
    );
    snapshots_equal_database(&[&a, &b], &store).await;
    // After every short expiry has passed, the same holds (expired = refused everywhere).
    tokio::time::sleep(Duration::from_millis(1600)).await;
    snapshots_equal_database(&[&a, &b], &store).await;
    store.close().await;
    a.stop().await;
}
both_backends!(
    concurrent_writers_on_two_replicas_leave_snapshots_equal_to_the_database,
    randomized
);

//! Retention: old records go (with their prompts and tool calls) in bounded batches while new
//! ones are being written; nothing younger than the period is touched.

use super::*;
use aibridge_proxy::store::interceptions::InterceptionFilter;
use std::time::Duration;

/// Rows of a child table, counted with a connection of the test's own.
async fn count(url: &str, table: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(&sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(&sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }
}

async fn retention_while_writing(db: &crate::support::db::TestDb) {
    const OLD: usize = 2_500;
    const KEPT: usize = 300;
    let env = Env::with(|o| {
        o.openai().database(&db.url).tweak(|c| {
            c.retention = 30 * DAY;
            c.retention_interval = Duration::from_millis(200);
        })
    })
    .await;
    // Traffic keeps writing records the whole time.
    let client = env.client(Http::Two);
    let traffic = tokio::spawn(async move {
        let mut sent = 0;
        for _ in 0..200 {
            assert_eq!(client.chat().await.status(), 200);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    });
    let old: Vec<_> = (0..OLD).map(|i| stored_record(i, 40 * DAY)).collect();
    let kept: Vec<_> = (0..KEPT).map(|i| stored_record(i, 29 * DAY)).collect();
    for chunk in old.chunks(500).chain(kept.chunks(500)) {
        env.app.store.insert_interceptions(chunk).await.unwrap();
    }
    let older_than_period = InterceptionFilter {
        until: Some(time::OffsetDateTime::now_utc() - 30 * DAY),
        limit: 10,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !env
        .app
        .store
        .list_interceptions(&older_than_period)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old records not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = traffic.await.unwrap();
    env.wait_metric(
        "aibridge_proxy_interceptions_deleted_total",
        &[],
        OLD as f64,
    )
    .await;
    // Everything younger than the period is still there, with its details; the old records'
    // prompts and tool calls went with them.
    for r in [&kept[0], &kept[KEPT - 1]] {
        let stored = env.app.store.get_interception(r.id).await.unwrap().unwrap();
        assert_eq!(stored.prompt, r.prompt);
        assert_eq!(stored.tool_calls, r.tool_calls);
    }
    assert!(env
        .app
        .store
        .get_interception(old[0].id)
        .await
        .unwrap()
        .is_none());
    let rows = env.wait_rows(KEPT + sent).await;
    assert_eq!(rows.len(), KEPT + sent, "kept and new records");
    // (The traffic's requests carry no messages, so no prompt.)
    assert_eq!(count(&db.url, "interception_prompts").await, KEPT as i64);
    assert_eq!(count(&db.url, "interception_tool_calls").await, KEPT as i64);
    assert!(
        env.metric("aibridge_proxy_retention_runs_total", &[("result", "ok")])
            .await
            >= 1.0
    );
}
both_backends!(
    retention_deletes_only_old_records_while_records_are_written,
    retention_while_writing
);

/// On PostgreSQL one replica at a time runs retention: while another session holds the lock,
/// this replica's runs are `skipped` and delete nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_at_a_time_runs_retention_on_postgres() {
    let Some(db) = crate::support::db::TestDb::postgres("governance::retention_lock").await else {
        return;
    };
    let holder = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut held = holder.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(0x6169_6272_6964_6765_i64)
        .execute(&mut *held)
        .await
        .unwrap();
    let env = Env::with(|o| {
        o.openai().database(&db.url).tweak(|c| {
            c.retention = 30 * DAY;
            c.retention_interval = Duration::from_millis(100);
        })
    })
    .await;
    let old = stored_record(0, 40 * DAY);
    env.app
        .store
        .insert_interceptions(std::slice::from_ref(&old))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while env
        .metric(
            "aibridge_proxy_retention_runs_total",
            &[("result", "skipped")],
        )
        .await
        < 2.0
    {
        assert!(tokio::time::Instant::now() < deadline, "no skipped run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(env
        .app
        .store
        .get_interception(old.id)
        .await
        .unwrap()
        .is_some());
    // The other replica lets go: this one takes over.
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(0x6169_6272_6964_6765_i64)
        .execute(&mut *held)
        .await
        .unwrap();
    drop(held);
    holder.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while env
        .app
        .store
        .get_interception(old.id)
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

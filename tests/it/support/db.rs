//! Test databases: a temp SQLite file, or a fresh PostgreSQL database per test (created here,
//! dropped on drop) so tests run in parallel; and a store writing rows into one as another
//! process (the CLI, another replica) would.
//!
//! PostgreSQL comes from `AIBRIDGE_TEST_POSTGRES_URL` (default: the local server as
//! `postgres@127.0.0.1:5432`). When it cannot be reached the test says it was skipped and why —
//! except under `CI`, where a missing database fails it.

use aibridge_proxy::provider::ProviderKind;
use aibridge_proxy::store::{NewProvider, Store};
use sqlx::Connection;

/// A change no write path announces: the counter moves, as a commit of another process does.
pub const BUMP_COUNTER: &str = "UPDATE aibridge_changes SET counter = counter + 1 WHERE id = 1";

/// The store on `url`, writing under the loopback upstream policy the mock upstreams need.
pub async fn writer(url: &str) -> Store {
    Store::connect(url)
        .await
        .unwrap()
        .with_upstream_policy(super::loopback_upstreams())
}

/// An enabled openai-kind provider row `name` intercepting `host`, sent to `base_url`, no key.
pub fn new_provider(name: &str, base_url: &str, host: &str) -> NewProvider {
    NewProvider {
        name: name.into(),
        kind: ProviderKind::Openai,
        base_url: base_url.into(),
        intercept_hosts: vec![host.into()],
        enabled: true,
        enforce_models: false,
        passthrough: Default::default(),
        record_prompts: true,
        api_keys: vec![],
    }
}

pub struct TestDb {
    pub url: String,
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

/// The server-level URL used to create and drop test databases.
pub fn postgres_admin_url() -> String {
    std::env::var("AIBRIDGE_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Swap the database name in a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let prefix = match base.rsplit_once('/') {
        Some((p, _)) if p.contains("//") => p.to_string(),
        _ => base.to_string(),
    };
    format!("{prefix}/{db}{query}")
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        TestDb {
            url,
            backend: "sqlite",
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A fresh PostgreSQL database, or `None` (with the reason printed) when there is no server
    /// and `CI` is not set.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let admin = postgres_admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!("{test}: PostgreSQL at {admin} is required under CI: {e}");
                }
                eprintln!("SKIPPED {test}: no PostgreSQL at {admin} ({e}); set AIBRIDGE_TEST_POSTGRES_URL");
                return None;
            }
        };
        let name = format!("aibridge_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        Some(TestDb {
            url: with_database(&admin, &name),
            backend: "postgres",
            _dir: None,
            pg: Some((admin, name)),
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        // Drop runs outside any runtime guarantee: use a private one on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// Define `mod $name { sqlite, postgres }`, two tests running `$scenario(&TestDb)`.
#[allow(unused_macros)] // the soak bench compiles this harness without using it
macro_rules! both_backends {
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::support::db::TestDb::sqlite();
                super::$scenario(&db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) =
                    $crate::support::db::TestDb::postgres(concat!(module_path!(), "::postgres"))
                        .await
                else {
                    return;
                };
                super::$scenario(&db).await;
            }
        }
    };
}
pub(crate) use both_backends;

#[test]
fn database_names_are_swapped_in_urls() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u@h/db?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
}

/// A model-call record written straight to the store (no request behind it), `age` ago, with
/// `input` and `output` tokens: what `/usage` and `aibridge-proxy usage` sum.
pub fn usage_record(
    user: &str,
    provider: &str,
    model: &str,
    input: i64,
    output: i64,
    age: std::time::Duration,
) -> aibridge_proxy::store::Interception {
    let id = uuid::Uuid::now_v7();
    aibridge_proxy::store::Interception {
        id,
        request_id: id.to_string(),
        token_id: None,
        user: user.into(),
        provider: provider.into(),
        model: Some(model.into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        input_tokens: Some(input),
        output_tokens: Some(output),
        cache_read_tokens: Some(input / 10),
        cache_write_tokens: None,
        usage_source: "reported".into(),
        outcome: "completed".into(),
        started_at: time::OffsetDateTime::now_utc() - age,
        duration_ms: 40,
        ttfb_ms: Some(10),
        error: None,
        route: "model".into(),
        transport: "http".into(),
        prompt: None,
        tool_calls: vec![],
        trace: None,
    }
}

//! Provider keys at rest (S3) and secrets that never leak (S2, S4, F-19): what the database
//! holds once keys are encrypted, rows whose ciphertext was moved, wrong or missing key files,
//! rotation under a running proxy, the `secrets` commands of the real binary, and a full `serve`
//! session at trace level whose every log line, response body and header is searched for every
//! secret it handled.
//!
//! `at_rest`: what the database holds (S3); `key_files`: wrong, missing and rotated key files
//! under a running proxy; `cli`: the `secrets` commands; `leak`: the full-session capture (F-19).

mod at_rest;
mod cli;
mod key_files;
mod leak;

use crate::support::bin::{bin, cli_db, stderr, stdout, Child};
use crate::support::db::{new_provider, writer, TestDb};
use crate::support::upstream::{CHAT_JSON, MESSAGES_JSON};
use crate::support::*;
use aibridge_proxy::provider::ProviderKind;
use aibridge_proxy::secret::Secret;
use aibridge_proxy::store::{
    CryptoError, Keyring, NewProvider, Rotation, SecretsKey, Store, StoreError,
};
use base64::Engine;
use serde_json::json;
use sqlx::Connection;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use uuid::Uuid;

/// Run `$body` with `$c` bound to a plain connection (no store involved) on either backend.
macro_rules! with_conn {
    ($url:expr, |$c:ident| $body:expr) => {{
        let url: &str = $url;
        if url.starts_with("sqlite:") {
            let mut $c = sqlx::SqliteConnection::connect(url).await.unwrap();
            let out = $body;
            $c.close().await.unwrap();
            out
        } else {
            let mut $c = sqlx::PgConnection::connect(url).await.unwrap();
            let out = $body;
            $c.close().await.unwrap();
            out
        }
    }};
}

/// `(id, provider_id, api_key)` of every key row, oldest first, as stored.
async fn raw_keys(url: &str) -> Vec<(Uuid, Uuid, String)> {
    with_conn!(url, |c| sqlx::query_as(
        "SELECT id, provider_id, api_key FROM ai_provider_keys ORDER BY created_at, id"
    )
    .fetch_all(&mut c)
    .await
    .unwrap())
}

/// Every column of every key row, as text (blobs as hex), one line per row.
async fn dump(url: &str) -> String {
    let lines: Vec<String> = if url.starts_with("sqlite:") {
        with_conn!(url, |c| {
            let columns: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM pragma_table_info('ai_provider_keys')")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
            assert_eq!(columns, 4, "the dump names every column");
            sqlx::query_scalar(
                "SELECT quote(id) || '|' || quote(provider_id) || '|' || quote(api_key) || '|' || \
                 quote(created_at) FROM ai_provider_keys",
            )
            .fetch_all(&mut c)
            .await
            .unwrap()
        })
    } else {
        // A whole-row cast: every column, whatever the table holds.
        with_conn!(url, |c| sqlx::query_scalar(
            "SELECT k::text FROM ai_provider_keys k"
        )
        .fetch_all(&mut c)
        .await
        .unwrap())
    };
    lines.join("\n")
}

async fn raw_set_key(url: &str, id: Uuid, value: &str) {
    let updated: u64 = with_conn!(url, |c| sqlx::query(
        "UPDATE ai_provider_keys SET api_key = $1 WHERE id = $2"
    )
    .bind(value)
    .bind(id)
    .execute(&mut c)
    .await
    .unwrap()
    .rows_affected());
    assert_eq!(updated, 1);
}

/// The forms a key's bytes could take in a dump: as is, hex (both cases), base64.
fn encodings(key: &str) -> Vec<String> {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        key.to_string(),
        hex.to_uppercase(),
        hex,
        base64::engine::general_purpose::STANDARD.encode(key),
    ]
}

fn new_key_file(dir: &Path, name: &str) -> (PathBuf, SecretsKey) {
    let path = dir.join(name);
    let key = SecretsKey::generate(&path, false).unwrap();
    (path, key)
}

fn keyring(primary: Option<&Path>, previous: Option<&Path>) -> Keyring {
    Keyring::load(primary, previous).unwrap()
}

/// A store on `url` sealing keys under the key file `key` (in clear without one).
async fn store_under(url: &str, key: Option<&Path>) -> Store {
    writer(url).await.with_keyring(keyring(key, None))
}

fn provider(
    name: &str,
    kind: ProviderKind,
    host: &str,
    base_url: &str,
    keys: &[&str],
) -> NewProvider {
    NewProvider {
        kind,
        api_keys: keys.iter().map(|k| Secret::new(k.to_string())).collect(),
        ..new_provider(name, base_url, host)
    }
}

/// `openai` intercepting api.openai.com, sent to `base_url` with `keys`.
fn openai_row(base_url: &str, keys: &[&str]) -> NewProvider {
    provider(
        "openai",
        ProviderKind::Openai,
        "api.openai.com",
        base_url,
        keys,
    )
}

/// `anthropic` intercepting api.anthropic.com, sent to `base_url` with `keys`.
fn anthropic_row(base_url: &str, keys: &[&str]) -> NewProvider {
    let host = "api.anthropic.com";
    provider("anthropic", ProviderKind::Anthropic, host, base_url, keys)
}

/// Write `row` through a store sealing under `key` (in clear without one), as another process.
async fn write_row(url: &str, key: Option<&Path>, row: NewProvider) {
    let store = store_under(url, key).await;
    store.create_provider(row).await.unwrap();
    store.close().await;
}

/// A POST to `url` through `proxy` answers 200 with `body`, and the upstream got `header: value`.
async fn served_with(proxy: &Env, url: &str, body: &str, (header, value): (&str, &str)) {
    let (code, got) = post(proxy, url).await.unwrap();
    assert_eq!((code, got.as_str()), (200, body), "{url}");
    let seen = proxy.upstream.seen();
    assert_eq!(seen.last().unwrap().headers[header], value, "{url}");
}

fn clear_keys(p: &aibridge_proxy::store::Provider) -> Vec<String> {
    p.keys
        .iter()
        .map(|k| k.api_key.as_ref().unwrap().expose().clone())
        .collect()
}

/// POST through the proxy; `None` when the CONNECT itself was refused (host not intercepted).
async fn post(proxy: &TestProxy, url: &str) -> Option<(u16, String)> {
    let resp = proxy
        .client(Http::Two)
        .post(url)
        .body("{}")
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap()))
}

/// `(status, warnings)` of provider `name` in `GET /api/v1/providers`, and its masked keys.
async fn provider_status(proxy: &TestProxy, name: &str) -> (String, String, Vec<String>) {
    let (code, body) = proxy.admin_get("/api/v1/providers").await;
    assert_eq!(code, 200);
    let p = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
        .clone();
    let masked = p["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["masked"].as_str().unwrap().to_string())
        .collect();
    (
        p["status"].as_str().unwrap().to_string(),
        p["warnings"].to_string(),
        masked,
    )
}

/// A setup on `db`, hosts no provider claims refused, its mock upstream already running (the
/// rows are written before the proxy starts).
async fn setup_on(db: &TestDb) -> Setup {
    Env::setup()
        .database(&db.url)
        .deny_non_providers()
        .upstream_first()
        .await
}

/// The binary in `dir` with `args` (split on whitespace: no argument here has a space).
fn cli(dir: &Path, args: &str, env: &[(&str, &str)]) -> Output {
    bin()
        .args(args.split_whitespace())
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

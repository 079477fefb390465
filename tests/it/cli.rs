//! The real binary: `ca init`, `token`, `providers`, and `serve` end to end (a provider added by
//! the CLI while `serve` runs is picked up without restart; SIGTERM exits 0). The `secrets`
//! commands and the full-run secret-leak capture are in `secrets.rs`.

use crate::support::bin::{bin, cli_db, create_provider, stderr, stdout, Child};
use crate::support::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};

/// The binary in `dir` with `args`, on the directory's database.
fn run(dir: &Path, args: &[&str]) -> Output {
    crate::support::bin::run(dir, args, &[])
}

#[test]
fn ca_init_writes_a_0600_key_and_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let ca = |extra: &[&str]| {
        bin()
            .args([
                "ca",
                "init",
                "--ca-cert",
                "c/ca.pem",
                "--ca-key",
                "c/ca-key.pem",
            ])
            .args(extra)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = ca(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = dir.path().join("c/ca-key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first = std::fs::read(&key).unwrap();
    assert!(!stdout(&out).contains("PRIVATE KEY"));

    let again = ca(&[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(&key).unwrap(), first, "kept");

    let forced = ca(&["--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read(&key).unwrap(), first, "replaced");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn serve_refuses_a_group_readable_ca_key() {
    let dir = tempfile::tempdir().unwrap();
    let init = bin()
        .args([
            "ca",
            "init",
            "--ca-cert",
            "ca.pem",
            "--ca-key",
            "ca-key.pem",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(init.status.success());
    let key = dir.path().join("ca-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--ca-cert",
            "ca.pem",
            "--ca-key",
            "ca-key.pem",
        ],
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ca-key.pem") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn tokens_and_providers_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let created = run(d, &["token", "create", "--user", "bob"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let out = stdout(&created);
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("abp_") && token.len() > 40, "{out}");

    let list = stdout(&run(d, &["token", "list"]));
    assert!(list.contains("bob") && list.contains("active"), "{list}");
    assert!(!list.contains(&token), "token list never shows tokens");
    let id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(run(d, &["token", "revoke", &id]).status.success());
    assert!(stdout(&run(d, &["token", "list"])).contains("revoked"));
    assert_eq!(
        run(d, &["token", "revoke", &id]).status.code(),
        Some(1),
        "already revoked"
    );

    // The key comes from the environment variable named by --key-env, never from argv.
    let create = crate::support::bin::run(
        d,
        &create_provider(
            "openai",
            "openai",
            "https://api.openai.com",
            &["--key-env", "TEST_OPENAI_KEY"],
        ),
        &[("TEST_OPENAI_KEY", "sk-secret-value-abcd")],
    );
    assert!(create.status.success(), "{}", stderr(&create));
    let list = stdout(&run(d, &["providers", "list"]));
    assert!(
        list.contains("openai") && list.contains("sk-...abcd"),
        "{list}"
    );
    assert!(!list.contains("sk-secret-value-abcd"), "keys are masked");

    let missing_env = run(
        d,
        &create_provider(
            "other",
            "anthropic",
            "https://x.example",
            &["--key-env", "NOPE_NOT_SET"],
        ),
    );
    assert!(!missing_env.status.success());
    assert!(stderr(&missing_env).contains("NOPE_NOT_SET"));

    let bad = run(
        d,
        &create_provider("Bad_Name", "openai", "https://x.example", &[]),
    );
    assert!(!bad.status.success());
    let dup = run(
        d,
        &create_provider("openai", "openai", "https://x.example", &[]),
    );
    assert!(stderr(&dup).contains("already exists"), "{}", stderr(&dup));

    let upd = run(
        d,
        &[
            "providers",
            "update",
            "openai",
            "--intercept-host",
            "API.OpenAI.com",
            "--enabled",
            "false",
        ],
    );
    assert!(upd.status.success(), "{}", stderr(&upd));
    let list = stdout(&run(d, &["providers", "list"]));
    assert!(
        list.contains("disabled") && list.contains("api.openai.com:443"),
        "{list}"
    );
    assert!(run(d, &["providers", "delete", "openai"]).status.success());
    assert_eq!(
        run(d, &["providers", "delete", "openai"]).status.code(),
        Some(1)
    );
}

#[tokio::test]
async fn serve_picks_up_cli_changes_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (upstream, upstream_ca_file) = MockUpstream::for_binary(&d).await;
    let port = free_port();
    let db = cli_db(&d);
    let mut child = Child(
        bin()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                "127.0.0.1:0",
                "--database-url",
                &db,
                "--allow-private-upstreams",
                "127.0.0.0/8",
            ])
            .arg("--upstream-ca-file")
            .arg(&upstream_ca_file)
            .current_dir(&d)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // First start: the CA is generated under certs/ and the agent lines are printed.
    let stdout = child.0.stdout.take().unwrap();
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.starts_with("REQUESTS_CA_BUNDLE"))
            .collect()
    })
    .await
    .unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("HTTPS_PROXY=http://agent:TOKEN@127.0.0.1:{port}")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("SSL_CERT_FILE=") && l.ends_with("certs/ca.pem")),
        "{lines:?}"
    );
    let key_mode = std::fs::metadata(d.join("certs/ca-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let ca_pem = std::fs::read_to_string(d.join("certs/ca.pem")).unwrap();

    // While it runs, the CLI adds a token and a provider in another process.
    let token_out = run(&d, &["token", "create", "--user", "carol"]);
    let token = stdout_last_line(&token_out);
    let base_url = upstream.base_url();
    let create = bin()
        .args(create_provider("openai", "openai", &base_url, &[]))
        .args([
            "--intercept-host",
            "api.openai.com",
            "--key-env",
            "K",
            "--database-url",
            &db,
            "--allow-private-upstreams",
            "127.0.0.0/8",
        ])
        .env("K", "sk-from-cli-0123456789")
        .output()
        .unwrap();
    assert!(create.status.success(), "{}", stderr(&create));

    // The running proxy sees both within its poll interval; retry until it does.
    let client = agent_client(
        format!("127.0.0.1:{port}").parse().unwrap(),
        &token,
        &[&ca_pem],
        Http::Two,
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let resp = loop {
        match client.post(CHAT).body("{}").send().await {
            Ok(r) if r.status() == 200 => break r,
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "serve never picked up the CLI's changes"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        resp.text().await.unwrap(),
        crate::support::upstream::CHAT_JSON
    );
    assert_eq!(
        upstream.seen().last().unwrap().headers["authorization"],
        "Bearer sk-from-cli-0123456789"
    );

    let status = child.terminate().await;
    assert_eq!(status.code(), Some(0), "graceful exit on SIGTERM");
}

fn stdout_last_line(o: &Output) -> String {
    stdout(o)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

async fn apply_is_idempotent(db: &crate::support::db::TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aibridge.toml");
    std::fs::write(
        &file,
        r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com"
intercept_hosts = ["API.OpenAI.com"]
key_env = ["APPLY_OPENAI_KEY"]

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "https://api.anthropic.com"

[[models]]
provider = "openai"
model = "gpt-4o"
context_limit = 128000

[[models]]
provider = "anthropic"
model = "claude-sonnet"

[default_model]
provider = "anthropic"
model = "claude-sonnet"
"#,
    )
    .unwrap();
    let apply = |extra: &[&str]| {
        bin()
            .args(["apply", "-f"])
            .arg(&file)
            .args(["--database-url", &db.url])
            .args(extra)
            .env("APPLY_OPENAI_KEY", "sk-apply-0123456789")
            .output()
            .unwrap()
    };
    let first = apply(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = stdout(&first);
    for line in [
        "create provider openai",
        "create provider anthropic",
        "create model openai/gpt-4o",
        "create model anthropic/claude-sonnet",
        "set default model anthropic/claude-sonnet",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    let second = apply(&[]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(stdout(&second).trim(), "no changes");

    let store = aibridge_proxy::store::Store::connect(&db.url)
        .await
        .unwrap();
    let providers = store.list_providers().await.unwrap();
    assert_eq!(providers.len(), 2);
    let openai = providers.iter().find(|p| p.name == "openai").unwrap();
    assert_eq!(openai.intercept_hosts, vec!["api.openai.com"]);
    assert_eq!(
        openai.keys[0].api_key.as_ref().unwrap().expose(),
        "sk-apply-0123456789"
    );
    let default = store.default_model().await.unwrap().unwrap();
    assert_eq!(default.model, "claude-sonnet");

    // A changed file changes exactly what differs; --prune removes what it no longer lists.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("context_limit = 128000", "context_limit = 64000");
    let text = text.replace(
        "[[providers]]\nname = \"anthropic\"\nkind = \"anthropic\"\nbase_url = \"https://api.anthropic.com\"\n",
        "",
    );
    let text = text.replace(
        "[[models]]\nprovider = \"anthropic\"\nmodel = \"claude-sonnet\"\n",
        "",
    );
    let text = text.replace(
        "provider = \"anthropic\"\nmodel = \"claude-sonnet\"",
        "provider = \"openai\"\nmodel = \"gpt-4o\"",
    );
    std::fs::write(&file, text).unwrap();
    let third = apply(&["--prune"]);
    assert!(third.status.success(), "{}", stderr(&third));
    let out = stdout(&third);
    assert!(
        out.contains("update model openai/gpt-4o") && out.contains("delete provider anthropic"),
        "{out}"
    );
    assert_eq!(stdout(&apply(&["--prune"])).trim(), "no changes");
    assert_eq!(store.list_providers().await.unwrap().len(), 1);
    assert_eq!(
        store.default_model().await.unwrap().unwrap().model,
        "gpt-4o"
    );

    // A typo is an error, not a silently dropped field.
    std::fs::write(&file, "[[providers]]\nname = \"x\"\nkind = \"openai\"\nbase_url = \"https://x.example\"\nkeyenv = [\"A\"]\n").unwrap();
    let typo = apply(&[]);
    assert!(!typo.status.success());
    assert!(
        stderr(&typo).contains("keyenv") || stderr(&typo).contains("unknown field"),
        "{}",
        stderr(&typo)
    );
    store.close().await;
}
both_backends!(apply_reconciles_and_is_idempotent, apply_is_idempotent);

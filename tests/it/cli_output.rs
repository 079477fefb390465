//! The command line's edges: exit codes when the database or the admin API cannot be reached
//! (69), a refused admin token, usage errors (64) on one line of stderr, remote mode over TLS
//! verified with `--admin-ca-file` (and refused without it), `--output json` read field by
//! field, and the completion scripts and manual page generated from the same definitions.

use crate::support::bin::{bin, stderr, stdout, Target};
use crate::support::net::tls_front;
use crate::support::*;

/// Run `cmd` off the runtime's threads (the proxy in this process must answer it).
async fn output(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// One line on stderr, starting with `error: `.
fn one_error_line(o: &std::process::Output) -> String {
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[tokio::test]
async fn unreachable_database_and_admin_api_exit_69() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let down = Target::local(d, &format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    for args in [
        &["providers", "list"][..],
        &["models", "list"],
        &["token", "list"],
        &["usage"],
    ] {
        let out = down.run(args).await;
        assert_eq!(out.status.code(), Some(69), "{args:?}: {}", stderr(&out));
        assert!(one_error_line(&out).contains("database"));
    }
    let nobody = Target::remote(d, &format!("http://127.0.0.1:{port}"), "whatever");
    let out = nobody.run(&["models", "default"]).await;
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let err = one_error_line(&out);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    let bad_url = Target::local(d, "mysql://x");
    let out = bad_url.run(&["token", "list"]).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(one_error_line(&out).contains("--database-url"));
}

#[tokio::test]
async fn remote_mode_refusals_name_the_flag() {
    let env = Env::bare().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin = format!("http://{}", env.app.admin_addr.unwrap());

    let wrong = Target::remote(d, &admin, "not-the-admin-token");
    let out = wrong.run(&["token", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("--admin-token-file"));

    let mut cmd = bin();
    cmd.args(["token", "list", "--admin", &admin, "--admin-token-file"])
        .arg(d.join("missing"));
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(one_error_line(&out).contains("--admin-token-file"));

    let mut cmd = bin();
    cmd.args([
        "token",
        "list",
        "--admin",
        "ftp://x",
        "--database-url",
        "sqlite://x.db",
    ])
    .current_dir(d);
    let out = output(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(64),
        "--admin and --database-url conflict"
    );
    assert!(one_error_line(&out).contains("--admin"));
    let mut cmd = bin();
    cmd.args(["token", "list", "--admin", "ftp://x"])
        .current_dir(d);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(one_error_line(&out).contains("--admin"));

    // The environment selects remote mode as the flags do.
    std::fs::write(d.join("token"), &env.admin_token).unwrap();
    let mut cmd = bin();
    cmd.args(["token", "list", "-o", "json"])
        .env("AIBRIDGE_ADMIN_URL", &admin)
        .env("AIBRIDGE_ADMIN_TOKEN_FILE", d.join("token"))
        .current_dir(d);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let tokens: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tokens[0]["user"], "alice");
    assert!(
        !d.join("aibridge.db").exists(),
        "no database opened in remote mode"
    );
    env.stop().await;
}

#[tokio::test]
async fn remote_mode_over_tls_is_verified() {
    let env = Env::bare().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::named("operator's admin CA");
    let front = tls_front(
        ca.server_config(&[b"http/1.1"]),
        env.app.admin_addr.unwrap(),
    )
    .await;
    let url = format!("https://localhost:{}", front.port());
    let ca_file = d.join("admin-ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();

    let trusted = Target::remote(d, &url, &env.admin_token);
    let mut with_ca = trusted.clone();
    with_ca
        .flags
        .extend(["--admin-ca-file".into(), ca_file.display().to_string()]);
    let tokens = with_ca.json(&["token", "list", "-o", "json"]).await;
    assert_eq!(tokens[0]["user"], "alice");
    assert_eq!(tokens[0]["revoked_at"], serde_json::Value::Null);

    // Without the CA the certificate is not trusted: nothing is sent, the API is unreachable.
    let out = trusted.run(&["token", "list"]).await;
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let err = one_error_line(&out);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains(&env.admin_token));

    let mut not_pem = trusted.clone();
    not_pem.flags.extend([
        "--admin-ca-file".into(),
        d.join("admin-token").display().to_string(),
    ]);
    let out = not_pem.run(&["token", "list"]).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(one_error_line(&out).contains("--admin-ca-file"));
    env.stop().await;
}

#[tokio::test]
async fn json_output_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = Target::local(d, &crate::support::bin::cli_db(d)).env("KEY", "sk-json-0123456789wxyz");
    let p = t
        .json(&[
            "providers",
            "create",
            "--name",
            "local-llm",
            "--kind",
            "openai-compatible",
            "--base-url",
            "http://127.0.0.1:11434/v1",
            "--key-env",
            "KEY",
            "--allow-private-upstreams",
            "127.0.0.0/8",
            "-o",
            "json",
        ])
        .await;
    let fields: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    for f in [
        "id",
        "name",
        "kind",
        "base_url",
        "intercept_hosts",
        "hosts",
        "enabled",
        "enforce_models",
        "passthrough",
        "record_prompts",
        "status",
        "warnings",
        "api_keys",
        "created_at",
        "updated_at",
    ] {
        assert!(fields.contains(&f), "{f} missing: {fields:?}");
    }
    assert_eq!(p["name"], "local-llm");
    assert_eq!(p["kind"], "openai-compatible");
    assert_eq!(p["base_url"], "http://127.0.0.1:11434/v1");
    assert_eq!(p["hosts"], serde_json::json!(["127.0.0.1:11434"]));
    assert_eq!(p["status"], "enabled");
    assert_eq!(p["enforce_models"], false);
    assert_eq!(p["passthrough"], "forward");
    assert_eq!(p["record_prompts"], true);
    assert_eq!(p["api_keys"].as_array().unwrap().len(), 1);
    assert_eq!(p["api_keys"][0]["masked"], "sk-...wxyz");
    uuid::Uuid::parse_str(p["id"].as_str().unwrap()).unwrap();
    for t in [&p["created_at"], &p["api_keys"][0]["created_at"]] {
        time::OffsetDateTime::parse(
            t.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
    }
    // Without the flag that let it be written, the router would refuse the row: the status says
    // so, as a proxy started without it would.
    let list = t.json(&["providers", "list", "-o", "json"]).await;
    assert_eq!(list[0]["status"], "error");
    assert!(list[0]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("--allow-private-upstreams"));

    let m = t
        .json(&[
            "models",
            "create",
            "--provider",
            "local-llm",
            "--model",
            "llama3",
            "--display-name",
            "Llama 3",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(m["provider_id"], p["id"]);
    assert_eq!(m["model"], "llama3");
    assert_eq!(m["display_name"], "Llama 3");
    assert_eq!(m["context_limit"], serde_json::Value::Null);
    assert_eq!(m["enabled"], true);
    assert_eq!(m["is_default"], true);

    let tok = t
        .json(&["token", "create", "--user", "dana", "-o", "json"])
        .await;
    assert_eq!(tok["user"], "dana");
    assert!(tok["token"].as_str().unwrap().starts_with("abp_"));
    let list = t.json(&["token", "list", "-o", "json"]).await;
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == tok["id"])
        .unwrap();
    assert_eq!(row["user"], "dana");
    assert_eq!(row["last_used_at"], serde_json::Value::Null);
    assert!(row.get("token").is_none() && row.get("token_hash").is_none());
    let usage = t.json(&["usage", "-o", "json"]).await;
    assert_eq!(usage, serde_json::json!([]));
}

#[test]
fn usage_errors_are_one_line_and_exit_64() {
    for args in [
        &["providers", "create", "--name", "x"][..],
        &["models", "list", "--output", "yaml"],
        &["token", "revoke", "not-a-uuid"],
        &["nope"],
        &["providers", "update", "x", "--enabled", "maybe"],
        &[
            "providers",
            "create",
            "--disabled",
            "--enabled",
            "--name",
            "x",
            "--kind",
            "openai",
            "--base-url",
            "https://x.example",
        ],
    ] {
        let out = bin().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        one_error_line(&out);
    }
    let help = bin().args(["models", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("default"));
}

#[test]
fn completions_and_man_page_from_the_same_definitions() {
    let run = |args: &[&str]| {
        let out = bin().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("aibridge-proxy") && bash.contains("--admin-token-file"));
    assert!(bash.contains("models") && bash.contains("--context-limit"));
    let zsh = run(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef aibridge-proxy"), "{}", &zsh[..40]);
    let fish = run(&["completions", "fish"]);
    assert!(fish.contains("complete -c aibridge-proxy"));
    assert!(fish.contains("usage") && fish.contains("group-by"));
    assert_eq!(
        bin()
            .args(["completions", "powershell"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(64)
    );

    let page = run(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH aibridge-proxy"),
        "{}",
        &page[..80]
    );
    assert!(page.contains("models") && page.contains("completions"));
    let dir = tempfile::tempdir().unwrap();
    run(&["man", "--dir", &dir.path().display().to_string()]);
    for page in [
        "aibridge-proxy.1",
        "aibridge-proxy-models-default.1",
        "aibridge-proxy-providers-keys-add.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
}

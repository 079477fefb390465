//! Every data command (`providers`, `providers keys`, `models`, `token`, `usage`, `apply`)
//! run twice from the real binary — on the database, and through a running proxy's admin API
//! (`--admin`) — on both backends: each step's exit code and output are checked, and the two
//! transcripts (ids, times and tokens normalized) must be identical.

use crate::support::bin::{normalized, stderr, stdout, Target};
use crate::support::db::{usage_record, writer, TestDb};
use crate::support::*;
use serde_json::Value;

const K1: &str = "sk-openai-first-0123456789aaaa";
const K2: &str = "sk-openai-second-0123456789bbbb";
const K3: &str = "sk-ant-0123456789cccc";

/// The commands run so far, with their exit codes and output.
struct Transcript {
    target: Target,
    log: String,
}

impl Transcript {
    /// Run `args`, expect `code`, log it; returns stdout.
    async fn step(&mut self, code: i32, args: &[&str]) -> String {
        let out = self.target.run(args).await;
        let (o, e) = (stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(code), "{args:?}\n{o}\n{e}");
        for key in [K1, K2, K3] {
            assert!(!o.contains(key) && !e.contains(key), "a key was printed");
        }
        self.log
            .push_str(&format!("$ {}\n[{code}]\n{o}{e}\n", args.join(" ")));
        o
    }

    async fn json(&mut self, args: &[&str]) -> Value {
        let text = self.step(0, args).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }
}

async fn scenario(target: Target) -> String {
    let dir = target.dir.clone();
    let mut t = Transcript {
        target: target.env("K1", K1).env("K2", K2).env("K3", K3),
        log: String::new(),
    };

    // Providers: JSON in the API's shape, effective hosts with ports, status as routed.
    let p = t
        .json(&[
            "providers",
            "create",
            "--name",
            "openai",
            "--kind",
            "openai",
            "--base-url",
            "https://api.openai.com",
            "--key-env",
            "K1",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(p["name"], "openai");
    assert_eq!(p["kind"], "openai");
    assert_eq!(p["intercept_hosts"], serde_json::json!([]));
    assert_eq!(p["hosts"], serde_json::json!(["api.openai.com:443"]));
    assert_eq!(p["status"], "enabled");
    assert_eq!(p["enabled"], true);
    assert_eq!(p["api_keys"][0]["masked"], "sk-...aaaa");
    t.step(
        0,
        &[
            "providers",
            "create",
            "--name",
            "anthropic",
            "--kind",
            "anthropic",
            "--base-url",
            "https://api.anthropic.com",
            "--intercept-host",
            "API.Anthropic.com:8443",
            "--key-env",
            "K3",
            "--enforce-models",
            "--passthrough",
            "deny",
            "--record-prompts=false",
        ],
    )
    .await;
    let shadow = t
        .json(&[
            "providers",
            "create",
            "--name",
            "shadow",
            "--kind",
            "openai-compatible",
            "--base-url",
            "https://api.openai.com/v1",
            "--disabled",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(shadow["status"], "disabled");
    assert_eq!(shadow["enabled"], false);
    let out = t
        .step(0, &["providers", "update", "shadow", "--enabled"])
        .await;
    assert!(
        out.contains("excluded") && out.contains("already intercepted by provider openai"),
        "{out}"
    );
    let list = t.step(0, &["providers", "list"]).await;
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS"),
        "{list}"
    );
    assert!(
        lines[2].contains("api.anthropic.com:8443") && lines[2].contains("sk-...cccc"),
        "{list}"
    );
    assert!(lines[3].contains("excluded"), "{list}");
    assert!(
        lines[4].starts_with("warning: shadow: host api.openai.com:443"),
        "{list}"
    );
    let ndjson = t.step(0, &["providers", "list", "-o", "ndjson"]).await;
    let rows: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["enforce_models"], true);
    assert_eq!(rows[1]["passthrough"], "deny");
    assert_eq!(rows[1]["record_prompts"], false);
    assert_eq!(
        rows[1]["intercept_hosts"],
        serde_json::json!(["api.anthropic.com:8443"])
    );
    assert_eq!(rows[2]["warnings"].as_array().unwrap().len(), 1);

    // Keys: add, list (the oldest is injected), remove the old one.
    let added = t
        .json(&[
            "providers",
            "keys",
            "add",
            "openai",
            "--key-env",
            "K2",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(added["masked"], "sk-...bbbb");
    let keys = t
        .json(&["providers", "keys", "list", "openai", "-o", "json"])
        .await;
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert_eq!(keys[0]["masked"], "sk-...aaaa");
    let old = keys[0]["id"].as_str().unwrap().to_string();
    let table = t.step(0, &["providers", "keys", "list", "openai"]).await;
    assert!(table.lines().nth(1).unwrap().ends_with("yes"), "{table}");
    t.step(0, &["providers", "keys", "remove", "openai", &old])
        .await;
    t.step(1, &["providers", "keys", "remove", "openai", &old])
        .await;
    t.step(1, &["providers", "keys", "list", "nope"]).await;
    let keys = t
        .json(&["providers", "keys", "list", "openai", "-o", "json"])
        .await;
    assert_eq!(keys[0]["id"], added["id"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);

    // Refusals: input 64, conflict 65, not found 1.
    for (code, args) in [
        (
            64,
            vec![
                "providers",
                "create",
                "--name",
                "Bad_Name",
                "--kind",
                "openai",
                "--base-url",
                "https://x.example",
            ],
        ),
        (
            64,
            vec![
                "providers",
                "create",
                "--name",
                "x",
                "--kind",
                "nope",
                "--base-url",
                "https://x.example",
            ],
        ),
        (
            64,
            vec![
                "providers",
                "create",
                "--name",
                "x",
                "--kind",
                "openai",
                "--base-url",
                "ftp://x.example",
            ],
        ),
        (
            64,
            vec![
                "providers",
                "create",
                "--name",
                "x",
                "--kind",
                "openai",
                "--base-url",
                "https://x.example",
                "--key-env",
                "UNSET_IN_TESTS",
            ],
        ),
        (
            65,
            vec![
                "providers",
                "create",
                "--name",
                "openai",
                "--kind",
                "openai",
                "--base-url",
                "https://x.example",
            ],
        ),
        (1, vec!["providers", "update", "nope", "--enabled=false"]),
        (1, vec!["providers", "delete", "nope"]),
    ] {
        t.step(code, &args).await;
    }

    // Models and the one default.
    assert!(t
        .step(0, &["models", "default"])
        .await
        .contains("no models"));
    assert_eq!(
        t.step(0, &["models", "default", "-o", "json"]).await.trim(),
        "null"
    );
    let first = t
        .json(&[
            "models",
            "create",
            "--provider",
            "openai",
            "--model",
            "gpt-4o",
            "--context-limit",
            "128000",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(first["is_default"], true, "the first model is the default");
    t.step(65, &["models", "update", "gpt-4o", "--default=false"])
        .await;
    t.step(
        0,
        &[
            "models",
            "create",
            "--provider",
            "anthropic",
            "--model",
            "claude-sonnet",
            "--display-name",
            "Claude Sonnet",
        ],
    )
    .await;
    t.step(
        0,
        &[
            "models",
            "create",
            "--provider",
            "openai",
            "--model",
            "gpt-4o-mini",
            "--disabled",
        ],
    )
    .await;
    t.step(0, &["models", "list"]).await;
    let set = t
        .step(0, &["models", "default", "anthropic/claude-sonnet"])
        .await;
    assert!(
        set.starts_with("default model: anthropic/claude-sonnet"),
        "{set}"
    );
    let again = t.step(0, &["models", "default", "claude-sonnet"]).await;
    assert!(again.contains("is already the default"), "{again}");
    let shown = t.json(&["models", "default", "-o", "json"]).await;
    assert_eq!(shown["model"], "claude-sonnet");
    assert_eq!(shown["is_default"], true);
    let updated = t
        .json(&[
            "models",
            "update",
            "openai/gpt-4o",
            "--display-name",
            "GPT-4o",
            "--context-limit",
            "64000",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(updated["display_name"], "GPT-4o");
    assert_eq!(updated["context_limit"], 64000);
    t.step(0, &["models", "update", "claude-sonnet", "--default=false"])
        .await;
    let shown = t.json(&["models", "default", "-o", "json"]).await;
    assert_eq!(
        shown["model"], "gpt-4o",
        "handed to the oldest enabled model"
    );
    let deleted = t.step(0, &["models", "delete", "openai/gpt-4o"]).await;
    assert!(
        deleted.contains("default model: anthropic/claude-sonnet"),
        "{deleted}"
    );
    t.step(1, &["models", "delete", "nope"]).await;
    t.step(1, &["models", "default", "openai/nope"]).await;
    t.step(
        65,
        &[
            "models",
            "create",
            "--provider",
            "openai",
            "--model",
            "gpt-4o-mini",
        ],
    )
    .await;
    t.step(
        64,
        &[
            "models",
            "create",
            "--provider",
            "openai",
            "--model",
            "x",
            "--context-limit",
            "0",
        ],
    )
    .await;
    t.step(
        1,
        &["models", "create", "--provider", "nope", "--model", "x"],
    )
    .await;
    let models = t.json(&["models", "list", "-o", "json"]).await;
    let defaults = models
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["is_default"] == true)
        .count();
    assert_eq!(defaults, 1);

    // Tokens: shown once; lists never show them.
    let bob = t
        .json(&["token", "create", "--user", "bob", "-o", "json"])
        .await;
    let bob_token = bob["token"].as_str().unwrap().to_string();
    assert!(bob_token.starts_with("abp_"));
    let carol = t.step(0, &["token", "create", "--user", "carol"]).await;
    let carol_token = carol.lines().last().unwrap().trim().to_string();
    assert!(carol_token.starts_with("abp_"), "{carol}");
    let list = t.step(0, &["token", "list"]).await;
    assert!(!list.contains(&bob_token) && !list.contains(&carol_token));
    let tokens = t.json(&["token", "list", "-o", "json"]).await;
    let users: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob", "carol"]);
    assert!(tokens.to_string().find("abp_").is_none());
    let id = bob["id"].as_str().unwrap().to_string();
    t.step(0, &["token", "revoke", &id]).await;
    t.step(1, &["token", "revoke", &id]).await;
    t.step(64, &["token", "create", "--user", " "]).await;
    let listed = t.step(0, &["token", "list"]).await;
    assert!(
        listed.lines().nth(2).unwrap().contains("revoked"),
        "{listed}"
    );

    // Usage: totals per group, with a TOTAL line; passthrough only when asked.
    let by_provider = t.step(0, &["usage"]).await;
    let total = by_provider.lines().last().unwrap().to_string();
    assert_eq!(
        total.split_whitespace().collect::<Vec<_>>(),
        ["TOTAL", "3", "600", "60", "60", "0"],
        "{by_provider}"
    );
    let by_user = t.json(&["usage", "--group-by", "user", "-o", "json"]).await;
    assert_eq!(by_user[0]["key"], "alice");
    assert_eq!(by_user[0]["requests"], 2);
    assert_eq!(by_user[0]["input_tokens"], 300);
    assert_eq!(by_user[1]["key"], "bob");
    let recent = t
        .step(0, &["usage", "--since", "1d", "--group-by", "model"])
        .await;
    assert!(recent.lines().last().unwrap().contains(" 2 "), "{recent}");
    let all = t.step(0, &["usage", "--include-passthrough"]).await;
    assert!(
        all.lines().last().unwrap().split_whitespace().nth(1) == Some("4"),
        "{all}"
    );
    t.step(64, &["usage", "--since", "soon"]).await;

    // apply: the same file twice changes nothing the second time (keys compared, not read).
    let file = dir.join("aibridge.toml");
    std::fs::write(
        &file,
        r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com"
key_env = ["K2"]

[[providers]]
name = "mistral"
kind = "openai-compatible"
base_url = "https://api.mistral.ai"
key_env = ["K1"]

[[models]]
provider = "mistral"
model = "mistral-large"

[default_model]
provider = "mistral"
model = "mistral-large"
"#,
    )
    .unwrap();
    let file = file.display().to_string();
    let dry = t.step(0, &["apply", "-f", &file, "--dry-run"]).await;
    assert!(dry.contains("would create provider mistral"), "{dry}");
    let applied = t.step(0, &["apply", "-f", &file]).await;
    assert!(
        !applied.contains("update provider openai"),
        "same keys: {applied}"
    );
    assert!(
        applied.contains("set default model mistral/mistral-large"),
        "{applied}"
    );
    assert_eq!(
        t.step(0, &["apply", "-f", &file]).await.trim(),
        "no changes"
    );
    let rotated = std::fs::read_to_string(&file)
        .unwrap()
        .replacen("[\"K2\"]", "[\"K1\"]", 1);
    std::fs::write(&file, rotated).unwrap();
    let applied = t.step(0, &["apply", "-f", &file]).await;
    assert_eq!(applied.trim(), "update provider openai (keys)");
    assert_eq!(
        t.step(0, &["apply", "-f", &file]).await.trim(),
        "no changes"
    );

    t.step(0, &["providers", "delete", "shadow"]).await;
    let last = t.json(&["providers", "list", "-o", "json"]).await;
    let names: Vec<&str> = last
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["openai", "anthropic", "mistral"]);
    assert_eq!(last[0]["api_keys"][0]["masked"], "sk-...aaaa");
    normalized(&t.log)
}

/// Records for `usage`: alice twice (one 3 days ago), bob once, one passthrough call.
async fn seed_records(url: &str) {
    let store = writer(url).await;
    let hour = std::time::Duration::from_secs(3600);
    let mut passthrough = usage_record("bob", "openai", "gpt-4o", 0, 0, hour);
    passthrough.route = "passthrough".into();
    store
        .insert_interceptions(&[
            usage_record("alice", "openai", "gpt-4o", 100, 10, hour),
            usage_record("alice", "anthropic", "claude-sonnet", 200, 20, 72 * hour),
            usage_record("bob", "openai", "gpt-4o", 300, 30, 2 * hour),
            passthrough,
        ])
        .await
        .unwrap();
    store.close().await;
}

async fn same_output_local_and_remote(db: &TestDb) {
    let other = match db.backend {
        "sqlite" => TestDb::sqlite(),
        _ => TestDb::postgres("cli_data::other").await.unwrap(),
    };
    // Local: the database as the proxy would have it (its seed token, alice, first).
    let store = writer(&db.url).await;
    store.create_token("alice").await.unwrap();
    store.close().await;
    seed_records(&db.url).await;
    let local_dir = tempfile::tempdir().unwrap();
    let local = scenario(Target::local(local_dir.path(), &db.url)).await;

    let env = Env::with(|o| o.database(&other.url)).await;
    seed_records(&other.url).await;
    let remote_dir = tempfile::tempdir().unwrap();
    let admin = format!("http://{}", env.app.admin_addr.unwrap());
    let remote = scenario(Target::remote(remote_dir.path(), &admin, &env.admin_token)).await;
    let (local, remote) = (
        local.replace(&local_dir.path().display().to_string(), "<dir>"),
        remote.replace(&remote_dir.path().display().to_string(), "<dir>"),
    );
    if local != remote {
        for (a, b) in local.lines().zip(remote.lines()) {
            assert_eq!(a, b, "first difference between local and remote output");
        }
    }
    assert_eq!(local, remote);
    env.stop().await;
}
both_backends!(every_command_local_and_remote, same_output_local_and_remote);

//! `serve --config`, `serve --check` and `healthcheck`, run as the operator would.

use crate::support::bin::{bin, state_in, stderr, stdout};
use crate::support::*;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `serve ARGS` in `dir` with its state (CA, admin token, SQLite) there.
fn serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let db = format!("sqlite://{}", dir.join("aibridge.db").display());
    bin()
        .arg("serve")
        .args(args)
        .args(state_in(dir))
        .args(["--database-url", &db])
        .env_remove("AIBRIDGE_LISTEN")
        .env_remove("AIBRIDGE_ADMIN_LISTEN")
        .env_remove("AIBRIDGE_CONFIG")
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The `--check` line for `check` (`config`, `database`, `ca`, `listen`, `admin`).
fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check))
        .unwrap_or_else(|| panic!("no {check} line in:\n{out}"))
}

#[test]
fn a_config_file_reports_every_bad_key_at_once_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "aibridge-proxy.toml",
        "listen = \"nowhere\"\nmax_connections = 10\nidle-timeout = \"soon\"\nauth = \"token\"\nwhatever = true\n",
    );
    let out = serve(dir.path(), &["--config", &file, "--check"], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    for key in ["listen:", "max_connections:", "idle-timeout:", "whatever:"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("error: {file}: {key}"))),
            "{key} not reported in:\n{err}"
        );
    }
    assert!(err.contains("did you mean `max-connections`"), "{err}");
    assert!(stdout(&out).is_empty(), "nothing checked, nothing served");
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, p3, p4) = (free_port(), free_port(), free_port(), free_port());
    let file = write(
        dir.path(),
        "aibridge-proxy.toml",
        &format!(
            "listen = \"127.0.0.1:{p1}\"\nadmin-listen = \"127.0.0.1:{p4}\"\nconnect-ports = [443, 8443]\n"
        ),
    );
    let proxy_in = |out: &Output| {
        assert_eq!(out.status.code(), Some(0), "{}{}", stdout(out), stderr(out));
        line(&stdout(out), "config").to_string()
    };
    let from_file = proxy_in(&serve(dir.path(), &["--config", &file, "--check"], &[]));
    assert!(
        from_file.contains(&format!("proxy 127.0.0.1:{p1}")),
        "{from_file}"
    );
    assert!(
        from_file.contains(&format!("admin 127.0.0.1:{p4}")),
        "{from_file}"
    );
    let env_listen = format!("127.0.0.1:{p2}");
    let from_env = proxy_in(&serve(
        dir.path(),
        &["--config", &file, "--check"],
        &[("AIBRIDGE_LISTEN", &env_listen)],
    ));
    assert!(
        from_env.contains(&format!("proxy {env_listen}")),
        "{from_env}"
    );
    assert!(
        from_env.contains(&format!("admin 127.0.0.1:{p4}")),
        "{from_env}"
    );
    let flag_listen = format!("127.0.0.1:{p3}");
    let from_flag = proxy_in(&serve(
        dir.path(),
        &["--config", &file, "--check", "--listen", &flag_listen],
        &[("AIBRIDGE_LISTEN", &env_listen)],
    ));
    assert!(
        from_flag.contains(&format!("proxy {flag_listen}")),
        "{from_flag}"
    );
    // AIBRIDGE_CONFIG names the file as well as --config does.
    let via_env = proxy_in(&serve(
        dir.path(),
        &["--check"],
        &[("AIBRIDGE_CONFIG", file.as_str())],
    ));
    assert!(
        via_env.contains(&format!("proxy 127.0.0.1:{p1}")),
        "{via_env}"
    );
}

#[test]
fn check_says_one_line_per_check_and_exits_0_64_or_69() {
    let dir = tempfile::tempdir().unwrap();
    let free = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    // First start: no CA yet, migrations pending, everything else fine.
    let out = serve(dir.path(), &[&free[..], &["--check"]].concat(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(line(&text, "ca").starts_with("warn"), "{text}");
    assert!(
        line(&text, "database").contains("migration(s) pending"),
        "{text}"
    );
    assert!(
        !dir.path().join("ca.pem").exists(),
        "--check generates nothing"
    );

    // After `migrate` and `ca init`: up to date, and the CA's days to expiry.
    let db = format!("sqlite://{}", dir.path().join("aibridge.db").display());
    let paths = state_in(dir.path());
    for args in [
        vec!["migrate", "--database-url", &db],
        vec!["ca", "init", &paths[0], &paths[1], &paths[2], &paths[3]],
    ] {
        let out = bin().args(&args).current_dir(dir.path()).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let out = serve(dir.path(), &[&free[..], &["--check"]].concat(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        line(&text, "database").contains("schema up to date"),
        "{text}"
    );
    let ca = line(&text, "ca");
    assert!(ca.starts_with("ok") && ca.contains("expires in"), "{ca}");

    // A listen address another process holds: a dependency down, 69.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap().to_string();
    let out = serve(
        dir.path(),
        &[
            "--listen",
            &held_addr,
            "--admin-listen",
            "127.0.0.1:0",
            "--check",
        ],
        &[],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(69), "{text}");
    assert!(line(&text, "listen").starts_with("FAIL"), "{text}");
    assert!(line(&text, "admin").starts_with("ok"), "{text}");

    // A bad value: configuration, 64, even with a port held too.
    let out = serve(
        dir.path(),
        &[
            "--listen",
            &held_addr,
            "--max-header-bytes",
            "10",
            "--check",
        ],
        &[],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(
        line(&text, "config").contains("--max-header-bytes"),
        "{text}"
    );
    drop(held);
}

#[test]
fn check_reports_an_unreachable_database_as_69() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = bin()
        .args([
            "serve",
            "--check",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(state_in(dir.path()))
        .args([
            "--database-url",
            &format!("postgres://aibridge@127.0.0.1:{port}/aibridge"),
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(69), "{text}{}", stderr(&out));
    assert!(line(&text, "database").starts_with("FAIL"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_when_ready_and_69_when_not() {
    let env = Env::openai().await;
    let token_file = env.dir.path().join("admin-token");
    let run = |args: Vec<String>| {
        let token_file = token_file.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                bin()
                    .arg("healthcheck")
                    .args(args)
                    .arg("--admin-token-file")
                    .arg(token_file)
                    .env_remove("AIBRIDGE_ADMIN_URL")
                    .env_remove("AIBRIDGE_ADMIN_LISTEN")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let admin = env.app.admin_addr.unwrap();
    let out = run(vec!["--admin".into(), format!("http://{admin}")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ready: "), "{}", stdout(&out));
    // The default URL is http:// + --admin-listen (as serve reads it).
    let out = run(vec!["--admin-listen".into(), admin.to_string()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Nothing listening: unavailable.
    let out = run(vec![
        "--admin".into(),
        format!("http://127.0.0.1:{}", free_port()),
    ])
    .await;
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    // A token the API refuses: a configuration error, not "down".
    let wrong = env.dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let out = bin()
        .args(["healthcheck", "--admin", &format!("http://{admin}")])
        .arg("--admin-token-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_69_while_readyz_says_not_ready() {
    let panics = Arc::new(AtomicBool::new(false));
    let env = Env::with(|o| o.openai().reload_panic(panics.clone())).await;
    panics.store(true, Ordering::Release);
    // A change the dead reloader cannot apply: /readyz turns 503.
    let (status, _) = env
        .admin_post(
            "/api/v1/providers",
            serde_json::json!({"name": "other", "kind": "openai", "base_url": env.upstream.base_url(), "intercept_hosts": ["h1.example"]}),
        )
        .await;
    assert_eq!(status, 201);
    let admin = format!("http://{}", env.app.admin_addr.unwrap());
    let token_file = env.dir.path().join("admin-token");
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["healthcheck", "--admin", &admin])
            .arg("--admin-token-file")
            .arg(token_file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", stdout(&out));
    assert!(
        stdout(&out).starts_with("not ready (503): "),
        "{}",
        stdout(&out)
    );
    panics.store(false, Ordering::Release);
    env.stop().await;
}

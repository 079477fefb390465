//! The real binary: a command with the environment the tests must not inherit removed, its
//! output as text, and a child process that never outlives a failing test.

use std::path::Path;
use std::process::{Command, ExitStatus, Output};

/// `aibridge-proxy` with no configuration from the environment.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aibridge-proxy"));
    for var in [
        "DATABASE_URL",
        "AIBRIDGE_DATABASE_URL",
        "AIBRIDGE_SECRETS_KEY_FILE",
        "AIBRIDGE_PREVIOUS_SECRETS_KEY_FILE",
        "AIBRIDGE_NEW_SECRETS_KEY_FILE",
        "AIBRIDGE_ALLOW_PRIVATE_UPSTREAMS",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The SQLite database the command-line tests share within `dir`.
pub fn cli_db(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("cli.db").display())
}

/// Run the binary in `dir` with `args` and `env`, on [`cli_db`].
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    bin()
        .args(args)
        .args(["--database-url", &cli_db(dir)])
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

/// `providers create --name NAME --kind KIND --base-url URL`, then `more`.
pub fn create_provider<'a>(
    name: &'a str,
    kind: &'a str,
    base_url: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "providers",
        "create",
        "--name",
        name,
        "--kind",
        kind,
        "--base-url",
        base_url,
    ];
    args.extend(more);
    args
}

/// `--ca-cert`, `--ca-key` and `--admin-token-file` inside `dir`: a `serve` that keeps its
/// state there.
pub fn state_in(dir: &Path) -> Vec<String> {
    let path = |f: &str| dir.join(f).display().to_string();
    vec![
        "--ca-cert".into(),
        path("ca.pem"),
        "--ca-key".into(),
        path("ca-key.pem"),
        "--admin-token-file".into(),
        path("admin-token"),
    ]
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Kills the child on drop so a failing test never leaves a server behind.
pub struct Child(pub std::process::Child);

impl Child {
    /// Send `SIG<name>` (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// SIGTERM, then wait for the exit off the runtime's threads.
    pub async fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        tokio::task::spawn_blocking(move || self.0.wait())
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

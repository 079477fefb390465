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

/// Where the data commands go: the database (`--database-url`) or a proxy's admin API
/// (`--admin`, `--admin-token-file`). The same command line, with these flags appended, runs
/// in either mode.
#[derive(Clone)]
pub struct Target {
    /// Flags appended to every command.
    pub flags: Vec<String>,
    /// Environment set for every command.
    pub env: Vec<(String, String)>,
    /// Working directory (holds the token file in remote mode).
    pub dir: std::path::PathBuf,
}

impl Target {
    /// Local mode on `url`.
    pub fn local(dir: &Path, url: &str) -> Target {
        Target {
            flags: vec!["--database-url".into(), url.into()],
            env: Vec::new(),
            dir: dir.to_path_buf(),
        }
    }

    /// Remote mode on the admin API at `admin_url`, with `admin_token` written to a file.
    pub fn remote(dir: &Path, admin_url: &str, admin_token: &str) -> Target {
        let file = dir.join("admin-token");
        std::fs::write(&file, admin_token).unwrap();
        Target {
            flags: vec![
                "--admin".into(),
                admin_url.into(),
                "--admin-token-file".into(),
                file.display().to_string(),
            ],
            env: Vec::new(),
            dir: dir.to_path_buf(),
        }
    }

    /// Also set `name=value` for every command.
    pub fn env(mut self, name: &str, value: &str) -> Target {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Run `args` plus this target's flags, off the runtime's threads (a proxy in this process
    /// may have to answer it).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = bin();
        cmd.args(args)
            .args(&self.flags)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.dir);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// Run and expect exit code `code`; returns stdout.
    pub async fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: stdout {} stderr {}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// Run, expect success, parse stdout as JSON.
    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let text = self.expect(0, args).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }
}

/// Output with what differs between two runs of the same commands replaced by stable
/// placeholders: UUIDs numbered in order of first appearance, RFC 3339 times, agent tokens.
pub fn normalized(text: &str) -> String {
    let mut ids: Vec<String> = Vec::new();
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 40)].iter().collect();
        if let Some(id) = uuid_at(&rest) {
            let n = match ids.iter().position(|x| x == &id) {
                Some(n) => n,
                None => {
                    ids.push(id);
                    ids.len() - 1
                }
            };
            out.push_str(&format!("<id{n}>"));
            i += 36;
        } else if let Some(len) = time_at(&chars[i..]) {
            out.push_str("<time>");
            i += len;
        } else if rest.starts_with("abp_") {
            out.push_str("<token>");
            i += 4;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "-_".contains(chars[i])) {
                i += 1;
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn uuid_at(s: &str) -> Option<String> {
    let candidate = s.get(..36)?;
    uuid::Uuid::parse_str(candidate)
        .ok()
        .filter(|_| candidate.as_bytes()[8] == b'-')
        .map(|_| candidate.to_string())
}

/// The length of an RFC 3339 time starting at `chars[0]` (`2026-12-03T08:01:11.5Z`).
fn time_at(chars: &[char]) -> Option<usize> {
    let shape = "dddd-dd-ddTdd:dd:dd";
    if chars.len() < shape.len() {
        return None;
    }
    for (c, s) in chars.iter().zip(shape.chars()) {
        let ok = if s == 'd' {
            c.is_ascii_digit()
        } else {
            *c == s
        };
        if !ok {
            return None;
        }
    }
    let mut i = shape.len();
    if chars.get(i) == Some(&'.') {
        i += 1;
        while chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
    }
    match chars.get(i) {
        Some('Z') => Some(i + 1),
        Some('+' | '-') => Some(i + 6),
        _ => None,
    }
}

#[test]
fn normalized_output_hides_ids_times_and_tokens() {
    let text = "a 0190c0de-0000-7000-8000-000000000001 2026-12-03T08:01:11.699Z \
                0190c0de-0000-7000-8000-000000000002 abp_x-Y_z 2026-12-03T08:01:11Z \
                0190c0de-0000-7000-8000-000000000001";
    assert_eq!(
        normalized(text),
        "a <id0> <time> <id1> <token> <time> <id0>"
    );
}

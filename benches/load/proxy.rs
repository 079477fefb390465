//! The proxy under test: the real `aibridge-proxy` binary as a child process, set up the way an
//! operator would (CLI `providers create` and `token create` on a SQLite file, then `serve`),
//! optionally pinned to one CPU. Its CPU time and RSS are read from `/proc`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_aibridge-proxy");

/// The proxy binary: this build's, or `AIBRIDGE_BENCH_PROXY_BIN` (e.g. an older build, to show
/// a change before and after in one run).
fn bin() -> String {
    std::env::var("AIBRIDGE_BENCH_PROXY_BIN").unwrap_or_else(|_| BIN.to_string())
}
/// The provider key the proxy injects (the bench upstream ignores it).
const KEY: &str = "sk-bench-provider-key-0123456789";

pub struct ProxyProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub token: String,
    pub admin_token: String,
    pub ca_pem: String,
    dir: tempfile::TempDir,
}

pub struct Setup<'a> {
    pub upstream_base: &'a str,
    pub upstream_ca_pem: &'a str,
    /// Extra CONNECT port (the bulk source), reachable on loopback.
    pub bulk_port: u16,
    /// Pin the proxy (and its one tokio worker) to this CPU.
    pub pin: Option<usize>,
    /// More `serve` flags (before those of `AIBRIDGE_BENCH_SERVE_ARGS`).
    pub extra: &'a [&'a str],
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn cli(dir: &Path, args: &[&str]) -> String {
    let db = format!("sqlite://{}", dir.join("aibridge.db").display());
    let out = Command::new(bin())
        .args(args)
        .args(["--database-url", &db])
        .env("BENCH_PROVIDER_KEY", KEY)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl ProxyProcess {
    pub fn start(setup: &Setup<'_>) -> ProxyProcess {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        cli(
            d,
            &[
                "providers",
                "create",
                "--name",
                "openai",
                "--kind",
                "openai",
                "--base-url",
                setup.upstream_base,
                "--intercept-host",
                "api.openai.com",
                "--key-env",
                "BENCH_PROVIDER_KEY",
                // The bench upstream is on loopback, which base URLs may not point at by default.
                "--allow-private-upstreams",
                "127.0.0.0/8",
            ],
        );
        let token = cli(d, &["token", "create", "--user", "bench"])
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string();
        std::fs::write(d.join("upstream-ca.pem"), setup.upstream_ca_pem).unwrap();
        let (addr, admin) = (free_port(), free_port());
        let log = std::fs::File::create(d.join("proxy.log")).unwrap();
        let mut cmd = match setup.pin {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), &bin()]);
                // One worker thread per CPU it may use.
                c.env("TOKIO_WORKER_THREADS", "1");
                c
            }
            None => Command::new(bin()),
        };
        let path = |f: &str| d.join(f).display().to_string();
        cmd.args(["serve", "--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--admin-token-file", &path("admin-token")])
            .args([
                "--database-url",
                &format!("sqlite://{}", path("aibridge.db")),
            ])
            .args([
                "--ca-cert",
                &path("ca.pem"),
                "--ca-key",
                &path("ca-key.pem"),
            ])
            .args(["--upstream-ca-file", &path("upstream-ca.pem")])
            .args(["--connect-ports", &format!("443,80,{}", setup.bulk_port)])
            .args(["--allow-private-cidrs", "127.0.0.0/8"])
            .args(["--allow-private-upstreams", "127.0.0.0/8"])
            // The idle scenario holds 10 000 connections and still probes with more.
            .args(["--max-connections", "30000"])
            .args(setup.extra)
            .args(extra_serve_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().unwrap();
        let mut proxy = ProxyProcess {
            child,
            addr,
            admin,
            token,
            admin_token: String::new(),
            ca_pem: String::new(),
            dir,
        };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "proxy exited: {}",
                self.log()
            );
            if let (Ok(token), Ok(ca)) = (
                std::fs::read_to_string(self.dir.path().join("admin-token")),
                std::fs::read_to_string(self.dir.path().join("ca.pem")),
            ) {
                self.admin_token = token.trim().to_string();
                self.ca_pem = ca;
                if std::net::TcpStream::connect(self.addr).is_ok()
                    && std::net::TcpStream::connect(self.admin).is_ok()
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "proxy not ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time of the whole process so far.
    pub fn cpu(&self) -> Duration {
        process_cpu(self.pid())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// An admin API call: `(status, body)`.
    pub async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(crate::tls::client_config(&[], &[]))
            .build()
            .unwrap();
        let mut req = client
            .request(
                method.parse().unwrap(),
                format!("http://{}{path}", self.admin),
            )
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of process `pid` (all its threads, live and exited) so far.
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_nanos(ticks * 1_000_000_000 / clock_ticks())
}

/// Extra `serve` flags from `AIBRIDGE_BENCH_SERVE_ARGS` (space-separated), for experiments.
fn extra_serve_args() -> Vec<String> {
    std::env::var("AIBRIDGE_BENCH_SERVE_ARGS")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Resident set size of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

//! hudsucker, the MITM crate a user would compare us with, as a row of the harness: its current
//! release with default features and a pass-through handler (benches/peers/hudsucker, a package
//! of its own so its dependencies stay out of the proxy's build). Built on first use with the
//! same toolchain (`cargo build --release`, into `target/peers`), started and placed like the
//! proxy. `AIBRIDGE_BENCH_HUDSUCKER=PATH` uses a prebuilt binary; `=off` leaves the row out.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PeerProcess {
    child: Child,
    pub addr: std::net::SocketAddr,
    pub ca_pem: String,
    _dir: tempfile::TempDir,
}

/// The peer's binary, built if needed; `None` (with the reason printed) when it cannot be.
fn binary() -> Option<PathBuf> {
    match std::env::var("AIBRIDGE_BENCH_HUDSUCKER").as_deref() {
        Ok("off") => return None,
        Ok(path) => return Some(PathBuf::from(path)),
        Err(_) => {}
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("benches/peers/hudsucker/Cargo.toml");
    let target = root.join("target/peers");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status();
    match status {
        Ok(s) if s.success() => Some(target.join("release/aibridge-bench-hudsucker")),
        other => {
            eprintln!("hudsucker row left out: build failed ({other:?})");
            None
        }
    }
}

impl PeerProcess {
    /// Start hudsucker in front of `upstream_base`, pinned to `pin` like the proxy.
    pub fn start_hudsucker(
        upstream_base: &str,
        upstream_ca_pem: &str,
        pin: Option<usize>,
    ) -> Option<Self> {
        let exe = binary()?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("upstream-ca.pem"), upstream_ca_pem).unwrap();
        let mut cmd = match pin {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&exe);
                c.env("TOKIO_WORKER_THREADS", "1");
                c
            }
            None => Command::new(&exe),
        };
        cmd.arg(upstream_base)
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(dir.path().join("addr")) {
                if let Ok(addr) = a.parse() {
                    break addr;
                }
            }
            assert!(child.try_wait().unwrap().is_none(), "hudsucker exited");
            assert!(Instant::now() < deadline, "hudsucker not ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        Some(PeerProcess {
            child,
            addr,
            ca_pem,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu(&self) -> Duration {
        crate::proxy::process_cpu(self.child.id())
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

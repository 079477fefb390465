//! hudsucker, the MITM crate a user would compare us with, as a row of the harness: its current
//! release with default features and a pass-through handler (benches/peers/hudsucker, a package
//! of its own so its dependencies stay out of the proxy's build). Built on first use with the
//! same toolchain (`cargo build --release`, into `target/peers`), started and placed like the
//! proxy. `AIBRIDGE_BENCH_HUDSUCKER=PATH` uses a prebuilt binary; `=off` leaves the row out.

use crate::relay::ChildProcess;
use std::path::PathBuf;
use std::process::Command;

/// The hudsucker row's process.
pub type PeerProcess = ChildProcess;

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

/// Start hudsucker in front of `upstream_base`, placed like the proxy; `None` when it could not
/// be built.
pub fn start_hudsucker(
    upstream_base: &str,
    upstream_ca_pem: &str,
    pin: Option<usize>,
) -> Option<PeerProcess> {
    let exe = binary()?;
    Some(ChildProcess::spawn(
        "hudsucker",
        &exe,
        &[],
        upstream_base,
        upstream_ca_pem,
        pin,
    ))
}

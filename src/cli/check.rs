//! `serve --check`: everything `serve` would need, checked without serving (pingora's `-t`).
//!
//! One line per check, `ok`, `warn` or `FAIL`, then an exit code: 0 when `serve` would start,
//! 64 when the configuration is at fault (a bad value, an unusable CA or key file, a database
//! URL that is not one), 69 when something it depends on is down (the database unreachable, a
//! listen address held by another process). Nothing is generated, migrated or bound for longer
//! than the check itself; only a SQLite file that does not exist yet is created empty, as
//! `serve` would.

use super::exit;
use crate::ca::{CaPaths, CertificateAuthority};
use crate::config::AppConfig;
use crate::store::{Keyring, Store, StoreError};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Longest the database check waits for an answer.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(10);
/// A CA closer than this to its expiry draws a `warn` line (the alert rule's threshold too).
const CA_WARN_DAYS: i64 = 30;

/// What one check found.
enum Outcome {
    Ok(String),
    Warn(String),
    /// A configuration problem (exit 64).
    Config(String),
    /// A dependency down (exit 69).
    Down(String),
}

/// Run every check, print one line each, and return the exit code.
pub async fn run(config: &AppConfig, file: Option<&Path>) -> i32 {
    let mut outcomes = vec![("config", check_config(config, file))];
    outcomes.push(("database", check_database(&config.database_url).await));
    outcomes.push(("ca", check_ca(config)));
    for (name, addr) in [("listen", config.listen), ("admin", config.admin_listen)] {
        outcomes.push((name, check_bind(addr)));
    }
    let mut code = exit::OK;
    for (name, outcome) in outcomes {
        let (status, detail) = match outcome {
            Outcome::Ok(d) => ("ok", d),
            Outcome::Warn(d) => ("warn", d),
            Outcome::Config(d) => {
                code = exit::USAGE;
                ("FAIL", d)
            }
            Outcome::Down(d) => {
                if code == exit::OK {
                    code = exit::UNAVAILABLE;
                }
                ("FAIL", d)
            }
        };
        println!("{status:<4} {name:<8} {detail}");
    }
    code
}

/// Values the types cannot check, and the secrets key files.
fn check_config(config: &AppConfig, file: Option<&Path>) -> Outcome {
    let mut errors = config.validate().err().unwrap_or_default();
    if let Err(e) = Keyring::load(
        config.secrets_key_file.as_deref(),
        config.previous_secrets_key_file.as_deref(),
    ) {
        errors.push(format!("secrets key: {e}"));
    }
    if !errors.is_empty() {
        return Outcome::Config(errors.join("; "));
    }
    let source = match file {
        Some(f) => format!("{} (flags and AIBRIDGE_* override it)", f.display()),
        None => "flags and AIBRIDGE_* environment".to_string(),
    };
    Outcome::Ok(format!(
        "valid: {source}; proxy {}, admin {}",
        config.listen, config.admin_listen
    ))
}

/// Reachable, and how many migrations `serve` would apply at start.
async fn check_database(url: &str) -> Outcome {
    let store = match Store::open(url).await {
        Ok(s) => s,
        Err(e @ StoreError::UnsupportedUrl) => {
            return Outcome::Config(format!("--database-url: {e}"))
        }
        Err(e) => return Outcome::Down(format!("cannot open: {e}")),
    };
    let backend = store.backend_name();
    let pending = tokio::time::timeout(DATABASE_TIMEOUT, store.pending_migrations()).await;
    store.close().await;
    match pending {
        Ok(Ok(0)) => Outcome::Ok(format!("{backend} reachable, schema up to date")),
        Ok(Ok(n)) => Outcome::Ok(format!(
            "{backend} reachable, {n} migration(s) pending (applied at start)"
        )),
        Ok(Err(e)) => Outcome::Down(format!("{backend} cannot be reached: {e}")),
        Err(_) => Outcome::Down(format!(
            "{backend} did not answer within {}s",
            DATABASE_TIMEOUT.as_secs()
        )),
    }
}

/// The CA loads (key file private, certificate and key matching) and how long it has left.
fn check_ca(config: &AppConfig) -> Outcome {
    let paths = CaPaths {
        cert: config.ca_cert.clone(),
        key: config.ca_key.clone(),
    };
    if !paths.cert.exists() && !paths.key.exists() {
        return Outcome::Warn(format!(
            "{} absent: a new CA is generated at first start (agents must then trust it)",
            paths.cert.display()
        ));
    }
    match CertificateAuthority::load(&paths) {
        Ok(ca) => {
            let days = (ca.not_after() - time::OffsetDateTime::now_utc()).whole_days();
            let detail = format!(
                "{} valid, expires in {days} days ({})",
                paths.cert.display(),
                ca.not_after().date()
            );
            if days < CA_WARN_DAYS {
                Outcome::Warn(detail)
            } else {
                Outcome::Ok(detail)
            }
        }
        Err(e) => Outcome::Config(e.to_string()),
    }
}

/// Bind and release at once: held by another process is "down", refused by the system (no
/// such local address, a privileged port) is configuration.
fn check_bind(addr: SocketAddr) -> Outcome {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Outcome::Ok(format!("{addr} can be bound")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Outcome::Down(format!("{addr} is in use: {e}"))
        }
        Err(e) => Outcome::Config(format!("{addr} cannot be bound: {e}")),
    }
}

//! `healthcheck`: exit 0 when the proxy's `/readyz` says ready, for images without curl (the
//! container `HEALTHCHECK`, a Kubernetes exec probe, a load balancer's external check).
//!
//! It asks the admin API at `--admin URL`, or at `http://` + `--admin-listen` (the address
//! `serve` binds, read from the same `AIBRIDGE_ADMIN_LISTEN`), with the admin token from
//! `--admin-token-file`. One line on stdout says what `/readyz` answered.

use super::exit::{self, CliError};
use super::remote::{AdminArgs, AdminClient};
use clap::Args;
use http::{Method, StatusCode};
use humantime::Duration as HumanDuration;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The admin API's URL (default: http:// and --admin-listen).
    #[arg(long = "admin", value_name = "URL", env = "AIBRIDGE_ADMIN_URL")]
    admin_url: Option<String>,
    /// The admin listener `serve` uses, when no --admin URL is given (an unspecified address
    /// such as 0.0.0.0 is reached on loopback).
    #[arg(long, env = "AIBRIDGE_ADMIN_LISTEN", default_value_t = crate::config::DEFAULT_ADMIN_LISTEN)]
    admin_listen: SocketAddr,
    /// The admin API bearer token file.
    #[arg(
        long,
        env = "AIBRIDGE_ADMIN_TOKEN_FILE",
        default_value = crate::config::DEFAULT_ADMIN_TOKEN_FILE
    )]
    admin_token_file: PathBuf,
    /// PEM certificates an https admin URL must chain to, instead of the public roots.
    #[arg(long, env = "AIBRIDGE_ADMIN_CA_FILE")]
    admin_ca_file: Option<PathBuf>,
    /// Longest wait for the answer.
    #[arg(long, default_value = "5s")]
    timeout: HumanDuration,
}

impl HealthcheckArgs {
    /// The URL asked: `--admin`, else the admin listener on loopback when it is unspecified.
    fn url(&self) -> String {
        if let Some(url) = &self.admin_url {
            return url.clone();
        }
        let mut addr = self.admin_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{addr}")
    }
}

/// 0 when ready; 69 when not ready or not reachable; 64 for a bad URL or token file.
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<i32> {
    let url = args.url();
    let admin = AdminArgs {
        admin_url: Some(url.clone()),
        admin_token_file: args.admin_token_file.clone(),
        admin_ca_file: args.admin_ca_file.clone(),
    };
    let client = AdminClient::new(&admin, &url)?;
    let timeout: std::time::Duration = args.timeout.into();
    let answer = tokio::time::timeout(timeout, client.call_path(Method::GET, "/readyz", None))
        .await
        .map_err(|_| {
            CliError::Unavailable(format!("{url}/readyz: no answer within {}", args.timeout))
        })??;
    let body = String::from_utf8_lossy(&answer.body);
    let body = body.trim();
    match answer.status {
        StatusCode::OK => {
            println!("ready: {body}");
            Ok(exit::OK)
        }
        StatusCode::UNAUTHORIZED => Err(CliError::Invalid(format!(
            "{url}/readyz refused the admin token from {}",
            args.admin_token_file.display()
        ))
        .into()),
        status => {
            println!("not ready ({}): {body}", status.as_u16());
            Ok(exit::UNAVAILABLE)
        }
    }
}

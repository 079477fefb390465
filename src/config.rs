//! Runtime configuration as plain, validated structs.
//!
//! The CLI (clap, with `AIBRIDGE_*` environment variables) parses flags and hands `serve` an
//! [`AppConfig`]; tests build one directly. Nothing clap-typed crosses into the rest of the
//! crate. Data — providers, keys, tokens — is not configuration: it lives in the store.

use ipnet::IpNet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8888));
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8889));
pub const DEFAULT_ADMIN_TOKEN_FILE: &str = "certs/admin-token";
pub const DEFAULT_CA_CERT: &str = "certs/ca.pem";
pub const DEFAULT_CA_KEY: &str = "certs/ca-key.pem";
/// Leaf validity: short, so a leaked leaf key is worth little.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_CERT_CACHE_SIZE: u64 = 10_000;
pub const DEFAULT_CONNECT_PORTS: &[u16] = &[443, 80];
/// Slowloris bound: a client has this long to send a complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's own default (~400 KiB) is far more than any real request head needs.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest model-call request body read for the model policy (`413` beyond).
pub const DEFAULT_MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// Longest a router reload may take before it counts as failed (no flag: tests shorten it).
/// It is also the PostgreSQL `statement_timeout` of the reload's read.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// `/readyz` turns 503 once every reload has failed for this long: the router no longer
/// follows the store (no flag; tests shorten it).
pub const DEFAULT_RELOAD_STALE_AFTER: Duration = Duration::from_secs(60);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Longest silence on a response body, a request body or a tunnel. A per-read bound, never a
/// total one: an SSE stream may run for an hour as long as it keeps talking.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Longest wait from sending a request (connect and any streamed upload included) to the
/// upstream's response head (`504` beyond). Generous: a large non-streamed completion sends
/// nothing until it is done.
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Model calls have their prompt recorded unless this (or the provider's setting) is off.
pub const DEFAULT_RECORD_PROMPTS: bool = true;
/// Provider upstreams are spoken to in HTTP/1.1 over a pool unless `--upstream-http2`: one h2
/// connection per upstream carries every stream, and hyper's pool waits (does not dial
/// another) once the provider's stream limit is reached (hyperium/hyper#3623) — long SSE
/// streams from a fleet of agents would queue behind each other. HTTP/1.1 also measured
/// faster here on one connection (load bench, README → Performance).
pub const DEFAULT_UPSTREAM_HTTP2: bool = false;
/// Largest recorded prompt (cut on a UTF-8 boundary, `truncated` set).
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 32 * 1024;
/// Largest recorded tool-call arguments, per call.
pub const DEFAULT_MAX_TOOL_ARGS_BYTES: usize = 16 * 1024;
/// Largest WebSocket message read for accounting; larger ones are relayed unread.
pub const DEFAULT_MAX_WS_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Interception records older than this are deleted (zero keeps everything).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// How often the retention job looks for old records (no flag; tests shorten it).
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Upper bounds on flags, far beyond any sane value, so arithmetic on them cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_CONNECTIONS_LIMIT: usize = 10_000_000;
/// Open client connections served at once; beyond it new ones get `503` and are closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// HTTP/2 streams a client may open at once on one intercepted connection.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams reset by the client before we answered, queued per connection (rapid reset,
/// CVE-2023-44487); beyond it the connection is closed with GOAWAY.
pub const DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams we may reset for protocol errors per connection before it is closed (CVE-2024-27316
/// class: a client that provokes resets in a loop).
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

pub const DEFAULT_AUTH: AuthMode = AuthMode::Token;
pub const DEFAULT_NON_PROVIDER_HOSTS: NonProviderHosts = NonProviderHosts::Tunnel;
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Whether agents must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// `Proxy-Authorization: Basic` with an agent token as the password.
    Token,
    /// No authentication: anyone who can reach the listener may use it (and its keys).
    None,
}

/// What happens to CONNECTs for hosts no provider intercepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NonProviderHosts {
    /// Tunnel the bytes untouched (public destinations only, unless allowed by CIDR).
    Tunnel,
    /// Refuse with 403.
    Deny,
}

/// The flag spelling of a value (`token`, `deny`), so clap can show typed defaults.
fn value_name(v: &impl clap::ValueEnum, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match v.to_possible_value() {
        Some(pv) => f.write_str(pv.get_name()),
        None => Ok(()),
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        value_name(self, f)
    }
}

impl fmt::Display for NonProviderHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        value_name(self, f)
    }
}

/// The proxy listener's behaviour.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub connect_ports: Vec<u16>,
    pub auth: AuthMode,
    pub non_provider_hosts: NonProviderHosts,
    /// Reserved destinations inside these ranges may be tunnelled to anyway.
    pub allow_private_cidrs: Vec<IpNet>,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_request_body: usize,
    pub idle_timeout: Duration,
    pub upstream_response_timeout: Duration,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_accept_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
    /// `--record-prompts`: model calls keep their latest user turn (per provider too).
    pub record_prompts: bool,
    pub max_prompt_bytes: usize,
    pub max_tool_args_bytes: usize,
    /// `--max-ws-message-bytes`: a larger WebSocket message is relayed but not read.
    pub max_ws_message_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_ports: DEFAULT_CONNECT_PORTS.to_vec(),
            auth: DEFAULT_AUTH,
            non_provider_hosts: DEFAULT_NON_PROVIDER_HOSTS,
            allow_private_cidrs: Vec::new(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            upstream_response_timeout: DEFAULT_UPSTREAM_RESPONSE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            h2_max_pending_accept_reset_streams: DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            h2_max_local_error_reset_streams: DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS,
            record_prompts: DEFAULT_RECORD_PROMPTS,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
            max_tool_args_bytes: DEFAULT_MAX_TOOL_ARGS_BYTES,
            max_ws_message_bytes: DEFAULT_MAX_WS_MESSAGE_BYTES,
        }
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The admin bearer token (0600), generated on first start if absent.
    pub admin_token_file: PathBuf,
    pub database_url: String,
    /// The secrets key (64 hex characters, 0600) that encrypts provider keys at rest; without
    /// one keys are written in clear.
    pub secrets_key_file: Option<PathBuf>,
    /// An older secrets key, read-only: opens keys not yet rotated to the current one.
    pub previous_secrets_key_file: Option<PathBuf>,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub leaf_validity: Duration,
    pub cert_cache_size: u64,
    /// Extra PEM roots trusted for provider upstreams (beside the webpki roots).
    pub upstream_ca_file: Option<PathBuf>,
    /// Whether provider upstreams are offered HTTP/2 (`--upstream-http2`).
    pub upstream_http2: bool,
    /// Reserved ranges provider base URLs may point into (written and dialled); none by default.
    pub allow_private_upstreams: Vec<IpNet>,
    pub shutdown_grace: Duration,
    /// Longest a router reload may take before it counts as failed (no flag; tests shorten it).
    pub reload_timeout: Duration,
    /// Readiness fails once reloads have failed for this long (no flag; tests shorten it).
    pub reload_stale_after: Duration,
    /// `--retention`: records older than this are deleted; zero keeps everything.
    pub retention: Duration,
    /// How often the retention job runs (no flag; tests shorten it).
    pub retention_interval: Duration,
    /// `--otlp-endpoint`: where spans go (OTLP over HTTP); none exports nothing.
    pub otlp_endpoint: Option<String>,
    pub proxy: ProxyConfig,
}

impl AppConfig {
    /// Defaults for everything but where the database and the CA live.
    pub fn new(
        database_url: impl Into<String>,
        ca_cert: impl Into<PathBuf>,
        ca_key: impl Into<PathBuf>,
    ) -> Self {
        AppConfig {
            listen: DEFAULT_LISTEN,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            admin_token_file: PathBuf::from(DEFAULT_ADMIN_TOKEN_FILE),
            database_url: database_url.into(),
            secrets_key_file: None,
            previous_secrets_key_file: None,
            ca_cert: ca_cert.into(),
            ca_key: ca_key.into(),
            leaf_validity: DEFAULT_LEAF_VALIDITY,
            cert_cache_size: DEFAULT_CERT_CACHE_SIZE,
            upstream_ca_file: None,
            upstream_http2: DEFAULT_UPSTREAM_HTTP2,
            allow_private_upstreams: Vec::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            reload_timeout: DEFAULT_RELOAD_TIMEOUT,
            reload_stale_after: DEFAULT_RELOAD_STALE_AFTER,
            retention: DEFAULT_RETENTION,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            otlp_endpoint: None,
            proxy: ProxyConfig::default(),
        }
    }

    /// Check what the types cannot: every problem is reported, not just the first.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.proxy.connect_ports.is_empty() || self.proxy.connect_ports.contains(&0) {
            errors.push("--connect-ports must list ports from 1 to 65535".to_string());
        }
        if self.proxy.max_header_bytes < 8192 {
            errors.push("--max-header-bytes must be at least 8192".to_string());
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&self.proxy.max_connections) {
            errors.push(format!(
                "--max-connections must be from 1 to {MAX_CONNECTIONS_LIMIT}"
            ));
        }
        if self.proxy.h2_max_concurrent_streams == 0 {
            errors.push("--h2-max-concurrent-streams must be at least 1".to_string());
        }
        if self.leaf_validity < Duration::from_secs(2 * 3600) {
            errors.push("--leaf-validity must be at least 2h".to_string());
        }
        if self.leaf_validity > Duration::from_secs(398 * 24 * 3600) {
            // Browsers' and most TLS stacks' ceiling for a server certificate.
            errors.push("--leaf-validity must be at most 398d".to_string());
        }
        if self.proxy.max_prompt_bytes > 16 * 1024 * 1024 {
            errors.push("--max-prompt-bytes must be at most 16777216".to_string());
        }
        if self.proxy.max_tool_args_bytes > 16 * 1024 * 1024 {
            errors.push("--max-tool-args-bytes must be at most 16777216".to_string());
        }
        if !(1024..=1 << 30).contains(&self.proxy.max_ws_message_bytes) {
            errors.push("--max-ws-message-bytes must be from 1024 to 1073741824".to_string());
        }
        if self.retention > MAX_DURATION * 10 {
            errors.push("--retention must be at most 3650d".to_string());
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let ok = endpoint.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                errors.push("--otlp-endpoint must be an http:// or https:// URL".to_string());
            }
        }
        if self.cert_cache_size == 0 {
            errors.push("--cert-cache-size must be at least 1".to_string());
        }
        for (name, d) in [
            ("--header-read-timeout", self.proxy.header_read_timeout),
            ("--tls-handshake-timeout", self.proxy.tls_handshake_timeout),
            ("--connect-timeout", self.proxy.connect_timeout),
            ("--idle-timeout", self.proxy.idle_timeout),
            (
                "--upstream-response-timeout",
                self.proxy.upstream_response_timeout,
            ),
        ] {
            if d.is_zero() {
                errors.push(format!("{name} must be greater than zero"));
            } else if d > MAX_DURATION {
                errors.push(format!("{name} must be at most 365d"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_every_error_is_reported() {
        let mut c = AppConfig::new("sqlite://x.db", "c.pem", "k.pem");
        assert!(c.validate().is_ok());
        c.proxy.connect_ports.clear();
        c.proxy.max_header_bytes = 10;
        c.proxy.header_read_timeout = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().len(), 3);
    }
}

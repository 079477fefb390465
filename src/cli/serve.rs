//! `serve`: parse flags into an [`AppConfig`], start the proxy, wait for a signal. Every
//! default comes from a `config::DEFAULT_*` constant: the flags have no second copy.
//!
//! Signals: SIGTERM or SIGINT stops accepting and lets in-flight work finish for up to
//! `--shutdown-grace`; whatever still runs then is cut (its records written), the records are
//! flushed and the process exits 0. A second signal exits at once with status 1.

use super::ca::CaFileArgs;
use super::{DbArgs, UpstreamArgs, EXIT_CONFIG};
use crate::app::{App, AppError};
use crate::config::{self, AppConfig, AuthMode, NonProviderHosts, ProxyConfig};
use clap::Args;
use humantime::Duration as HumanDuration;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file holding any of these settings under the flag's name (`listen = "..."`);
    /// flags and AIBRIDGE_* variables override it. Secrets as { env = "VAR" } or
    /// { file = "PATH" }, never in the file.
    #[arg(long, env = "AIBRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration, the database, the CA and the listen addresses, print one line
    /// per check and exit (0 ok, 64 configuration, 69 a dependency down) without serving.
    #[arg(long)]
    check: bool,
    /// Address of the proxy listener.
    #[arg(long, env = "AIBRIDGE_LISTEN", default_value_t = config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Address of the admin API listener.
    #[arg(long, env = "AIBRIDGE_ADMIN_LISTEN", default_value_t = config::DEFAULT_ADMIN_LISTEN)]
    admin_listen: SocketAddr,
    /// The admin API bearer token file (0600), generated on first start if absent.
    #[arg(long, env = "AIBRIDGE_ADMIN_TOKEN_FILE", default_value = config::DEFAULT_ADMIN_TOKEN_FILE)]
    admin_token_file: PathBuf,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    ca: CaFileArgs,
    /// Validity of minted leaf certificates.
    #[arg(long, env = "AIBRIDGE_LEAF_VALIDITY", default_value_t = config::DEFAULT_LEAF_VALIDITY.into())]
    leaf_validity: HumanDuration,
    /// Maximum number of cached leaf certificates.
    #[arg(long, env = "AIBRIDGE_CERT_CACHE_SIZE", default_value_t = config::DEFAULT_CERT_CACHE_SIZE)]
    cert_cache_size: u64,
    /// Ports CONNECT (and plain forwarding) may target.
    #[arg(
        long,
        env = "AIBRIDGE_CONNECT_PORTS",
        value_delimiter = ',',
        default_values_t = config::DEFAULT_CONNECT_PORTS.to_vec()
    )]
    connect_ports: Vec<u16>,
    /// Agent authentication.
    #[arg(long, env = "AIBRIDGE_AUTH", value_enum, default_value_t = config::DEFAULT_AUTH)]
    auth: AuthMode,
    /// What to do with hosts no provider intercepts.
    #[arg(
        long,
        env = "AIBRIDGE_NON_PROVIDER_HOSTS",
        value_enum,
        default_value_t = config::DEFAULT_NON_PROVIDER_HOSTS
    )]
    non_provider_hosts: NonProviderHosts,
    /// Private/reserved ranges tunnels may reach anyway (comma-separated CIDRs).
    #[arg(long, env = "AIBRIDGE_ALLOW_PRIVATE_CIDRS", value_delimiter = ',')]
    allow_private_cidrs: Vec<IpNet>,
    /// Extra PEM roots trusted for provider upstreams.
    #[arg(long, env = "AIBRIDGE_UPSTREAM_CA_FILE")]
    upstream_ca_file: Option<PathBuf>,
    /// Offer HTTP/2 to provider upstreams (ALPN h2 then http/1.1: one connection per upstream,
    /// its streams capped by the provider); by default HTTP/1.1 over a pool of connections, one
    /// per request in flight.
    #[arg(long, env = "AIBRIDGE_UPSTREAM_HTTP2", action = clap::ArgAction::Set, default_value_t = config::DEFAULT_UPSTREAM_HTTP2)]
    upstream_http2: bool,
    #[command(flatten)]
    upstreams: UpstreamArgs,
    /// Time a client has to send a complete request head.
    #[arg(long, env = "AIBRIDGE_HEADER_READ_TIMEOUT", default_value_t = config::DEFAULT_HEADER_READ_TIMEOUT.into())]
    header_read_timeout: HumanDuration,
    /// Time a client has to complete the TLS handshake on an intercepted connection.
    #[arg(long, env = "AIBRIDGE_TLS_HANDSHAKE_TIMEOUT", default_value_t = config::DEFAULT_TLS_HANDSHAKE_TIMEOUT.into())]
    tls_handshake_timeout: HumanDuration,
    /// Time allowed to open a TCP connection to a destination or upstream.
    #[arg(long, env = "AIBRIDGE_CONNECT_TIMEOUT", default_value_t = config::DEFAULT_CONNECT_TIMEOUT.into())]
    connect_timeout: HumanDuration,
    /// Largest request head accepted.
    #[arg(long, env = "AIBRIDGE_MAX_HEADER_BYTES", default_value_t = config::DEFAULT_MAX_HEADER_BYTES)]
    max_header_bytes: usize,
    /// Largest model-call request body (read for the model policy; 413 beyond).
    #[arg(long, env = "AIBRIDGE_MAX_REQUEST_BODY", default_value_t = config::DEFAULT_MAX_REQUEST_BODY)]
    max_request_body: usize,
    /// Longest silence on a response body, a request body or a tunnel (per read: streams are
    /// never bounded in total).
    #[arg(long, env = "AIBRIDGE_IDLE_TIMEOUT", default_value_t = config::DEFAULT_IDLE_TIMEOUT.into())]
    idle_timeout: HumanDuration,
    /// Longest wait from sending a request to the provider's response head (504 beyond).
    #[arg(long, env = "AIBRIDGE_UPSTREAM_RESPONSE_TIMEOUT", default_value_t = config::DEFAULT_UPSTREAM_RESPONSE_TIMEOUT.into())]
    upstream_response_timeout: HumanDuration,
    /// Client connections served at once; beyond it new ones get 503 and are closed.
    #[arg(long, env = "AIBRIDGE_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// HTTP/2 streams one intercepted connection may have open at once.
    #[arg(long, env = "AIBRIDGE_H2_MAX_CONCURRENT_STREAMS", default_value_t = config::DEFAULT_H2_MAX_CONCURRENT_STREAMS)]
    h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before we answer, per connection (rapid-reset bound).
    #[arg(long, env = "AIBRIDGE_H2_MAX_PENDING_ACCEPT_RESET_STREAMS", default_value_t = config::DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS)]
    h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams we may reset for client protocol errors, per connection.
    #[arg(long, env = "AIBRIDGE_H2_MAX_LOCAL_ERROR_RESET_STREAMS", default_value_t = config::DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS)]
    h2_max_local_error_reset_streams: usize,
    /// Record the prompt (latest user turn) of model calls; providers can turn it off too.
    #[arg(long, env = "AIBRIDGE_RECORD_PROMPTS", action = clap::ArgAction::Set, default_value_t = config::DEFAULT_RECORD_PROMPTS)]
    record_prompts: bool,
    /// Largest recorded prompt, in bytes (cut on a UTF-8 boundary, marked truncated).
    #[arg(long, env = "AIBRIDGE_MAX_PROMPT_BYTES", default_value_t = config::DEFAULT_MAX_PROMPT_BYTES)]
    max_prompt_bytes: usize,
    /// Largest recorded arguments of one tool call, in bytes.
    #[arg(long, env = "AIBRIDGE_MAX_TOOL_ARGS_BYTES", default_value_t = config::DEFAULT_MAX_TOOL_ARGS_BYTES)]
    max_tool_args_bytes: usize,
    /// Largest WebSocket message read for accounting; a larger one is relayed unread.
    #[arg(long, env = "AIBRIDGE_MAX_WS_MESSAGE_BYTES", default_value_t = config::DEFAULT_MAX_WS_MESSAGE_BYTES)]
    max_ws_message_bytes: usize,
    /// Export traces over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318).
    #[arg(long, env = "AIBRIDGE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Delete interception records older than this (0 keeps everything).
    #[arg(long, env = "AIBRIDGE_RETENTION", default_value_t = config::DEFAULT_RETENTION.into())]
    retention: HumanDuration,
    /// How long in-flight requests may run after SIGTERM.
    #[arg(long, env = "AIBRIDGE_SHUTDOWN_GRACE", default_value_t = config::DEFAULT_SHUTDOWN_GRACE.into())]
    shutdown_grace: HumanDuration,
}

impl ServeArgs {
    fn into_config(self) -> AppConfig {
        AppConfig {
            listen: self.listen,
            admin_listen: self.admin_listen,
            admin_token_file: self.admin_token_file,
            database_url: self.db.url(),
            secrets_key_file: self.db.secrets_key_file,
            previous_secrets_key_file: self.db.previous_secrets_key_file,
            ca_cert: self.ca.ca_cert,
            ca_key: self.ca.ca_key,
            leaf_validity: self.leaf_validity.into(),
            cert_cache_size: self.cert_cache_size,
            upstream_ca_file: self.upstream_ca_file,
            upstream_http2: self.upstream_http2,
            allow_private_upstreams: self.upstreams.allow_private_upstreams,
            shutdown_grace: self.shutdown_grace.into(),
            reload_timeout: config::DEFAULT_RELOAD_TIMEOUT,
            reload_stale_after: config::DEFAULT_RELOAD_STALE_AFTER,
            retention: self.retention.into(),
            retention_interval: config::DEFAULT_RETENTION_INTERVAL,
            otlp_endpoint: self.otlp_endpoint,
            proxy: ProxyConfig {
                connect_ports: self.connect_ports,
                auth: self.auth,
                non_provider_hosts: self.non_provider_hosts,
                allow_private_cidrs: self.allow_private_cidrs,
                header_read_timeout: self.header_read_timeout.into(),
                tls_handshake_timeout: self.tls_handshake_timeout.into(),
                connect_timeout: self.connect_timeout.into(),
                max_header_bytes: self.max_header_bytes,
                max_request_body: self.max_request_body,
                idle_timeout: self.idle_timeout.into(),
                upstream_response_timeout: self.upstream_response_timeout.into(),
                max_connections: self.max_connections,
                h2_max_concurrent_streams: self.h2_max_concurrent_streams,
                h2_max_pending_accept_reset_streams: self.h2_max_pending_accept_reset_streams,
                h2_max_local_error_reset_streams: self.h2_max_local_error_reset_streams,
                record_prompts: self.record_prompts,
                max_prompt_bytes: self.max_prompt_bytes,
                max_tool_args_bytes: self.max_tool_args_bytes,
                max_ws_message_bytes: self.max_ws_message_bytes,
            },
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let (check, file) = (args.check, args.config.clone());
    let config = args.into_config();
    if check {
        return Ok(super::check::run(&config, file.as_deref()).await);
    }
    if let Err(errors) = config.validate() {
        for e in errors {
            eprintln!("error: {e}");
        }
        return Ok(EXIT_CONFIG);
    }
    if config.proxy.auth == AuthMode::None {
        tracing::warn!(
            "--auth none: anyone who can reach {} can use the proxy and its provider keys",
            config.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.admin_listen))?;
    let grace = config.shutdown_grace;
    let ca_cert = config.ca_cert.clone();
    let token_file = config.admin_token_file.clone();
    let app = match App::start(config, listener, Some(admin_listener), Default::default()).await {
        Ok(app) => app,
        Err(
            e @ (AppError::Config(_)
            | AppError::Ca(_)
            | AppError::AdminToken(_)
            | AppError::Secrets(_)
            | AppError::UpstreamTls(_)),
        ) => {
            eprintln!("error: {e}");
            return Ok(EXIT_CONFIG);
        }
        Err(e) => return Err(e.into()),
    };
    if app.ca_generated {
        print_agent_setup(app.proxy_addr, &ca_cert);
    }
    if app.admin_token_generated {
        tracing::info!(file = %token_file.display(), "generated the admin API token (0600)");
    }
    wait_for_signal().await;
    tracing::info!(grace = ?grace, "shutting down: no new connections, draining");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        crate::telemetry::flush();
        std::process::exit(1);
    });
    let cut = app.stop(grace).await;
    if cut > 0 {
        tracing::warn!(
            cut,
            "stopped: work still running after the grace period was cut"
        );
    } else {
        tracing::info!("stopped: every connection drained");
    }
    // Cutting at the grace is the documented end of a drain, not a failure.
    Ok(0)
}

/// The lines an agent needs, printed once, when the CA was just generated.
fn print_agent_setup(addr: SocketAddr, ca_cert: &std::path::Path) {
    let ca = std::fs::canonicalize(ca_cert).unwrap_or_else(|_| ca_cert.to_path_buf());
    println!(
        "# aibridge-proxy is ready. Create a token with: aibridge-proxy token create --user NAME"
    );
    println!("# then, in the agent's environment:");
    println!("HTTPS_PROXY=http://agent:TOKEN@{addr}");
    println!("# curl, httpx (the OpenAI and Anthropic Python SDKs); Codex needs a bundle with the system roots too:");
    println!("SSL_CERT_FILE={}", ca.display());
    println!("# Node and Bun (Claude Code, the Node SDKs):");
    println!("NODE_EXTRA_CA_CERTS={}", ca.display());
    println!("# Python requests:");
    println!("REQUESTS_CA_BUNDLE={}", ca.display());
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

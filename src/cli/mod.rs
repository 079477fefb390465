//! The command line: one subcommand per file. Every flag also reads `AIBRIDGE_<FLAG>` from the
//! environment; `--database-url` falls back to `DATABASE_URL`, then to the embedded SQLite file.

mod apply;
mod ca;
mod interceptions;
mod providers;
mod secrets;
mod serve;
mod token;

use crate::net::egress::EgressPolicy;
use crate::store::StoreError;
use crate::telemetry::{self, LogFormat};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "aibridge-proxy",
    version,
    about = "Forward proxy between AI agents and LLM providers"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "AIBRIDGE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// Log level or filter (RUST_LOG overrides it).
    #[arg(
        long,
        global = true,
        env = "AIBRIDGE_LOG_LEVEL",
        default_value = crate::config::DEFAULT_LOG_LEVEL
    )]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(Box<serve::ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DbArgs),
    /// Manage the certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Manage agent tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Manage providers.
    #[command(subcommand)]
    Providers(providers::ProvidersCommand),
    /// Reconcile providers, keys, models and the default model to a TOML file.
    Apply(apply::ApplyArgs),
    /// Manage the secrets key that encrypts provider keys at rest.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Export interception records (JSON, NDJSON, CSV).
    #[command(subcommand)]
    Interceptions(interceptions::InterceptionsCommand),
}

/// Where the database is, and the secrets keys its provider keys are sealed with.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// sqlite://PATH or postgres://... (falls back to DATABASE_URL, then sqlite://aibridge.db).
    #[arg(long, env = "AIBRIDGE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Secrets key file (64 hex characters, mode 0600) encrypting provider keys at rest; without
    /// it keys are written in clear.
    #[arg(long, env = "AIBRIDGE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// An older secrets key file, only for reading keys not yet rotated to the current one.
    #[arg(long, env = "AIBRIDGE_PREVIOUS_SECRETS_KEY_FILE")]
    pub previous_secrets_key_file: Option<PathBuf>,
}

impl DbArgs {
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| crate::store::DEFAULT_DATABASE_URL.to_string())
    }

    /// The keys from `--secrets-key-file` and `--previous-secrets-key-file`.
    pub fn keyring(&self) -> anyhow::Result<crate::store::Keyring> {
        crate::store::Keyring::load(
            self.secrets_key_file.as_deref(),
            self.previous_secrets_key_file.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("secrets key: {e}"))
    }

    pub async fn connect(&self) -> anyhow::Result<crate::store::Store> {
        let keyring = self.keyring()?;
        let url = self.url();
        let store = crate::store::Store::connect(&url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the database: {e}"))?;
        Ok(store.with_keyring(keyring))
    }
}

/// Which private or reserved ranges provider base URLs may point into: `serve` dials under it,
/// and every command that writes providers (`providers create|update`, `apply`) checks base
/// URLs against it, through the same flag and environment variable.
#[derive(Debug, Clone, Args)]
pub struct UpstreamArgs {
    /// Private/reserved ranges provider base URLs may point into (comma-separated CIDRs, e.g.
    /// 127.0.0.0/8); by default only public addresses.
    #[arg(long, env = "AIBRIDGE_ALLOW_PRIVATE_UPSTREAMS", value_delimiter = ',')]
    pub allow_private_upstreams: Vec<IpNet>,
}

impl UpstreamArgs {
    pub fn policy(&self) -> EgressPolicy {
        EgressPolicy::public_only(self.allow_private_upstreams.clone())
    }
}

/// Exit code for configuration errors and refused input (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Whether a command failed on its input (a field the store refused), not on the system.
fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<StoreError>(),
            Some(StoreError::Invalid(_) | StoreError::InvalidInput(_))
        ) || cause
            .downcast_ref::<crate::provider::ProviderError>()
            .is_some()
    })
}

/// Run a parsed command line. Returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    telemetry::init(cli.log_format, &cli.log_level);
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Migrate(db) => migrate(db).await,
        Command::Ca(cmd) => ca::run(cmd),
        Command::Token(cmd) => token::run(cmd).await,
        Command::Providers(cmd) => providers::run(cmd).await,
        Command::Apply(args) => apply::run(args).await,
        Command::Secrets(cmd) => secrets::run(cmd).await,
        Command::Interceptions(cmd) => interceptions::run(cmd).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if is_bad_input(&e) {
                EXIT_CONFIG
            } else {
                1
            }
        }
    }
}

async fn migrate(db: DbArgs) -> anyhow::Result<i32> {
    let store = db.connect().await?;
    println!("migrations applied ({})", store.backend_name());
    store.close().await;
    Ok(0)
}

//! The command line: one subcommand per file. Every flag also reads `AIBRIDGE_<FLAG>` from the
//! environment; `--database-url` falls back to `DATABASE_URL`, then to the embedded SQLite file.
//!
//! The commands that manage data (`providers`, `models`, `token`, `usage`, `apply`) open the
//! database, or with `--admin URL` talk to a running proxy's admin API ([`conn`]); both print
//! the same thing ([`output`]) and exit with the same codes ([`exit`]).

mod apply;
mod ca;
mod check;
mod completions;
pub mod config_file;
mod conn;
pub mod exit;
mod healthcheck;
mod interceptions;
mod items;
mod models;
mod output;
mod providers;
mod remote;
mod secrets;
mod serve;
mod token;
mod usage;

use crate::net::egress::EgressPolicy;
use crate::telemetry::{self, LogFormat};
use clap::{Args, Parser, Subcommand};
use exit::CliError;
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
    /// Exit 0 when a running proxy's /readyz says ready (for container and probe checks).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Apply pending database migrations and exit.
    Migrate(DbArgs),
    /// Manage the certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Manage agent tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Manage providers and their keys.
    #[command(subcommand)]
    Providers(providers::ProvidersCommand),
    /// Manage models and the default model.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Token totals per provider, model or user.
    Usage(usage::UsageArgs),
    /// Reconcile providers, keys, models and the default model to a TOML file.
    Apply(apply::ApplyArgs),
    /// Manage the secrets key that encrypts provider keys at rest.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Export interception records (JSON, NDJSON, CSV).
    #[command(subcommand)]
    Interceptions(interceptions::InterceptionsCommand),
    /// Print a shell completion script (bash, zsh, fish).
    Completions(completions::CompletionsArgs),
    /// Print the manual page (roff), or write one per subcommand into a directory.
    Man(completions::ManArgs),
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
    pub fn keyring(&self) -> Result<crate::store::Keyring, CliError> {
        crate::store::Keyring::load(
            self.secrets_key_file.as_deref(),
            self.previous_secrets_key_file.as_deref(),
        )
        .map_err(|e| CliError::Invalid(format!("secrets key: {e}")))
    }

    /// Open (and migrate) the database: a URL it cannot use exits 64, a database it cannot
    /// open 69.
    pub async fn connect(&self) -> Result<crate::store::Store, CliError> {
        let keyring = self.keyring()?;
        let url = self.url();
        let store = crate::store::Store::connect(&url)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Database(e) => {
                    CliError::Unavailable(format!("cannot open the database: {e}"))
                }
                e => match CliError::from(e) {
                    CliError::Failed(why) => {
                        CliError::Failed(format!("cannot open the database: {why}"))
                    }
                    other => other,
                },
            })?;
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
pub const EXIT_CONFIG: i32 = exit::USAGE;

/// Parse the process's arguments; a usage error is reported on one line and exits 64
/// (`--help` and `--version` exit 0).
/// A config file (`serve --config`) with unknown keys or bad values reports every one of them
/// and exits 64 too.
pub fn parse() -> Cli {
    match config_file::parse_from(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(config_file::ParseError::Flags(e)) => {
            let code = exit::clap_exit(e);
            std::process::exit(code)
        }
        Err(config_file::ParseError::File { path, errors }) => {
            config_file::report(&path, &errors);
            std::process::exit(EXIT_CONFIG)
        }
    }
}

/// Run a parsed command line. Returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    // A command's output is its answer: PostgreSQL's notices (`relation ... already exists,
    // skipping` at every migration check) are not news there.
    let level = match cli.command {
        Command::Serve(_) => cli.log_level.clone(),
        _ => format!("{},sqlx=warn", cli.log_level),
    };
    telemetry::init(cli.log_format, &level);
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Migrate(db) => migrate(db).await,
        Command::Ca(cmd) => ca::run(cmd),
        Command::Token(cmd) => token::run(cmd).await,
        Command::Providers(cmd) => providers::run(cmd).await,
        Command::Models(cmd) => models::run(cmd).await,
        Command::Usage(args) => usage::run(args).await,
        Command::Apply(args) => apply::run(args).await,
        Command::Secrets(cmd) => secrets::run(cmd).await,
        Command::Interceptions(cmd) => interceptions::run(cmd).await,
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", exit::one_line(&e));
            exit::code_of(&e)
        }
    }
}

async fn migrate(db: DbArgs) -> anyhow::Result<i32> {
    let store = db.connect().await?;
    println!("migrations applied ({})", store.backend_name());
    store.close().await;
    Ok(0)
}

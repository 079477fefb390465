//! `providers list | create | update | delete` and `providers keys list | add | remove`.
//!
//! Keys are read from the environment variable named by `--key-env`, never from argv (argv is
//! visible to every user via `ps`), and shown only masked. Enabling has one vocabulary on
//! create and update: `--enabled[=BOOL]` (`--enabled` alone means true), with `--disabled` as
//! the alias of `--enabled=false`; every other switch (`--enforce-models`, `--record-prompts`)
//! takes an optional `BOOL` the same way.
//!
//! Rotating a key with no failed request: `providers keys add P --key-env NEW` (the proxy
//! still injects the oldest key), then `providers keys remove P OLD_KEY_ID` (the new key is now
//! the oldest).

use super::conn::{Conn, ConnArgs};
use super::exit::CliError;
use super::items::ProviderItem;
use super::output::{self, joined, Output, OutputArgs, Table};
use super::UpstreamArgs;
use crate::provider::{Passthrough, ProviderKind};
use crate::secret::Secret;
use crate::store::{NewProvider, ProviderPatch};
use clap::{ArgAction, Args, Subcommand};
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// List providers: status and warnings as the router reports them, the hosts they
    /// intercept, masked keys.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        upstreams: UpstreamArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Create a provider.
    Create {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        upstreams: UpstreamArgs,
        #[command(flatten)]
        out: OutputArgs,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_kind)]
        kind: ProviderKind,
        #[arg(long)]
        base_url: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Update a provider (by name or id); what is not given is kept.
    Update {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        upstreams: UpstreamArgs,
        #[command(flatten)]
        out: OutputArgs,
        /// The provider's name or id.
        provider: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_parser = parse_kind)]
        kind: Option<ProviderKind>,
        /// A new base URL; a new host:port drops the keys unless --key-env gives one again.
        #[arg(long)]
        base_url: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
        /// Go back to intercepting only the base URL's host.
        #[arg(long, conflicts_with = "intercept_host")]
        clear_intercept_hosts: bool,
    },
    /// Delete a provider, its keys and its models.
    Delete {
        #[command(flatten)]
        conn: ConnArgs,
        /// The provider's name or id.
        provider: String,
    },
    /// List, add or remove a provider's keys (rotation without rewriting the provider).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List a provider's keys, masked; the oldest is the one injected.
    List {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
        /// The provider's name or id.
        provider: String,
    },
    /// Add a key, read from an environment variable.
    Add {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        out: OutputArgs,
        /// The provider's name or id.
        provider: String,
        /// Name of the environment variable holding the key.
        #[arg(long, value_name = "VAR")]
        key_env: String,
    },
    /// Remove a key by id (see `providers keys list`).
    Remove {
        #[command(flatten)]
        conn: ConnArgs,
        /// The provider's name or id.
        provider: String,
        key_id: Uuid,
    },
}

/// Fields `create` and `update` share; on update, what is not given is kept.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// A host (or host:port) to intercept; repeat for several. Default: the base URL's host.
    #[arg(long = "intercept-host", value_name = "HOST[:PORT]")]
    intercept_host: Vec<String>,
    /// Name of the environment variable holding the provider's API key (replaces its keys).
    #[arg(long, value_name = "VAR")]
    key_env: Option<String>,
    /// Route its hosts (`--enabled` alone: true; default on create: true).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    enabled: Option<bool>,
    /// Alias of --enabled=false.
    #[arg(long, conflicts_with = "enabled")]
    disabled: bool,
    /// Refuse requests for models not configured for this provider (default on create: false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    enforce_models: Option<bool>,
    /// Requests that are not model calls: forward them (recorded as passthrough) or refuse
    /// (default on create: forward).
    #[arg(long, value_parser = parse_passthrough)]
    passthrough: Option<Passthrough>,
    /// Record the prompt of model calls; also needs serve's --record-prompts (default on
    /// create: true).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    record_prompts: Option<bool>,
}

impl CommonArgs {
    fn keys(&self) -> Result<Option<Vec<Secret<String>>>, CliError> {
        match &self.key_env {
            None => Ok(None),
            Some(var) => Ok(Some(vec![key_from_env(var)?])),
        }
    }

    fn enabled(&self) -> Option<bool> {
        if self.disabled {
            Some(false)
        } else {
            self.enabled
        }
    }
}

/// The key in environment variable `var`.
pub fn key_from_env(var: &str) -> Result<Secret<String>, CliError> {
    std::env::var(var)
        .map(Secret::new)
        .map_err(|_| CliError::Invalid(format!("--key-env: environment variable {var} is not set")))
}

fn parse_passthrough(s: &str) -> Result<Passthrough, String> {
    s.parse()
        .map_err(|e: crate::provider::ProviderError| e.to_string())
}

fn parse_kind(s: &str) -> Result<ProviderKind, String> {
    s.parse()
        .map_err(|e: crate::provider::ProviderError| e.to_string())
}

pub async fn run(cmd: ProvidersCommand) -> anyhow::Result<i32> {
    match cmd {
        ProvidersCommand::List {
            conn,
            upstreams,
            out,
        } => {
            let conn = conn.open().await?.with_upstream_policy(upstreams.policy());
            let providers = conn.list_providers().await;
            conn.close().await;
            print_list(out.output, &providers?)?;
            Ok(0)
        }
        ProvidersCommand::Create {
            conn,
            upstreams,
            out,
            name,
            kind,
            base_url,
            common,
        } => {
            let new = NewProvider {
                name,
                kind,
                base_url,
                intercept_hosts: common.intercept_host.clone(),
                enabled: common.enabled().unwrap_or(true),
                enforce_models: common.enforce_models.unwrap_or(false),
                passthrough: common.passthrough.unwrap_or_default(),
                record_prompts: common
                    .record_prompts
                    .unwrap_or(crate::config::DEFAULT_RECORD_PROMPTS),
                api_keys: common.keys()?.unwrap_or_default(),
            };
            let conn = conn.open().await?.with_upstream_policy(upstreams.policy());
            let created = conn.create_provider(new).await;
            conn.close().await;
            let p = created?;
            output::one(out.output, &p, || describe("created", &p))?;
            Ok(0)
        }
        ProvidersCommand::Update {
            conn,
            upstreams,
            out,
            provider,
            name,
            kind,
            base_url,
            common,
            clear_intercept_hosts,
        } => {
            let intercept_hosts = if clear_intercept_hosts {
                Some(Vec::new())
            } else if common.intercept_host.is_empty() {
                None
            } else {
                Some(common.intercept_host.clone())
            };
            let patch = ProviderPatch {
                name,
                kind,
                base_url,
                intercept_hosts,
                enabled: common.enabled(),
                enforce_models: common.enforce_models,
                passthrough: common.passthrough,
                record_prompts: common.record_prompts,
                api_keys: common.keys()?,
            };
            let conn = conn.open().await?.with_upstream_policy(upstreams.policy());
            let updated = conn.update_provider(&provider, patch).await;
            conn.close().await;
            let p = updated?;
            output::one(out.output, &p, || describe("updated", &p))?;
            Ok(0)
        }
        ProvidersCommand::Delete { conn, provider } => {
            let conn = conn.open().await?;
            let deleted = conn.delete_provider(&provider).await;
            conn.close().await;
            if !deleted? {
                return Err(CliError::NotFound(format!("no such provider {provider}")).into());
            }
            output::print(&format!("deleted provider {provider}\n"))?;
            Ok(0)
        }
        ProvidersCommand::Keys(cmd) => keys(cmd).await,
    }
}

async fn keys(cmd: KeysCommand) -> anyhow::Result<i32> {
    match cmd {
        KeysCommand::List {
            conn,
            out,
            provider,
        } => {
            let conn = conn.open().await?;
            let found = conn.provider(&provider).await;
            conn.close().await;
            let p = found?.ok_or_else(|| no_provider(&provider))?;
            output::list(out.output, &p.api_keys, || {
                let mut t = Table::new(&["ID", "KEY", "CREATED", "INJECTED"]);
                for (i, k) in p.api_keys.iter().enumerate() {
                    t.row(vec![
                        k.id.to_string(),
                        k.masked.clone(),
                        output::time(&k.created_at),
                        if i == 0 { "yes" } else { "no" }.into(),
                    ]);
                }
                t
            })?;
            Ok(0)
        }
        KeysCommand::Add {
            conn,
            out,
            provider,
            key_env,
        } => {
            let key = key_from_env(&key_env)?;
            let conn = conn.open().await?;
            let added = add_key(&conn, &provider, key).await;
            conn.close().await;
            let (key, injected) = added?;
            output::one(out.output, &key, || {
                let mut text = format!(
                    "added key {} ({}) to provider {provider}",
                    key.id, key.masked
                );
                if let Some(injected) = injected.filter(|i| i.id != key.id) {
                    text.push_str(&format!(
                        "; the proxy injects the oldest key, {} ({}), until it is removed",
                        injected.id, injected.masked
                    ));
                }
                text
            })?;
            Ok(0)
        }
        KeysCommand::Remove {
            conn,
            provider,
            key_id,
        } => {
            let conn = conn.open().await?;
            let removed = conn.remove_key(&provider, key_id).await;
            conn.close().await;
            if !removed? {
                return Err(
                    CliError::NotFound(format!("provider {provider} has no key {key_id}")).into(),
                );
            }
            output::print(&format!("removed key {key_id} from provider {provider}\n"))?;
            Ok(0)
        }
    }
}

/// Add the key; also returns the key injected afterwards.
async fn add_key(
    conn: &Conn,
    provider: &str,
    key: Secret<String>,
) -> Result<(super::items::KeyItem, Option<super::items::KeyItem>), CliError> {
    let added = conn.add_key(provider, key).await?;
    let injected = conn
        .provider(provider)
        .await?
        .and_then(|p| p.injected_key().cloned());
    Ok((added, injected))
}

fn no_provider(p: &str) -> CliError {
    CliError::NotFound(format!("no such provider {p}"))
}

fn print_list(output: Output, providers: &[ProviderItem]) -> anyhow::Result<()> {
    output::list(output, providers, || {
        let mut t = Table::new(&["NAME", "KIND", "STATUS", "HOSTS", "BASE_URL", "KEYS"]);
        for p in providers {
            let keys: Vec<String> = p.api_keys.iter().map(|k| k.masked.clone()).collect();
            t.row(vec![
                p.name.clone(),
                p.kind.clone(),
                p.status.clone(),
                joined(&p.hosts),
                p.base_url.clone(),
                joined(&keys),
            ]);
        }
        t
    })?;
    if output == Output::Table {
        let warnings: String = providers
            .iter()
            .flat_map(|p| {
                p.warnings
                    .iter()
                    .map(move |w| format!("warning: {}: {w}\n", p.name))
            })
            .collect();
        output::print(&warnings)?;
    }
    Ok(())
}

/// One provider in a sentence, with its warnings.
fn describe(done: &str, p: &ProviderItem) -> String {
    let mut text = format!(
        "{done} provider {} ({}): {}, intercepting {}",
        p.name,
        p.id,
        p.status,
        joined(&p.hosts)
    );
    for w in &p.warnings {
        text.push_str(&format!("\nwarning: {}: {w}", p.name));
    }
    text
}

//! `providers list | create | update | delete`. Keys are read from the environment variable
//! named by `--key-env`, never from argv (argv is visible to every user via `ps`).

use super::{DbArgs, UpstreamArgs};
use crate::provider::{Passthrough, ProviderKind};
use crate::secret::Secret;
use crate::store::{NewProvider, ProviderPatch};
use anyhow::Context;
use clap::{ArgAction, Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// List providers with their masked keys.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Create a provider.
    Create {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        upstreams: UpstreamArgs,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_kind)]
        kind: ProviderKind,
        #[arg(long)]
        base_url: String,
        #[command(flatten)]
        common: CommonArgs,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// Refuse requests for models not configured for this provider.
        #[arg(long)]
        enforce_models: bool,
        /// Requests that are not model calls: forward them (recorded as passthrough) or refuse.
        #[arg(long, value_parser = parse_passthrough, default_value_t = Passthrough::Forward)]
        passthrough: Passthrough,
        /// Record the prompt of model calls (also needs serve's --record-prompts).
        #[arg(long, action = ArgAction::Set, default_value_t = true)]
        record_prompts: bool,
    },
    /// Update a provider (by name or id).
    Update {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        upstreams: UpstreamArgs,
        provider: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_parser = parse_kind)]
        kind: Option<ProviderKind>,
        #[arg(long)]
        base_url: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
        /// Go back to intercepting only the base URL's host.
        #[arg(long, conflicts_with = "intercept_host")]
        clear_intercept_hosts: bool,
        #[arg(long, action = ArgAction::Set)]
        enabled: Option<bool>,
        #[arg(long, action = ArgAction::Set)]
        enforce_models: Option<bool>,
        #[arg(long, value_parser = parse_passthrough)]
        passthrough: Option<Passthrough>,
        #[arg(long, action = ArgAction::Set)]
        record_prompts: Option<bool>,
    },
    /// Delete a provider and its keys.
    Delete {
        #[command(flatten)]
        db: DbArgs,
        provider: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// A host (or host:port) to intercept; repeat for several. Default: the base URL's host.
    #[arg(long = "intercept-host")]
    intercept_host: Vec<String>,
    /// Name of the environment variable holding the provider's API key.
    #[arg(long)]
    key_env: Option<String>,
}

impl CommonArgs {
    fn keys(&self) -> anyhow::Result<Option<Vec<Secret<String>>>> {
        let Some(var) = &self.key_env else {
            return Ok(None);
        };
        let key =
            std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
        Ok(Some(vec![Secret::new(key)]))
    }
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
        ProvidersCommand::List { db } => {
            let store = db.connect().await?;
            let providers = store.list_providers().await?;
            store.close().await;
            println!(
                "{:<20}  {:<18}  {:<8}  {:<40}  {:<30}  keys",
                "name", "kind", "enabled", "base_url", "intercept_hosts"
            );
            for p in providers {
                let keys: Vec<String> = p.keys.iter().map(|k| k.masked()).collect();
                println!(
                    "{:<20}  {:<18}  {:<8}  {:<40}  {:<30}  {}",
                    p.name,
                    p.kind,
                    p.enabled,
                    p.base_url,
                    p.intercept_hosts.join(","),
                    keys.join(",")
                );
            }
            Ok(0)
        }
        ProvidersCommand::Create {
            db,
            upstreams,
            name,
            kind,
            base_url,
            common,
            disabled,
            enforce_models,
            passthrough,
            record_prompts,
        } => {
            let api_keys = common.keys()?.unwrap_or_default();
            let store = db.connect().await?.with_upstream_policy(upstreams.policy());
            let created = store
                .create_provider(NewProvider {
                    name,
                    kind,
                    base_url,
                    intercept_hosts: common.intercept_host,
                    enabled: !disabled,
                    enforce_models,
                    passthrough,
                    record_prompts,
                    api_keys,
                })
                .await;
            store.close().await;
            let p = created?;
            println!(
                "created provider {} ({}) intercepting {}",
                p.name,
                p.id,
                hosts_text(&p.intercept_hosts, &p.base_url)
            );
            Ok(0)
        }
        ProvidersCommand::Update {
            db,
            upstreams,
            provider,
            name,
            kind,
            base_url,
            common,
            clear_intercept_hosts,
            enabled,
            enforce_models,
            passthrough,
            record_prompts,
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
                enabled,
                enforce_models,
                passthrough,
                record_prompts,
                api_keys: common.keys()?,
            };
            let store = db.connect().await?.with_upstream_policy(upstreams.policy());
            let updated = store.update_provider(&provider, patch).await;
            store.close().await;
            let p = updated?;
            println!("updated provider {} ({})", p.name, p.id);
            Ok(0)
        }
        ProvidersCommand::Delete { db, provider } => {
            let store = db.connect().await?;
            let deleted = store.delete_provider(&provider).await;
            store.close().await;
            if deleted? {
                println!("deleted provider {provider}");
                Ok(0)
            } else {
                eprintln!("no provider {provider}");
                Ok(1)
            }
        }
    }
}

fn hosts_text(hosts: &[String], base_url: &str) -> String {
    if hosts.is_empty() {
        format!("the base URL's host ({base_url})")
    } else {
        hosts.join(", ")
    }
}

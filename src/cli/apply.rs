//! `apply -f FILE`: reconcile the database to a declarative TOML file of providers, keys (by
//! environment variable name), models and the default model.
//!
//! Idempotent: each item is compared with what is stored and only differences are written, so a
//! second run of the same file prints "no changes". Items the file does not mention are left
//! alone unless `--prune` is given. Unknown keys in the file are errors (a typo must not quietly
//! drop a provider).
//!
//! With `--admin URL` the same reconciliation runs through a proxy's admin API (keys compared
//! by `POST /providers/{p}/keys/match`, never read back); base URLs are then checked by the
//! proxy, under its own `--allow-private-upstreams`, as each is written.
//!
//! ```toml
//! [[providers]]
//! name = "openai"
//! kind = "openai"
//! base_url = "https://api.openai.com"
//! intercept_hosts = ["api.openai.com"]   # optional; default: the base URL's host
//! key_env = ["OPENAI_API_KEY"]           # optional; env var names, never the keys themselves
//!
//! [[models]]
//! provider = "openai"
//! model = "gpt-4o"
//! context_limit = 128000
//!
//! [default_model]
//! provider = "openai"
//! model = "gpt-4o"
//! ```

use super::conn::{Conn, ConnArgs};
use super::items::{ModelItem as Model, ProviderItem as Provider};
use super::UpstreamArgs;
use crate::provider::{normalize_intercept_hosts, BaseUrl, Passthrough, ProviderKind};
use crate::secret::Secret;
use crate::store::{ModelPatch, NewModel, NewProvider, ProviderPatch};
use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    upstreams: UpstreamArgs,
    /// The declarative file (TOML).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Also delete providers and models the file does not list.
    #[arg(long)]
    prune: bool,
    /// Print what would change without writing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Desired {
    #[serde(default)]
    providers: Vec<DesiredProvider>,
    #[serde(default)]
    models: Vec<DesiredModel>,
    default_model: Option<ModelRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredProvider {
    name: String,
    kind: ProviderKind,
    base_url: String,
    #[serde(default)]
    intercept_hosts: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    enforce_models: bool,
    #[serde(default)]
    passthrough: Passthrough,
    #[serde(default = "yes")]
    record_prompts: bool,
    #[serde(default)]
    key_env: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredModel {
    provider: String,
    model: String,
    display_name: Option<String>,
    context_limit: Option<i64>,
    #[serde(default = "yes")]
    enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelRef {
    provider: String,
    model: String,
}

fn yes() -> bool {
    true
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let desired: Desired = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid apply file", args.file.display()))?;
    let store = args
        .conn
        .open()
        .await?
        .with_upstream_policy(args.upstreams.policy());
    let result = reconcile(&store, desired, args.prune, args.dry_run).await;
    store.close().await;
    let changes = result?;
    if changes.is_empty() {
        println!("no changes");
    } else {
        for c in &changes {
            println!("{}{c}", if args.dry_run { "would " } else { "" });
        }
    }
    Ok(0)
}

/// Bring the store to `desired`; returns one line per change.
async fn reconcile(
    store: &Conn,
    desired: Desired,
    prune: bool,
    dry_run: bool,
) -> anyhow::Result<Vec<String>> {
    let mut changes = Vec::new();
    let current = store.list_providers().await?;
    // Every base URL the file would write is checked before anything is written (and in a dry
    // run): a refused one fails the whole file, not the half after it.
    for want in &desired.providers {
        let unchanged = current
            .iter()
            .any(|p| p.name == want.name && p.base_url == want.base_url);
        if !unchanged {
            match store.upstream_policy() {
                Some(policy) => BaseUrl::parse_with_policy(&want.base_url, policy).map(drop),
                None => BaseUrl::parse(&want.base_url).map(drop),
            }
            .with_context(|| format!("provider {}", want.name))?;
        }
    }
    for want in &desired.providers {
        let keys = read_keys(&want.key_env)?;
        match current.iter().find(|p| p.name == want.name) {
            None => {
                changes.push(format!("create provider {}", want.name));
                if !dry_run {
                    store
                        .create_provider(NewProvider {
                            name: want.name.clone(),
                            kind: want.kind,
                            base_url: want.base_url.clone(),
                            intercept_hosts: want.intercept_hosts.clone(),
                            enabled: want.enabled,
                            enforce_models: want.enforce_models,
                            passthrough: want.passthrough,
                            record_prompts: want.record_prompts,
                            api_keys: keys,
                        })
                        .await?;
                }
            }
            Some(have) => {
                let same_keys = store.keys_match(&have.name, &keys).await?;
                let patch = provider_patch(have, want, keys, same_keys)?;
                if let Some((patch, fields)) = patch {
                    changes.push(format!(
                        "update provider {} ({})",
                        want.name,
                        fields.join(", ")
                    ));
                    if !dry_run {
                        store.update_provider(&want.name, patch).await?;
                    }
                }
            }
        }
    }
    if prune {
        for have in &current {
            if !desired.providers.iter().any(|w| w.name == have.name) {
                changes.push(format!("delete provider {}", have.name));
                if !dry_run {
                    store.delete_provider(&have.name).await?;
                }
            }
        }
    }

    let providers = store.list_providers().await?;
    let provider_id = |name: &str| providers.iter().find(|p| p.name == name).map(|p| p.id);
    let models = store.list_models().await?;
    let find = |provider: &str, model: &str| -> Option<&Model> {
        let id = provider_id(provider)?;
        models
            .iter()
            .find(|m| m.provider_id == id && m.model == model)
    };
    for want in &desired.models {
        if provider_id(&want.provider).is_none() && !dry_run {
            bail!(
                "model {} names provider {}, which does not exist",
                want.model,
                want.provider
            );
        }
        match find(&want.provider, &want.model) {
            None => {
                changes.push(format!("create model {}/{}", want.provider, want.model));
                if !dry_run {
                    store
                        .create_model(NewModel {
                            provider: want.provider.clone(),
                            model: want.model.clone(),
                            display_name: want.display_name.clone(),
                            context_limit: want.context_limit,
                            enabled: want.enabled,
                            is_default: false,
                        })
                        .await?;
                }
            }
            Some(have) => {
                let differs = have.display_name != want.display_name
                    || have.context_limit != want.context_limit
                    || have.enabled != want.enabled;
                if differs {
                    changes.push(format!("update model {}/{}", want.provider, want.model));
                    if !dry_run {
                        let patch = ModelPatch {
                            display_name: Some(want.display_name.clone()),
                            context_limit: Some(want.context_limit),
                            enabled: Some(want.enabled),
                            ..Default::default()
                        };
                        store.update_model(have.id, patch).await?;
                    }
                }
            }
        }
    }
    if prune {
        for have in &models {
            let listed = desired.models.iter().any(|w| {
                provider_id(&w.provider) == Some(have.provider_id) && w.model == have.model
            });
            if !listed {
                changes.push(format!("delete model {}", have.model));
                if !dry_run {
                    store.delete_model(have.id).await?;
                }
            }
        }
    }

    if let Some(want) = &desired.default_model {
        let models = store.list_models().await?;
        let providers = store.list_providers().await?;
        let target = providers
            .iter()
            .find(|p| p.name == want.provider)
            .and_then(|p| {
                models
                    .iter()
                    .find(|m| m.provider_id == p.id && m.model == want.model)
            });
        match target {
            Some(m) if m.is_default => {}
            Some(m) => {
                changes.push(format!(
                    "set default model {}/{}",
                    want.provider, want.model
                ));
                if !dry_run {
                    store.set_default_model(m.id).await?;
                }
            }
            None if dry_run => changes.push(format!(
                "set default model {}/{}",
                want.provider, want.model
            )),
            None => bail!(
                "default_model {}/{} is not a configured model",
                want.provider,
                want.model
            ),
        }
    }
    Ok(changes)
}

/// The patch that brings `have` to `want`, with the names of the fields it changes.
fn provider_patch(
    have: &Provider,
    want: &DesiredProvider,
    keys: Vec<Secret<String>>,
    same_keys: bool,
) -> anyhow::Result<Option<(ProviderPatch, Vec<&'static str>)>> {
    let mut patch = ProviderPatch::default();
    let mut fields = Vec::new();
    if have.kind != want.kind.as_str() {
        patch.kind = Some(want.kind);
        fields.push("kind");
    }
    if have.base_url != want.base_url {
        patch.base_url = Some(want.base_url.clone());
        fields.push("base_url");
    }
    let hosts = normalize_intercept_hosts(&want.intercept_hosts)?;
    if have.intercept_hosts != hosts {
        patch.intercept_hosts = Some(hosts);
        fields.push("intercept_hosts");
    }
    if have.enabled != want.enabled {
        patch.enabled = Some(want.enabled);
        fields.push("enabled");
    }
    if have.enforce_models != want.enforce_models {
        patch.enforce_models = Some(want.enforce_models);
        fields.push("enforce_models");
    }
    if have.passthrough != want.passthrough.as_str() {
        patch.passthrough = Some(want.passthrough);
        fields.push("passthrough");
    }
    if have.record_prompts != want.record_prompts {
        patch.record_prompts = Some(want.record_prompts);
        fields.push("record_prompts");
    }
    // A key that cannot be decrypted matches nothing, so the file's keys replace it.
    // A base URL change without keys would detach them: re-supply the file's keys with it.
    if !same_keys || (patch.base_url.is_some() && !keys.is_empty()) {
        fields.push("keys");
        patch.api_keys = Some(keys);
    }
    Ok(if fields.is_empty() {
        None
    } else {
        Some((patch, fields))
    })
}

fn read_keys(vars: &[String]) -> anyhow::Result<Vec<Secret<String>>> {
    vars.iter()
        .map(|var| {
            std::env::var(var)
                .map(Secret::new)
                .with_context(|| format!("environment variable {var} (key_env) is not set"))
        })
        .collect()
}

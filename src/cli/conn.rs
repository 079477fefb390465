//! Where a command reads and writes: the database (local mode) or a running proxy's admin API
//! (remote mode, `--admin URL`). Both answer in the API's shapes ([`super::items`]) and fail
//! with the same [`CliError`]s, so a command's output and exit code do not depend on the mode.
//!
//! Local mode goes through the [`Store`], whose writes publish a change that running proxies
//! pick up. Provider status and warnings are what the router would report: there is no router
//! in this process, so the snapshot is built from the rows by the router's own rules
//! ([`Snapshot::build`]) under this command's `--allow-private-upstreams` and secrets keys —
//! what a proxy started with the same flags shows in `GET /api/v1/providers`.

use super::exit::CliError;
use super::items::*;
use super::remote::{segment, AdminArgs, AdminClient};
use super::DbArgs;
use crate::admin::views::{KeyView, ModelView, ProviderView, TokenView};
use crate::net::egress::{Dialer, EgressPolicy};
use crate::net::upstream::UpstreamFactory;
use crate::router::Snapshot;
use crate::secret::Secret;
use crate::store::interceptions::GroupBy;
use crate::store::{ModelPatch, NewModel, NewProvider, ProviderPatch, Store};
use clap::Args;
use http::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

/// The database flags, or `--admin` and its token and CA.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

impl ConnArgs {
    /// Open the database, or prepare the admin API client.
    pub async fn open(&self) -> anyhow::Result<Conn> {
        match &self.admin.admin_url {
            Some(url) => Ok(Conn::Remote(Box::new(AdminClient::new(&self.admin, url)?))),
            None => Ok(Conn::Local(self.db.connect().await?)),
        }
    }
}

/// A local store or a remote admin API.
pub enum Conn {
    Local(Store),
    Remote(Box<AdminClient>),
}

/// A store view converted to the CLI's item through the API's JSON.
fn item<T: DeserializeOwned>(view: impl Serialize) -> Result<T, CliError> {
    serde_json::to_value(view)
        .and_then(serde_json::from_value)
        .map_err(|e| CliError::Failed(format!("converting a row: {e}")))
}

fn not_found(what: &str) -> CliError {
    CliError::NotFound(format!("no such {what}"))
}

impl Conn {
    /// Check base URLs against `policy` when writing (local mode; the API applies its own).
    pub fn with_upstream_policy(self, policy: EgressPolicy) -> Conn {
        match self {
            Conn::Local(store) => Conn::Local(store.with_upstream_policy(policy)),
            remote => remote,
        }
    }

    /// The base-URL policy writes are checked under here; `None` in remote mode, where the
    /// proxy checks each write against its own `--allow-private-upstreams`.
    pub fn upstream_policy(&self) -> Option<&EgressPolicy> {
        match self {
            Conn::Local(store) => Some(store.upstream_policy()),
            Conn::Remote(_) => None,
        }
    }

    pub async fn close(&self) {
        if let Conn::Local(store) = self {
            store.close().await;
        }
    }

    // === providers and keys ===

    pub async fn list_providers(&self) -> Result<Vec<ProviderItem>, CliError> {
        match self {
            Conn::Local(store) => local_providers(store).await,
            Conn::Remote(api) => Ok(api
                .get::<List<ProviderItem>>("/providers")
                .await?
                .map(|l| l.items)
                .unwrap_or_default()),
        }
    }

    /// One provider by name or id.
    pub async fn provider(&self, p: &str) -> Result<Option<ProviderItem>, CliError> {
        match self {
            Conn::Local(store) => {
                let Some(row) = store.get_provider(p).await? else {
                    return Ok(None);
                };
                Ok(local_providers(store)
                    .await?
                    .into_iter()
                    .find(|item| item.id == row.id))
            }
            Conn::Remote(api) => api.get(&format!("/providers/{}", segment(p))).await,
        }
    }

    pub async fn create_provider(&self, new: NewProvider) -> Result<ProviderItem, CliError> {
        match self {
            Conn::Local(store) => {
                let created = store.create_provider(new).await?;
                self.provider(&created.id.to_string())
                    .await?
                    .ok_or_else(|| not_found("provider"))
            }
            Conn::Remote(api) => {
                let body = json!({
                    "name": new.name,
                    "kind": new.kind.as_str(),
                    "base_url": new.base_url,
                    "intercept_hosts": new.intercept_hosts,
                    "enabled": new.enabled,
                    "enforce_models": new.enforce_models,
                    "passthrough": new.passthrough.as_str(),
                    "record_prompts": new.record_prompts,
                    "api_keys": new.api_keys.iter().map(|k| k.expose()).collect::<Vec<_>>(),
                });
                api.send(Method::POST, "/providers", &body).await
            }
        }
    }

    pub async fn update_provider(
        &self,
        p: &str,
        patch: ProviderPatch,
    ) -> Result<ProviderItem, CliError> {
        match self {
            Conn::Local(store) => {
                let updated = store.update_provider(p, patch).await?;
                self.provider(&updated.id.to_string())
                    .await?
                    .ok_or_else(|| not_found("provider"))
            }
            Conn::Remote(api) => {
                let mut body = Map::new();
                let mut put = |k: &str, v: Value| {
                    body.insert(k.to_string(), v);
                };
                if let Some(v) = patch.name {
                    put("name", v.into());
                }
                if let Some(v) = patch.kind {
                    put("kind", v.as_str().into());
                }
                if let Some(v) = patch.base_url {
                    put("base_url", v.into());
                }
                if let Some(v) = patch.intercept_hosts {
                    put("intercept_hosts", v.into());
                }
                if let Some(v) = patch.enabled {
                    put("enabled", v.into());
                }
                if let Some(v) = patch.enforce_models {
                    put("enforce_models", v.into());
                }
                if let Some(v) = patch.passthrough {
                    put("passthrough", v.as_str().into());
                }
                if let Some(v) = patch.record_prompts {
                    put("record_prompts", v.into());
                }
                if let Some(keys) = &patch.api_keys {
                    let keys: Vec<Value> =
                        keys.iter().map(|k| k.expose().as_str().into()).collect();
                    put("api_keys", keys.into());
                }
                let path = format!("/providers/{}", segment(p));
                api.send(Method::PATCH, &path, &Value::Object(body)).await
            }
        }
    }

    /// `false` when there is no such provider.
    pub async fn delete_provider(&self, p: &str) -> Result<bool, CliError> {
        match self {
            Conn::Local(store) => Ok(store.delete_provider(p).await?),
            Conn::Remote(api) => api.delete(&format!("/providers/{}", segment(p))).await,
        }
    }

    pub async fn add_key(&self, p: &str, key: Secret<String>) -> Result<KeyItem, CliError> {
        match self {
            Conn::Local(store) => {
                let key = store.add_key(p, key).await?;
                item(KeyView {
                    id: key.id,
                    masked: key.masked(),
                    created_at: crate::admin::views::rfc3339(key.created_at),
                })
            }
            Conn::Remote(api) => {
                let body = json!({ "api_key": key.expose() });
                let path = format!("/providers/{}/keys", segment(p));
                api.send(Method::POST, &path, &body).await
            }
        }
    }

    /// `false` when the provider has no such key; a missing provider is an error.
    pub async fn remove_key(&self, p: &str, key_id: Uuid) -> Result<bool, CliError> {
        match self {
            Conn::Local(store) => Ok(store.delete_key(p, key_id).await?),
            Conn::Remote(api) => {
                if self.provider(p).await?.is_none() {
                    return Err(not_found("provider"));
                }
                api.delete(&format!("/providers/{}/keys/{key_id}", segment(p)))
                    .await
            }
        }
    }

    /// Whether provider `p` holds exactly `keys` (any order); never reads a key back.
    pub async fn keys_match(&self, p: &str, keys: &[Secret<String>]) -> Result<bool, CliError> {
        match self {
            Conn::Local(store) => {
                let provider = store
                    .get_provider(p)
                    .await?
                    .ok_or_else(|| not_found("provider"))?;
                Ok(crate::admin::keys::same_keys(&provider, keys))
            }
            Conn::Remote(api) => {
                let body = json!({
                    "api_keys": keys.iter().map(|k| k.expose()).collect::<Vec<_>>(),
                });
                let path = format!("/providers/{}/keys/match", segment(p));
                let answer: KeysMatch = api.send(Method::POST, &path, &body).await?;
                Ok(answer.matches)
            }
        }
    }

    // === models and the default ===

    pub async fn list_models(&self) -> Result<Vec<ModelItem>, CliError> {
        match self {
            Conn::Local(store) => store
                .list_models()
                .await?
                .into_iter()
                .map(|m| item(ModelView::from(m)))
                .collect(),
            Conn::Remote(api) => Ok(api
                .get::<List<ModelItem>>("/models")
                .await?
                .map(|l| l.items)
                .unwrap_or_default()),
        }
    }

    pub async fn model(&self, id: Uuid) -> Result<Option<ModelItem>, CliError> {
        match self {
            Conn::Local(store) => store
                .get_model(id)
                .await?
                .map(|m| item(ModelView::from(m)))
                .transpose(),
            Conn::Remote(api) => api.get(&format!("/models/{id}")).await,
        }
    }

    pub async fn create_model(&self, new: NewModel) -> Result<ModelItem, CliError> {
        match self {
            Conn::Local(store) => item(ModelView::from(store.create_model(new).await?)),
            Conn::Remote(api) => {
                let mut body = json!({
                    "provider": new.provider,
                    "model": new.model,
                    "enabled": new.enabled,
                    "is_default": new.is_default,
                });
                if let Some(d) = new.display_name {
                    body["display_name"] = d.into();
                }
                if let Some(l) = new.context_limit {
                    body["context_limit"] = l.into();
                }
                api.send(Method::POST, "/models", &body).await
            }
        }
    }

    pub async fn update_model(&self, id: Uuid, patch: ModelPatch) -> Result<ModelItem, CliError> {
        match self {
            Conn::Local(store) => item(ModelView::from(store.update_model(id, patch).await?)),
            Conn::Remote(api) => {
                let mut body = Map::new();
                if let Some(v) = patch.model {
                    body.insert("model".into(), v.into());
                }
                if let Some(v) = patch.display_name {
                    body.insert("display_name".into(), v.into());
                }
                if let Some(v) = patch.context_limit {
                    body.insert("context_limit".into(), v.into());
                }
                if let Some(v) = patch.enabled {
                    body.insert("enabled".into(), v.into());
                }
                if let Some(v) = patch.is_default {
                    body.insert("is_default".into(), v.into());
                }
                api.send(
                    Method::PATCH,
                    &format!("/models/{id}"),
                    &Value::Object(body),
                )
                .await
            }
        }
    }

    /// `false` when there is no such model.
    pub async fn delete_model(&self, id: Uuid) -> Result<bool, CliError> {
        match self {
            Conn::Local(store) => Ok(store.delete_model(id).await?),
            Conn::Remote(api) => api.delete(&format!("/models/{id}")).await,
        }
    }

    /// The default model; `None` when there are no models.
    pub async fn default_model(&self) -> Result<Option<ModelItem>, CliError> {
        match self {
            Conn::Local(store) => store
                .default_model()
                .await?
                .map(|m| item(ModelView::from(m)))
                .transpose(),
            Conn::Remote(api) => {
                let pointer: Option<DefaultModel> = api.get("/default-model").await?;
                match pointer.and_then(|p| p.model_id) {
                    Some(id) => self.model(id).await,
                    None => Ok(None),
                }
            }
        }
    }

    /// Make `id` the default (idempotent).
    pub async fn set_default_model(&self, id: Uuid) -> Result<ModelItem, CliError> {
        match self {
            Conn::Local(store) => item(ModelView::from(store.set_default_model(id).await?)),
            Conn::Remote(api) => {
                let body = json!({ "model_id": id });
                let _: DefaultModel = api.send(Method::PUT, "/default-model", &body).await?;
                self.model(id).await?.ok_or_else(|| not_found("model"))
            }
        }
    }

    // === tokens ===

    pub async fn tokens(&self) -> Result<Vec<TokenItem>, CliError> {
        match self {
            Conn::Local(store) => store
                .list_tokens()
                .await?
                .into_iter()
                .map(|t| item(TokenView::from(t)))
                .collect(),
            Conn::Remote(api) => Ok(api
                .get::<List<TokenItem>>("/tokens")
                .await?
                .map(|l| l.items)
                .unwrap_or_default()),
        }
    }

    /// Create a token for `user`, refused after `expires_at` when given.
    pub async fn create_token(
        &self,
        user: &str,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<CreatedToken, CliError> {
        match self {
            Conn::Local(store) => {
                let (row, token) = store.create_token_with(user, expires_at).await?;
                Ok(created_item(row, &token))
            }
            Conn::Remote(api) => {
                let mut body = json!({ "user": user });
                if let Some(at) = expires_at {
                    body["expires_at"] = json!(crate::admin::views::rfc3339(at));
                }
                api.send(Method::POST, "/tokens", &body).await
            }
        }
    }

    /// Create one token per user in one transaction (remote: `POST /tokens:batch`, in requests
    /// of at most 10 000), all refused after `expires_at` when given.
    pub async fn create_tokens(
        &self,
        users: &[String],
        expires_at: Option<OffsetDateTime>,
    ) -> Result<Vec<CreatedToken>, CliError> {
        match self {
            Conn::Local(store) => {
                let batch: Vec<crate::store::NewToken> = users
                    .iter()
                    .map(|user| crate::store::NewToken {
                        user: user.clone(),
                        expires_at,
                    })
                    .collect();
                let created = store.create_tokens(&batch).await?;
                Ok(created
                    .into_iter()
                    .map(|(row, token)| created_item(row, &token))
                    .collect())
            }
            Conn::Remote(api) => {
                let expires = expires_at.map(crate::admin::views::rfc3339);
                let mut out = Vec::with_capacity(users.len());
                for chunk in users.chunks(crate::admin::tokens::MAX_BATCH_REQUEST) {
                    let tokens: Vec<Value> = chunk
                        .iter()
                        .map(|user| match &expires {
                            Some(at) => json!({ "user": user, "expires_at": at }),
                            None => json!({ "user": user }),
                        })
                        .collect();
                    let list: List<CreatedToken> = api
                        .send(Method::POST, "/tokens:batch", &json!({ "tokens": tokens }))
                        .await?;
                    out.extend(list.items);
                }
                Ok(out)
            }
        }
    }

    /// `false` when there is no active token with this id.
    pub async fn revoke_token(&self, id: Uuid) -> Result<bool, CliError> {
        match self {
            Conn::Local(store) => Ok(store.revoke_token(id).await?),
            Conn::Remote(api) => api.delete(&format!("/tokens/{id}")).await,
        }
    }

    // === usage ===

    /// Token totals per group over `[since, until)`, model calls only unless
    /// `include_passthrough`.
    pub async fn usage(
        &self,
        group_by: GroupBy,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
        include_passthrough: bool,
    ) -> Result<Vec<UsageItem>, CliError> {
        match self {
            Conn::Local(store) => store
                .usage_totals(group_by, since, until, include_passthrough)
                .await?
                .into_iter()
                .map(item)
                .collect(),
            Conn::Remote(api) => {
                let mut query = vec![format!("group_by={}", group_name(group_by))];
                for (name, t) in [("since", since), ("until", until)] {
                    if let Some(t) = t {
                        query.push(format!(
                            "{name}={}",
                            segment(&crate::admin::views::rfc3339(t))
                        ));
                    }
                }
                if include_passthrough {
                    query.push("include=passthrough".into());
                }
                let path = format!("/usage?{}", query.join("&"));
                let answer: Option<UsageAnswer> = api.get(&path).await?;
                Ok(answer.map(|a| a.items).unwrap_or_default())
            }
        }
    }
}

fn group_name(g: GroupBy) -> &'static str {
    match g {
        GroupBy::Provider => "provider",
        GroupBy::Model => "model",
        GroupBy::User => "user",
    }
}

/// Every provider with the status a router built from the same rows would give it.
async fn local_providers(store: &Store) -> Result<Vec<ProviderItem>, CliError> {
    let mut data = store.load_routing().await?;
    let rows = data.providers.clone();
    // Status depends on providers alone; tokens would only cost time.
    data.tokens.clear();
    let upstreams = UpstreamFactory::new(
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        None,
        Dialer::new(
            store.upstream_policy().clone(),
            crate::config::DEFAULT_CONNECT_TIMEOUT,
        ),
    )
    .map_err(|e| CliError::Failed(e.to_string()))?;
    // The router logs each exclusion; here the status column says it.
    let snapshot = tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
        Snapshot::build(data, 1, &Snapshot::empty(), &upstreams)
    });
    rows.into_iter()
        .map(|p| item(ProviderView::new(p, &snapshot)))
        .collect()
}

/// A token created on the database, shaped as the admin API answers it (the same fields, so
/// local and remote output agree).
fn created_item(
    row: crate::store::AgentToken,
    token: &crate::secret::Secret<String>,
) -> CreatedToken {
    let mut rest = Map::new();
    rest.insert(
        "expires_at".into(),
        row.expires_at.map_or(Value::Null, |t| {
            Value::String(crate::admin::views::rfc3339(t))
        }),
    );
    CreatedToken {
        id: row.id,
        user: row.user.clone(),
        token: token.expose().clone(),
        created_at: crate::admin::views::rfc3339(row.created_at),
        rest,
    }
}

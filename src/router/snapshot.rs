//! Building a snapshot from store rows.
//!
//! Rules (SPEC §5, §6): providers are considered oldest first; a disabled provider routes
//! nothing; a row that does not parse (kind, base URL, intercept host), whose base URL host the
//! upstream egress policy refuses (a row written before the policy, or under a wider
//! `--allow-private-upstreams`), holds a key the store could not decrypt, or whose upstream
//! client cannot be built is marked `error` and excluded alone; a provider claiming a host an older provider already holds is marked `excluded` as a
//! whole. Nothing in a row can fail the build.
//! Upstream clients of providers whose base URL did not change are carried over from the
//! previous snapshot so their warm connections survive the reload.

use crate::net::egress::EgressPolicy;
use crate::net::upstream::{UpstreamClient, UpstreamFactory};
use crate::provider::{self, BaseUrl, Passthrough, ProviderKind};
use crate::secret::Secret;
use crate::store::RoutingData;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

/// Everything the data path needs to send a request to one provider.
pub struct ProviderRoute {
    pub id: Uuid,
    pub name: String,
    pub kind: ProviderKind,
    pub base: BaseUrl,
    /// The injected key; `None` passes the client's own credentials through.
    pub key: Option<Secret<String>>,
    pub enforce_models: bool,
    /// Enabled models configured for this provider: the allowlist when `enforce_models`, and
    /// the only model names used as metric labels.
    pub models: Arc<std::collections::HashSet<String>>,
    /// What happens to requests that are not model calls.
    pub passthrough: Passthrough,
    /// Whether model calls have their prompt recorded (with `--record-prompts`).
    pub record_prompts: bool,
    /// Raw base URL, to tell whether the upstream client can be reused at the next reload.
    base_url: String,
    pub upstream: UpstreamClient,
    /// HTTP/1.1 only, for WebSocket upgrades.
    pub upstream_http1: UpstreamClient,
}

/// A provider's standing in this snapshot, for the API and logs.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderState {
    pub id: Uuid,
    pub name: String,
    /// `enabled`, `disabled`, `excluded` or `error`.
    pub status: &'static str,
    pub hosts: Vec<String>,
    pub warnings: Vec<String>,
}

/// An active agent token.
#[derive(Debug)]
pub struct TokenEntry {
    pub id: Uuid,
    pub user: Arc<str>,
}

/// One immutable routing state.
pub struct Snapshot {
    pub generation: u64,
    pub loaded_at: OffsetDateTime,
    /// The store's change counter this snapshot reflects.
    pub counter: i64,
    routes: HashMap<String, Arc<ProviderRoute>>,
    /// Every routable provider by name (the direct bridge's lookup), with or without hosts.
    by_name: HashMap<String, Arc<ProviderRoute>>,
    pub providers: Vec<ProviderState>,
    /// Ids of the active tokens, so open connections can be re-checked per request.
    active_tokens: std::collections::HashSet<Uuid>,
    /// Active tokens, bucketed by the first 8 bytes of their SHA-256.
    tokens: HashMap<u64, TokenBucket>,
}

/// Tokens whose digests share a prefix: (SHA-256, entry).
type TokenBucket = Vec<([u8; 32], Arc<TokenEntry>)>;

impl Snapshot {
    /// The snapshot before anything was loaded: routes nothing, accepts no token.
    pub fn empty() -> Self {
        Snapshot {
            generation: 0,
            loaded_at: OffsetDateTime::now_utc(),
            counter: -1,
            routes: HashMap::new(),
            by_name: HashMap::new(),
            providers: Vec::new(),
            active_tokens: Default::default(),
            tokens: HashMap::new(),
        }
    }

    /// The provider intercepting `key` ("host:port"), if any.
    pub fn route(&self, key: &str) -> Option<&Arc<ProviderRoute>> {
        self.routes.get(key)
    }

    /// The enabled provider named `name`, if it is routable.
    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderRoute>> {
        self.by_name.get(name)
    }

    /// Whether the token with this id is still active (not revoked).
    pub fn token_active(&self, id: Uuid) -> bool {
        self.active_tokens.contains(&id)
    }

    /// The token whose SHA-256 is `digest`, if active. The bucket is found by a digest prefix;
    /// the full fixed-length digests are then compared in constant time, so how long a compare
    /// takes says nothing about how close a guess was.
    pub fn token(&self, digest: &[u8; 32]) -> Option<&Arc<TokenEntry>> {
        let bucket = self.tokens.get(&digest_prefix(digest))?;
        let mut found = None;
        for (stored, entry) in bucket {
            if bool::from(stored.ct_eq(digest)) {
                found = Some(entry);
            }
        }
        found
    }

    /// Every routed provider (once per host it claims).
    pub fn host_routes(&self) -> impl Iterator<Item = &Arc<ProviderRoute>> {
        self.routes.values()
    }

    /// Host → provider name, sorted, for `/router` and tests.
    pub fn host_map(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .routes
            .iter()
            .map(|(h, r)| (h.clone(), r.name.clone()))
            .collect();
        out.sort();
        out
    }

    /// Build the next snapshot from store data.
    pub fn build(
        data: RoutingData,
        generation: u64,
        previous: &Snapshot,
        upstreams: &UpstreamFactory,
    ) -> Snapshot {
        let reusable: HashMap<Uuid, &Arc<ProviderRoute>> =
            previous.by_name.values().map(|r| (r.id, r)).collect();
        let mut routes: HashMap<String, Arc<ProviderRoute>> = HashMap::new();
        let mut by_name: HashMap<String, Arc<ProviderRoute>> = HashMap::new();
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut providers = Vec::with_capacity(data.providers.len());

        for row in data.providers {
            let mut state = ProviderState {
                id: row.id,
                name: row.name.clone(),
                status: "enabled",
                hosts: Vec::new(),
                warnings: Vec::new(),
            };
            let parsed = parse_row(&row, upstreams.policy());
            let (kind, passthrough, base, targets) = match parsed {
                Ok(p) => p,
                Err(reason) => {
                    tracing::warn!(provider = %row.name, %reason, "provider excluded from routing");
                    state.status = "error";
                    state.warnings.push(reason);
                    providers.push(state);
                    continue;
                }
            };
            let keys: Vec<String> = targets.iter().map(|t| t.key()).collect();
            state.hosts = keys.clone();
            if !row.enabled {
                state.status = "disabled";
                providers.push(state);
                continue;
            }
            let taken: Vec<String> = keys
                .iter()
                .filter_map(|k| {
                    owners
                        .get(k)
                        .map(|owner| format!("host {k} is already intercepted by provider {owner}"))
                })
                .collect();
            if !taken.is_empty() {
                tracing::warn!(provider = %row.name, warnings = ?taken, "provider excluded from routing");
                state.status = "excluded";
                state.warnings = taken;
                providers.push(state);
                continue;
            }
            let (upstream, upstream_http1) = match reusable.get(&row.id) {
                Some(prev) if prev.base_url == row.base_url => {
                    (prev.upstream.clone(), prev.upstream_http1.clone())
                }
                _ => (upstreams.client(), upstreams.client_http1()),
            };
            let route = Arc::new(ProviderRoute {
                id: row.id,
                name: row.name.clone(),
                kind,
                base,
                key: row
                    .keys
                    .first()
                    .and_then(|k| k.api_key.as_ref().ok().cloned()),
                enforce_models: row.enforce_models,
                models: Arc::new(
                    data.models
                        .iter()
                        .filter(|m| m.provider_id == row.id && m.enabled)
                        .map(|m| m.model.clone())
                        .collect(),
                ),
                passthrough,
                record_prompts: row.record_prompts,
                base_url: row.base_url.clone(),
                upstream,
                upstream_http1,
            });
            for k in keys {
                owners.insert(k.clone(), row.name.clone());
                routes.insert(k, route.clone());
            }
            by_name.insert(row.name.clone(), route);
            providers.push(state);
        }

        let mut tokens: HashMap<u64, TokenBucket> = HashMap::new();
        let active_tokens = data.tokens.iter().map(|t| t.id).collect();
        for t in data.tokens {
            let Ok(digest) = <[u8; 32]>::try_from(t.token_hash.as_slice()) else {
                tracing::warn!(token_id = %t.id, "token row has a malformed hash; ignored");
                continue;
            };
            let entry = Arc::new(TokenEntry {
                id: t.id,
                user: t.user.into(),
            });
            tokens
                .entry(digest_prefix(&digest))
                .or_default()
                .push((digest, entry));
        }

        Snapshot {
            generation,
            loaded_at: OffsetDateTime::now_utc(),
            counter: data.counter,
            routes,
            by_name,
            providers,
            active_tokens,
            tokens,
        }
    }
}

fn digest_prefix(digest: &[u8; 32]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(prefix)
}

type ParsedRow = (
    ProviderKind,
    Passthrough,
    BaseUrl,
    Vec<crate::net::target::Target>,
);

fn parse_row(row: &crate::store::Provider, policy: &EgressPolicy) -> Result<ParsedRow, String> {
    let kind: ProviderKind = row
        .kind
        .parse()
        .map_err(|e: provider::ProviderError| e.to_string())?;
    let passthrough: Passthrough = row
        .passthrough
        .parse()
        .map_err(|e: provider::ProviderError| e.to_string())?;
    let base = BaseUrl::parse_with_policy(&row.base_url, policy).map_err(|e| e.to_string())?;
    let targets =
        provider::intercept_targets(&row.intercept_hosts, &base).map_err(|e| e.to_string())?;
    // Any undecryptable key excludes the provider, not just the injected one: serving on
    // another key would change which key goes out when the operator fixes or deletes one.
    if let Some((id, e)) = row
        .keys
        .iter()
        .find_map(|k| k.api_key.as_ref().err().map(|e| (k.id, e)))
    {
        return Err(format!("key {id} cannot be decrypted: {e}"));
    }
    Ok((kind, passthrough, base, targets))
}
